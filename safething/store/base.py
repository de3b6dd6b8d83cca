"""The contract every store backend fulfils.

A store is an untrusted, dumb key-value space with compare-and-set, a change
feed and a chunk store. It never interprets values: signing, encryption and
verification live in :mod:`safething.net`. A store that lies can drop or
withhold data; it cannot make a reader accept forged data.

Keys are ASCII tokens separated by ``.`` (``md.27417.<hex>.e.<hex>``), so
that every backend, NATS key-value included, can hold them and watch a
prefix. Revisions are positive integers, strictly increasing across the
whole store (like a NATS stream sequence); ``0`` means "no record".
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Self

from safething.resource import AsyncResource

__all__ = [
    "MAX_KEY_LENGTH",
    "Change",
    "Guard",
    "Quota",
    "Record",
    "Store",
    "StoreInfo",
    "Watch",
    "Write",
    "check_key",
    "check_pattern",
    "check_prefix",
]

MAX_KEY_LENGTH = 1024
"""Longest key a store accepts, in characters."""

_KEY_RE = re.compile(r"^[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*$")


def _valid_key(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and _KEY_RE.match(key) is not None


_valid_recent = functools.lru_cache(maxsize=4096)(_valid_key)
"""The same keys are checked over and over (a reading's pointer, slot and header, in
each ``Write``, ``Guard`` and ``get``): the answer for a plain ``str`` of a key's length
is remembered (4,096 keys of at most 1,024 characters)."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise ``ValueError``."""
    if type(key) is str and len(key) <= MAX_KEY_LENGTH:
        valid = _valid_recent(key)
    else:
        valid = isinstance(key, str) and _valid_key(key)
    if not valid:
        raise ValueError(
            f"invalid store key {key!r}: use tokens of [A-Za-z0-9_=-] separated by '.', "
            f"at most {MAX_KEY_LENGTH} characters"
        )
    return key


def key_prefixes(key: str) -> Iterator[str]:
    """Every prefix of ``key`` that ends in ``.``: ``"a.b.c"`` -> ``"a."``, ``"a.b."``."""
    end = key.find(".")
    while end != -1:
        yield key[: end + 1]
        end = key.find(".", end + 1)


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is ``""`` or a valid key followed by ``.``."""
    if prefix == "":
        return prefix
    if not prefix.endswith("."):
        raise ValueError(f"invalid prefix {prefix!r}: a prefix ends with '.' (or is empty)")
    check_key(prefix[:-1])
    return prefix


_PATTERN_RE = re.compile(r"^([A-Za-z0-9_=-]+|\*)(\.([A-Za-z0-9_=-]+|\*))*$")


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid key pattern (see :meth:`Store.watch_pattern`)."""
    if (
        not isinstance(pattern, str)
        or len(pattern) > MAX_KEY_LENGTH
        or not _PATTERN_RE.match(pattern)
    ):
        raise ValueError(
            f"invalid key pattern {pattern!r}: use tokens of [A-Za-z0-9_=-] or '*' "
            f"separated by '.', at most {MAX_KEY_LENGTH} characters"
        )
    return pattern


def pattern_prefix(pattern: str) -> str:
    """The longest prefix (ending in ``.``, or ``""``) every key matching ``pattern`` has."""
    tokens = pattern.split(".")[:-1]
    literal = tokens[: tokens.index("*")] if "*" in tokens else tokens
    return "".join(t + "." for t in literal)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regular expression matching exactly the keys that match ``pattern``."""
    tokens = ("[A-Za-z0-9_=-]+" if t == "*" else re.escape(t) for t in pattern.split("."))
    return re.compile(r"\.".join(tokens) + r"\Z")


@dataclass(frozen=True, slots=True)
class Record:
    """A value as the store holds it now."""

    key: str
    """The record's key."""
    value: bytes
    """The stored bytes, uninterpreted."""
    revision: int
    """Store-wide revision of the write that produced this value (> 0)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change, as a watcher sees it."""

    key: str
    """The key that changed."""
    value: bytes | None
    """The new value, or ``None`` when the record was deleted."""
    revision: int
    """Store-wide revision of the change."""

    @property
    def deleted(self) -> bool:
        """True when the change removed the record."""
        return self.value is None


