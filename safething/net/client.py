"""The network client: MutableData over an untrusted store, verified on every read.

``Client(store, identity)`` creates and opens MDs; a :class:`MutableData`
handle reads and writes entries. Writers sign; the store only does
compare-and-set; readers verify everything and never return data that fails
(see :mod:`safething.net.mutable` for the rules).

A client remembers, per MD, the owners and the header it trusts and the
highest version of every entry it verified, in its
:class:`~safething.net.trust.TrustState` (in memory, or in a local file so
that it survives restarts). Owners never change: a header naming other
owners than the trusted ones is refused, whoever signed it. The first
header of an MD is trusted on first use, unless ``owner=`` (that key must
have signed it) or ``owners=`` (exactly these owners) pins it. A store that
swaps in another header, or serves an older version of a header or an
entry than one already verified, is caught; while the store's header is
refused, the client keeps using the header it trusts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from safething.errors import (
    AbortedWriteError,
    ConflictError,
    EntryExistsError,
    LimitExceededError,
    NoSuchDataError,
    NoSuchEntryError,
    PermissionDeniedError,
    RolledBackError,
    SafeThingError,
    TamperedDataError,
)
from safething.net.identity import Identity
from safething.net.keys import PublicSignKey, SecretKey, check_key_type
from safething.net.mutable import (
    MAX_ENTRIES,
    MAX_MD_BYTES,
    Entry,
    EntryRecord,
    MDAddress,
    MDHeader,
    PrivateCodec,
    check_entry_key,
    needed_action,
)
from safething.net.permissions import Action, Grantee, PermissionSet
from safething.net.trust import HeaderState, TrustState
from safething.net.xorname import XorName
from safething.resource import AsyncResource
from safething.store.base import Change, Quota, Record, Store, Watch, Write

__all__ = ["Client", "EntryWatch", "MutableData", "as_bytes"]

log = logging.getLogger("safething.net")

_MAX_RETRIES = 32
_SCAN_THRESHOLD = 32
_KNOWN_MAX = 20_000


def as_bytes(value: bytes | bytearray | memoryview | str, what: str = "value") -> bytes:
    """Accept the plain strings a user would write; everything else must be bytes."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


@dataclass
class _Pins:
    """What a client holds about one MD between reads (the trusted part is in its
    :class:`TrustState`)."""

    first_signers: frozenset[bytes] | None = None
    """``owner=``: a first header must be signed by one of these."""
    exact_owners: frozenset[bytes] | None = None
    """``owners=``: the MD's owners are exactly these."""
    header_bytes: bytes = b""
    header: MDHeader | None = None
    refused: bytes = b""
    """The last store header refused (counted once, not again on every read)."""


