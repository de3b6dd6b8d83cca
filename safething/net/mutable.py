"""MutableData: a handle on one MD, its entries read verified and written signed.

Get one from :meth:`safething.net.Client.md` or :meth:`~safething.net.Client.create_md`;
the record types it reads and writes (addresses, headers, entry records) are
in :mod:`safething.net.records`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Self

from safething.errors import (
    AbortedWriteError,
    ConflictError,
    EntryExistsError,
    GuardFailedError,
    LimitExceededError,
    NoSuchDataError,
    NoSuchEntryError,
    PermissionDeniedError,
    TamperedDataError,
)
from safething.net.keys import PublicSignKey, SecretKey
from safething.net.permissions import Action, Grantee, PermissionSet
from safething.net.records import MAX_ENTRIES as _MAX_ENTRIES
from safething.net.records import MAX_MD_BYTES as _MAX_MD_BYTES
from safething.net.records import Entry as _Entry
from safething.net.records import EntryRecord as _EntryRecord
from safething.net.records import MDAddress as _MDAddress
from safething.net.records import MDHeader as _MDHeader
from safething.net.records import PrivateCodec as _PrivateCodec
from safething.net.records import batches as _batches
from safething.net.records import check_entry_key as _check_entry_key
from safething.net.records import needed_action as _needed_action
from safething.net.records import record_digest as _record_digest
from safething.resource import AsyncResource
from safething.store.base import Change, Guard, Quota, Record, Watch, Write

if TYPE_CHECKING:
    from safething.net.client import Client

__all__ = ["EntryWatch", "MutableData", "as_bytes"]

log = logging.getLogger("safething.net")

_MAX_RETRIES = 32
_SCAN_THRESHOLD = 32


def as_bytes(value: bytes | bytearray | memoryview | str, what: str = "value") -> bytes:
    """Accept the plain strings a user would write; everything else must be bytes."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


