"""``sqlite:///path/vault.db``: the embedded default store, one SQLite file.

Several processes on one host, and several store objects in one process, may
open the same file at once; they share revisions, compare-and-set and the
change feed. Nothing but SQLite ever opens a file descriptor on an existing
database file (see :func:`_create_file`): closing one would drop the locks
of every connection of the process.

Layout (schema version in ``PRAGMA user_version``)::

    records(key TEXT PRIMARY KEY, value BLOB, rev INTEGER)   -- WITHOUT ROWID
    changes(seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, deleted INTEGER)
    chunks(address TEXT PRIMARY KEY, data BLOB)

The revision of a write *is* the ``changes.seq`` its transaction inserts: one
store-wide, monotonic counter shared by every process. ``AUTOINCREMENT``
guarantees a sequence number is never reused, even after the change log is
trimmed to its last :attr:`SQLiteStore.change_log_size` rows. Prefix queries
use the range ``prefix <= key < prefix_upper`` on the primary key; keys are
ASCII, ``'/'`` follows ``'.'``, so ``"a."`` ranges up to ``"a/"``.

Threads and connections
    Writes go to one writer thread that owns the only writing connection,
    so the event loop never waits for a lock. The commits made during one turn
    of the event loop are handed to it together at the end of that turn, and
    the thread takes every commit waiting in its queue (group commit) and runs
    them in one ``BEGIN IMMEDIATE`` transaction. A turn's only commit, when the
    thread is idle, is made on the loop itself on the same connection (an idle
    gateway's reading: no crossing to the thread and back), only if the file's
    write lock is free at once (else the thread waits for it) and never with a
    checkpoint (one such commit in 32 goes to the thread, whose commits
    checkpoint); its watches in this process are woken before its caller goes
    on, and take its changes as committed when they follow their cursors (they read
    the log after yielding them). A transaction reads the current revision of every
    key involved with a few ``IN`` queries, decides each write on its own
    in Python (compare-and-set, quota), then writes the accepted ones with
    ``executemany``. The lock is held throughout, so the decisions cannot
    go stale. Point reads (``get``, ``get_chunk``, the change feed) run on
    the event-loop thread on a second, query-only connection: in WAL mode a
    reader does not wait for writers, and a primary-key lookup costs a few
    microseconds, far less than a hop to a thread (about 40-100 us here).
    ``scan`` and ``usage`` first try on the loop with a ``LIMIT``; a prefix
    bigger than that is read again on a third connection in a reader thread,
    so a large prefix cannot stall the loop. Every statement is stepped to
    its end, which ends its read transaction: each read sees every commit
    that returned before it. A ``commit`` whose caller is cancelled may
    still be applied.

Change feed across processes
    A watch does not poll at a fixed rate and no task runs in the
    background: when its consumer asks for the next change and none is
    buffered, it reads ``changes LEFT JOIN records`` for sequence numbers
    above the last it has seen, under its prefix, and only if that is empty
    does it wait for a wake-up. Each record carries the revision of its
    latest write, so a change whose key was rewritten since is skipped (the
    later change delivers the newer value) and the feed never goes back in
    time. Wake-ups come from three places:

    * the writer thread of this store, right after its transactions commit;
    * other store objects and processes: a store with watches binds an
      ``AF_UNIX`` datagram socket ``<db>.notify/<pid>-<random>.sock``
      (directory mode 0700) and reads it with ``loop.add_reader``; after a
      commit, each writer sends one byte to every socket in that directory.
      The writer holds the directory open, caches the listing and re-reads
      it when the directory's mtime (``fstat``) changes (or changed too
      recently to trust a coarse clock); it looks the path up again when the
      directory was removed, a socket was gone, or a second passed; a
      socket nobody has bound any more (``ECONNREFUSED``: its process died)
      is unlinked. A full socket buffer already holds a wake-up, so
      ``EAGAIN`` is ignored. Long paths are reached through
      ``/proc/self/fd/<dirfd>/``;
    * a safety-net timer, one per store object with watches: every second it
      reads the keys changed since its last look (one indexed query) and wakes
      the watches whose prefix covers one, in case a datagram was lost or the
      file was written by something else. (Not a timer per watch: a gateway
      holds thousands of watches, and each re-reading the log every second was
      most of an idle gateway's CPU.)

    ``watch(prefix, since=n)`` starts its cursor at ``n`` instead of the
    current revision, so replay and live changes come from the same query,
    without gap or duplicate. A cursor older than the trimmed log first gets
    the current value of every record written in the gap (deletes in the gap
    are lost), then continues with the log.

Durability
    WAL mode. With the default ``synchronous=normal`` a commit that returned
    survives the process being killed at any moment; ``?synchronous=full``
    also fsyncs every commit, so it survives power loss (about twenty times
    slower on a virtual disk, more on SD cards). Other processes' writers
    are waited for up to ``busy_timeout`` milliseconds (default 10 s).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import queue
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from safething.errors import (
    AbortedWriteError,
    ConflictError,
    GuardFailedError,
    LimitExceededError,
    StoreError,
    StoreURLError,
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
    check_pattern,
    check_prefix,
    key_prefixes,
    pattern_prefix,
    pattern_regex,
)
from safething.store.feed import FeedWatch, WatchSet, resolve
from safething.store.quota import enforce

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the table layout, kept in ``PRAGMA user_version``."""

_TABLES = (
    "CREATE TABLE IF NOT EXISTS records ("
    "key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, rev INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS changes ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, deleted INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chunks (address TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)",
)
_INDEXES = (
    # A watch on one MD (a thing, an inbox) reads only its own changes, however busy the
    # rest of the store is: thousands of watches in a gateway stay cheap.
    "CREATE INDEX IF NOT EXISTS changes_by_key ON changes (key, seq)",
)
_OUR_TABLES = {"records", "changes", "chunks", "sqlite_sequence"}

