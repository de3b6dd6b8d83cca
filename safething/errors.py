"""Every error SAFEthing raises on purpose.

One root, :class:`SafeThingError`; each class mixes in the built-in exception a
Python user would expect (``ValueError``, ``KeyError``, ``PermissionError``...)
so that ``except ValueError`` keeps working. Errors carry the data a caller
needs (``key``, ``limit``...) and a message a person can act on; the CLI
prints ``str(error)`` and never a traceback.
"""

from __future__ import annotations

__all__ = [
    "AbortedWriteError",
    "AccessDeniedError",
    "ActionFailedError",
    "BadKeyError",
    "ChunkError",
    "ConflictError",
    "EntryExistsError",
    "FormatVersionError",
    "GuardFailedError",
    "IdentityError",
    "LimitExceededError",
    "MalformedRecordError",
    "NameTakenError",
    "NoSuchDataError",
    "NoSuchEntryError",
    "PermissionDeniedError",
    "ReplayedRequestError",
    "ReservedTypeTagError",
    "RolledBackError",
    "SafeThingError",
    "StoreError",
    "StoreURLError",
    "TamperedDataError",
    "ThingError",
    "ThingOfflineError",
    "WrongPasswordError",
]


class SafeThingError(Exception):
    """Root of every error SAFEthing raises on purpose."""


# --- data model -----------------------------------------------------------------


class ReservedTypeTagError(SafeThingError, ValueError):
    """A type tag in the reserved range 0..10000 was used for user data."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        super().__init__(
            f"type tag {tag} is reserved (0-10000 belong to the network); "
            "use a tag above 10000, e.g. 27417 for SAFEthing things"
        )


class LimitExceededError(SafeThingError, ValueError):
    """A write would break a size or count limit; nothing was written."""

    def __init__(self, message: str, *, limit: int, actual: int) -> None:
        self.limit = limit
        self.actual = actual
        super().__init__(message)


class BadKeyError(SafeThingError, TypeError):
    """A key of the wrong type or length was given (e.g. an encryption key to sign)."""


class PermissionDeniedError(SafeThingError, PermissionError):
    """The local identity lacks the permission a write needs; nothing was written."""


class NoSuchDataError(SafeThingError, KeyError):
    """No MutableData, chunk or public name at that address."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such data"


class NoSuchEntryError(NoSuchDataError):
    """The MutableData has no (live) entry under that key."""


class EntryExistsError(SafeThingError, ValueError):
    """Insert of a key that already exists (use update)."""


class NameTakenError(SafeThingError, ValueError):
    """A public name or MutableData address is already owned by someone else."""


class ChunkError(SafeThingError, ValueError):
    """An immutable chunk or data map is invalid (bad size, bad hash, missing chunk)."""


# --- what a reader finds in the store ------------------------------------------


class TamperedDataError(SafeThingError):
    """The store returned data that fails verification.

    Raised instead of returning the data: a forged signature, a signer without
    permission, a permission set not signed by an owner, a version that went
    backwards, a record for another address. ``address`` and ``key`` say where.
    """

    def __init__(self, message: str, *, address: str = "", key: bytes | None = None) -> None:
        self.address = address
        self.key = key
        super().__init__(message)


class MalformedRecordError(TamperedDataError):
    """A stored record could not be decoded at all (not CBOR, missing fields)."""


class FormatVersionError(TamperedDataError):
    """A stored record uses a format version this release cannot read."""


class RolledBackError(TamperedDataError):
    """The store served an older version than one this reader already verified.

    ``seen`` is the version the reader trusts (kept across restarts by a
    durable :class:`~safething.net.trust.TrustState`); ``found`` the one served.
    """

    def __init__(self, message: str, *, seen: int, found: int, **where: object) -> None:
        self.seen = seen
        self.found = found
        super().__init__(message, **where)  # type: ignore[arg-type]


class ReplayedRequestError(TamperedDataError):
    """A request (or cancellation) that was already processed, or that is not
    allowed to run: replayed, expired, without a bounded expiry, or a
    cancellation signed by neither the requester nor an owner."""


# --- identity -------------------------------------------------------------------


class IdentityError(SafeThingError, ValueError):
    """An identity file is missing, unreadable, or of the wrong format."""


class WrongPasswordError(IdentityError):
    """The password does not open this identity file."""


# --- stores ---------------------------------------------------------------------


class StoreError(SafeThingError, OSError):
    """The store could not carry out an operation (I/O, locked, corrupt)."""


class StoreURLError(StoreError, ValueError):
    """A store URL that names no known backend or is malformed."""


class ConflictError(SafeThingError):
    """A compare-and-set lost: the record's revision was not the expected one.

    ``current`` is the revision found (0 if the record does not exist).
    """

    def __init__(self, key: str, *, expected: int, current: int) -> None:
        self.key = key
        self.expected = expected
        self.current = current
        super().__init__(
            f"conflict on {key!r}: expected revision {expected}, found {current or 'none'}"
        )


# --- things ---------------------------------------------------------------------


class AccessDeniedError(SafeThingError, PermissionError):
    """This identity holds no key for data of that access type (Owner, Group, Thing)."""


class ThingError(SafeThingError):
    """A thing cannot do what was asked in its current state (not registered, disabled...)."""


class ThingOfflineError(ThingError):
    """The thing is offline and the requester asked not to queue (see ``last_seen``)."""

    def __init__(self, message: str, *, thing_id: str, last_seen: float | None) -> None:
        self.thing_id = thing_id
        self.last_seen = last_seen
        super().__init__(message)


class ActionFailedError(SafeThingError):
    """An action ended failed, rejected, timed_out or cancelled (see ``state``, ``reason``)."""

    def __init__(self, message: str, *, state: str, reason: str = "") -> None:
        self.state = state
        self.reason = reason
        super().__init__(message)


class AbortedWriteError(ConflictError):
    """Not applied: another write of the same all-or-nothing batch was refused."""

    def __init__(self, key: str) -> None:
        SafeThingError.__init__(
            self, f"{key!r} not written: another write of the same atomic batch was refused"
        )
        self.key = key
        self.expected = 0
        self.current = 0


class GuardFailedError(ConflictError):
    """Nothing of a commit was written: the record its guard names no longer holds the
    bytes the guard expects (someone wrote it since they were read)."""

    def __init__(self, key: str) -> None:
        SafeThingError.__init__(
            self, f"nothing written: {key!r} changed since it was read (the commit's guard)"
        )
        self.key = key
        self.expected = 0
        self.current = 0