class Client(AsyncResource):
    """Reads and writes MutableData in ``store`` as ``identity`` (None: read-only)."""

    def __init__(
        self,
        store: Store,
        identity: Identity | None = None,
        *,
        on_tampered: Callable[[TamperedDataError], None] | None = None,
        trust: TrustState | None = None,
    ) -> None:
        if identity is not None:
            check_key_type(identity, Identity, "Client(identity=...)")
        if trust is not None and not isinstance(trust, TrustState):
            raise TypeError("Client(trust=...) takes a TrustState")
        self.store = store
        self.identity = identity
        self.on_tampered = on_tampered
        self.trust = trust if trust is not None else TrustState()
        """What this client verified; durable when opened on a file."""
        self.tampered_count = 0
        """How many times this client refused data that failed verification."""
        self._pins: dict[str, _Pins] = {}
        # store key -> (verified or self-written entry, store revision). Used only as the
        # compare-and-set expectation of the next write: if anyone else wrote since, the
        # store refuses the write and the writer re-reads and re-verifies.
        self._known: dict[str, tuple[Entry, int]] = {}

    async def close(self) -> None:
        """Close the store this client uses."""
        await self.store.close()

    def _remember(self, store_key: str, entry: Entry, revision: int) -> None:
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[store_key] = (entry, revision)

    # --- MDs ----------------------------------------------------------------------

    def md(
        self,
        name: XorName | str | bytes,
        tag: int,
        *,
        secret: SecretKey | None = None,
        owner: PublicSignKey | None = None,
        owners: tuple[PublicSignKey, ...] | None = None,
    ) -> MutableData:
        """A handle on the MD at (name, tag); nothing is read until it is used.

        ``secret`` opens a private MD. ``owner`` pins an expected owner: it must
        be an owner, and a first header signed by anyone else is refused.
        ``owners`` pins the exact owner set. Either way, a header naming other
        owners than the ones this client trusts is refused.
        """
        address = MDAddress(XorName.parse(name), tag)
        if owner is not None or owners is not None:
            pins = self._pin(address)
            trusted = self.trust.header(address.header_key)
            if owner is not None:
                check_key_type(owner, PublicSignKey, "owner")
                pins.first_signers = frozenset({owner.value})
                if trusted is not None and owner.value not in trusted.owners:
                    raise TamperedDataError(
                        f"MD {address}: the owners this client trusts do not include "
                        f"{owner.hex()[:16]}...",
                        address=str(address),
                    )
            if owners is not None:
                for o in owners:
                    check_key_type(o, PublicSignKey, "owners")
                pins.exact_owners = frozenset(o.value for o in owners)
                if trusted is not None and trusted.owners != pins.exact_owners:
                    raise TamperedDataError(
                        f"MD {address}: the owners this client trusts are not the ones given",
                        address=str(address),
                    )
        if secret is not None:
            check_key_type(secret, SecretKey, "secret")
        return MutableData(self, address, secret)

    async def create_md(
        self,
        name: XorName | str | bytes,
        tag: int,
        *,
        private: bool = False,
        permissions: PermissionSet | Mapping[Grantee, Action | str] | None = None,
        owners: tuple[PublicSignKey, ...] | None = None,
        secret: SecretKey | None = None,
    ) -> MutableData:
        """Create an MD owned by this identity (and ``owners``);
        ``EntryExistsError`` if the address is taken.

        A private MD gets a fresh ``secret`` unless one is given; read it back
        from ``md.secret`` and keep it: without it the data is unreadable.
        """
        me = self._writer()
        address = MDAddress(XorName.parse(name), tag)
        if isinstance(permissions, PermissionSet):
            perms = permissions
        else:
            perms = PermissionSet({g: Action.parse(a) for g, a in (permissions or {}).items()})
        all_owners = tuple({me.public_sign_key, *(owners or ())})
        for o in all_owners:
            check_key_type(o, PublicSignKey, "owner")
        if private and secret is None:
            secret = SecretKey.generate()
        header = MDHeader.create(
            address,
            signer=me.sign_key,
            owners=all_owners,
            permissions=perms,
            version=0,
            private=private,
        )
        try:
            await self.store.create(address.header_key, header.to_bytes())
        except ConflictError:
            raise EntryExistsError(f"an MD already exists at {address}") from None
        self._accept_header(address, header, header.to_bytes())
        return MutableData(self, address, secret if private else None)

    async def list_mds(self, tag: int | None = None) -> list[MDAddress]:
        """Addresses of the MDs in the store (optionally of one type tag)."""
        prefix = f"md.{tag}." if tag is not None else "md."
        result = []
        for key in await self.store.keys(prefix):
            parts = key.split(".")
            if len(parts) == 4 and parts[3] == "h":
                try:
                    result.append(MDAddress(XorName.from_hex(parts[2]), int(parts[1])))
                except (ValueError, SafeThingError):
                    log.warning("ignoring malformed MD key %r in the store", key)
        return result

    # --- internals shared by handles ---------------------------------------------

    def _writer(self) -> Identity:
        if self.identity is None:
            raise PermissionDeniedError("this client has no identity; it can only read")
        return self.identity

    def _pin(self, address: MDAddress) -> _Pins:
        pins = self._pins.get(address.header_key)
        if pins is None:
            pins = self._pins[address.header_key] = _Pins()
            self.trust.preload(address.entry_prefix)
        return pins

    def _tampered(self, error: TamperedDataError) -> TamperedDataError:
        self.tampered_count += 1
        log.warning("refused data from the store: %s", error)
        if self.on_tampered is not None:
            self.on_tampered(error)
        return error

    def _check_header(self, address: MDAddress, header: MDHeader, raw: bytes) -> None:
        """Raise ``TamperedDataError`` unless ``header`` may follow the trusted one."""
        where = str(address)
        pins = self._pin(address)
        header.verify()  # signed by one of the owners it names
        owners = frozenset(o.value for o in header.owners)
        if pins.exact_owners is not None and owners != pins.exact_owners:
            raise TamperedDataError(
                f"MD {where}: the header names other owners than the pinned ones "
                "(owner substitution)",
                address=where,
            )
        trusted = self.trust.header(address.header_key)
        if trusted is None:
            if pins.first_signers is not None and header.signer.value not in pins.first_signers:
                raise TamperedDataError(
                    f"MD {where}: header signed by {header.signer.hex()[:16]}..., not by the "
                    "pinned owner (owner substitution)",
                    address=where,
                )
            return
        if owners != trusted.owners:
            raise TamperedDataError(
                f"MD {where}: the header names other owners than the ones this client trusts "
                f"(owner substitution: owners of an MD never change; signed by "
                f"{header.signer.hex()[:16]}...)",
                address=where,
            )
        if header.version < trusted.version:
            raise RolledBackError(
                f"MD {where}: permission set went back from version "
                f"{trusted.version} to {header.version} (replayed older header)",
                address=where,
                seen=trusted.version,
                found=header.version,
            )
        if header.version == trusted.version and raw != trusted.raw:
            raise TamperedDataError(
                f"MD {where}: a second, different header at version {header.version}",
                address=where,
            )

    def _accept_header(self, address: MDAddress, header: MDHeader, raw: bytes) -> MDHeader:
        """Verify ``header`` against signatures and what this client trusts; remember it."""
        pins = self._pin(address)
        if raw == pins.header_bytes and pins.header is not None:
            return pins.header
        try:
            self._check_header(address, header, raw)
        except TamperedDataError as e:
            raise self._tampered(e) from None
        self.trust.set_header(
            address.header_key,
            HeaderState(frozenset(o.value for o in header.owners), header.version, raw),
        )
        pins.header_bytes = raw
        pins.header = header
        return header

    def _trusted_header(self, address: MDAddress) -> MDHeader | None:
        """The header this client trusts for ``address`` (from memory or its trust state)."""
        pins = self._pin(address)
        if pins.header is not None:
            return pins.header
        trusted = self.trust.header(address.header_key)
        if trusted is None:
            return None
        header = MDHeader.from_bytes(trusted.raw, address)
        pins.header, pins.header_bytes = header, trusted.raw
        return header

    async def _header(self, address: MDAddress) -> tuple[MDHeader, int]:
        """The header to verify entries with, and the store revision of the stored one.

        A stored header that fails verification is counted once and refused;
        if this client already trusts a header of the MD it carries on with
        that one (the store cannot grant itself rights by writing headers),
        otherwise the error is raised.
        """
        record = await self.store.get(address.header_key)
        if record is None:
            raise NoSuchDataError(f"no MutableData at {address}")
        pins = self._pin(address)
        if pins.header is not None and pins.header_bytes == record.value:
            return pins.header, record.revision  # the very bytes verified before
        if record.value == pins.refused:
            trusted = self._trusted_header(address)
            if trusted is not None:
                return trusted, record.revision
        try:
            try:
                header = MDHeader.from_bytes(record.value, address)
            except TamperedDataError as e:
                raise self._tampered(e) from None
            return self._accept_header(address, header, record.value), record.revision
        except TamperedDataError:
            pins.refused = record.value
            trusted = self._trusted_header(address)
            if trusted is None:
                raise
            return trusted, record.revision

    def _check_version(
        self, address: MDAddress, store_key: str, version: int, *, stale_ok: bool = False
    ) -> bool:
        """Record ``version`` as seen; False (stale_ok) or RolledBackError if it went back."""
        seen = self.trust.entry_version(store_key)
        if version < seen:
            if stale_ok:
                return False
            raise self._tampered(
                RolledBackError(
                    f"MD {address}: entry went back from version {seen} to {version} "
                    "(replayed older version)",
                    address=str(address),
                    seen=seen,
                    found=version,
                )
            )
        self.trust.set_entry_version(store_key, version)
        return True


