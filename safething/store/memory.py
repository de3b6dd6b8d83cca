"""``memory://``: a store in plain dicts, for tests and for trying things out.

Nothing survives the process. The semantics are those of every backend
(see :mod:`safething.store.base`): store-wide revisions, compare-and-set,
quotas checked atomically with the write, a change feed with replay.

A write runs to completion without awaiting anything, so a batch is atomic
with respect to every other task on the event loop. The change log keeps the
last :attr:`MemoryStore.change_log_size` changes for ``watch(since=...)``;
since every accepted write takes the next revision, the log is a list whose
index follows from the revision. Watches pull from the log when their
consumer asks for the next change, so a slow consumer never makes the store
buffer anything beyond the bounded log. An index from every prefix of a
live key to the keys under it keeps ``scan``, ``usage`` and quota checks
proportional to the prefix, not to the whole store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from safething.errors import (
    AbortedWriteError,
    ConflictError,
    GuardFailedError,
    LimitExceededError,
    StoreError,
)
from safething.store.base import (
    Change,
    Guard,
    Quota,
    Record,
    Store,
    StoreInfo,
    Watch,
    Write,
    check_key,
    check_prefix,
    key_prefixes,
)
from safething.store.feed import FeedWatch, WatchSet
from safething.store.quota import add_effect, enforce

__all__ = ["MemoryStore"]

_FETCH_LIMIT = 512
"""Most changes a watch takes from the log at once."""

_SAFETY_NET_S = 1.0
"""A waiting watch looks at the log at least this often, even without a wake-up."""


def _check_chunk_address(address: str) -> str:
    if not isinstance(address, str) or not address:
        raise ValueError(f"invalid chunk address {address!r}: use a non-empty string")
    return address


class MemoryStore(Store):
    """A store held in this process's memory.

    ``MemoryStore("memory://")``; every instance is a separate, empty store.
    """

    change_log_size: int = 100_000
    """How many recent changes ``watch(since=...)`` can replay."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._records: dict[str, Record] = {}
        self._index: dict[str, set[str]] = {}
        """Every prefix (``"a."``, ``"a.b."``...) of a live key -> the keys under it."""
        self._chunks: dict[str, bytes] = {}
        self._revision = 0
        self._log: list[Change] = []
        self._watches = WatchSet()
        self._closed = False

    # --- records ---------------------------------------------------------------

    async def get(self, key: str) -> Record | None:
        check_key(key)
        self._check_open()
        return self._records.get(key)

    async def commit(
        self, writes: Sequence[Write], *, atomic: bool = False, guard: Guard | None = None
    ) -> list[int | Exception]:
        self._check_open()
        for write in writes:
            if not isinstance(write, Write):
                raise TypeError(f"commit takes Write objects, not {type(write).__name__}")
        if guard is not None and not guard.holds(self._records.get(guard.key)):
            raise GuardFailedError(guard.key)
        usage: dict[str, list[int]] = {}
        results: list[int | Exception] = []
        undo: list[tuple[str, Record | None]] = []
        revision_before = self._revision
        for write in writes:
            undo.append((write.key, self._records.get(write.key)))
            try:
                results.append(self._apply(write, usage))
            except (ConflictError, LimitExceededError) as e:
                results.append(e.with_traceback(None))  # an outcome: no frames held in a cycle
        if atomic and any(isinstance(r, Exception) for r in results):
            applied = sum(1 for r in results if isinstance(r, int) and r > 0)
            self._undo(undo, revision_before, applied)
            return [
                r if isinstance(r, Exception) else AbortedWriteError(w.key)
                for r, w in zip(results, writes, strict=True)
            ]
        self._watches.wake_for(w.key for w in writes)
        return results

    def _undo(self, undo: list[tuple[str, Record | None]], revision: int, applied: int) -> None:
        """Put back what an aborted atomic batch changed (nothing was announced yet)."""
        for key, old in reversed(undo):
            now = self._records.get(key)
            if old is None and now is not None:
                del self._records[key]
                for prefix in key_prefixes(key):
                    keys = self._index.get(prefix)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del self._index[prefix]
            elif old is not None:
                self._records[key] = old
                if now is None:
                    for prefix in key_prefixes(key):
                        self._index.setdefault(prefix, set()).add(key)
        self._revision = revision
        if applied:  # each applied write appended one change; trims only cut the front
            del self._log[-applied:]

    def _apply(self, write: Write, usage: dict[str, list[int]]) -> int:
        old = self._records.get(write.key)
        current = old.revision if old is not None else 0
        if write.expect is not None and write.expect != current:
            raise ConflictError(write.key, expected=write.expect, current=current)
        if write.value is None and old is None:
            return 0
        old_len = len(old.value) if old is not None else -1
        new_len = len(write.value) if write.value is not None else -1
        if write.quota is not None:
            self._check_quota(write.quota, write.key, old_len, new_len, usage)
        self._revision += 1
        revision = self._revision
        if write.value is None:
            del self._records[write.key]
            for prefix in key_prefixes(write.key):
                keys = self._index[prefix]
                keys.discard(write.key)
                if not keys:
                    del self._index[prefix]
        else:
            self._records[write.key] = Record(write.key, write.value, revision)
            if old is None:
                for prefix in key_prefixes(write.key):
                    self._index.setdefault(prefix, set()).add(write.key)
        for prefix, counts in usage.items():
            if write.key.startswith(prefix):
                add_effect(counts, old_len, new_len)
        self._log.append(Change(write.key, write.value, revision))
        if len(self._log) >= 2 * self.change_log_size:
            del self._log[: len(self._log) - self.change_log_size]
        return revision

    def _check_quota(
        self, quota: Quota, key: str, old_len: int, new_len: int, usage: dict[str, list[int]]
    ) -> None:
        counts = usage.get(quota.prefix)
        if counts is None:
            counts = list(self._usage(quota.prefix))
            usage[quota.prefix] = counts
        after = list(counts)
        if key.startswith(quota.prefix):
            add_effect(after, old_len, new_len)
        enforce(quota, counts, after)

    async def scan(self, prefix: str) -> list[Record]:
        check_prefix(prefix)
        self._check_open()
        return [self._records[k] for k in sorted(self._keys_under(prefix))]

    async def usage(self, prefix: str) -> tuple[int, int]:
        check_prefix(prefix)
        self._check_open()
        return self._usage(prefix)

    def _keys_under(self, prefix: str) -> Collection[str]:
        return self._records.keys() if prefix == "" else self._index.get(prefix, ())

    def _usage(self, prefix: str) -> tuple[int, int]:
        keys = self._keys_under(prefix)
        return len(keys), sum(len(self._records[k].value) for k in keys)

    def watch(self, prefix: str, *, since: int | None = None) -> Watch:
        check_prefix(prefix)
        self._check_open()
        if since is not None and since < 0:
            raise ValueError("since must be None or a revision >= 0")
        watch = _MemoryWatch(self, prefix, self._revision if since is None else since)
        self._watches.add(watch)
        return watch

    # --- change log, as watches see it -------------------------------------------

    def _changes_after(self, prefix: str, after: int) -> tuple[list[Change], int]:
        """Changes under ``prefix`` above revision ``after`` (a bounded batch), and
        the revision the caller has seen once it has taken them."""
        if after >= self._revision:
            return [], after
        changes: list[Change] = []
        first = self._log[0].revision if self._log else self._revision + 1
        if after + 1 < first:
            # The log no longer reaches back that far: the current value of
            # every record written in the gap stands in for its lost history.
            changes = sorted(
                (
                    Change(r.key, r.value, r.revision)
                    for r in self._records.values()
                    if after < r.revision < first and r.key.startswith(prefix)
                ),
                key=lambda c: c.revision,
            )
            after = first - 1
        index = after + 1 - first
        while index < len(self._log) and len(changes) < _FETCH_LIMIT:
            change = self._log[index]
            if change.key.startswith(prefix):
                changes.append(change)
            index += 1
        return changes, first - 1 + index

    def _at_end(self, position: int) -> bool:
        """Whether a feed at ``position`` has read the last change."""
        return position >= self._revision

    # --- immutable chunks ------------------------------------------------------

    async def put_chunk(self, address: str, data: bytes) -> None:
        _check_chunk_address(address)
        if not isinstance(data, bytes):
            raise TypeError("a chunk must be bytes")
        self._check_open()
        self._chunks.setdefault(address, data)

    async def get_chunk(self, address: str) -> bytes | None:
        _check_chunk_address(address)
        self._check_open()
        return self._chunks.get(address)

    # --- housekeeping ----------------------------------------------------------

    async def info(self) -> StoreInfo:
        self._check_open()
        count, size = self._usage("")
        return StoreInfo(
            url=self.url,
            backend="memory",
            records=count,
            record_bytes=size,
            chunks=len(self._chunks),
            chunk_bytes=sum(len(c) for c in self._chunks.values()),
            revision=self._revision,
        )

    async def close(self) -> None:
        self._closed = True
        for watch in list(self._watches):
            await watch.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")


class _MemoryWatch(FeedWatch):
    def __init__(self, store: MemoryStore, prefix: str, after: int) -> None:
        super().__init__(prefix, after, interval=_SAFETY_NET_S)
        self._store = store

    def _fetch(self, prefix: str, after: int) -> tuple[list[Change], int]:
        changes, after = self._store._changes_after(prefix, after)
        self._caught_up = self._store._at_end(after)
        return changes, after

    def _release(self) -> None:
        self._store._watches.discard(self)
