"""The gateway's device registry: one SQLite file next to the vault, mode 0600.

It holds what the data network must not see: each device's link secret and
the custodial thing's keys, the link counters in both directions, the
durable queue of messages waiting for a device (action requests, desired
values) and the buffer of readings accepted while the store was
unreachable. Every change is committed before the gateway acknowledges it.

**Off the event loop, with bounded waits.** Writes go through one
connection, serialised by a lock; the gateway runs them on the registry's
own worker thread (:meth:`Registry.call`), so another process holding a
lock on the file (a backup, an ``sqlite3`` shell) stalls only the messages
that need a write, never the event loop. (A turn's only ``accept`` or
``unbuffer``, when the worker is idle, runs on the loop if the file's lock is
free at once, without a checkpoint: an idle gateway's reading does not cross
to the worker and back; see :meth:`Registry._call_here`.) A write waits at most
``write_timeout`` seconds for the file's lock, then fails with
:class:`RegistryBusyError` (a :class:`~safething.errors.StoreError`: the
device is told to retry, an MQTT message is kept unacknowledged and tried
again). Reads use a second connection: in WAL mode they never wait for a
writer, so they stay on the loop (microseconds).

**The rows of the devices that speak.** :meth:`Registry.cached` answers the
gateway's look-up of a device on every message from the rows it read recently
(at most :data:`CACHED_DEVICES`; the one whose counter was accepted longest ago
goes first): a row this
registry changes is dropped from them once the change is committed, and the
counter :meth:`Registry.counted` says was accepted is kept up to date. Another
process (``safething device revoke``) can revoke a device meanwhile, so a cached
row is never what refuses or admits a revoked device: the transaction that spends
a message's counter (:meth:`Registry.accept`, :meth:`Registry.use_will`) spends it
only for a device that is not revoked, else raises :class:`RevokedDeviceError`.

**File mode.** The file is created with mode 0600, and an existing file
with a looser mode is set to 0600 when it is opened (it holds every
device's secret).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from safething.errors import LimitExceededError, StoreError
from safething.net import EncryptionKey, Identity, SigningKey
from safething.store.sqlite import WaitSettings
from safething_gateway.protocol import (
    VERSION,
    ReplayError,
    RevokedDeviceError,
    UnknownDeviceError,
    check_device_id,
)

__all__ = [
    "CACHED_DEVICES",
    "MAX_PENDING_DOWNLINKS",
    "BufferedUplink",
    "DeviceRecord",
    "Downlink",
    "DownlinkQueueFullError",
    "Registry",
    "RegistryBusyError",
]

log = logging.getLogger("safething.gateway.registry")

_P = ParamSpec("_P")
_T = TypeVar("_T")

MAX_PENDING_DOWNLINKS = 256
"""Downlinks queued for one device at most (action requests and desired values it has
not acknowledged); the total is this times the provisioned devices."""

CACHED_DEVICES = 16_384
"""Device rows :meth:`Registry.cached` keeps (about 4 KB each, with its description):
more than the 10,000 devices a gateway is sized for, so that devices speaking in turn
do not push each other out (with 4,096 every reading of 10,000 devices read its row
and derived its keys again: docs/benchmarks.md, ``gateway.sustained10k``)."""

LINKED_TRANSPORTS = ("mqtt", "coap", "http")
"""Transports of devices that speak the device link (docs/protocol.md) to the gateway."""
TRANSPORTS = (*LINKED_TRANSPORTS, "adopted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    secret BLOB NOT NULL,
    keys BLOB NOT NULL,
    created REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    rx_counter INTEGER NOT NULL DEFAULT 0,
    tx_counter INTEGER NOT NULL DEFAULT 0,
    will_counter INTEGER,
    description TEXT,
    online INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    meta TEXT NOT NULL DEFAULT '{}',
    protocol INTEGER NOT NULL DEFAULT 1,
    registered INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS downlinks (
    device_id TEXT NOT NULL,
    counter INTEGER NOT NULL,
    channel TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    PRIMARY KEY (device_id, counter)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forwarded (
    device_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    counter INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (device_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uplinks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    body BLOB NOT NULL,
    content_format TEXT NOT NULL,
    received REAL NOT NULL
);
"""