class MutableData:
    """A handle on one MD. Get it from :meth:`Client.md` or :meth:`Client.create_md`."""

    def __init__(self, client: Client, address: MDAddress, secret: SecretKey | None) -> None:
        self.client = client
        self.address = address
        self.secret = secret
        """The private MD's key (``None`` for public MDs or when unknown)."""
        self._codec = PrivateCodec(secret) if secret is not None else None

    def __repr__(self) -> str:
        return f"MutableData({self.address})"

    # --- header ------------------------------------------------------------------

    async def header(self) -> MDHeader:
        """The current header, verified."""
        header, _ = await self.client._header(self.address)
        return header

    async def exists(self) -> bool:
        return await self.client.store.get(self.address.header_key) is not None

    async def set_permissions(self, grantee: Grantee, actions: Action | str) -> MDHeader:
        """Grant ``grantee`` exactly ``actions`` (``Action.NONE`` revokes). Owners only."""
        for _ in range(_MAX_RETRIES):
            header, revision = await self.client._header(self.address)
            new = self._signed_header(header, header.permissions.with_grant(grantee, actions))
            try:
                await self.client.store.update(self.address.header_key, new.to_bytes(), revision)
            except ConflictError:
                continue
            return self.client._accept_header(self.address, new, new.to_bytes())
        raise ConflictError(self.address.header_key, expected=0, current=0)

    async def repair_header(self, *, permissions: PermissionSet | None = None) -> bool:
        """Write the trusted header again if the store holds another one (a forged or
        older header): the trusted owners and permissions, signed by this identity (an
        owner) at a version above both. True if it wrote.

        With no trusted header yet, a handle pinned with ``owners=`` writes those
        owners and ``permissions`` instead of a stored header it refuses.
        """
        client = self.client
        pins = client._pin(self.address)
        try:
            header, _ = await client._header(self.address)
        except TamperedDataError:
            if pins.exact_owners is None or permissions is None:
                raise
            header = MDHeader.create(
                self.address,
                signer=client._writer().sign_key,
                owners=tuple(PublicSignKey(o) for o in pins.exact_owners),
                permissions=permissions,
                version=-1,
                private=False,
            )
        record = await client.store.get(self.address.header_key)
        if record is not None and record.value == pins.header_bytes:
            return False
        version = header.version
        if record is not None:
            with contextlib.suppress(TamperedDataError):
                version = max(version, MDHeader.from_bytes(record.value, self.address).version)
        me = client._writer()
        if not header.is_owner(me.public_sign_key):
            raise PermissionDeniedError(f"only an owner of MD {self.address} can repair it")
        new = MDHeader.create(
            self.address,
            signer=me.sign_key,
            owners=header.owners,
            permissions=header.permissions,
            version=version + 1,
            private=header.private,
        )
        if record is None:
            await client.store.create(self.address.header_key, new.to_bytes())
        else:
            await client.store.update(self.address.header_key, new.to_bytes(), record.revision)
        client._accept_header(self.address, new, new.to_bytes())
        pins.refused = b""
        log.warning("MD %s: wrote the trusted header again (version %d)", self.address, version + 1)
        return True

    def _signed_header(self, header: MDHeader, permissions: PermissionSet) -> MDHeader:
        me = self.client._writer()
        if not header.is_owner(me.public_sign_key):
            raise PermissionDeniedError(
                f"only an owner of MD {self.address} can change its permissions"
            )
        return MDHeader.create(
            self.address,
            signer=me.sign_key,
            owners=header.owners,
            permissions=permissions,
            version=header.version + 1,
            private=header.private,
        )

    # --- reading -----------------------------------------------------------------

    def _stored_key(self, key: bytes) -> bytes:
        return self._codec.stored_key(key) if self._codec is not None else key

    def _need_codec(self, header: MDHeader) -> PrivateCodec | None:
        if header.private and self._codec is None:
            raise PermissionDeniedError(
                f"MD {self.address} is private; open it with its secret key"
            )
        if not header.private and self._codec is not None:
            raise TamperedDataError(
                f"MD {self.address} was opened as private but its header says public",
                address=str(self.address),
            )
        return self._codec

    def _open(
        self, header: MDHeader, record: Record, expected: bytes | None, *, live: bool = False
    ) -> Entry | None:
        """Decode and verify one stored entry; raise ``TamperedDataError`` if invalid.

        ``live`` (change feed): an entry older than one already seen is stale
        news, not an attack on this reader, and yields ``None``.
        """
        client = self.client
        codec = self._need_codec(header)
        try:
            rec = EntryRecord.from_bytes(record.value, self.address, expected)
            if self.address.entry_key(rec.stored_key) != record.key:
                raise TamperedDataError(
                    f"MD {self.address}: an entry record was stored under another key",
                    address=str(self.address),
                )
            rec.verify(self.address, header)
            if codec is None:
                key, value = rec.stored_key, rec.stored_value
            else:
                if rec.sealed_key is None:
                    raise TamperedDataError(
                        f"MD {self.address}: private entry without a sealed key",
                        address=str(self.address),
                    )
                try:
                    key = codec.open_key(rec.sealed_key)
                    value = None if rec.stored_value is None else codec.open_value(rec.stored_value)
                except ValueError as e:
                    raise TamperedDataError(
                        f"MD {self.address}: entry does not decrypt with the MD's key",
                        address=str(self.address),
                    ) from e
                if codec.stored_key(key) != rec.stored_key:
                    raise TamperedDataError(
                        f"MD {self.address}: sealed key does not match the entry's address",
                        address=str(self.address),
                    )
        except TamperedDataError as e:
            raise client._tampered(e) from None
        if not client._check_version(self.address, record.key, rec.version, stale_ok=live):
            return None
        entry = Entry(key, value, rec.version, rec.signer)
        client._remember(record.key, entry, record.revision)
        return entry

    async def get(self, key: bytes | str, *, include_deleted: bool = False) -> Entry:
        """The verified entry under ``key``; ``NoSuchEntryError`` if absent (or deleted)."""
        raw_key = check_entry_key(as_bytes(key, "key"))
        header, _ = await self.client._header(self.address)
        self._need_codec(header)
        stored = self._stored_key(raw_key)
        record = await self.client.store.get(self.address.entry_key(stored))
        if record is None:
            raise NoSuchEntryError(f"MD {self.address} has no entry {raw_key!r}")
        entry = self._open(header, record, stored)
        assert entry is not None
        if entry.deleted and not include_deleted:
            raise NoSuchEntryError(f"entry {raw_key!r} of MD {self.address} was deleted")
        return entry

    async def get_value(self, key: bytes | str) -> bytes:
        """The value under ``key`` (verified)."""
        value = (await self.get(key)).value
        assert value is not None
        return value

    async def entries(
        self, *, include_deleted: bool = False, skip_tampered: bool = False
    ) -> dict[bytes, Entry]:
        """Every verified entry, by key.

        An invalid entry raises ``TamperedDataError``; with ``skip_tampered`` it is
        left out instead (and still logged and counted by the client).
        """
        header, _ = await self.client._header(self.address)
        result: dict[bytes, Entry] = {}
        for record in await self.client.store.scan(self.address.entry_prefix):
            try:
                entry = self._open(header, record, None)
            except TamperedDataError:
                if skip_tampered:
                    continue
                raise
            assert entry is not None
            if include_deleted or not entry.deleted:
                result[entry.key] = entry
        return result

    async def keys(self) -> list[bytes]:
        return sorted(await self.entries())

    async def usage(self) -> tuple[int, int]:
        """``(entries, bytes)`` as stored, against ``MAX_ENTRIES`` / ``MAX_MD_BYTES``."""
        return await self.client.store.usage(self.address.entry_prefix)

    # --- writing -----------------------------------------------------------------

    async def insert(self, key: bytes | str, value: bytes | str) -> Entry:
        """Add a new entry (version 0); ``EntryExistsError`` if the key exists."""
        (entry,) = await self._write(
            {check_entry_key(as_bytes(key, "key")): as_bytes(value)}, mode="insert"
        )
        return entry

    async def update(
        self, key: bytes | str, value: bytes | str, *, version: int | None = None
    ) -> Entry:
        """Replace an existing entry's value.

        With ``version`` (the version you read), a concurrent change makes this
        raise ``ConflictError`` instead of overwriting it.
        """
        raw = check_entry_key(as_bytes(key, "key"))
        (entry,) = await self._write({raw: as_bytes(value)}, mode="update", expect_version=version)
        return entry

    async def put(self, key: bytes | str, value: bytes | str) -> Entry:
        """Insert or update, whichever applies."""
        return (await self.put_many({as_bytes(key, "key"): as_bytes(value)}))[0]

    async def put_many(
        self,
        items: Mapping[bytes | str, bytes | str],
        *,
        versions: Mapping[bytes | str, int | None] | None = None,
        atomic: bool = False,
    ) -> list[Entry]:
        """Insert or update many entries, signed one by one, committed in one batch.

        ``versions`` names, for some keys, the version you read (``None``: the
        key must not exist); any other raises ``ConflictError``. With
        ``atomic`` all entries are written or none is.
        """
        clean = {check_entry_key(as_bytes(k, "key")): as_bytes(v) for k, v in items.items()}
        expected = {as_bytes(k, "key"): v for k, v in (versions or {}).items()}
        return await self._write(clean, mode="put", versions=expected, atomic=atomic)

    async def delete(self, key: bytes | str, *, version: int | None = None) -> Entry:
        """Delete an entry (a signed tombstone at the next version)."""
        raw = check_entry_key(as_bytes(key, "key"))
        (entry,) = await self._write({raw: None}, mode="delete", expect_version=version)
        return entry

    async def modify(
        self, key: bytes | str, change: Callable[[bytes | None], bytes | str]
    ) -> Entry:
        """Read-modify-write with retries: ``change(old value or None) -> new value``.

        Concurrent modifiers never lose each other's updates.
        """
        raw = check_entry_key(as_bytes(key, "key"))
        for _ in range(_MAX_RETRIES * 4):
            try:
                current: Entry | None = await self.get(raw, include_deleted=True)
            except NoSuchEntryError:
                current = None
            new = as_bytes(change(None if current is None else current.value))
            try:
                if current is None:
                    return await self.insert(raw, new)
                (entry,) = await self._write(
                    {raw: new}, mode="update", expect_version=current.version
                )
                return entry
            except (ConflictError, EntryExistsError):
                continue
        raise ConflictError(self.address.entry_key(self._stored_key(raw)), expected=0, current=0)

    async def _write(
        self,
        items: Mapping[bytes, bytes | None],
        *,
        mode: str,
        expect_version: int | None = None,
        versions: Mapping[bytes, int | None] | None = None,
        atomic: bool = False,
    ) -> list[Entry]:
        client = self.client
        versions = versions or {}
        me = client._writer()
        store = client.store
        quota = Quota(self.address.entry_prefix, MAX_ENTRIES, MAX_MD_BYTES)
        pending = dict(items)
        done: dict[bytes, Entry] = {}
        for _attempt in range(_MAX_RETRIES):
            header, _ = await client._header(self.address)
            codec = self._need_codec(header)
            current = await self._current(header, list(pending))
            writes: list[Write] = []
            planned: list[tuple[bytes, Entry]] = []
            for key, value in pending.items():
                stored = self._stored_key(key)
                store_key = self.address.entry_key(stored)
                existing = current.get(key)
                if key in versions:
                    found = None if existing is None else existing[0].version
                    wanted = versions[key]
                    if found != wanted:
                        raise ConflictError(
                            store_key,
                            expected=-1 if wanted is None else wanted,
                            current=-1 if found is None else found,
                        )
                if existing is None:
                    if mode in ("update", "delete"):
                        raise NoSuchEntryError(f"MD {self.address} has no entry {key!r}")
                    # A record dropped by the store after this client verified a version
                    # of it: write past that version, never back to 0.
                    version, expect = client.trust.entry_version(store_key) + 1, 0
                else:
                    entry, revision = existing
                    if mode == "insert" and not entry.deleted:
                        raise EntryExistsError(
                            f"MD {self.address} already has an entry {key!r}; use update"
                        )
                    if mode in ("update", "delete") and entry.deleted:
                        raise NoSuchEntryError(f"entry {key!r} of MD {self.address} was deleted")
                    if expect_version is not None and entry.version != expect_version:
                        raise ConflictError(
                            store_key, expected=expect_version, current=entry.version
                        )
                    version, expect = entry.version + 1, revision
                action = needed_action(version, value is None)
                if not header.allows(me.public_sign_key, action):
                    raise PermissionDeniedError(
                        f"{me.public_sign_key.hex()[:16]}... may not "
                        f"{action.names()[0]} in MD {self.address}"
                    )
                stored_value = value if codec is None or value is None else codec.seal_value(value)
                record = EntryRecord.create(
                    self.address,
                    signer=me.sign_key,
                    stored_key=stored,
                    sealed_key=None if codec is None else codec.seal_key(key),
                    stored_value=stored_value,
                    version=version,
                )
                data = record.to_bytes()
                if len(data) > MAX_MD_BYTES:
                    raise LimitExceededError(
                        f"value of {len(value or b'')} bytes is too large for one MD "
                        f"(limit {MAX_MD_BYTES} bytes in total); store large data as "
                        "ImmutableData (put_blob) and keep its address here",
                        limit=MAX_MD_BYTES,
                        actual=len(data),
                    )
                writes.append(Write(store_key, data, expect, quota))
                planned.append((key, Entry(key, value, version, me.public_sign_key)))
            results = await store.commit(writes, atomic=atomic)
            retry: dict[bytes, bytes | None] = {}
            if atomic and any(isinstance(r, Exception) for r in results):
                for key, _ in planned:
                    client._known.pop(self.address.entry_key(self._stored_key(key)), None)
                refusal = next(
                    r
                    for r in results
                    if isinstance(r, Exception) and not isinstance(r, AbortedWriteError)
                )
                if not isinstance(refusal, ConflictError) or versions or expect_version is not None:
                    raise refusal
                continue  # nothing was written: decide the whole batch again
            for (key, entry), result in zip(planned, results, strict=True):
                store_key = self.address.entry_key(self._stored_key(key))
                if isinstance(result, ConflictError):
                    client._known.pop(store_key, None)
                    if expect_version is not None or key in versions:
                        raise ConflictError(
                            result.key, expected=result.expected, current=result.current
                        )
                    if mode == "insert":
                        raise EntryExistsError(
                            f"MD {self.address} already has an entry {key!r}; use update"
                        )
                    retry[key] = pending[key]
                elif isinstance(result, LimitExceededError):
                    count, size = await self.usage()
                    raise LimitExceededError(
                        f"MD {self.address} is full: {count} entries / {size} bytes stored, "
                        f"limits {MAX_ENTRIES} entries / {MAX_MD_BYTES} bytes; nothing of "
                        f"entry {key!r} was written",
                        limit=result.limit,
                        actual=result.actual,
                    ) from None
                elif isinstance(result, Exception):
                    raise result
                else:
                    client._check_version(self.address, store_key, entry.version)
                    client._remember(store_key, entry, result)
                    done[key] = entry
            if not retry:
                return [done[k] for k in items]
            pending = retry
        raise ConflictError(self.address.entry_prefix, expected=0, current=0)

    async def _current(self, header: MDHeader, keys: list[bytes]) -> dict[bytes, tuple[Entry, int]]:
        """Verified current entries (and their store revisions) for ``keys``."""
        store = self.client.store
        known = self.client._known
        result: dict[bytes, tuple[Entry, int]] = {}
        wanted: dict[str, bytes] = {}
        for k in keys:
            store_key = self.address.entry_key(self._stored_key(k))
            if store_key in known:
                result[k] = known[store_key]
            else:
                wanted[store_key] = k
        if not wanted:
            return result
        if len(wanted) > _SCAN_THRESHOLD:
            records = [r for r in await store.scan(self.address.entry_prefix) if r.key in wanted]
        else:
            records = [r for r in [await store.get(k) for k in wanted] if r is not None]
        for record in records:
            key = wanted[record.key]
            try:
                entry = self._open(header, record, self._stored_key(key))
            except TamperedDataError:
                # Refused and counted: an older version than one already verified, or a
                # record nobody entitled signed. The writer writes past the version it
                # verified, replacing the bad record (the store is repaired).
                seen = max(self.client.trust.entry_version(record.key), 0)
                entry = Entry(key, b"", seen, self.client._writer().public_sign_key)
            assert entry is not None
            result[key] = (entry, record.revision)
        return result

    async def purge(self, key: bytes | str) -> None:
        """Remove an entry's record from the store altogether (owners' housekeeping).

        Unlike :meth:`delete` this leaves no signed tombstone: use it for keys
        that are never reused (processed requests, expired states).
        """
        raw = check_entry_key(as_bytes(key, "key"))
        me = self.client._writer()
        header, _ = await self.client._header(self.address)
        if not header.is_owner(me.public_sign_key):
            raise PermissionDeniedError(f"only an owner of MD {self.address} can purge entries")
        store_key = self.address.entry_key(self._stored_key(raw))
        await self.client.store.delete(store_key)
        self.client._known.pop(store_key, None)
        self.client.trust.forget_entry(store_key)

    # --- watching ------------------------------------------------------------------

    def watch(self, *, since: int | None = None, prefixes: tuple[bytes, ...] = ()) -> EntryWatch:
        """Verified entries as they change: ``async with md.watch() as w: async for e in w``.

        ``prefixes`` limits the feed to entry keys starting with one of them
        (checked before verification for public MDs, so unrelated changes
        cost nothing). Invalid changes are refused (logged, counted, reported
        to ``Client(on_tampered=...)``) and skipped, never yielded.
        """
        watch = self.client.store.watch(self.address.prefix, since=since)
        return EntryWatch(self, watch, prefixes)


