"""Durable trust state: what a reader has verified, kept beside its identity.

The store is untrusted: after a restart it could serve older records, each
still correctly signed (a rollback), or replay a request that was already
run. A :class:`TrustState` is the reader's own memory of what it verified,
kept in a local file that only this host writes (never in the store):

* per MD: its owners, the highest header version and the exact header
  accepted at that version (owners never change; see :mod:`.mutable`);
* per entry: the highest version verified (status, level keys and their
  epochs, group members, the ``keys`` entry and every other entry);
* per scope (a thing): the request ids already processed, until they expire;
* small named values (a thing's last trusted status).

A :class:`~safething.net.client.Client` and a
:class:`~safething.things.Thing` take one (``trust=``). ``TrustState()``
alone keeps everything in memory only: a restart forgets it.
``TrustState.open(path)`` keeps it in an SQLite file (mode 0600); every
object opened on one path in one process shares one connection.

Writes are batched: a header, a processed id or a named value is written at
the end of the event-loop step that made it, entry marks within 50 ms (one
transaction for many reads, and for every state open on the same file: a
gateway's thousand custodial things share one), and everything at once by
:meth:`sync`, which a thing calls before it acts on a request. A crash can
forget only the entry marks of those last 50 ms.

When the file is lost (a fresh Pi, a wiped card), :attr:`created` is the
time the new, empty state was made: a thing then rejects requests issued
before that moment (they may have run already), and every MD is trusted
again on first use, as by a new reader (see ``docs/security.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import platformdirs

from safething.errors import StoreError

__all__ = ["ENV_TRUST_DIR", "HeaderState", "TrustState", "default_trust_dir"]

ENV_TRUST_DIR = "SAFETHING_TRUST_DIR"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS headers (
    md TEXT PRIMARY KEY, owners BLOB NOT NULL, version INTEGER NOT NULL, raw BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS processed (
    scope TEXT NOT NULL, id TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (scope, id));
"""
_PRUNE_EVERY_S = 60.0
_ENTRY_DELAY_S = 0.05
"""Entry marks are written at most this long after they changed (batched across reads)."""
_CACHE_MAX = 200_000
"""Entry marks a durable state caches in memory before it drops the written ones."""
_IN_CHUNK = 200
"""MDs (or prefixes) read in one query by :meth:`TrustState.load_headers` and
:meth:`TrustState.preload_all` (well under SQLite's limit of bound parameters)."""


def default_trust_dir() -> Path:
    """``$SAFETHING_TRUST_DIR``, else ``trust/`` in the user's SAFEthing data directory."""
    env = os.environ.get(ENV_TRUST_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("safething", appauthor=False)) / "trust"


@dataclass(frozen=True, slots=True)
class HeaderState:
    """The header of one MD a reader trusts."""

    owners: frozenset[bytes]
    """Owner sign keys (raw bytes); they never change."""
    version: int
    """Highest permission version accepted."""
    raw: bytes
    """The stored header accepted at that version."""