_GET = "SELECT value, rev FROM records WHERE key = ?"
_INSERT_CHANGE = "INSERT INTO changes (seq, key, deleted) VALUES (?, ?, ?)"
_UPSERT_RECORD = (
    "INSERT INTO records (key, value, rev) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, rev = excluded.rev"
)
_DELETE_RECORD = "DELETE FROM records WHERE key = ?"
_INSERT_CHUNK = "INSERT OR IGNORE INTO chunks (address, data) VALUES (?, ?)"
_TRIM = "DELETE FROM changes WHERE seq <= ?"
_STATE_SIZES = (1, 4, 16, 128)
_STATE_CHUNK = _STATE_SIZES[-1]
_STATE_SQL = {
    n: f"SELECT key, rev, length(value) FROM records WHERE key IN ({', '.join('?' * n)})"
    for n in _STATE_SIZES
}
_USAGE = "SELECT count(*), coalesce(sum(length(value)), 0) FROM records WHERE key >= ? AND key < ?"
_SCAN = "SELECT key, value, rev FROM records WHERE key >= ? AND key < ? ORDER BY key"
_SCAN_SMALL = _SCAN + " LIMIT ?"
_USAGE_SMALL = (
    "SELECT count(*), coalesce(sum(n), 0) FROM "
    "(SELECT length(value) AS n FROM records WHERE key >= ? AND key < ? LIMIT ?)"
)
_LOG_BOUNDS = "SELECT (SELECT min(seq) FROM changes), (SELECT max(seq) FROM changes)"
_FEED = (
    "SELECT c.seq, c.key, c.deleted, r.rev, r.value FROM changes AS c "
    "LEFT JOIN records AS r ON r.key = c.key "
    "WHERE c.seq > ? AND c.seq <= ? AND c.key >= ? AND c.key < ? ORDER BY c.seq LIMIT ?"
)
_FEED_BY_KEY = (  # the same, for narrow prefixes: walk the key index instead of the log
    "SELECT c.seq, c.key, c.deleted, r.rev, r.value FROM changes AS c INDEXED BY changes_by_key "
    "LEFT JOIN records AS r ON r.key = c.key "
    "WHERE c.seq > ? AND c.seq <= ? AND c.key >= ? AND c.key < ? ORDER BY c.seq LIMIT ?"
)
_GLOB = " AND c.key GLOB ? ORDER BY"
"""A pattern watch's feed takes only the changes of keys matching its pattern (``*`` of a
pattern is one token, of ``GLOB`` any text: the watch's regular expression is exact)."""
_FEED_GLOB = _FEED.replace(" ORDER BY", _GLOB)
_FEED_BY_KEY_GLOB = _FEED_BY_KEY.replace(" ORDER BY", _GLOB)
_NARROW = 3
"""Prefixes with at least this many tokens (``md.<tag>.<name>.``) may use the key index."""
_BEHIND = 512
"""...when the cursor is more than this many changes behind: the key index then reads
only the prefix's own changes, whereas the log scan would read every change since the
cursor. Close behind (a watch woken by a commit), the log scan is the cheaper one: the
key index would walk the prefix's whole history in the log."""
_FEED_GAP = (
    "SELECT key, value, rev FROM records "
    "WHERE key >= ? AND key < ? AND rev > ? AND rev < ? ORDER BY rev"
)
_REVISION = "SELECT seq FROM sqlite_sequence WHERE name = 'changes'"

_DEFAULT_BUSY_TIMEOUT_MS = 10_000
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
_OPTIONS_HELP = "synchronous=normal|full, busy_timeout=<milliseconds>"

_GROUP_WRITES = 8192
"""The writer merges queued commits into one transaction up to about this many writes."""

_INLINE_EVERY = 32
"""Of the commits an idle writer could make on the event loop, every this many goes
to the writer thread all the same: only its commits checkpoint the WAL (see
:meth:`_Writer._commit_here`), so the WAL grows by at most this many commits beyond
SQLite's checkpoint threshold."""

_INLINE_WRITES = 64
"""Most writes of a commit the loop makes itself (see :meth:`_Writer._commit_here`)."""

_USAGE_KEPT = 8192
"""Most quota prefixes whose usage the writer keeps from one transaction to the next."""
_DATA_VERSION = "PRAGMA data_version"

_SMALL_SCAN = 256
_SMALL_USAGE = 4096
"""A prefix with at most this many records is scanned or counted on the event
loop (tens of microseconds); a bigger one on the reader thread."""

_FETCH_LIMIT = 512
"""Most changes a watch reads at once."""

_SAFETY_NET_S = 1.0
"""A waiting watch re-reads the change log at least this often."""

_NET_KEYS = 8192
"""Most changed keys the safety net reads at once; beyond that it wakes every watch."""
_NET_CHANGES = "SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq LIMIT ?"

_OWN_RANGES = 4096
"""Most commits of its own a store remembers for the safety net (one a group commit:
seconds of a busy gateway); those beyond are read by the safety net as before."""

_FALLBACK_POLL_S = 0.05
"""Re-read interval when no notification socket could be bound."""

_SETTLE_NS = 100_000_000
"""A directory mtime younger than this may hide later changes (coarse clocks)."""

_UNIX_PATH_MAX = 107

_LOOK_NS = 1_000_000_000
"""The doorbell looks up its directory's path again at least this often (in case the
directory was renamed away and another made in its place)."""

_T = TypeVar("_T")


def _prefix_range(prefix: str) -> tuple[str, str]:
    """``(low, high)`` such that ``low <= key < high`` iff ``key`` starts with ``prefix``."""
    if prefix == "":
        return "", "\x7f"
    return prefix, prefix[:-1] + "/"


_ABSENT = object()
"""A key that was not in a table (see ``_Batch.rewind``)."""


_NOTHING = (0, -1)
"""A key's (revision, value length) in ``_Batch._state`` when it holds no record."""


def _quota_prefixes(key: str) -> Iterator[str]:
    """Every prefix a quota may name (``""`` or ending in ``.``) that ``key`` starts with."""
    yield ""
    yield from key_prefixes(key)


def _check_chunk_address(address: str) -> str:
    if not isinstance(address, str) or not address:
        raise ValueError(f"invalid chunk address {address!r}: use a non-empty string")
    return address


def _parse_options(url: str, options: dict[str, str]) -> tuple[str, int]:
    synchronous = "NORMAL"
    busy_timeout = _DEFAULT_BUSY_TIMEOUT_MS
    for name, raw in options.items():
        value = str(raw).strip().lower()
        if name == "synchronous":
            if value not in _SYNCHRONOUS:
                raise StoreURLError(
                    f"sqlite URL {url!r}: synchronous={raw!r} is not allowed; "
                    "use synchronous=normal or synchronous=full"
                )
            synchronous = _SYNCHRONOUS[value]
        elif name == "busy_timeout":
            if not value.isdigit():
                raise StoreURLError(
                    f"sqlite URL {url!r}: busy_timeout={raw!r} is not a number of milliseconds"
                )
            busy_timeout = int(value)
        else:
            raise StoreURLError(
                f"sqlite URL {url!r}: unknown option {name!r}; known: {_OPTIONS_HELP}"
            )
    return synchronous, busy_timeout


def _store_error(e: BaseException, path: Path, what: str) -> StoreError:
    """A :class:`StoreError` a person can act on, for a failed sqlite operation."""
    text = str(e)
    lowered = text.lower()
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        message = (
            f"{path} is not a SAFEthing store or is damaged ({text}); "
            "move it away or point SAFETHING_STORE elsewhere"
        )
    elif "locked" in lowered or "busy" in lowered:
        message = f"{path} is locked by another process ({what} gave up waiting: {text})"
    elif "readonly" in lowered or "unable to open" in lowered:
        message = f"cannot write {path} ({what}: {text}); check its permissions"
    else:
        message = f"store {path}: {what} failed: {text}"
    error = StoreError(message)
    error.__cause__ = e
    return error


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)