class RegistryBusyError(StoreError):
    """The registry file stayed locked (by another process) longer than the write timeout."""


class DownlinkQueueFullError(LimitExceededError):
    """A device already has :data:`MAX_PENDING_DOWNLINKS` downlinks it has not acknowledged."""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One provisioned device."""

    device_id: str
    transport: str
    secret: bytes
    identity: Identity
    """The custodial thing's keys (the gateway signs for the device)."""
    created: float
    revoked: bool
    rx_counter: int
    tx_counter: int
    will_counter: int | None
    description: dict[str, Any] | None
    online: bool
    last_seen: float | None
    meta: dict[str, Any]
    protocol: int = 1
    """The link version the device was provisioned with: 2 (``ST2``, bodies encrypted)
    or 1 (``ST1``, bodies in clear; accepted with a warning). No other is accepted."""

    @property
    def linked(self) -> bool:
        """The device speaks the device link, so the gateway forwards its actions and
        desired values to it; an adopted device's adapter handles its own."""
        return self.transport in LINKED_TRANSPORTS


@dataclass(frozen=True, slots=True)
class Downlink:
    """A message waiting for (or sent to, not yet acknowledged by) a device."""

    device_id: str
    counter: int
    channel: str
    body: bytes
    created: float
    expires: float | None


@dataclass(frozen=True, slots=True)
class BufferedUplink:
    """A verified device message accepted while the store was unreachable."""

    id: int
    device_id: str
    channel: str
    body: bytes
    content_format: str
    received: float