@dataclass(frozen=True, slots=True)
class Quota:
    """A limit on all records under a prefix, checked atomically with a write.

    Counting and summing happen inside the store's transaction, so two
    writers racing for the last free slot cannot both get it.
    """

    prefix: str
    """Records whose key starts with this prefix (ending in ``.``) count."""
    max_count: int
    """Most records allowed under the prefix after the write."""
    max_bytes: int
    """Most bytes (sum of ``len(value)``) allowed under the prefix after the write."""

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if self.max_count < 0 or self.max_bytes < 0:
            raise ValueError("quota limits must not be negative")


@dataclass(frozen=True, slots=True)
class Write:
    """One write in a batch passed to :meth:`Store.commit`."""

    key: str
    """The key to write."""
    value: bytes | None
    """New value, or ``None`` to delete the record."""
    expect: int | None = 0
    """Compare-and-set condition: ``0`` = the key must not exist (create),
    ``n > 0`` = its revision must be ``n``, ``None`` = unconditional."""
    quota: Quota | None = None
    """Optional limit checked atomically with this write."""

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.value is not None and not isinstance(self.value, bytes):
            raise TypeError("a store value must be bytes")
        if self.expect is not None and self.expect < 0:
            raise ValueError("expect must be None, 0 or a positive revision")


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition on one record that a commit checks before it writes anything.

    A writer that decided its writes on a record it read (an MD's header) names
    that record and the revision it read: if the record is at any other revision
    when the commit is applied (it was rewritten, deleted, or created), nothing of
    the commit is written and it raises :class:`~safething.errors.GuardFailedError`;
    the writer reads the record again and decides anew. (A store that rewrites a
    record in place and keeps its revision passes the guard; a writer that guards
    its writes by a header it verified then still writes under that header, and
    the next read of the header checks the new bytes.)
    """

    key: str
    """The record the writes were decided on."""
    revision: int
    """The revision it must still be at; ``0``: it must not exist."""

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.revision < 0:
            raise ValueError("a guard's revision must be 0 (absent) or positive")

    def holds(self, record: Record | None) -> bool:
        """True when ``record`` (the current one, or ``None``) is what the guard expects."""
        return (0 if record is None else record.revision) == self.revision


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What ``safething vault info`` shows."""

    url: str
    """URL the store was opened with."""
    backend: str
    """Backend name: ``memory``, ``sqlite``, ``nats``."""
    records: int
    """Number of live records."""
    record_bytes: int
    """Sum of the live records' value sizes."""
    chunks: int
    """Number of immutable chunks."""
    chunk_bytes: int
    """Sum of the chunks' sizes."""
    revision: int
    """Latest store-wide revision (0 for an empty store)."""
    file_bytes: int | None = None
    """Size on disk, for file-backed stores."""


class Watch(AsyncResource, ABC):
    """A live feed of changes under a prefix: an async iterator and context manager.

    ``async with store.watch("md.27417.") as changes: async for c in changes: ...``
    Changes arrive in revision order. A watcher that falls behind may see only
    the latest value of a key that changed several times (as NATS KV watch),
    never an older value after a newer one. Leaving the ``async with`` block
    (or calling :meth:`close`) stops the feed and frees its resources.
    """

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Change]: ...

    @abstractmethod
    async def __anext__(self) -> Change: ...

    @abstractmethod
    async def close(self) -> None:
        """Stop the feed; a pending ``__anext__`` ends with ``StopAsyncIteration``."""