class MutableData:
    """A handle on one MD. Get it from :meth:`Client.md` or :meth:`Client.create_md`."""

    def __init__(self, client: Client, address: _MDAddress, secret: SecretKey | None) -> None:
        self.client = client
        self.address = address
        self.secret = secret
        """The private MD's key (``None`` for public MDs or when unknown)."""
        self._codec = _PrivateCodec(secret) if secret is not None else None
        self._quota = Quota(address.entry_prefix, _MAX_ENTRIES, _MAX_MD_BYTES)
        """The MD's limits, checked by the store with every write (one object per handle,
        not one per write)."""

    def __repr__(self) -> str:
        return f"MutableData({self.address})"

    # --- header ------------------------------------------------------------------

    async def header(self) -> _MDHeader:
        """The current header, verified."""
        header, _ = await self.client._header(self.address)
        return header

    async def exists(self) -> bool:
        return await self.client.store.get(self.address.header_key) is not None

    async def set_permissions(self, grantee: Grantee, actions: Action | str) -> _MDHeader:
        """Grant ``grantee`` exactly ``actions`` (``Action.NONE`` revokes). Owners only."""
        for _ in range(_MAX_RETRIES):
            header, revision = await self.client._header(self.address)
            new = self._signed_header(header, header.permissions.with_grant(grantee, actions))
            try:
                await self.client.store.update(self.address.header_key, new.to_bytes(), revision)
            except ConflictError:
                continue
            return self.client._accept_header(self.address, new, new.to_bytes(), signed_here=True)
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
            header = _MDHeader.create(
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
                version = max(version, _MDHeader.from_bytes(record.value, self.address).version)
        me = client._writer()
        if not header.is_owner(me.public_sign_key):
            raise PermissionDeniedError(f"only an owner of MD {self.address} can repair it")
        new = _MDHeader.create(
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
        client._accept_header(self.address, new, new.to_bytes(), signed_here=True)
        pins.refused = b""
        log.warning("MD %s: wrote the trusted header again (version %d)", self.address, version + 1)
        return True

    def _signed_header(self, header: _MDHeader, permissions: PermissionSet) -> _MDHeader:
        me = self.client._writer()
        if not header.is_owner(me.public_sign_key):
            raise PermissionDeniedError(
                f"only an owner of MD {self.address} can change its permissions"
            )
        return _MDHeader.create(
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

    def _need_codec(self, header: _MDHeader) -> _PrivateCodec | None:
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
        self, header: _MDHeader, record: Record, expected: bytes | None, *, live: bool = False
    ) -> _Entry | None:
        """Decode and verify one stored entry; raise ``TamperedDataError`` if invalid.

        ``live`` (change feed): an entry older than one already seen is stale
        news, not an attack on this reader, and yields ``None``.
        """
        client = self.client
        codec = self._need_codec(header)
        digest = _record_digest(record.value)
        known = client._known.get(record.key)
        if known is not None and known[3] is header and known[2] == digest:
            # The very bytes this client verified or signed under this very header.
            entry = known[0]
            if not client._check_version(self.address, record.key, entry.version, stale_ok=live):
                return None
            client._remember(record.key, entry, record.revision, digest, header)
            return entry
        try:
            rec = _EntryRecord.from_bytes(record.value, self.address, expected)
            if self.address.entry_key(rec.stored_key) != record.key:
                raise TamperedDataError(
                    f"MD {self.address}: an entry record was stored under another key",
                    address=str(self.address),
                )
            rec.verify(self.address, header, verified=client._batches)
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
        entry = _Entry(key, value, rec.version, rec.signer)
        client._remember(record.key, entry, record.revision, digest, header)
        return entry

    async def get(self, key: bytes | str, *, include_deleted: bool = False) -> _Entry:
        """The verified entry under ``key``; ``NoSuchEntryError`` if absent (or deleted)."""
        raw_key = _check_entry_key(as_bytes(key, "key"))
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
    ) -> dict[bytes, _Entry]:
        """Every verified entry, by key.

        An invalid entry raises ``TamperedDataError``; with ``skip_tampered`` it is
        left out instead (and still logged and counted by the client).
        """
        header, _ = await self.client._header(self.address)
        result: dict[bytes, _Entry] = {}
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

    async def insert(self, key: bytes | str, value: bytes | str) -> _Entry:
        """Add a new entry (version 0); ``EntryExistsError`` if the key exists."""
        (entry,) = await self._write(
            {_check_entry_key(as_bytes(key, "key")): as_bytes(value)}, mode="insert"
        )
        return entry

    async def update(
        self, key: bytes | str, value: bytes | str, *, version: int | None = None
    ) -> _Entry:
        """Replace an existing entry's value.

        With ``version`` (the version you read), a concurrent change makes this
        raise ``ConflictError`` instead of overwriting it.
        """
        raw = _check_entry_key(as_bytes(key, "key"))
        (entry,) = await self._write({raw: as_bytes(value)}, mode="update", expect_version=version)
        return entry

    async def put(self, key: bytes | str, value: bytes | str) -> _Entry:
        """Insert or update, whichever applies."""
        return (await self.put_many({as_bytes(key, "key"): as_bytes(value)}))[0]

    async def put_many(
        self,
        items: Mapping[bytes | str, bytes | str],
        *,
        versions: Mapping[bytes | str, int | None] | None = None,
        atomic: bool = False,
        assume_new: Collection[bytes | str] = (),
    ) -> list[_Entry]:
        """Insert or update many entries, signed together (one signature for up to
        ``MAX_BATCH`` entries, see :mod:`safething.net.records`), committed in one batch.

        ``versions`` names, for some keys, the version you read (``None``: the
        key must not exist); any other raises ``ConflictError``. With
        ``atomic`` all entries are written or none is.

        ``assume_new``: keys you expect not to exist (a history slot written for
        the first time). One that this client holds no version of is not read
        first: it is written as new, and if the store has it after all the store
        refuses the write (compare-and-set), the key is read and verified, and the
        batch is decided again, as if it had been read.
        """
        clean = {_check_entry_key(as_bytes(k, "key")): as_bytes(v) for k, v in items.items()}
        expected = {as_bytes(k, "key"): v for k, v in (versions or {}).items()}
        unread = {as_bytes(k, "key") for k in assume_new}
        return await self._write(
            clean, mode="put", versions=expected, atomic=atomic, assume_new=unread
        )

    async def delete(self, key: bytes | str, *, version: int | None = None) -> _Entry:
        """Delete an entry (a signed tombstone at the next version)."""
        raw = _check_entry_key(as_bytes(key, "key"))
        (entry,) = await self._write({raw: None}, mode="delete", expect_version=version)
        return entry

    async def modify(
        self, key: bytes | str, change: Callable[[bytes | None], bytes | str]
    ) -> _Entry:
        """Read-modify-write with retries: ``change(old value or None) -> new value``.

        Concurrent modifiers never lose each other's updates.
        """
        raw = _check_entry_key(as_bytes(key, "key"))
        for _ in range(_MAX_RETRIES * 4):
            try:
                current: _Entry | None = await self.get(raw, include_deleted=True)
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
        assume_new: set[bytes] | None = None,
    ) -> list[_Entry]:
        client = self.client
        versions = versions or {}
        # keys not read before they are written (see put_many), until one conflicts
        unread = set() if assume_new is None else set(assume_new)
        me = client._writer()
        store = client.store
        quota = self._quota
        pending = dict(items)
        done: dict[bytes, _Entry] = {}
        for _attempt in range(_MAX_RETRIES):
            # The header this client last read from the store, if the store still holds
            # it: the commit's guard checks that it does, else the header is read again.
            kept = client._write_header(self.address)
            if kept is None:
                header, seen = await client._header(self.address)
            else:
                header, seen = kept
            try:
                codec = self._need_codec(header)
            except (PermissionDeniedError, TamperedDataError):
                if kept is None:
                    raise
                client._pin(self.address).seen = None  # refuse only on the store's header
                continue
            current = await self._current(header, list(pending), unread)
            writes: list[Write] = []
            planned: list[tuple[bytes, _Entry, str]] = []
            digests: list[bytes] = []
            signing: list[tuple[bytes, bytes | None, bytes | None, int]] = []
            targets: list[tuple[str, int]] = []
            recheck = False
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
                action = _needed_action(version, value is None)
                if not header.allows(me.public_sign_key, action):
                    if kept is not None:  # refuse only on the store's header (a new grant?)
                        recheck = True
                        break
                    raise PermissionDeniedError(
                        f"{me.public_sign_key.hex()[:16]}... may not "
                        f"{action.names()[0]} in MD {self.address}"
                    )
                stored_value = value if codec is None or value is None else codec.seal_value(value)
                sealed = None if codec is None else codec.seal_key(key)
                signing.append((stored, sealed, stored_value, version))
                targets.append((store_key, expect))
                planned.append((key, _Entry(key, value, version, me.public_sign_key), store_key))
            if recheck:
                client._pin(self.address).seen = None
                continue
            # One signature per batch of entries of this commit (see records.py).
            for part in _batches(len(signing)):
                records = _EntryRecord.create_batch(
                    self.address, signer=me.sign_key, entries=signing[part.start : part.stop]
                )
                for i, record in zip(part, records, strict=True):
                    data = record.to_bytes()
                    if len(data) > _MAX_MD_BYTES:
                        value = pending[planned[i][0]]
                        raise LimitExceededError(
                            f"value of {len(value or b'')} bytes is too large for one MD "
                            f"(limit {_MAX_MD_BYTES} bytes in total); store large data as "
                            "ImmutableData (put_blob) and keep its address here",
                            limit=_MAX_MD_BYTES,
                            actual=len(data),
                        )
                    writes.append(Write(targets[i][0], data, targets[i][1], quota))
                    digests.append(_record_digest(data))
            try:
                results = await store.commit(
                    writes, atomic=atomic, guard=Guard(self.address.header_key, seen)
                )
            except GuardFailedError:
                client._pin(self.address).seen = None  # read it (and check it) again
                continue
            retry: dict[bytes, bytes | None] = {}
            if atomic and any(isinstance(r, Exception) for r in results):
                for _, _, store_key in planned:
                    client._known.pop(store_key, None)
                refusal = next(
                    r
                    for r in results
                    if isinstance(r, Exception) and not isinstance(r, AbortedWriteError)
                )
                blind = self._unread_key(refusal, unread)
                if blind is not None:
                    unread.discard(blind)  # it exists after all: read it, decide again
                    continue
                if not isinstance(refusal, ConflictError) or versions or expect_version is not None:
                    raise refusal
                continue  # nothing was written: decide the whole batch again
            for (key, entry, store_key), digest, result in zip(
                planned, digests, results, strict=True
            ):
                if isinstance(result, ConflictError):
                    client._known.pop(store_key, None)
                    if self._unread_key(result, unread) == key:
                        unread.discard(key)  # it exists after all: read it, write again
                        retry[key] = pending[key]
                        continue
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
                        f"limits {_MAX_ENTRIES} entries / {_MAX_MD_BYTES} bytes; nothing of "
                        f"entry {key!r} was written",
                        limit=result.limit,
                        actual=result.actual,
                    ) from None
                elif isinstance(result, Exception):
                    raise result
                else:
                    client._check_version(self.address, store_key, entry.version)
                    client._remember(store_key, entry, result, digest, header)
                    done[key] = entry
            if not retry:
                return [done[k] for k in items]
            pending = retry
        raise ConflictError(self.address.entry_prefix, expected=0, current=0)

    def _unread_key(self, refusal: Exception, unread: set[bytes]) -> bytes | None:
        """The key of ``unread`` that ``refusal`` (a store's conflict) is about, if any."""
        if not isinstance(refusal, ConflictError) or not unread:
            return None
        for key in unread:
            if self.address.entry_key(self._stored_key(key)) == refusal.key:
                return key
        return None

    async def _current(
        self, header: _MDHeader, keys: list[bytes], unread: Collection[bytes] = ()
    ) -> dict[bytes, tuple[_Entry, int]]:
        """Verified current entries (and their store revisions) for ``keys``; those of
        ``unread`` that this client holds no version of are taken as absent."""
        store = self.client.store
        known = self.client._known
        result: dict[bytes, tuple[_Entry, int]] = {}
        wanted: dict[str, bytes] = {}
        for k in keys:
            store_key = self.address.entry_key(self._stored_key(k))
            if store_key in known:
                result[k] = known[store_key][:2]
            elif k not in unread:
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
                entry = _Entry(key, b"", seen, self.client._writer().public_sign_key)
            assert entry is not None
            result[key] = (entry, record.revision)
        return result

    async def purge(self, key: bytes | str) -> None:
        """Remove an entry's record from the store altogether (owners' housekeeping).

        Unlike :meth:`delete` this leaves no signed tombstone: use it for keys
        that are never reused (processed requests, expired states).
        """
        raw = _check_entry_key(as_bytes(key, "key"))
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
        return EntryWatch(self, watch, prefixes, header_in_feed=True)

    def watch_key(self, key: bytes, *, since: int | None = None) -> EntryWatch:
        """Verified changes of the entry ``key``: :meth:`watch` with ``prefixes=(key,)``,
        narrowed by the store where it can be.

        On a public MD the store watches that entry's record alone (an exact-key
        :meth:`~safething.store.Store.watch_pattern`), so writes to the MD's other
        entries neither wake the watch nor make it read the store's change log (a
        thing's status follower was woken by each of its attribute writes). A private
        MD's stored keys are sealed, and an empty key is no pattern: there it is
        :meth:`watch` itself, which also yields the entries whose key starts with
        ``key``. Either way every entry yielded is verified as :meth:`watch` verifies it.
        """
        if self.secret is not None or not key:
            return self.watch(since=since, prefixes=(key,))
        pattern = self.address.entry_key(key)
        return EntryWatch(self, self.client.store.watch_pattern(pattern, since=since), (key,))