def _create_file(path: str | os.PathLike[str]) -> Path:
    """Create the database file (mode 0600) and its directories (0700); its absolute path.

    An existing file is never opened here. Closing *any* file descriptor on a
    database file drops every POSIX lock the process holds on it, those of
    SQLite's own connections included (SQLite's "How To Corrupt An SQLite
    Database File", section 2.2): another process could then take the
    exclusive lock, checkpoint and delete the WAL that this process is still
    committing into. So the file is created with ``O_EXCL`` (no connection of
    this process can have a file open that did not exist) and otherwise left
    to SQLite, whose connections in one process share one set of locks per
    file and defer closing a descriptor while any of them holds a lock.
    """
    db = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        _make_private_dirs(db.parent)
        fd = os.open(db, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        if not db.is_file():  # a stat, not an open
            raise StoreError(f"cannot open store file {db}: it is not a regular file") from None
        return db
    except OSError as e:
        raise StoreError(f"cannot open store file {db}: {e.strerror or e}") from e
    os.close(fd)
    return db


def _connect(
    path: Path, busy_timeout_ms: int, *, query_only: bool, shared: bool = False
) -> sqlite3.Connection:
    """``shared``: used by more than one thread (never at once)."""
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout_ms / 1000,
        isolation_level=None,
        cached_statements=64,
        check_same_thread=not shared,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if query_only:
            conn.execute("PRAGMA query_only = 1")
    except BaseException:
        conn.close()
        raise
    return conn


class WaitSettings:
    """A write connection's lock wait and checkpoint settings, set for the side that uses
    it next: a transaction made on an event loop (``here``), which must never wait (the
    write lock tried once: busy timeout 0, a lock held by another connection raises at
    once; no automatic checkpoint, its fsyncs), or any other (``busy_timeout_ms``,
    ``autocheckpoint`` pages). The statements run only when the side changes: an idle
    gateway's commits and calls, all on the loop, run none (four a commit before, a
    tenth of its time). Whoever owns the connection serialises the calls."""

    def __init__(self, conn: sqlite3.Connection, *, busy_timeout_ms: int, autocheckpoint: int):
        self._conn = conn
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._autocheckpoint = int(autocheckpoint)
        self.here = False
        """The connection has the settings of a transaction on the loop."""

    def use(self, *, here: bool) -> None:
        """The settings of a transaction on the loop (``here``) or of any other."""
        if self.here == here:
            return
        conn = self._conn
        if here:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        else:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint}")
        self.here = here


# --- notification sockets ---------------------------------------------------------


def _socket_base(directory: Path) -> tuple[str, int | None]:
    """The path prefix to reach sockets in ``directory``: the directory itself,
    or ``/proc/self/fd/<fd>`` (with that fd) when the path is too long for AF_UNIX."""
    base = str(directory)
    if len(base) + 40 <= _UNIX_PATH_MAX or not os.path.isdir("/proc/self/fd"):
        return base, None
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}", fd


