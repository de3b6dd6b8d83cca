"""The network client: MutableData over an untrusted store, verified on every read.

``Client(store, identity)`` creates and opens MDs; a :class:`~safething.net.mutable.MutableData`
handle reads and writes entries. Writers sign; the store only does
compare-and-set; readers verify everything and never return data that fails
(see :mod:`safething.net.records` for the rules).

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

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from safething.errors import (
    ConflictError,
    EntryExistsError,
    NoSuchDataError,
    PermissionDeniedError,
    RolledBackError,
    SafeThingError,
    TamperedDataError,
)
from safething.net.identity import Identity
from safething.net.keys import PublicSignKey, SecretKey, check_key_type
from safething.net.mutable import MutableData as _MutableData
from safething.net.permissions import Action, Grantee, PermissionSet
from safething.net.records import (
    Entry,
    MDAddress,
    MDHeader,
    VerifiedBatches,
)
from safething.net.trust import HeaderState, TrustState
from safething.net.xorname import XorName
from safething.resource import AsyncResource
from safething.store.base import Store, Write

__all__ = ["Client"]

log = logging.getLogger("safething.net")

_KNOWN_MAX = 20_000


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
    seen: tuple[bytes, int] | None = None
    """The stored header and its revision as :meth:`Client._header` last read them (it
    decided on exactly these bytes, accepted or refused); a writer's commit is guarded
    by that revision."""


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
        # store key -> (verified or self-written entry, store revision, digest of the
        # record's bytes, the header it was valid under). The revision is only the
        # compare-and-set expectation of the next write: if anyone else wrote since, the
        # store refuses the write and the writer re-reads and re-verifies. The digest
        # and the header let a read of the very same bytes under the very same header
        # skip the signature check (what was valid then is valid now).
        self._known: dict[str, tuple[Entry, int, bytes, MDHeader | None]] = {}
        # Batch signatures this client checked: the other entries of a batch (a
        # reading's sequence pointer and history slot) then cost no signature check.
        self._batches = VerifiedBatches()

    async def close(self) -> None:
        """Close the store this client uses."""
        await self.store.close()

    def _remember(
        self,
        store_key: str,
        entry: Entry,
        revision: int,
        digest: bytes = b"",
        header: MDHeader | None = None,
    ) -> None:
        """Keep ``entry``, read or written at ``revision``; ``digest`` (of the record's
        bytes) and ``header`` only when this client verified or signed those bytes and
        ``header`` allowed them."""
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[store_key] = (entry, revision, digest, header)

    # --- MDs ----------------------------------------------------------------------

    def md(
        self,
        name: XorName | str | bytes,
        tag: int,
        *,
        secret: SecretKey | None = None,
        owner: PublicSignKey | None = None,
        owners: tuple[PublicSignKey, ...] | None = None,
    ) -> _MutableData:
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
                self._check_pinned_owners(address)
        if secret is not None:
            check_key_type(secret, SecretKey, "secret")
        return _MutableData(self, address, secret)

    async def create_md(
        self,
        name: XorName | str | bytes,
        tag: int,
        *,
        private: bool = False,
        permissions: PermissionSet | Mapping[Grantee, Action | str] | None = None,
        owners: tuple[PublicSignKey, ...] | None = None,
        secret: SecretKey | None = None,
    ) -> _MutableData:
        """Create an MD owned by this identity (and ``owners``);
        ``EntryExistsError`` if the address is taken.

        A private MD gets a fresh ``secret`` unless one is given; read it back
        from ``md.secret`` and keep it: without it the data is unreadable.
        """
        if private and secret is None:
            secret = SecretKey.generate()
        (md,) = await self._create_mds([(name, tag, permissions)], owners, private, secret)
        if md is None:
            raise EntryExistsError(f"an MD already exists at {MDAddress(XorName.parse(name), tag)}")
        return md

    async def create_mds(
        self,
        specs: Sequence[
            tuple[XorName | str | bytes, int, PermissionSet | Mapping[Grantee, Action | str] | None]
        ],
        *,
        owners: tuple[PublicSignKey, ...] | None = None,
    ) -> list[_MutableData | None]:
        """Create several public MDs, each ``(name, tag, permissions)``, owned by this
        identity (and ``owners``), in one store commit; ``None`` for each address that
        was taken (as :meth:`create_md` raises ``EntryExistsError``)."""
        return await self._create_mds(specs, owners, False, None)

    async def _create_mds(
        self,
        specs: Sequence[
            tuple[XorName | str | bytes, int, PermissionSet | Mapping[Grantee, Action | str] | None]
        ],
        owners: tuple[PublicSignKey, ...] | None,
        private: bool,
        secret: SecretKey | None,
    ) -> list[_MutableData | None]:
        me = self._writer()
        all_owners = tuple({me.public_sign_key, *(owners or ())})
        for o in all_owners:
            check_key_type(o, PublicSignKey, "owner")
        headers: list[tuple[MDAddress, MDHeader, bytes]] = []
        for name, tag, permissions in specs:
            address = MDAddress(XorName.parse(name), tag)
            if isinstance(permissions, PermissionSet):
                perms = permissions
            else:
                perms = PermissionSet({g: Action.parse(a) for g, a in (permissions or {}).items()})
            header = MDHeader.create(
                address,
                signer=me.sign_key,
                owners=all_owners,
                permissions=perms,
                version=0,
                private=private,
            )
            headers.append((address, header, header.to_bytes()))
        results = await self.store.commit(
            [Write(address.header_key, raw, 0) for address, _, raw in headers]
        )
        # What the trust state holds of the MDs created (each checked below), in two
        # queries, not two for each MD.
        made = [a for (a, _, _), r in zip(headers, results, strict=True) if isinstance(r, int)]
        self.trust.preload_all([a.entry_prefix for a in made if a.header_key not in self._pins])
        self.trust.load_headers([a.header_key for a in made])
        created: list[_MutableData | None] = []
        for (address, header, raw), result in zip(headers, results, strict=True):
            if isinstance(result, ConflictError):
                created.append(None)
                continue
            if isinstance(result, Exception):
                raise result
            self._accept_header(address, header, raw, signed_here=True)
            # The store holds these very bytes at that revision (written just now), as if
            # read back: a first write needs no read of the header; its commit is guarded
            # by that revision (a header rewritten since is read again and checked then).
            self._pin(address).seen = (raw, result)
            created.append(_MutableData(self, address, secret if private else None))
        return created

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

    def _check_pinned_owners(self, address: MDAddress) -> None:
        """Raise ``TamperedDataError`` if the owners this client trusts for ``address``
        are not the ones pinned with ``md(owners=...)`` (what :meth:`md` checks; a caller
        that keeps the handle checks again each time it takes it)."""
        pins = self._pins.get(address.header_key)
        if pins is None or pins.exact_owners is None:
            return
        trusted = self.trust.header(address.header_key)
        if trusted is not None and trusted.owners != pins.exact_owners:
            raise TamperedDataError(
                f"MD {address}: the owners this client trusts are not the ones given",
                address=str(address),
            )

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

    def _check_header(
        self, address: MDAddress, header: MDHeader, raw: bytes, *, signed_here: bool = False
    ) -> None:
        """Raise ``TamperedDataError`` unless ``header`` may follow the trusted one.

        ``signed_here``: this client has just signed ``header`` itself (as an owner,
        checked before signing), so its signature is not checked again."""
        where = str(address)
        pins = self._pin(address)
        if not signed_here:
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

    def _accept_header(
        self, address: MDAddress, header: MDHeader, raw: bytes, *, signed_here: bool = False
    ) -> MDHeader:
        """Verify ``header`` against signatures and what this client trusts; remember it.
        ``signed_here``: see :meth:`_check_header`."""
        pins = self._pin(address)
        if raw == pins.header_bytes and pins.header is not None:
            return pins.header
        try:
            self._check_header(address, header, raw, signed_here=signed_here)
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
        pins.seen = None
        header = self._decide_header(address, pins, record.value)
        pins.seen = (record.value, record.revision)
        return header, record.revision

    def _write_header(self, address: MDAddress) -> tuple[MDHeader, int] | None:
        """For a writer: the header :meth:`_header` would return if the store still held
        what it last read, and that record's revision; or None (read the store). The
        writer's commit is guarded by that revision (``Guard``): if the header was
        written since, nothing is written and the writer reads the header again (so a
        rewritten header is checked, and refused or counted, before the next write)."""
        pins = self._pin(address)
        if pins.seen is None:
            return None
        raw, revision = pins.seen
        if pins.header is not None and raw == pins.header_bytes:
            return pins.header, revision
        if raw == pins.refused:
            trusted = self._trusted_header(address)
            if trusted is not None:
                return trusted, revision
        return None

    def _decide_header(self, address: MDAddress, pins: _Pins, raw: bytes) -> MDHeader:
        """The header to use when the store holds ``raw``: it, once verified, or the
        trusted one if it is refused (raises if there is none)."""
        if pins.header is not None and pins.header_bytes == raw:
            return pins.header  # the very bytes verified before
        if raw == pins.refused:
            trusted = self._trusted_header(address)
            if trusted is not None:
                return trusted
        try:
            try:
                header = MDHeader.from_bytes(raw, address)
            except TamperedDataError as e:
                raise self._tampered(e) from None
            return self._accept_header(address, header, raw)
        except TamperedDataError:
            pins.refused = raw
            trusted = self._trusted_header(address)
            if trusted is None:
                raise
            return trusted

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


def __getattr__(name: str) -> object:
    if name in ("MutableData", "EntryWatch", "as_bytes"):
        import warnings

        warnings.warn(
            f"safething.net.client.{name} is now safething.net.mutable.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        from safething.net import mutable

        return getattr(mutable, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