class Registry:
    """The registry file. Its methods are synchronous; the gateway runs writes on the
    registry's worker thread with :meth:`call` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        write_timeout: float = 2.0,
        read_timeout: float = 0.2,
        max_pending: int = MAX_PENDING_DOWNLINKS,
    ) -> None:
        self.path = path
        self.write_timeout = write_timeout
        """Seconds a write waits for another process's lock before :class:`RegistryBusyError`."""
        self.max_pending = max_pending
        """Unacknowledged downlinks per device at most (:class:`DownlinkQueueFullError`)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, 0o600)
                log.warning(
                    "%s had mode %04o, readable by others; set to 0600 (it holds device secrets)",
                    path,
                    mode,
                )
        finally:
            os.close(fd)
        self._lock = threading.RLock()  # a group commit holds it around every call
        self._batching = False
        """True while the worker thread runs a group commit (see :meth:`call`)."""
        self._batch_thread = 0
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[Callable[[], Any], asyncio.Future[Any], Any]] = []
        self._draining = False
        self._idle_calls = 0
        self._pending: dict[
            asyncio.AbstractEventLoop, list[tuple[Callable[[], Any], asyncio.Future[Any], Any]]
        ] = {}
        """Calls made during this turn of each event loop, queued at its end (:meth:`call`)."""
        self._closed = False
        self._inlining = False
        """A call runs on the loop (:meth:`_call_here`), with those settings."""
        self._read_lock = threading.Lock()
        self._cache: dict[str, DeviceRecord] = {}
        """Recently used device rows (see the module docstring), least recent first."""
        self._cache_lock = threading.Lock()
        self._generation = 0
        """Bumped by every change of a device row: a row read before it is not cached."""
        self._changed: list[str] = []
        """Devices whose rows a group commit changed: dropped from the cache after it."""
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="safething-registry"
        )
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={int(write_timeout * 1000)}")
            ((self._autocheckpoint,),) = self._db.execute("PRAGMA wal_autocheckpoint").fetchall()
            self._waits = WaitSettings(
                self._db,
                busy_timeout_ms=int(write_timeout * 1000),
                autocheckpoint=self._autocheckpoint,
            )
            """The write connection's settings for a call on the loop or any other write;
            used with :attr:`_lock` held."""
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(devices)")}
            if "protocol" not in columns:  # a registry from before ST2: its devices speak ST1
                self._db.execute(
                    "ALTER TABLE devices ADD COLUMN protocol INTEGER NOT NULL DEFAULT 1"
                )
            if "registered" not in columns:  # before things were restored on demand
                self._db.execute(
                    "ALTER TABLE devices ADD COLUMN registered INTEGER NOT NULL DEFAULT 1"
                )
            self._rdb = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._rdb.execute(f"PRAGMA busy_timeout={int(read_timeout * 1000)}")
        except sqlite3.OperationalError as e:
            raise RegistryBusyError(f"{path} is locked or unreadable ({e})") from e
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path} is not a gateway registry or is damaged ({e})") from e
        for name in (path.name + "-wal", path.name + "-shm"):
            side = path.with_name(name)
            if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
                side.chmod(0o600)

    def close(self) -> None:
        self._closed = True
        for loop in list(self._pending):  # calls made just before: run, not refused
            self._hand_over(loop)
        self._executor.shutdown(wait=True)
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._waits.use(here=False)  # its last checkpoint as configured
        self._db.close()
        self._rdb.close()

    async def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` (a method of this registry) on the registry's
        worker thread, so the event loop never waits for the file's lock.

        Calls made while the thread is busy are committed together (group commit): the
        thread takes every call waiting, runs each in a savepoint of one transaction
        (a call that raises is rolled back alone, its error goes to its caller) and
        commits once. Each call returns only after that commit. The calls made during
        one turn of the event loop are queued together at its end, so they are one
        group (the concurrent readings of a busy gateway make theirs in the same turns,
        as the commits they waited for return together)."""
        if self._closed:
            raise RuntimeError(f"the device registry {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append((functools.partial(fn, *args, **kwargs), future, loop))
        return await future

    def _call_here(self, call: Callable[[], Any], future: asyncio.Future[Any]) -> bool:
        """On the loop, for :meth:`_hand_over`: a turn's only call, run here and now if it
        is one of :data:`_INLINE` and the worker is idle; False (nothing done) when the
        connection is in use or another process holds the file's write lock, tried
        without waiting (the loop never waits for it; the worker does). An idle
        gateway's reading thus crosses to the worker and back no more (two thread
        wake-ups with their GIL hand-overs, twice a reading), and every group of calls
        is what it was. No checkpoint runs here (its fsyncs), only in the worker's
        commits: one such call in :data:`_INLINE_EVERY` goes there."""
        fn = getattr(call, "func", None)  # (a functools.partial)
        if (
            getattr(fn, "__name__", None) not in _INLINE
            or getattr(fn, "__self__", None) is not self
            or self._draining
            or self._closed  # (close() hands over what is left, maybe from another thread)
        ):
            return False
        self._idle_calls += 1
        if self._idle_calls >= _INLINE_EVERY:
            self._idle_calls = 0
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._waits.use(here=True)
            self._inlining = True
            try:
                outcome = _outcome(call)
            finally:
                self._inlining = False
        finally:
            self._lock.release()
        if not outcome[0] and isinstance(outcome[1], RegistryBusyError):
            return False  # nothing written (see _INLINE): the worker runs it again
        _settle([(future, outcome)])
        return True

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``, at the end of a turn: its calls to the worker thread."""
        calls = self._pending.pop(loop, [])
        if not calls:
            return
        if len(calls) == 1 and self._call_here(calls[0][0], calls[0][1]):
            return
        with self._queue_lock:
            self._queue += calls
            start = not self._draining
            if start:
                self._draining = True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError as e:  # closed meanwhile
                with self._queue_lock:
                    failed, self._queue, self._draining = self._queue, [], False
                _settle([(future, (False, e)) for _, future, _ in failed])

    def _drain(self) -> None:
        """On the worker thread: commit what :meth:`call` queued, batch after batch."""
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            outcomes = self._commit_batch([fn for fn, _, _ in batch])
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
            for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(_settle, settled)

    def _commit_batch(self, calls: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
        """Every call in a savepoint of one ``BEGIN IMMEDIATE`` transaction; ``(ok, result
        or exception)`` for each, in order."""
        if len(calls) == 1:
            return [_outcome(calls[0])]
        db = self._db
        with self._lock:
            try:
                self._waits.use(here=False)
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                return [(False, self._failed(e)) for _ in calls]
            self._batching, self._batch_thread = True, threading.get_ident()
            outcomes: list[tuple[bool, Any]] = []
            try:
                for call in calls:
                    db.execute("SAVEPOINT registry_call")
                    outcome = _outcome(call)
                    if not outcome[0]:
                        db.execute("ROLLBACK TO registry_call")
                    db.execute("RELEASE registry_call")
                    outcomes.append(outcome)
                db.execute("COMMIT")
            except sqlite3.Error as e:  # the transaction itself failed: nothing was kept
                if db.in_transaction:
                    db.rollback()
                return [(False, self._failed(e)) for _ in calls]
            finally:
                self._batching = False
                changed, self._changed = self._changed, []
                for device_id in changed:
                    self._forget(device_id)
            return outcomes

    def _failed(self, e: sqlite3.Error) -> StoreError:
        error = self._lock_error(e)
        error.__cause__ = e
        return error

    def _lock_error(self, e: sqlite3.Error) -> StoreError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return RegistryBusyError(
                f"the device registry {self.path} stayed locked for more than "
                f"{self.write_timeout:g} s ({text})"
            )
        return StoreError(f"the device registry {self.path} failed: {text}")

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The write connection, serialised; SQLite's lock errors become StoreErrors."""
        with self._lock:
            try:
                if not self._inlining:
                    self._waits.use(here=False)
                yield self._db
            except sqlite3.OperationalError as e:
                if self._db.in_transaction and not self._batching:
                    self._db.rollback()  # (in a group commit: its savepoint is rolled back)
                raise self._lock_error(e) from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The write connection in a ``BEGIN IMMEDIATE`` transaction, committed at the end
        and rolled back on an error; inside a group commit, the call's savepoint."""
        with self._writing() as db:
            if self._batching:
                yield db
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise
            db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._batching and threading.get_ident() == self._batch_thread:
            # a call of a group commit reads what the calls before it wrote, not yet
            # committed: on the write connection (whose lock this thread holds)
            with self._writing() as db:
                yield db
            return
        with self._read_lock:
            try:
                yield self._rdb
            except sqlite3.OperationalError as e:
                raise RegistryBusyError(f"the device registry {self.path}: {e}") from e

    # --- devices -----------------------------------------------------------------

    def add(
        self,
        device_id: str,
        transport: str,
        *,
        secret: bytes | None = None,
        identity: Identity | None = None,
        meta: dict[str, Any] | None = None,
        protocol: int = VERSION,
    ) -> DeviceRecord:
        """Provision a device; ``ValueError`` if the id exists, the transport or the link
        version (``protocol``: 2, or 1 for an old device) is unknown."""
        check_device_id(device_id)
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
        if protocol not in (1, 2):
            raise ValueError(f"unknown link version {protocol!r}: 2 (ST2), or 1 (ST1, in clear)")
        secret = secret or secrets.token_bytes(32)
        identity = identity or Identity.generate(device_id)
        keys = identity.sign_key.seed + identity.encryption_key.secret
        with self._writing() as db:
            try:
                db.execute(
                    "INSERT INTO devices(id, transport, secret, keys, created, meta, protocol) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        device_id,
                        transport,
                        secret,
                        keys,
                        time.time(),
                        json.dumps(meta or {}),
                        protocol,
                    ),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"device {device_id!r} is already provisioned") from None
        return self.get(device_id, allow_revoked=True)

    def get(self, device_id: str, *, allow_revoked: bool = False) -> DeviceRecord:
        record = self.find(device_id)
        if record is None:
            raise UnknownDeviceError(f"unknown device {device_id!r}")
        if record.revoked and not allow_revoked:
            raise RevokedDeviceError(f"device {device_id!r} is revoked")
        return record

    def find(self, device_id: str) -> DeviceRecord | None:
        with self._reading() as db:
            row = db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        return None if row is None else _record(row)

    def cached(self, device_id: str) -> DeviceRecord | None:
        """:meth:`find`, from the rows read recently (the gateway's look-up on every
        message). Its ``revoked`` may be out of date (another process revokes): the
        counter's transaction decides (see the module docstring); its ``rx_counter`` is
        the last one :meth:`counted`, or newer."""
        cache = self._cache
        record = cache.get(device_id)
        if record is not None:
            return record
        generation = self._generation
        record = self.find(device_id)
        if record is not None:
            with self._cache_lock:
                if generation == self._generation:  # no row changed while it was read
                    cache[device_id] = record
                    if len(cache) > CACHED_DEVICES:
                        del cache[next(iter(cache))]
        return record

    def counted(self, device_id: str, counter: int) -> None:
        """``counter`` of the device was accepted (:meth:`accept` returned): the cached
        row has it as its ``rx_counter``, so a replay is refused before it costs a write."""
        with self._cache_lock:
            record = self._cache.pop(device_id, None)
            if record is not None:
                if record.rx_counter < counter:
                    record = _with_counter(record, counter)
                self._cache[device_id] = record  # the most recently used now

    def _forget(self, device_id: str) -> None:
        with self._cache_lock:
            self._generation += 1
            self._cache.pop(device_id, None)

    def _spend_counter(
        self, db: sqlite3.Connection, device_id: str, counter: int, now: float
    ) -> None:
        try:
            _spend_counter(db, device_id, counter, now)
        except RevokedDeviceError:
            self._change(device_id)  # revoked by another process: no longer cached
            raise

    def _change(self, device_id: str) -> None:
        """The device's row was changed: drop it from the cache once that is committed
        (now, or after the group commit this call is part of)."""
        if self._batching and threading.get_ident() == self._batch_thread:
            self._changed.append(device_id)
        else:
            self._forget(device_id)

    def devices(self) -> list[DeviceRecord]:
        with self._reading() as db:
            rows = db.execute("SELECT * FROM devices ORDER BY id").fetchall()
        return [_record(r) for r in rows]

    def born(self) -> dict[str, tuple[str, bool]]:
        """Device id -> (transport, registered) of every device that was born (it has a
        description) and is not revoked; ``registered`` is False while the thing of its
        latest birth is not known to be in the store (:meth:`accept` with a description,
        :meth:`mark_registered`). One query, no keys derived (a gateway's start-up)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, transport, registered FROM devices"
                " WHERE description IS NOT NULL AND description != '' AND revoked = 0"
            ).fetchall()
        return {device_id: (transport, bool(done)) for device_id, transport, done in rows}

    def online(self, transport: str) -> int:
        """How many devices of ``transport`` are believed online (not revoked)."""
        with self._reading() as db:
            ((count,),) = db.execute(
                "SELECT count(*) FROM devices WHERE transport = ? AND online = 1 AND revoked = 0",
                (transport,),
            ).fetchall()
        return int(count)

    def waiting(self, transport: str) -> list[str]:
        """Ids of the devices of ``transport`` believed online (not revoked) that have a
        downlink queued: what a bridge pushes after it (re)connects. One query, no keys
        derived (a gateway with 10,000 devices reconnects in milliseconds)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id FROM devices AS d WHERE transport = ? AND online = 1 AND revoked = 0"
                " AND EXISTS (SELECT 1 FROM downlinks AS q WHERE q.device_id = d.id)"
                " ORDER BY id",
                (transport,),
            ).fetchall()
        return [device_id for (device_id,) in rows]

    def mark_registered(self, device_id: str) -> None:
        """The thing of the device's latest birth is in the store."""
        with self._writing() as db:
            db.execute(
                "UPDATE devices SET registered = 1 WHERE id = ? AND registered = 0", (device_id,)
            )
        self._change(device_id)

    def revoke(self, device_id: str) -> None:
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE devices SET revoked = 1, online = 0 WHERE id = ?", (device_id,)
            )
            if cur.rowcount == 0:
                raise UnknownDeviceError(f"unknown device {device_id!r}")
            db.execute("DELETE FROM downlinks WHERE device_id = ?", (device_id,))
        self._change(device_id)

    def accept_counter(self, device_id: str, counter: int) -> None:
        """Record ``counter`` as the device's newest; ``ReplayError`` unless it is newer,
        :class:`RevokedDeviceError` for a revoked device."""
        with self._writing() as db:
            self._spend_counter(db, device_id, counter, time.time())

    def accept(
        self,
        device_id: str,
        counter: int,
        *,
        journal: tuple[str, bytes, str] | None = None,
        description: dict[str, Any] | None = None,
    ) -> int | None:
        """:meth:`accept_counter` and, in the same transaction, what the message asks
        for that must not be lost once its counter is spent: a reading or event kept
        (``journal``: channel, body, content format) until the gateway has written it
        to the store (:meth:`unbuffer`; replayed by the gateway after a crash), or a
        birth's ``description`` (its thing is registered from it after a crash).
        Returns the journal entry's id. A revoked device's counter is not spent
        (:class:`RevokedDeviceError`), whatever a cached row said."""
        now = time.time()
        uplink = None
        with self._transaction() as db:
            self._spend_counter(db, device_id, counter, now)
            if description is not None:
                db.execute(
                    "UPDATE devices SET description = ?, registered = 0 WHERE id = ?",
                    (json.dumps(description), device_id),
                )
            if journal is not None:
                channel, body, content_format = journal
                uplink = db.execute(
                    "INSERT INTO uplinks(device_id, channel, body, content_format, received) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (device_id, channel, body, content_format, now),
                ).lastrowid
        if description is not None:
            # once committed (a row read before the commit would be kept otherwise)
            self._change(device_id)
        return uplink

    def set_will(self, device_id: str, counter: int | None) -> None:
        with self._writing() as db:
            db.execute("UPDATE devices SET will_counter = ? WHERE id = ?", (counter, device_id))
        self._change(device_id)

    def use_will(self, device_id: str, counter: int) -> bool:
        """Accept the announced last-will counter once (the broker sends the will later);
        False for a revoked device (whose counter :meth:`accept` then refuses)."""
        with self._writing() as db:
            cur = db.execute(
                "UPDATE devices SET will_counter = NULL"
                " WHERE id = ? AND will_counter = ? AND revoked = 0",
                (device_id, counter),
            )
        self._change(device_id)
        return cur.rowcount == 1

    def set_online(self, device_id: str, online: bool) -> None:
        with self._writing() as db:
            db.execute(
                "UPDATE devices SET online = ?, last_seen = ? WHERE id = ?",
                (int(online), time.time(), device_id),
            )
        self._change(device_id)

    def set_description(
        self, device_id: str, description: dict[str, Any], *, registered: bool = True
    ) -> None:
        """The device's description; ``registered``: its thing is in the store (else
        :meth:`mark_registered` says so later)."""
        with self._writing() as db:
            db.execute(
                "UPDATE devices SET description = ?, registered = ? WHERE id = ?",
                (json.dumps(description), int(registered), device_id),
            )
        self._change(device_id)

    def set_born(self, device_id: str, *, registered: bool) -> None:
        """The device was born (its description kept by :meth:`accept`) and is online;
        ``registered``: its thing is in the store (else :meth:`mark_registered` later)."""
        with self._writing() as db:
            db.execute(
                "UPDATE devices SET registered = ?, online = 1, last_seen = ? WHERE id = ?",
                (int(registered), time.time(), device_id),
            )
        self._change(device_id)

    def set_meta(self, device_id: str, meta: dict[str, Any]) -> None:
        with self._writing() as db:
            db.execute("UPDATE devices SET meta = ? WHERE id = ?", (json.dumps(meta), device_id))
        self._change(device_id)

    # --- downlinks ---------------------------------------------------------------

    def enqueue(
        self, device_id: str, channel: str, body: bytes, *, expires: float | None = None
    ) -> Downlink:
        """Take the next gateway counter and queue a message for the device, durably;
        :class:`DownlinkQueueFullError` when it already has :attr:`max_pending` waiting,
        :class:`RevokedDeviceError` for a revoked device."""
        downlink = self._enqueue(device_id, channel, body, expires=expires, once=False)
        assert downlink is not None
        return downlink

    def enqueue_once(
        self, device_id: str, channel: str, body: bytes, *, expires: float
    ) -> Downlink | None:
        """Like :meth:`enqueue`, for a message the device must get at most once until
        ``expires`` (an action request): queued again it is the same downlink (same counter,
        which the device refuses as seen), and None once the device has acknowledged it
        (a request resumed after a gateway restart waits for its result, never re-sent)."""
        return self._enqueue(device_id, channel, body, expires=expires, once=True)

    def _enqueue(
        self, device_id: str, channel: str, body: bytes, *, expires: float | None, once: bool
    ) -> Downlink | None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "DELETE FROM downlinks WHERE device_id = ? AND expires IS NOT NULL AND expires < ?",
                (device_id, now),
            )
            if once:
                db.execute("DELETE FROM forwarded WHERE expires < ?", (now,))
                seen = db.execute(
                    "SELECT counter FROM forwarded WHERE device_id = ? AND channel = ?",
                    (device_id, channel),
                ).fetchone()
                if seen is not None:
                    row = db.execute(
                        "SELECT * FROM downlinks WHERE device_id = ? AND counter = ?",
                        (device_id, seen[0]),
                    ).fetchone()
                    return Downlink(*row) if row is not None else None
            waiting = db.execute(
                "SELECT COUNT(*) FROM downlinks WHERE device_id = ?", (device_id,)
            ).fetchone()[0]
            if waiting >= self.max_pending:
                raise DownlinkQueueFullError(
                    f"device {device_id!r} has {waiting} downlinks it has not acknowledged "
                    f"(the limit is {self.max_pending})",
                    limit=self.max_pending,
                    actual=waiting,
                )
            # A device revoked meanwhile (by another process, after the caller's look-up)
            # gets nothing queued: revoking dropped its queue, nothing may refill it.
            row = db.execute(
                "UPDATE devices SET tx_counter = tx_counter + 1 WHERE id = ? AND revoked = 0"
                " RETURNING tx_counter",
                (device_id,),
            ).fetchone()
            if row is None:
                if db.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone():
                    raise RevokedDeviceError(f"device {device_id!r} is revoked")
                raise UnknownDeviceError(f"unknown device {device_id!r}")
            db.execute(
                "INSERT INTO downlinks VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, row[0], channel, body, now, expires),
            )
            if once:
                db.execute(
                    "INSERT INTO forwarded VALUES (?, ?, ?, ?)",
                    (device_id, channel, row[0], expires),
                )
        return Downlink(device_id, row[0], channel, body, now, expires)

    def pending(self, device_id: str) -> list[Downlink]:
        """Queued messages for a device, oldest first; expired ones are left out (and
        dropped by :meth:`expire` or the next :meth:`enqueue`)."""
        now = time.time()
        with self._reading() as db:
            rows = db.execute(
                "SELECT * FROM downlinks WHERE device_id = ? AND (expires IS NULL OR expires >= ?)"
                " ORDER BY counter",
                (device_id, now),
            ).fetchall()
        return [Downlink(*r) for r in rows]

    def expire(self, device_id: str) -> int:
        """Drop the device's expired downlinks; returns how many."""
        with self._writing() as db:
            cur = db.execute(
                "DELETE FROM downlinks WHERE device_id = ? AND expires IS NOT NULL AND expires < ?",
                (device_id, time.time()),
            )
            return cur.rowcount

    def ack(self, device_id: str, counter: int) -> bool:
        """The device has the downlink ``counter`` (and all before it)."""
        with self._writing() as db:
            cur = db.execute(
                "DELETE FROM downlinks WHERE device_id = ? AND counter <= ?", (device_id, counter)
            )
            return cur.rowcount > 0

    def queue_depth(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM downlinks").fetchone()[0])

    # --- buffered uplinks (store unreachable) ------------------------------------

    def buffer(self, device_id: str, channel: str, body: bytes, content_format: str) -> int:
        with self._writing() as db:
            cur = db.execute(
                "INSERT INTO uplinks(device_id, channel, body, content_format, received) "
                "VALUES (?, ?, ?, ?, ?)",
                (device_id, channel, body, content_format, time.time()),
            )
            return int(cur.lastrowid or 0)

    def buffered(self, limit: int = 500) -> list[BufferedUplink]:
        with self._reading() as db:
            rows = db.execute("SELECT * FROM uplinks ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [BufferedUplink(*r) for r in rows]

    def unbuffer(self, ids: list[int]) -> None:
        with self._writing() as db:
            db.executemany("DELETE FROM uplinks WHERE id = ?", [(i,) for i in ids])

    def buffer_depth(self) -> int:
        with self._reading() as db:
            return int(db.execute("SELECT COUNT(*) FROM uplinks").fetchone()[0])


_INLINE = frozenset({"accept", "unbuffer"})
"""The calls :meth:`Registry.call` may run on the loop when the worker is idle: a lock
error leaves nothing written (``accept``: one transaction; ``unbuffer``: deletes), so the
worker can run them again."""

_INLINE_EVERY = 32
"""Of the calls an idle worker could leave to the loop, every this many goes to the
worker all the same: only its commits checkpoint the WAL (see :meth:`Registry._call_here`)."""


def _outcome(call: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, call()
    except BaseException as e:  # handed to the caller's future
        return False, e


def _settle(settled: list[tuple[asyncio.Future[Any], tuple[bool, Any]]]) -> None:
    """On the caller's loop: each future gets its call's result or exception."""
    for future, (ok, value) in settled:
        if future.done():  # its caller was cancelled (the call was made all the same)
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _spend_counter(db: sqlite3.Connection, device_id: str, counter: int, now: float) -> None:
    """Record ``counter`` as the device's newest (and when it was seen); ``ReplayError``
    unless it is above the last accepted, ``RevokedDeviceError`` for a revoked device,
    ``UnknownDeviceError`` for no such device."""
    cur = db.execute(
        "UPDATE devices SET rx_counter = ?, last_seen = ?"
        " WHERE id = ? AND rx_counter < ? AND revoked = 0",
        (counter, now, device_id, counter),
    )
    if cur.rowcount == 0:
        row = db.execute(
            "SELECT rx_counter, revoked FROM devices WHERE id = ?", (device_id,)
        ).fetchone()
        if row is None:
            raise UnknownDeviceError(f"unknown device {device_id!r}")
        if row[1]:
            raise RevokedDeviceError(f"device {device_id!r} is revoked")
        raise ReplayError(
            f"counter {counter} of {device_id!r} is not above the last accepted "
            f"({row[0]}): replayed or old message"
        )


def _with_counter(r: DeviceRecord, counter: int) -> DeviceRecord:
    """``r`` with ``rx_counter`` = ``counter`` (built directly: ``dataclasses.replace``
    cost about 6 us, once per message)."""
    return DeviceRecord(
        r.device_id,
        r.transport,
        r.secret,
        r.identity,
        r.created,
        r.revoked,
        counter,
        r.tx_counter,
        r.will_counter,
        r.description,
        r.online,
        r.last_seen,
        r.meta,
        r.protocol,
    )


@functools.lru_cache(maxsize=CACHED_DEVICES)
def _identity(keys: bytes, device_id: str) -> Identity:
    """Deriving public keys costs ~0.1 ms: done once per device, not per message."""
    return Identity(SigningKey(keys[:32]), EncryptionKey(keys[32:]), device_id)


def _record(row: tuple[Any, ...]) -> DeviceRecord:
    (
        device_id,
        transport,
        secret,
        keys,
        created,
        revoked,
        rx,
        tx,
        will,
        desc,
        online,
        last_seen,
        meta,
        protocol,
    ) = row[:14]  # then ``registered``: see born()
    identity = _identity(bytes(keys), device_id)
    return DeviceRecord(
        device_id,
        transport,
        bytes(secret),
        identity,
        created,
        bool(revoked),
        rx,
        tx,
        will,
        json.loads(desc) if desc else None,
        bool(online),
        last_seen,
        json.loads(meta),
        int(protocol),
    )