class _Doorbell:
    """Writer side: one byte to every listening socket in the notify directory.

    The directory is held open and ``fstat``-ed at each ring (its mtime tells when a
    listener came or went); its path is looked up again only when the directory was
    removed (no links left), when a send found a socket gone, or ``_LOOK_NS`` after the
    last look (a directory renamed away and made anew)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._names: list[str] = []
        self._mtime = -1
        self._settled = False
        self._base = ""
        self._dirfd: int | None = None
        self._ident = (0, 0)
        self._looked = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def _look(self) -> bool:
        """Find the directory by its path, opening it anew if it is another one;
        False if there is none."""
        self._looked = time.monotonic_ns()
        try:
            st = os.stat(self._dir)
        except OSError:
            self._close_dir()
            return False
        if self._dirfd is not None and (st.st_dev, st.st_ino) == self._ident:
            return True
        self._close_dir()
        try:
            fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        st = os.fstat(fd)
        self._dirfd, self._ident, self._mtime = fd, (st.st_dev, st.st_ino), -1
        base = str(self._dir)
        long = len(base) + 40 > _UNIX_PATH_MAX and os.path.isdir("/proc/self/fd")
        self._base = f"/proc/self/fd/{fd}" if long else base
        return True

    def _close_dir(self) -> None:
        self._names = []
        if self._dirfd is not None:
            os.close(self._dirfd)
            self._dirfd = None

    def ring(self, skip: str | None) -> None:
        if (
            self._dirfd is None or time.monotonic_ns() - self._looked > _LOOK_NS
        ) and not self._look():
            return
        assert self._dirfd is not None
        st = os.fstat(self._dirfd)
        if st.st_nlink == 0:  # removed: the path may name a new directory
            if not self._look():
                return
            st = os.fstat(self._dirfd)
        mtime = st.st_mtime_ns
        if mtime != self._mtime or not self._settled:
            self._mtime = mtime
            self._settled = time.time_ns() - mtime > _SETTLE_NS
            try:
                self._names = [n for n in os.listdir(self._dirfd) if n.endswith(".sock")]
            except OSError:
                self._names = []
        for name in self._names:
            if name == skip:
                continue
            try:
                self._sock.sendto(b"!", f"{self._base}/{name}")
            except BlockingIOError:
                pass  # its queue is full: it already has wake-ups waiting
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    # Nobody is bound there any more: its process is gone (or the
                    # directory was replaced: look at the path at the next ring).
                    with contextlib.suppress(OSError):
                        os.unlink(f"{self._base}/{name}")
                    self._settled = False
                    self._looked = 0

    def close(self) -> None:
        self._sock.close()
        self._close_dir()


class _Listener:
    """Watcher side: a datagram socket in the notify directory, read by the loop."""

    def __init__(
        self, directory: Path, loop: asyncio.AbstractEventLoop, on_ring: Callable[[], None]
    ) -> None:
        _make_private_dirs(directory)
        self.name = f"{os.getpid()}-{secrets.token_hex(8)}.sock"
        self._path = directory / self.name
        self._loop = loop
        self._on_ring = on_ring
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            base, dirfd = _socket_base(directory)
            try:
                self._sock.bind(f"{base}/{self.name}")
            finally:
                if dirfd is not None:
                    os.close(dirfd)
            loop.add_reader(self._sock.fileno(), self._readable)
        except BaseException:
            self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            raise

    def _readable(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError once drained
            while True:
                self._sock.recv(64)
        self._on_ring()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)


# --- the writer thread -------------------------------------------------------------


class _Job:
    """A commit (``writes``) or a chunk (``chunk``) waiting for the writer."""

    __slots__ = ("atomic", "chunk", "future", "guard", "writes")

    def __init__(
        self,
        future: asyncio.Future[Any],
        writes: Sequence[Write] = (),
        chunk: tuple[str, bytes] | None = None,
        atomic: bool = False,
        guard: Guard | None = None,
    ) -> None:
        self.future = future
        self.writes = writes
        self.chunk = chunk
        self.atomic = atomic
        self.guard = guard


class _Writer:
    """Owns the writing connection and the thread that uses it."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        busy_timeout_ms: int,
        loop: asyncio.AbstractEventLoop,
        on_committed: Callable[..., None],
        change_log_size: int,
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._loop = loop
        self._on_committed = on_committed
        self._keep = change_log_size
        self._trim_every = max(1, change_log_size // 10)
        self._since_trim = self._trim_every  # trim once soon after opening
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []
        """Jobs submitted during this turn of the event loop, handed over at its end."""
        self._pending_writes = 0
        self._ready: ThreadFuture[None] = ThreadFuture()
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._doorbell = _Doorbell(Path(f"{path}.notify"))
        self.skip_socket: str | None = None
        """Name of this store's own listening socket, woken directly instead."""
        self._conn: sqlite3.Connection | None = None
        self._usage: dict[str, list[int]] = {}
        """Quota prefix -> [records, bytes] under it as the last commit left them, kept
        while no other connection writes the file (``PRAGMA data_version``): a commit
        then counts a prefix without reading its records (one statement per thing per
        commit, about a tenth of this thread's CPU per reading before)."""
        self._data_version = -1
        self._seq: int | None = None
        """The last revision handed out, as the last commit left it, kept while no other
        connection writes the file (like :attr:`_usage`): a commit reads it no more."""
        self._in_thread = 0
        """Jobs handed to the thread and not answered yet (counted on the loop)."""
        self._inline = synchronous == "NORMAL"
        """Commits may run on the loop when the thread is idle (not when each commit
        fsyncs: the loop would wait for the disk)."""
        self._idle_commits = 0
        self._autocheckpoint = 1000
        self._waits: WaitSettings | None = None
        """The connection's settings for a commit on the loop or on the thread (the loop
        uses it only while the thread has no job)."""
        self.handoff: _HandOff | None = None
        """The last commit made on the loop, for this process's watches (see
        :meth:`_SQLiteWatch._fetch`)."""
        self.own: collections.deque[tuple[int, int]] = collections.deque()
        """The revisions of this writer's commits, ``(after, last)`` each, oldest first
        (appended by whichever side commits, taken by the safety net on the loop): the
        commit itself woke this store's watches for them (:meth:`SQLiteStore._committed`),
        so the safety net does not read them again. At most :data:`_OWN_RANGES`."""
        self._thread = threading.Thread(
            target=self._run, name=f"safething-sqlite-writer:{path.name}", daemon=True
        )

    @property
    def last_seq(self) -> int | None:
        """The last revision this store handed out, if no other connection has written
        the file since its last commit (None: not known)."""
        return self._seq

    async def start(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def submit(self, job: _Job) -> None:
        """On the loop: queue ``job``. The jobs submitted during one turn of the loop go
        to the writer thread together at the end of it, so they are one transaction
        (the concurrent readings of a busy gateway are submitted in the same turns,
        as the commits they waited for return together)."""
        pending = self._pending
        pending.append(job)
        self._pending_writes += len(job.writes)
        if len(pending) == 1:
            self._loop.call_soon(self._hand_over)
        elif self._pending_writes >= _GROUP_WRITES:
            self._hand_over()  # a transaction's worth already

    def _hand_over(self) -> None:
        group, self._pending, self._pending_writes = self._pending, [], 0
        if not group or (len(group) == 1 and self._commit_here(group)):
            return
        self._in_thread += len(group)
        self._queue.put(group)

    def _answered(self, group: list[_Job], outcomes: list[Any], changed: bool) -> None:
        """On the loop: the thread's answer for ``group`` (the groups it took from its
        queue together, merged: hence jobs are counted, not groups)."""
        self._in_thread -= len(group)
        self._on_committed(group, outcomes, changed)

    def _commit_here(self, group: list[_Job]) -> bool:
        """On the loop, for :meth:`_hand_over`: a turn's only job, committed here and now
        (answered as the thread would) if it is a small commit, the thread is idle and
        the file's write lock is free; False (nothing done) otherwise. An idle
        gateway's reading thus crosses to the thread and back no more (two wake-ups,
        each with its GIL hand-over), and every group is what it was. The loop never
        waits here: the lock is tried without a busy timeout (another process holding
        it: the thread waits for it), and no checkpoint runs here (its fsyncs), only in
        the thread's commits: one such job in :data:`_INLINE_EVERY` goes there."""
        conn = self._conn
        (job,) = group
        if (
            not self._inline
            or self._in_thread
            or conn is None
            or job.chunk is not None
            or len(job.writes) > _INLINE_WRITES
        ):
            return False
        self._idle_commits += 1
        if self._idle_commits >= _INLINE_EVERY:
            self._idle_commits = 0
            return False
        assert self._waits is not None  # (made with the connection)
        self._waits.use(here=True)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False  # locked by another connection
        try:
            outcomes, changed = self._transaction(group, begun=True)
        except Exception as e:
            outcomes, changed = [self._failure(e)], False
        if changed:
            self._ring()
        self._on_committed(group, outcomes, changed, here=True)
        return True

    async def stop(self) -> None:
        if self._thread.is_alive():
            self._hand_over()
            self._queue.put(None)
            await self._stopped
            self._thread.join()  # it has nothing left to do but return

    # everything below runs on the writer thread

    def _run(self) -> None:
        try:
            self._conn = self._open()
            self._waits = WaitSettings(
                self._conn,
                busy_timeout_ms=self._busy_timeout_ms,
                autocheckpoint=self._autocheckpoint,
            )
        except BaseException as e:
            self._doorbell.close()
            self._ready.set_exception(e)
            self._call_soon(resolve, self._stopped)
            return
        self._ready.set_result(None)
        try:
            stop = False
            while not stop:
                group = self._queue.get()
                if group is None:
                    break
                size = sum(len(job.writes) for job in group)
                while size < _GROUP_WRITES:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    group += more
                    size += sum(len(job.writes) for job in more)
                self._run_group(group)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._waits.use(here=False)  # its last checkpoint as configured
            self._conn.close()
            self._doorbell.close()
            self._call_soon(resolve, self._stopped)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = _connect(self._path, self._busy_timeout_ms, query_only=False, shared=True)
        except sqlite3.Error as e:
            raise _store_error(e, self._path, "open") from e
        try:
            self._prepare(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise _store_error(e, self._path, "open") from e
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode").fetchall()[0]
                if str(mode).lower() != "wal":
                    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise StoreError(f"{self._path}: cannot switch to WAL mode (journal mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        ((self._autocheckpoint,),) = conn.execute("PRAGMA wal_autocheckpoint").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchall()[0]
            if version == 0:
                tables = {
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    ).fetchall()
                }
                if tables - _OUR_TABLES:
                    raise StoreError(
                        f"{self._path} is an SQLite database of some other program "
                        f"(tables {sorted(tables - _OUR_TABLES)}), not a SAFEthing store"
                    )
                for statement in _TABLES:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path} has store format {version}, newer than this SAFEthing "
                    f"understands ({SCHEMA_VERSION}); upgrade SAFEthing"
                )
            for statement in _INDEXES:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(callback, *args)

    def _run_group(self, group: list[_Job]) -> None:
        try:
            assert self._waits is not None
            self._waits.use(here=False)
            outcomes, changed = self._transaction(group)
        except Exception as e:
            if len(group) == 1:
                outcomes, changed = [self._failure(e)], False
            else:
                # One bad job must not fail the others: retry each on its own.
                outcomes, changed = [], False
                for job in group:
                    try:
                        (outcome,), job_changed = self._transaction([job])
                    except Exception as e1:
                        outcome, job_changed = self._failure(e1), False
                    outcomes.append(outcome)
                    changed = changed or job_changed
        if changed:
            self._ring()
        self._call_soon(self._answered, group, outcomes, changed)

    def _ring(self) -> None:
        try:
            self._doorbell.ring(self.skip_socket)
        except Exception:  # pragma: no cover - waking others is best effort
            log.exception("could not notify other processes of a commit")

    def _failure(self, e: Exception) -> Exception:
        if isinstance(e, sqlite3.Error):
            return _store_error(e, self._path, "commit")
        return e

    def _transaction(self, group: list[_Job], *, begun: bool = False) -> tuple[list[Any], bool]:
        """``begun``: the caller has begun the transaction."""
        assert self._conn is not None
        cur = self._conn.cursor()
        if not begun:
            cur.execute("BEGIN IMMEDIATE")
        try:
            # Read under the write lock: nobody else can commit until this transaction
            # ends. Another connection (process) that committed since: counts anew.
            ((version,),) = cur.execute(_DATA_VERSION).fetchall()
            if version != self._data_version:
                self._usage.clear()
                self._seq = None
                self._data_version = version
            keys = [w.key for job in group for w in job.writes]
            keys += [job.guard.key for job in group if job.guard is not None]
            batch = _Batch(cur, keys, self._usage, self._seq)
            outcomes: list[Any] = []
            for job in group:
                if job.chunk is not None:
                    cur.execute(_INSERT_CHUNK, job.chunk)
                    outcomes.append(None)
                    continue
                if job.guard is not None and not batch.holds(job.guard):
                    outcomes.append(GuardFailedError(job.guard.key))
                    continue
                results: list[int | Exception] = []
                mark = batch.mark() if job.atomic else None
                refused = False
                for write in job.writes:
                    try:
                        results.append(batch.apply(write))
                    except (ConflictError, LimitExceededError) as e:
                        # An outcome, not an error here (a thing's restore meets four, its
                        # MDs existing): without its traceback, whose frames hold it, it
                        # is freed without a cyclic collection.
                        results.append(e.with_traceback(None))
                        refused = True
                if mark is not None and refused:
                    batch.rewind(mark)
                    results = [
                        r if isinstance(r, Exception) else AbortedWriteError(w.key)
                        for r, w in zip(results, job.writes, strict=True)
                    ]
                elif mark is not None:
                    batch.settle()
                outcomes.append(results)
            changed = batch.flush()
            self._since_trim += changed
            if self._since_trim >= self._trim_every and batch.seq > 0:
                cur.execute(_TRIM, (batch.seq - self._keep,))
                self._since_trim = 0
            cur.execute("COMMIT")
        except BaseException:
            self._usage.clear()  # whatever the file holds now, it is counted anew
            self._seq = None
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        batch.keep_usage(self._usage)
        self._seq = batch.seq if keys else self._seq
        if changed and len(self.own) < _OWN_RANGES:
            # revisions after batch.start up to batch.seq: this transaction's, under the lock
            self.own.append((batch.start, batch.seq))
        if begun:
            self.handoff = _HandOff(batch.start, batch.seq, batch.feed()) if changed else None
        return outcomes, changed > 0


def _not_own(rows: list[tuple[int, str]], own: Sequence[tuple[int, int]]) -> list[str]:
    """The keys of the changes ``rows`` (``(revision, key)``, in order) outside the
    revision ranges ``own`` (``(after, last)``, in order)."""
    keys: list[str] = []
    ranges = iter(own)
    after, last = next(ranges, (-1, -1))
    for seq, key in rows:
        while seq > last and last >= 0:
            after, last = next(ranges, (-1, -1))
        if not after < seq <= last:
            keys.append(key)
    return keys


@dataclass(frozen=True, slots=True)
class _HandOff:
    """A commit made on the loop, as the change feed would read it: every change of the
    log above ``start`` up to ``last`` (the commit's own, its revisions contiguous)."""

    start: int
    last: int
    changes: list[Change]


class _Batch:
    """The writes of one transaction.

    Each write is decided in Python against the records as they were when
    the transaction began (read in a few ``IN`` queries) plus the effect of
    the writes before it; the outcome is then written with three
    ``executemany`` calls. The writer holds the database's write lock
    throughout, so nobody else can change what the decisions rest on.
    """

    def __init__(
        self, cur: sqlite3.Cursor, keys: list[str], kept: dict[str, list[int]], seq: int | None
    ) -> None:
        """``seq``: the last revision handed out, if the writer knows it (else read)."""
        self._cur = cur
        self._kept = kept
        """Usage of quota prefixes as the file holds it now (see ``_Writer._usage``)."""
        self._state: dict[str, tuple[int, int]] = {}
        """key -> (revision, value length); (0, -1) when absent."""
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _STATE_CHUNK):
            part = unique[i : i + _STATE_CHUNK]
            size = next(n for n in _STATE_SIZES if n >= len(part))
            part += part[-1:] * (size - len(part))
            for key, revision, length in cur.execute(_STATE_SQL[size], part).fetchall():
                self._state[key] = (revision, length)
        if seq is None:
            rows = cur.execute(_REVISION).fetchall() if unique else []
            seq = rows[0][0] if rows else 0
        self.start = seq
        """The last revision handed out before this batch."""
        self.seq: int = seq
        """The last revision handed out."""
        self._changes: list[tuple[int, str, bool]] = []
        self._final: dict[str, tuple[bytes | None, int]] = {}
        self._effects: list[tuple[str, int, int]] = []
        """(key, count, bytes) of each write that changed the usage of the prefixes
        above its key (see :meth:`apply`), to rebuild ``_touched`` on a rewind."""
        self._touched: dict[str, list[int]] = {}
        """Each prefix a quota may name -> ``[count, bytes]`` that this batch's writes
        under it added, summed: a quota counted for the first time adds them without
        looking at every write before it (which made a group of many things' readings
        quadratic)."""
        self._usage: dict[str, list[int]] = {}
        self._undo: list[tuple[dict[str, Any], str, object]] | None = None
        """While an all-or-nothing job runs: each value it changed, as it was before."""

    def mark(self) -> tuple[int, int, int]:
        """Where the batch stands, to rewind an all-or-nothing job that failed
        (:meth:`rewind`) or to keep it (:meth:`settle`). From here each value the job
        changes is logged, not the batch's state copied whole: a group of many readings,
        each one all-or-nothing, copied the state of every key before it for each."""
        self._undo = []
        return self.seq, len(self._changes), len(self._effects)

    def settle(self) -> None:
        """The job since :meth:`mark` keeps its writes."""
        self._undo = None

    def rewind(self, mark: tuple[int, int, int]) -> None:
        seq, changes, effects = mark
        self.seq = seq
        del self._changes[changes:]
        del self._effects[effects:]
        self._touched = {}
        for key, count, size in self._effects:
            for prefix in _quota_prefixes(key):
                summed = self._touched.setdefault(prefix, [0, 0])
                summed[0] += count
                summed[1] += size
        assert self._undo is not None
        for table, key, old in reversed(self._undo):
            if old is _ABSENT:
                del table[key]
            else:
                table[key] = old
        self._undo = None

    def _set(self, table: dict[str, Any], key: str, value: object) -> None:
        """``table[key] = value``, logged while an all-or-nothing job runs."""
        if self._undo is not None:
            self._undo.append((table, key, table.get(key, _ABSENT)))
        table[key] = value

    def holds(self, guard: Guard) -> bool:
        """Whether ``guard`` holds (its key was read with the others, and this batch's
        earlier writes count)."""
        return self._state.get(guard.key, (0, -1))[0] == guard.revision

    def apply(self, write: Write) -> int:
        """Decide one write; its revision, 0 for a delete of nothing, or raise.

        Run for every write of every commit on the writer thread, so written out by
        hand (no generator for the prefixes, no helper calls, nothing counted for a
        write that changes no prefix's usage, such as a pointer rewritten at the same
        length): the arithmetic is :func:`~safething.store.quota.add_effect`'s, the
        refusal :func:`~safething.store.quota.enforce`'s."""
        key = write.key
        state = self._state
        known = state.get(key)
        current, old_len = _NOTHING if known is None else known
        if write.expect is not None and write.expect != current:
            raise ConflictError(key, expected=write.expect, current=current)
        value = write.value
        if value is None:
            if current == 0:
                return 0
            new_len = -1
        else:
            new_len = len(value)
        # What the write adds to [count, bytes] of every prefix above its key.
        count = (new_len >= 0) - (old_len >= 0)
        size = (new_len if new_len > 0 else 0) - (old_len if old_len > 0 else 0)
        if write.quota is not None:
            self._check_quota(write.quota, key, count, size)
        seq = self.seq = self.seq + 1
        self._changes.append((seq, key, value is None))
        final, undo = self._final, self._undo
        if undo is not None:
            undo.append((final, key, final.get(key, _ABSENT)))
            undo.append((state, key, _ABSENT if known is None else known))
        final[key] = (value, seq)
        state[key] = _NOTHING if value is None else (seq, new_len)
        if count == 0 and size == 0:
            return seq
        self._effects.append((key, count, size))
        usage, touched = self._usage, self._touched
        prefix = ""
        end = 0
        while True:
            summed = touched.get(prefix)
            if summed is None:
                touched[prefix] = [count, size]
            else:
                summed[0] += count
                summed[1] += size
            counts = usage.get(prefix)
            if counts is not None:
                if undo is not None:
                    undo.append((usage, prefix, list(counts)))
                counts[0] += count
                counts[1] += size
            end = key.find(".", end) + 1
            if end == 0:
                return seq
            prefix = key[:end]

    def _check_quota(self, quota: Quota, key: str, count: int, size: int) -> None:
        """Refuse a write that adds ``count`` records and ``size`` bytes under ``key``
        if that breaks ``quota``; first count its prefix's usage if this batch has not."""
        counts = self._usage.get(quota.prefix)
        if counts is None:
            # As the file holds it (nothing is flushed yet), plus this batch so far.
            kept = self._kept.get(quota.prefix)
            if kept is not None:
                counts = list(kept)
            else:
                query = self._cur.execute(_USAGE, _prefix_range(quota.prefix))
                counts = list(query.fetchall()[0])
            summed = self._touched.get(quota.prefix)
            if summed is not None:
                counts[0] += summed[0]
                counts[1] += summed[1]
            self._set(self._usage, quota.prefix, counts)
        if not key.startswith(quota.prefix):
            return  # nothing under it grows
        after = counts[0] + count, counts[1] + size
        if (after[0] > quota.max_count and count > 0) or (after[1] > quota.max_bytes and size > 0):
            enforce(quota, counts, list(after))

    def keep_usage(self, kept: dict[str, list[int]]) -> None:
        """Once committed: leave in ``kept`` the usage of every prefix this batch counted,
        and that of every prefix kept before with this batch's writes under it (whether
        or not they named it in a quota)."""
        if kept:
            for prefix, summed in self._touched.items():
                counts = kept.get(prefix)
                if counts is not None and prefix not in self._usage:
                    counts[0] += summed[0]
                    counts[1] += summed[1]
        if len(kept) + len(self._usage) > _USAGE_KEPT:
            kept.clear()
        kept.update(self._usage)

    def feed(self) -> list[Change]:
        """This batch's changes as the change feed reads them right after its commit (a
        change whose key the batch wrote again is left to the later one)."""
        final = self._final
        return [
            Change(key, None if deleted else final[key][0], seq)
            for seq, key, deleted in self._changes
            if final[key][1] == seq
        ]

    def flush(self) -> int:
        """Write the accepted changes; how many there were."""
        if not self._changes:
            return 0
        cur = self._cur
        cur.executemany(_INSERT_CHANGE, self._changes)
        upserts = [(k, v, rev) for k, (v, rev) in self._final.items() if v is not None]
        deletes = [(k,) for k, (v, _) in self._final.items() if v is None]
        if upserts:
            cur.executemany(_UPSERT_RECORD, upserts)
        if deletes:
            cur.executemany(_DELETE_RECORD, deletes)
        return len(self._changes)