class _File:
    """One SQLite connection per trust file per process, shared by every TrustState."""

    _open: ClassVar[dict[Path, _File]] = {}
    _resolved: ClassVar[dict[Path, Path]] = {}
    """Absolute paths as given -> as opened (a gateway opens one file per thing)."""
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users = 0
        self.lock = threading.Lock()
        self.waiting: dict[TrustState, None] = {}
        """States whose entry marks wait for the next batch (in order, once each)."""
        self.timer: asyncio.TimerHandle | None = None
        self.timer_loop: asyncio.AbstractEventLoop | None = None
        self.soon_states: dict[TrustState, None] = {}
        """States whose changes are written at the end of this event-loop step."""
        self.soon_handle: asyncio.Handle | None = None
        self.soon_loop: asyncio.AbstractEventLoop | None = None
        existed = path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not existed:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            self.db.executescript(_SCHEMA)
            _entries_without_rowid(self.db)
            self.db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('created', ?)",
                (repr(time.time()).encode(),),
            )
            (raw,) = self.db.execute("SELECT value FROM meta WHERE name = 'created'").fetchone()
            self.created = float(raw)
        except (OSError, sqlite3.Error, ValueError) as e:
            raise StoreError(
                f"cannot use the trust state file {path} ({e}); move it away to start "
                "with a fresh trust state (see docs/security.md, 'losing the trust state')"
            ) from e

    @classmethod
    def acquire(cls, path: Path) -> _File:
        given = path
        path = cls._resolved.get(given) or Path(os.path.abspath(given.expanduser()))
        if given.is_absolute():  # the same file whatever the working directory
            if len(cls._resolved) >= 64:
                cls._resolved.clear()
            cls._resolved[given] = path
        with cls._guard:
            file = cls._open.get(path)
            if file is None:
                file = cls._open[path] = _File(path)
            file.users += 1
            return file

    def release(self) -> None:
        with self._guard:
            self.users -= 1
            if self.users == 0:
                self._open.pop(self.path, None)
                if self.timer is not None:
                    self.timer.cancel()
                    self.timer = None
                if self.soon_handle is not None:
                    self.soon_handle.cancel()
                    self.soon_handle = None
                self.db.close()

    def later(self, state: TrustState, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Write ``state``'s pending marks within ``delay`` seconds, in one transaction
        with those of every other state of this file that waits then."""
        self.waiting[state] = None
        if self.timer is None or self.timer_loop is not loop:  # (a loop of an earlier run)
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_later(delay, self.flush_waiting)
            self.timer_loop = loop

    def soon(self, state: TrustState, loop: asyncio.AbstractEventLoop) -> None:
        """Write ``state``'s pending changes at the end of this event-loop step, in one
        transaction with those of every other state of this file that asks meanwhile
        (a gateway's things born together)."""
        self.soon_states[state] = None
        if self.soon_handle is None or self.soon_loop is not loop:  # (an earlier run's)
            if self.soon_handle is not None:
                self.soon_handle.cancel()
            self.soon_handle = loop.call_soon(self.flush_soon)
            self.soon_loop = loop

    def flush_soon(self) -> None:
        self.soon_handle = None
        self._flush(self.soon_states, "soon")

    def flush_waiting(self) -> None:
        self.timer = None
        self._flush(self.waiting, "later")

    def _flush(self, asked: dict[TrustState, None], scheduled: str) -> None:
        """Write in one transaction what the states in ``asked`` hold: those still open
        and still waiting for this write (``scheduled``)."""
        states = [s for s in asked if s._scheduled == scheduled and not s._closed]
        asked.clear()
        now = time.time()
        batches = [(state, rows) for state in states if (rows := state._take(now))]
        if not batches:
            return
        self.write([rows for _, rows in batches], now)
        for state, rows in batches:
            state._written(rows, now)

    def write(self, batches: list[_Rows], now: float) -> None:
        """Write the rows of several states in one transaction."""
        try:
            with self.lock:
                db = self.db
                db.execute("BEGIN IMMEDIATE")
                try:
                    if len(batches) > 1 and not any(r.forgotten or r.prune for r in batches):
                        # One statement of each kind for all the states (a gateway's
                        # things): each kind's rows in order, so a later state's win.
                        batches = [_Rows.joined(batches)]
                    for rows in batches:  # in order: a later state's rows win
                        rows.write(db, now)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot write the trust state file {self.path}: {e}") from e


def _entries_without_rowid(db: sqlite3.Connection) -> None:
    """Move the entry marks of a file made before they were kept ``WITHOUT ROWID``
    (one B-tree a mark instead of a table and its index: half the pages a write
    touches) into such a table, in one transaction."""

    def old() -> bool:
        row = db.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()
        return "WITHOUT ROWID" not in str(row[0]).upper()

    if not old():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if old():  # (another process may have moved them meanwhile)
            db.execute(
                "CREATE TABLE entries_moved (key TEXT PRIMARY KEY, version INTEGER NOT NULL) "
                "WITHOUT ROWID"
            )
            db.execute("INSERT INTO entries_moved (key, version) SELECT key, version FROM entries")
            db.execute("DROP TABLE entries")
            db.execute("ALTER TABLE entries_moved RENAME TO entries")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


@dataclass(slots=True)
class _Rows:
    """What one state has to write."""

    headers: list[tuple[str, bytes, int, bytes]]
    entries: list[tuple[str, int]]
    forgotten: list[tuple[str]]
    processed: list[tuple[str, str, float]]
    values: list[tuple[str, bytes]]
    prune: bool

    def __bool__(self) -> bool:
        return bool(
            self.headers
            or self.entries
            or self.forgotten
            or self.processed
            or self.values
            or self.prune
        )

    @classmethod
    def joined(cls, batches: Sequence[_Rows]) -> _Rows:
        """The rows of several states, each kind in their order (none forgotten nor
        pruning: a forgotten mark must not move after a later state's mark of the same
        key, nor a prune after a later state's processed ids)."""
        return cls(
            headers=[row for rows in batches for row in rows.headers],
            entries=[row for rows in batches for row in rows.entries],
            forgotten=[],
            processed=[row for rows in batches for row in rows.processed],
            values=[row for rows in batches for row in rows.values],
            prune=False,
        )

    def write(self, db: sqlite3.Connection, now: float) -> None:
        """Write the rows (a statement only for the kinds there are)."""
        for sql, rows in (
            (
                "INSERT INTO headers (md, owners, version, raw) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (md) DO UPDATE SET owners = excluded.owners, "
                "version = excluded.version, raw = excluded.raw "
                "WHERE excluded.version >= headers.version",
                self.headers,
            ),
            (
                "INSERT INTO entries (key, version) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET version = max(version, excluded.version)",
                self.entries,
            ),
            ("DELETE FROM entries WHERE key = ?", self.forgotten),
            (
                "INSERT OR REPLACE INTO processed (scope, id, expires) VALUES (?, ?, ?)",
                self.processed,
            ),
            ("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", self.values),
        ):
            if rows:
                db.executemany(sql, rows)
        if self.prune:
            db.execute("DELETE FROM processed WHERE expires < ?", (now,))


def _header_state(row: Sequence[Any]) -> HeaderState:
    """A ``headers`` row's (owners, version, raw) as a :class:`HeaderState`."""
    owners = frozenset(row[0][i : i + 32] for i in range(0, len(row[0]), 32))
    return HeaderState(owners, int(row[1]), bytes(row[2]))


class TrustState:
    """A reader's verified high-water marks; in memory, or durable with :meth:`open`."""

    def __init__(self) -> None:
        self.path: Path | None = None
        """The file, or ``None`` for a state kept in memory only."""
        self.created = time.time()
        """When this state began (Unix time): requests issued before it are not trusted."""
        self._file: _File | None = None
        self._headers: dict[str, HeaderState | None] = {}
        self._entries: dict[str, int] = {}
        self._processed: dict[tuple[str, str], float] = {}
        self._values: dict[str, bytes | None] = {}
        self._dirty_headers: set[str] = set()
        self._dirty_entries: set[str] = set()
        self._dirty_processed: set[tuple[str, str]] = set()
        self._dirty_values: set[str] = set()
        self._forgotten: set[str] = set()
        self._scheduled = ""
        self._loaded: set[str] = set()
        self._pruned = 0.0
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TrustState:
        """The durable state in ``path`` (created with mode 0600 if missing)."""
        state = cls()
        state._file = _File.acquire(path if isinstance(path, Path) else Path(path))
        state.path = state._file.path
        state.created = state._file.created
        return state

    @classmethod
    def for_identity(cls, sign_key_hex: str, directory: Path | None = None) -> TrustState:
        """The durable state of one identity in ``directory`` (:func:`default_trust_dir`)."""
        return cls.open((directory or default_trust_dir()) / f"{sign_key_hex[:32]}.trust.db")

    @property
    def durable(self) -> bool:
        return self._file is not None

    # --- headers -----------------------------------------------------------------

    def header(self, md: str) -> HeaderState | None:
        if md not in self._headers:
            found = None
            if self._file is not None:
                row = self._query("SELECT owners, version, raw FROM headers WHERE md = ?", (md,))
                if row is not None:
                    found = _header_state(row)
            self._headers[md] = found
        return self._headers[md]

    def load_headers(self, mds: Sequence[str]) -> None:
        """Read the headers of several MDs not read yet in one query (what :meth:`header`
        of each would read: a client that has just created them checks each)."""
        wanted = [md for md in dict.fromkeys(mds) if md not in self._headers]
        if self._file is None or not wanted:
            return
        found: dict[str, HeaderState] = {}
        for i in range(0, len(wanted), _IN_CHUNK):
            part = wanted[i : i + _IN_CHUNK]
            rows = self._query_all(
                "SELECT md, owners, version, raw FROM headers WHERE md IN "
                f"({', '.join('?' * len(part))})",
                tuple(part),
            )
            found.update((str(row[0]), _header_state(row[1:])) for row in rows)
        for md in wanted:
            if md not in self._headers:  # (set meanwhile: that one is newer)
                self._headers[md] = found.get(md)

    def set_header(self, md: str, state: HeaderState) -> None:
        self._headers[md] = state
        self._dirty_headers.add(md)
        self._schedule()

    # --- entries -----------------------------------------------------------------

    def entry_version(self, key: str) -> int:
        """Highest version verified for the entry at store key ``key`` (-1: none)."""
        version = self._entries.get(key)
        if version is None:
            version = -1
            if self._file is not None and key[: key.rfind(".") + 1] not in self._loaded:
                row = self._query("SELECT version FROM entries WHERE key = ?", (key,))
                if row is not None:
                    version = int(row[0])
            self._cache_room()
            self._entries[key] = version
        return version

    def _cache_room(self) -> None:
        if self._file is not None and len(self._entries) >= _CACHE_MAX:  # all in the file
            self._entries = {k: self._entries[k] for k in self._dirty_entries}
            self._loaded.clear()

    def preload(self, prefix: str) -> None:
        """Read the marks of every entry under ``prefix`` (ending in ``.``) in one query,
        so that lookups of entries never seen under it need none."""
        self.preload_all([prefix])

    def preload_all(self, prefixes: Sequence[str]) -> None:
        """:meth:`preload` of several prefixes, in one query (the MDs a client has just
        created)."""
        wanted = [p for p in dict.fromkeys(prefixes) if p not in self._loaded]
        if self._file is None or not wanted:
            return
        self._cache_room()
        for i in range(0, len(wanted), _IN_CHUNK):
            part = wanted[i : i + _IN_CHUNK]
            rows = self._query_all(
                "SELECT key, version FROM entries WHERE "
                + " OR ".join(["(key >= ? AND key < ?)"] * len(part)),
                tuple(bound for p in part for bound in (p, p[:-1] + "/")),
            )
            for key, version in rows:
                if key not in self._dirty_entries and key not in self._forgotten:
                    self._entries[key] = int(version)
            self._loaded.update(part)

    def set_entry_version(self, key: str, version: int) -> None:
        if version > self.entry_version(key):
            self._entries[key] = version
            self._dirty_entries.add(key)
            self._forgotten.discard(key)
            self._schedule(_ENTRY_DELAY_S)

    def forget_entry(self, key: str) -> None:
        """Drop the mark of an entry removed for good (purged; its key may be reused)."""
        self._entries[key] = -1
        self._dirty_entries.discard(key)
        self._forgotten.add(key)
        self._schedule(_ENTRY_DELAY_S)

    # --- processed requests ------------------------------------------------------

    def processed(self, scope: str, request_id: str) -> bool:
        """True if ``request_id`` was processed in ``scope`` (and has not expired)."""
        expires = self._processed.get((scope, request_id))
        if expires is None and self._file is not None:
            row = self._query(
                "SELECT expires FROM processed WHERE scope = ? AND id = ?", (scope, request_id)
            )
            if row is not None:
                expires = self._processed[(scope, request_id)] = float(row[0])
        return expires is not None

    def mark_processed(self, scope: str, request_id: str, expires: float) -> None:
        self._processed[(scope, request_id)] = expires
        self._dirty_processed.add((scope, request_id))
        self._schedule()

    # --- named values ------------------------------------------------------------

    def value(self, name: str) -> bytes | None:
        if name not in self._values:
            found = None
            if self._file is not None:
                row = self._query("SELECT value FROM meta WHERE name = ?", ("v:" + name,))
                found = None if row is None else bytes(row[0])
            self._values[name] = found
        return self._values[name]

    def load_values(self, names: Sequence[str]) -> None:
        """Read several values not read yet in one query (what :meth:`value` of each
        would read)."""
        wanted = [n for n in dict.fromkeys(names) if n not in self._values]
        if self._file is None or not wanted:
            return
        found: dict[str, bytes] = {}
        for i in range(0, len(wanted), _IN_CHUNK):
            part = wanted[i : i + _IN_CHUNK]
            rows = self._query_all(
                f"SELECT name, value FROM meta WHERE name IN ({', '.join('?' * len(part))})",
                tuple("v:" + n for n in part),
            )
            found.update((str(row[0])[2:], bytes(row[1])) for row in rows)
        for name in wanted:
            if name not in self._values:
                self._values[name] = found.get(name)

    def set_value(self, name: str, value: bytes) -> None:
        self._values[name] = value
        self._dirty_values.add(name)
        self._schedule()

    # --- writing -----------------------------------------------------------------

    def _schedule(self, delay: float = 0.0) -> None:
        """Write soon: at the end of this event-loop step (headers, processed ids, values),
        or within ``delay`` seconds (entry marks: one transaction for many reads)."""
        if self._file is None or self._scheduled == "soon":
            return
        if delay and self._scheduled == "later":
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.sync()
            return
        if delay:
            self._scheduled = "later"
            self._file.later(self, loop, delay)
        else:
            self._scheduled = "soon"
            self._file.soon(self, loop)

    def sync(self) -> None:
        """Write every pending change now (one transaction)."""
        self._scheduled = ""
        file = self._file
        if file is None or self._closed:
            return
        now = time.time()
        rows = self._take(now)
        if not rows:
            return
        file.write([rows], now)
        self._written(rows, now)

    def _take(self, now: float) -> _Rows:
        """The pending changes as rows to write; they are no longer pending."""
        self._scheduled = ""
        rows = _Rows(
            headers=[
                (md, b"".join(sorted(h.owners)), h.version, h.raw)
                for md in self._dirty_headers
                if (h := self._headers.get(md)) is not None
            ],
            entries=[(k, self._entries[k]) for k in self._dirty_entries],
            forgotten=[(k,) for k in self._forgotten if k not in self._dirty_entries],
            processed=[(s, i, self._processed[(s, i)]) for s, i in self._dirty_processed],
            values=[
                ("v:" + n, v) for n in self._dirty_values if (v := self._values.get(n)) is not None
            ],
            prune=now - self._pruned > _PRUNE_EVERY_S,
        )
        self._dirty_headers.clear()
        self._dirty_entries.clear()
        self._dirty_processed.clear()
        self._dirty_values.clear()
        self._forgotten.clear()
        return rows

    def _written(self, rows: _Rows, now: float) -> None:
        if rows.prune:
            self._pruned = now
            for item in [k for k, exp in self._processed.items() if exp < now]:
                del self._processed[item]

    def _query_all(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        assert self._file is not None
        try:
            with self._file.lock:
                rows = self._file.db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the trust state file {self._file.path}: {e}") from e
        return [tuple(row) for row in rows]

    def _query(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        assert self._file is not None
        try:
            with self._file.lock:
                row = self._file.db.execute(sql, params).fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read the trust state file {self._file.path}: {e}") from e
        return None if row is None else tuple(row)

    def close(self) -> None:
        """Write what is pending and release the file (also when that write fails: the
        error is raised after). Idempotent."""
        if self._closed:
            return
        try:
            self.sync()
        finally:
            self._closed = True
            if self._file is not None:
                self._file.release()