class EntryWatch(AsyncResource):
    """Async iterator of verified :class:`Entry` changes of one MD."""

    def __init__(self, md: MutableData, watch: Watch, prefixes: tuple[bytes, ...] = ()) -> None:
        self._md = md
        self._watch = watch
        self._prefixes = prefixes
        self._store_prefixes = (
            tuple(md.address.entry_prefix + p.hex() for p in prefixes)
            if prefixes and md.secret is None
            else ()
        )
        self.last_revision = 0
        """Store revision of the last change seen; resume with ``watch(since=...)``."""

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self

    async def __anext__(self) -> Entry:
        md = self._md
        while True:
            change: Change = await self._watch.__anext__()
            self.last_revision = change.revision
            if change.key == md.address.header_key:
                continue  # the next entry read re-verifies the header
            if self._store_prefixes and not change.key.startswith(self._store_prefixes):
                continue
            if change.value is None:
                log.debug("entry record %s of MD %s was removed", change.key, md.address)
                continue
            try:
                header, _ = await md.client._header(md.address)
                record = Record(change.key, change.value, change.revision)
                entry = md._open(header, record, None, live=True)
            except (TamperedDataError, NoSuchDataError, PermissionDeniedError):
                continue
            if entry is not None and (not self._prefixes or entry.key.startswith(self._prefixes)):
                return entry

    async def close(self) -> None:
        await self._watch.close()