# --- the store ---------------------------------------------------------------------


class SQLiteStore(Store):
    """The embedded store in one SQLite file. Open with :meth:`open`."""

    change_log_size: int = 100_000
    """How many recent changes the file keeps for ``watch(since=...)``."""

    def __init__(self, url: str, path: Path, synchronous: str, busy_timeout_ms: int) -> None:
        """Use :meth:`open`."""
        self.url = url
        self.path = path
        """The database file."""
        self._loop = asyncio.get_running_loop()
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = _Writer(
            path, synchronous, busy_timeout_ms, self._loop, self._committed, self.change_log_size
        )
        self._reader: sqlite3.Connection | None = None
        self._bulk = ThreadPoolExecutor(
            1, thread_name_prefix=f"safething-sqlite-reader:{path.name}"
        )
        self._bulk_conn: sqlite3.Connection | None = None
        self._watches = WatchSet()
        self._listener: _Listener | None = None
        self._poll_s = _SAFETY_NET_S
        self._net: asyncio.TimerHandle | None = None
        self._net_seen = 0
        """The safety net has looked at the changes up to this revision."""
        self._closed = False
        self._closing: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, url: str, path: str | os.PathLike[str], **options: str) -> SQLiteStore:
        """Open (creating if needed) the store file at ``path``.

        Options (from the URL query): ``synchronous=normal|full``,
        ``busy_timeout=<ms>``. Raises :class:`StoreURLError` for an unknown
        option and :class:`StoreError` for a file that cannot be used.
        """
        synchronous, busy_timeout_ms = _parse_options(url, options)
        db = _create_file(path)
        store = cls(url, db, synchronous, busy_timeout_ms)
        try:
            await store._writer.start()
            try:
                store._reader = _connect(db, busy_timeout_ms, query_only=True)
            except sqlite3.Error as e:
                raise _store_error(e, db, "open") from e
        except BaseException:
            await store.close()
            raise
        return store

    # --- records ---------------------------------------------------------------

    async def get(self, key: str) -> Record | None:
        check_key(key)
        try:
            rows = self._read_conn().execute(_GET, (key,)).fetchall()
        except sqlite3.Error as e:
            raise _store_error(e, self.path, "get") from e
        if not rows:
            return None
        value, revision = rows[0]
        return Record(key, value, revision)

    async def commit(
        self, writes: Sequence[Write], *, atomic: bool = False, guard: Guard | None = None
    ) -> list[int | Exception]:
        writes = list(writes)
        for write in writes:
            if not isinstance(write, Write):
                raise TypeError(f"commit takes Write objects, not {type(write).__name__}")
        self._check_open()
        if not writes:
            return []
        future: asyncio.Future[list[int | Exception]] = self._loop.create_future()
        self._writer.submit(_Job(future, writes=writes, atomic=atomic, guard=guard))
        return await future

    def _committed(
        self, group: list[_Job], outcomes: list[Any], changed: bool, *, here: bool = False
    ) -> None:
        """On the loop: hand results to the waiting callers, wake local watches. ``here``:
        a lone commit made on the loop, whose watches are woken first (a subscriber of
        this process reads it before its writer's next steps)."""
        if changed and here:
            self._watches.wake_for(w.key for job in group for w in (job.writes or ()))
        for job, outcome in zip(group, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        if changed and not here:
            self._watches.wake_for(w.key for job in group for w in (job.writes or ()))

    async def scan(self, prefix: str) -> list[Record]:
        check_prefix(prefix)
        low, high = _prefix_range(prefix)
        rows = self._read(_SCAN_SMALL, (low, high, _SMALL_SCAN + 1), "scan")
        if len(rows) > _SMALL_SCAN:
            rows = await self._bulk_read(_SCAN, (low, high), "scan")
        return [Record(key, value, revision) for key, value, revision in rows]

    async def usage(self, prefix: str) -> tuple[int, int]:
        check_prefix(prefix)
        low, high = _prefix_range(prefix)
        ((count, size),) = self._read(_USAGE_SMALL, (low, high, _SMALL_USAGE + 1), "usage")
        if count > _SMALL_USAGE:
            ((count, size),) = await self._bulk_read(_USAGE, (low, high), "usage")
        return count, size

    def watch(self, prefix: str, *, since: int | None = None) -> Watch:
        check_prefix(prefix)
        return self._watch(prefix, since)

    def watch_pattern(self, pattern: str, *, since: int | None = None) -> Watch:
        """As :meth:`Store.watch_pattern`, filtered where the change log is: a commit
        wakes the watch only if it wrote a matching key, and the watch reads only the
        matching changes (a gateway's things' statuses are not woken, nor read, by
        every reading written under the same prefix)."""
        check_pattern(pattern)
        match = pattern_regex(pattern).match
        return self._watch(pattern_prefix(pattern), since, glob=pattern, match=match)

    def _watch(
        self,
        prefix: str,
        since: int | None,
        *,
        glob: str | None = None,
        match: Callable[[str], object] | None = None,
    ) -> Watch:
        if since is not None and since < 0:
            raise ValueError("since must be None or a revision >= 0")
        conn = self._read_conn()
        if since is None:
            try:
                rows = conn.execute(_LOG_BOUNDS).fetchall()
            except sqlite3.Error as e:
                raise _store_error(e, self.path, "watch") from e
            since = rows[0][1] or 0
        if self._listener is None:
            try:
                self._listener = _Listener(
                    Path(f"{self.path}.notify"), self._loop, self._wake_watches
                )
            except (OSError, NotImplementedError) as e:
                if self._poll_s != _FALLBACK_POLL_S:
                    log.warning(
                        "cannot bind a notification socket next to %s (%s); "
                        "watches poll every %.2f s instead",
                        self.path,
                        e,
                        _FALLBACK_POLL_S,
                    )
                self._poll_s = _FALLBACK_POLL_S
            else:
                self._writer.skip_socket = self._listener.name
        watch = _SQLiteWatch(self, prefix, since, glob=glob, match=match)
        self._watches.add(watch)
        if self._net is None:
            self._net_seen = since  # a watch reads what came before itself
            self._net = self._loop.call_later(self._poll_s, self._safety_net)
        return watch

    def _safety_net(self) -> None:
        """Wake the watches whose prefix covers a change committed since the last look
        (a doorbell datagram may be lost); again in a second while any watch is open.

        The changes of this store's own commits are skipped: each commit woke the
        watches for its keys itself. A busy gateway's safety net read and walked every
        key it had written in the last second (two a reading), and woke every watch once
        they were more than :data:`_NET_KEYS`."""
        self._net = None
        if self._closed or not self._watches:
            return
        seen = self._net_seen
        own = self._writer.own
        while own and own[0][0] <= seen:  # ours from the last look on: nothing to read
            seen = max(seen, own.popleft()[1])
        self._net_seen = seen
        try:
            rows = self._read_conn().execute(_NET_CHANGES, (seen, _NET_KEYS)).fetchall()
        except sqlite3.Error as e:
            log.warning("watch safety net: cannot read the change log of %s: %s", self.path, e)
            self._watches.wake_all()  # each watch reads and meets the error itself
        else:
            if rows:
                self._net_seen = rows[-1][0]
                if len(rows) < _NET_KEYS:
                    keys = _not_own(rows, own.copy())
                    if keys:
                        self._watches.wake_for(keys)
                else:  # a burst: the rest is for the next look; everyone looks now
                    self._watches.wake_all()
        self._net = self._loop.call_later(self._poll_s, self._safety_net)

    def _feed(
        self, prefix: str, after: int, glob: str | None = None
    ) -> tuple[list[Change], int, bool]:
        """Changes under ``prefix`` above revision ``after`` (a bounded batch; with
        ``glob``, only those of keys it matches), the revision the caller has seen once
        it has taken them, and whether that is the last change in the log (nothing more
        to read until a wake-up)."""
        conn = self._read_conn()
        low, high = _prefix_range(prefix)
        try:
            ((first, last),) = conn.execute(_LOG_BOUNDS).fetchall()
            if last is None or last <= after:
                return [], after, True
            changes: list[Change] = []
            if after + 1 < first:
                # The log was trimmed past our cursor: the current value of each
                # record written in the gap stands in for its lost history.
                for key, value, revision in conn.execute(
                    _FEED_GAP, (low, high, after, first)
                ).fetchall():
                    changes.append(Change(key, value, revision))
                after = first - 1
            narrow = prefix.count(".") >= _NARROW and last - after > _BEHIND
            if glob is None:
                query = _FEED_BY_KEY if narrow else _FEED
                rows = conn.execute(query, (after, last, low, high, _FETCH_LIMIT)).fetchall()
            else:
                query = _FEED_BY_KEY_GLOB if narrow else _FEED_GLOB
                rows = conn.execute(query, (after, last, low, high, glob, _FETCH_LIMIT)).fetchall()
        except sqlite3.Error as e:
            raise _store_error(e, self.path, "watch") from e
        for seq, key, deleted, revision, value in rows:
            if deleted:
                if revision is None:
                    changes.append(Change(key, None, seq))
            elif revision == seq:
                changes.append(Change(key, value, seq))
            # else: rewritten since; a later change in the log delivers it
        if len(rows) < _FETCH_LIMIT:
            return changes, last, True
        return changes, rows[-1][0], False

    def _wake_watches(self) -> None:
        self._watches.wake_all()

    def _watch_closed(self, watch: _SQLiteWatch) -> None:
        self._watches.discard(watch)
        if not self._watches and self._net is not None:
            self._net.cancel()
            self._net = None
        if not self._watches and self._listener is not None:
            self._writer.skip_socket = None
            self._listener.close()
            self._listener = None

    # --- immutable chunks ------------------------------------------------------

    async def put_chunk(self, address: str, data: bytes) -> None:
        _check_chunk_address(address)
        if not isinstance(data, bytes):
            raise TypeError("a chunk must be bytes")
        self._check_open()
        future: asyncio.Future[None] = self._loop.create_future()
        self._writer.submit(_Job(future, chunk=(address, data)))
        await future

    async def get_chunk(self, address: str) -> bytes | None:
        _check_chunk_address(address)
        try:
            rows = (
                self._read_conn()
                .execute("SELECT data FROM chunks WHERE address = ?", (address,))
                .fetchall()
            )
        except sqlite3.Error as e:
            raise _store_error(e, self.path, "get_chunk") from e
        return rows[0][0] if rows else None

    # --- housekeeping ----------------------------------------------------------

    async def info(self) -> StoreInfo:
        self._check_open()

        def counts(conn: sqlite3.Connection) -> tuple[int, int, int, int, int]:
            records, record_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(value)), 0) FROM records"
            ).fetchall()[0]
            chunks, chunk_bytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM chunks"
            ).fetchall()[0]
            rows = conn.execute(_REVISION).fetchall()
            return records, record_bytes, chunks, chunk_bytes, rows[0][0] if rows else 0

        records, record_bytes, chunks, chunk_bytes, revision = await self._on_bulk(counts, "info")
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += os.stat(f"{self.path}{suffix}").st_size
        return StoreInfo(
            url=self.url,
            backend="sqlite",
            records=records,
            record_bytes=record_bytes,
            chunks=chunks,
            chunk_bytes=chunk_bytes,
            revision=revision,
            file_bytes=file_bytes,
        )

    async def close(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closed = True
        self._closing = self._loop.create_future()
        try:
            for watch in list(self._watches):
                await watch.close()
            await self._writer.stop()
            if self._bulk_conn is not None:
                await self._loop.run_in_executor(self._bulk, self._close_bulk_conn)
            self._bulk.shutdown(wait=True)
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        finally:
            self._closing.set_result(None)

    # --- plumbing --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")

    def _read(self, sql: str, params: tuple[Any, ...], what: str) -> list[Any]:
        """Run a small query on the event loop's connection."""
        try:
            return self._read_conn().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise _store_error(e, self.path, what) from e

    def _read_conn(self) -> sqlite3.Connection:
        if self._closed or self._reader is None:
            raise StoreError(f"store {self.url} is closed")
        return self._reader

    async def _bulk_read(self, sql: str, params: tuple[Any, ...], what: str) -> list[Any]:
        def run(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, params).fetchall()

        return await self._on_bulk(run, what)

    async def _on_bulk(self, fn: Callable[[sqlite3.Connection], _T], what: str) -> _T:
        """Run ``fn(connection)`` on the reader thread."""
        self._check_open()

        def call() -> _T:
            if self._bulk_conn is None:
                self._bulk_conn = _connect(self.path, self._busy_timeout_ms, query_only=True)
            return fn(self._bulk_conn)

        try:
            return await self._loop.run_in_executor(self._bulk, call)
        except sqlite3.Error as e:
            raise _store_error(e, self.path, what) from e

    def _close_bulk_conn(self) -> None:
        if self._bulk_conn is not None:
            self._bulk_conn.close()
            self._bulk_conn = None


class _SQLiteWatch(FeedWatch):
    def __init__(
        self,
        store: SQLiteStore,
        prefix: str,
        after: int,
        *,
        glob: str | None = None,
        match: Callable[[str], object] | None = None,
    ) -> None:
        super().__init__(prefix, after, interval=store._poll_s, match=match)
        self._store = store
        self._glob = glob

    def _interval_s(self) -> float | None:
        # The store's safety net covers every watch; without a doorbell socket each
        # watch polls on its own.
        poll_s = self._store._poll_s
        return poll_s if poll_s == _FALLBACK_POLL_S else None

    def _fetch(self, prefix: str, after: int) -> tuple[list[Change], int]:
        store = self._store
        handoff = store._writer.handoff
        if (
            handoff is not None
            and handoff.start == after
            and store._writer.last_seq == handoff.last
        ):
            # This process's last commit, made on the loop, is exactly what the log holds
            # after this watch's cursor (its revisions follow the cursor's, no other commit
            # of this store came after it): its changes are taken as they were committed,
            # not read back (two queries, and the page reads of a new read transaction,
            # between the commit and its subscriber). The log is still read next, after
            # the caller has these: a commit of another process may have come since.
            changes = [c for c in handoff.changes if c.key.startswith(prefix)]
            after, self._caught_up = handoff.last, False
        else:
            changes, after, self._caught_up = store._feed(prefix, after, self._glob)
        match = self._match
        if match is not None:  # exactly the pattern (GLOB's ``*`` also spans dots)
            changes = [c for c in changes if match(c.key)]
        return changes, after

    def _release(self) -> None:
        self._store._watch_closed(self)