class EntryWatch(AsyncResource):
    """Async iterator of verified :class:`Entry` changes of one MD.

    Each entry is verified against the MD's header as the store holds it (or the trusted
    one, if the stored one is refused). ``header_in_feed``: ``watch`` delivers the
    changes of the header record too (a watch of the whole MD), so the header is read
    once and again after each change of it, not for every entry; the store can delay a
    header change either way."""

    def __init__(
        self,
        md: MutableData,
        watch: Watch,
        prefixes: tuple[bytes, ...] = (),
        *,
        header_in_feed: bool = False,
    ) -> None:
        self._md = md
        self._watch = watch
        self._prefixes = prefixes
        self._header_in_feed = header_in_feed
        self._header: _MDHeader | None = None
        """The header read last, while no change of it came (``header_in_feed``)."""
        self._store_prefixes = (
            tuple(md.address.entry_prefix + p.hex() for p in prefixes)
            if prefixes and md.secret is None
            else ()
        )
        self.last_revision = 0
        """Store revision of the last change seen; resume with ``watch(since=...)``."""

    async def __aenter__(self) -> Self:
        await self._watch.__aenter__()  # a watch that starts asynchronously has started
        return self

    def __aiter__(self) -> AsyncIterator[_Entry]:
        return self

    async def __anext__(self) -> _Entry:
        md = self._md
        while True:
            change: Change = await self._watch.__anext__()
            self.last_revision = change.revision
            if change.key == md.address.header_key:
                self._header = None  # the next entry read re-verifies the header
                continue
            if self._store_prefixes and not change.key.startswith(self._store_prefixes):
                continue
            if change.value is None:
                log.debug("entry record %s of MD %s was removed", change.key, md.address)
                continue
            try:
                header = self._header
                if header is None:
                    header, _ = await md.client._header(md.address)
                    if self._header_in_feed:
                        self._header = header
                record = Record(change.key, change.value, change.revision)
                entry = md._open(header, record, None, live=True)
            except (TamperedDataError, NoSuchDataError, PermissionDeniedError):
                continue
            if entry is not None and (not self._prefixes or entry.key.startswith(self._prefixes)):
                return entry

    async def close(self) -> None:
        await self._watch.close()


_RECORD_NAMES = frozenset(
    {
        "MAX_ENTRIES",
        "MAX_ENTRY_KEY_BYTES",
        "MAX_MD_BYTES",
        "MAX_TAG",
        "RESERVED_TAG_MAX",
        "TAG_PUBLIC_ID",
        "TAG_SERVICE",
        "TAG_THING",
        "Entry",
        "EntryRecord",
        "MDAddress",
        "MDHeader",
        "PrivateCodec",
        "check_entry_key",
        "needed_action",
    }
)


def __getattr__(name: str) -> object:
    """The record types used to live here: still importable, with a warning."""
    if name in _RECORD_NAMES:
        import warnings

        from safething.net import records

        warnings.warn(
            f"safething.net.mutable.{name} is now safething.net.records.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