class Store(AsyncResource, ABC):
    """Abstract store. Open one with :func:`safething.store.open_store`.

    All methods are coroutines except :meth:`watch`, which returns a
    :class:`Watch` at once. Errors: :class:`~safething.errors.ConflictError`
    for a lost compare-and-set, :class:`~safething.errors.LimitExceededError`
    for a quota, :class:`~safething.errors.StoreError` for I/O failures,
    ``ValueError`` for a malformed key.
    """

    url: str
    """The URL this store was opened with."""

    # --- records ---------------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> Record | None:
        """The record under ``key``, or ``None``."""

    async def create(self, key: str, value: bytes, *, quota: Quota | None = None) -> int:
        """Write a new record; raise ``ConflictError`` if the key exists. Returns the revision."""
        return self._one(await self.commit([Write(key, value, 0, quota)]))

    async def update(
        self, key: str, value: bytes, revision: int, *, quota: Quota | None = None
    ) -> int:
        """Replace the record if its revision is ``revision``; else ``ConflictError``."""
        if revision <= 0:
            raise ValueError("update needs the record's current revision (> 0)")
        return self._one(await self.commit([Write(key, value, revision, quota)]))

    async def put(self, key: str, value: bytes, *, quota: Quota | None = None) -> int:
        """Write unconditionally (last writer wins). Returns the revision."""
        return self._one(await self.commit([Write(key, value, None, quota)]))

    async def delete(self, key: str, revision: int | None = None) -> int:
        """Delete the record (if at ``revision`` when given). Returns the change's
        revision, or 0 when there was nothing to delete and no revision was given."""
        return self._one(await self.commit([Write(key, None, revision)]))

    @abstractmethod
    async def commit(
        self, writes: Sequence[Write], *, atomic: bool = False, guard: Guard | None = None
    ) -> list[int | Exception]:
        """Apply several writes in one transaction, in order, each on its own terms.

        Returns one item per write: the new revision, or the exception
        (``ConflictError``, ``LimitExceededError``) that refused that write; a
        refused write does not stop the others. With ``atomic=True`` it is all
        or nothing: if one write is refused, none is applied and the others
        report ``AbortedWriteError``. Everything accepted is durable when this
        returns. A delete of a missing key without condition yields 0.

        With a ``guard`` nothing is written unless its record holds the bytes it
        names (:class:`Guard`): else ``GuardFailedError`` is raised. The SQLite
        and memory stores check it in the commit's transaction; a store that
        cannot (NATS) reads the record just before it commits.
        """

    @abstractmethod
    async def scan(self, prefix: str) -> list[Record]:
        """All records whose key starts with ``prefix``, in key order."""

    async def keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix``, in order."""
        return [r.key for r in await self.scan(prefix)]

    @abstractmethod
    async def usage(self, prefix: str) -> tuple[int, int]:
        """``(count, bytes)`` of the records under ``prefix``."""

    @abstractmethod
    def watch(self, prefix: str, *, since: int | None = None) -> Watch:
        """Feed of changes under ``prefix`` committed after the call.

        With ``since``, first replay the changes with a revision above
        ``since`` that the store still remembers (catch-up after a restart),
        then continue live, without gaps or duplicates between the two.
        """

    def watch_pattern(self, pattern: str, *, since: int | None = None) -> Watch:
        """Feed of changes to the keys matching ``pattern``: tokens separated by ``.``,
        ``*`` standing for any one token (``md.27417.*.e.737461747573``: the entry
        ``status`` of every MD of tag 27417). Order, catch-up and ``since`` as in
        :meth:`watch`; the feed delivers nothing else.

        One such watch can stand in for thousands of narrow ones (a gateway's things,
        :class:`~safething.store.fanout.WatchFanout`). This default watches the
        pattern's literal prefix and drops the other keys as they come; a backend that
        can filter where the data is (NATS, by subject) overrides it.
        """
        check_pattern(pattern)
        return _PatternWatch(
            self.watch(pattern_prefix(pattern), since=since), pattern_regex(pattern)
        )

    # --- immutable chunks ------------------------------------------------------

    @abstractmethod
    async def put_chunk(self, address: str, data: bytes) -> None:
        """Store an immutable chunk under ``address`` (idempotent)."""

    @abstractmethod
    async def get_chunk(self, address: str) -> bytes | None:
        """The chunk under ``address``, or ``None``. Callers verify the content."""

    # --- housekeeping ----------------------------------------------------------

    @abstractmethod
    async def info(self) -> StoreInfo:
        """Counts and sizes for ``safething vault info``."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections, threads and watchers. Idempotent."""

    @staticmethod
    def _one(results: list[int | Exception]) -> int:
        (result,) = results
        if isinstance(result, Exception):
            raise result
        return result


class _PatternWatch(Watch):
    """The changes of a prefix watch whose key matches a pattern."""

    def __init__(self, inner: Watch, regex: re.Pattern[str]) -> None:
        self._inner = inner
        self._match = regex.match

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        while True:
            change = await self._inner.__anext__()
            if self._match(change.key):
                return change

    async def close(self) -> None:
        await self._inner.close()
