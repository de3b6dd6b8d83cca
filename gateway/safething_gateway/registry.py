"""The gateway's device registry: one SQLite file next to the vault, mode 0600.

It holds what the data network must not see: each device's link secret and
the custodial thing's keys, the link counters in both directions, the
durable queue of messages waiting for a device (action requests, desired
values) and the buffer of readings accepted while the store was
unreachable. Every change is committed before the gateway acknowledges it.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safething.errors import StoreError
from safething.net import EncryptionKey, Identity, SigningKey
from safething_gateway.protocol import (
    ReplayError,
    RevokedDeviceError,
    UnknownDeviceError,
    check_device_id,
)

__all__ = ["BufferedUplink", "DeviceRecord", "Downlink", "Registry"]

TRANSPORTS = ("mqtt", "coap", "http", "adopted")

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
    meta TEXT NOT NULL DEFAULT '{}'
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
CREATE TABLE IF NOT EXISTS uplinks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    body BLOB NOT NULL,
    content_format TEXT NOT NULL,
    received REAL NOT NULL
);
"""


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
    """Synchronous, fast (microseconds per call): used directly on the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path} is not a gateway registry or is damaged ({e})") from e

    def close(self) -> None:
        self._db.close()

    # --- devices -----------------------------------------------------------------

    def add(
        self,
        device_id: str,
        transport: str,
        *,
        secret: bytes | None = None,
        identity: Identity | None = None,
        meta: dict[str, Any] | None = None,
    ) -> DeviceRecord:
        """Provision a device; ``ValueError`` if the id exists or the transport is unknown."""
        check_device_id(device_id)
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")
        secret = secret or secrets.token_bytes(32)
        identity = identity or Identity.generate(device_id)
        keys = identity.sign_key.seed + identity.encryption_key.secret
        try:
            self._db.execute(
                "INSERT INTO devices(id, transport, secret, keys, created, meta) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, transport, secret, keys, time.time(), json.dumps(meta or {})),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"device {device_id!r} is already provisioned") from None
        return self.get(device_id, allow_revoked=True)

    def get(self, device_id: str, *, allow_revoked: bool = False) -> DeviceRecord:
        row = self._db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise UnknownDeviceError(f"unknown device {device_id!r}")
        record = _record(row)
        if record.revoked and not allow_revoked:
            raise RevokedDeviceError(f"device {device_id!r} is revoked")
        return record

    def find(self, device_id: str) -> DeviceRecord | None:
        row = self._db.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        return None if row is None else _record(row)

    def devices(self) -> list[DeviceRecord]:
        return [_record(r) for r in self._db.execute("SELECT * FROM devices ORDER BY id")]

    def revoke(self, device_id: str) -> None:
        cur = self._db.execute(
            "UPDATE devices SET revoked = 1, online = 0 WHERE id = ?", (device_id,)
        )
        if cur.rowcount == 0:
            raise UnknownDeviceError(f"unknown device {device_id!r}")
        self._db.execute("DELETE FROM downlinks WHERE device_id = ?", (device_id,))

    def accept_counter(self, device_id: str, counter: int) -> None:
        """Record ``counter`` as the device's newest; ``ReplayError`` unless it is newer."""
        cur = self._db.execute(
            "UPDATE devices SET rx_counter = ?, last_seen = ? WHERE id = ? AND rx_counter < ?",
            (counter, time.time(), device_id, counter),
        )
        if cur.rowcount == 0:
            last = self.get(device_id, allow_revoked=True).rx_counter
            raise ReplayError(
                f"counter {counter} of {device_id!r} is not above the last accepted ({last}): "
                "replayed or old message"
            )

    def set_will(self, device_id: str, counter: int | None) -> None:
        self._db.execute("UPDATE devices SET will_counter = ? WHERE id = ?", (counter, device_id))

    def use_will(self, device_id: str, counter: int) -> bool:
        """Accept the announced last-will counter once (the broker sends the will later)."""
        cur = self._db.execute(
            "UPDATE devices SET will_counter = NULL WHERE id = ? AND will_counter = ?",
            (device_id, counter),
        )
        return cur.rowcount == 1

    def set_online(self, device_id: str, online: bool) -> None:
        self._db.execute(
            "UPDATE devices SET online = ?, last_seen = ? WHERE id = ?",
            (int(online), time.time(), device_id),
        )

    def set_description(self, device_id: str, description: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE devices SET description = ? WHERE id = ?",
            (json.dumps(description), device_id),
        )

    def set_meta(self, device_id: str, meta: dict[str, Any]) -> None:
        self._db.execute("UPDATE devices SET meta = ? WHERE id = ?", (json.dumps(meta), device_id))

    # --- downlinks ---------------------------------------------------------------

    def enqueue(
        self, device_id: str, channel: str, body: bytes, *, expires: float | None = None
    ) -> Downlink:
        """Take the next gateway counter and queue a message for the device, durably."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "UPDATE devices SET tx_counter = tx_counter + 1 WHERE id = ? RETURNING tx_counter",
                (device_id,),
            ).fetchone()
            if row is None:
                raise UnknownDeviceError(f"unknown device {device_id!r}")
            self._db.execute(
                "INSERT INTO downlinks VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, row[0], channel, body, now, expires),
            )
        return Downlink(device_id, row[0], channel, body, now, expires)

    def pending(self, device_id: str) -> list[Downlink]:
        """Queued messages for a device, oldest first; expired ones are dropped."""
        now = time.time()
        self._db.execute(
            "DELETE FROM downlinks WHERE device_id = ? AND expires IS NOT NULL AND expires < ?",
            (device_id, now),
        )
        rows = self._db.execute(
            "SELECT * FROM downlinks WHERE device_id = ? ORDER BY counter", (device_id,)
        ).fetchall()
        return [Downlink(*r) for r in rows]

    def ack(self, device_id: str, counter: int) -> bool:
        """The device has the downlink ``counter`` (and all before it)."""
        cur = self._db.execute(
            "DELETE FROM downlinks WHERE device_id = ? AND counter <= ?", (device_id, counter)
        )
        return cur.rowcount > 0

    def queue_depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM downlinks").fetchone()[0])

    # --- buffered uplinks (store unreachable) ------------------------------------

    def buffer(self, device_id: str, channel: str, body: bytes, content_format: str) -> None:
        self._db.execute(
            "INSERT INTO uplinks(device_id, channel, body, content_format, received) "
            "VALUES (?, ?, ?, ?, ?)",
            (device_id, channel, body, content_format, time.time()),
        )

    def buffered(self, limit: int = 500) -> list[BufferedUplink]:
        rows = self._db.execute("SELECT * FROM uplinks ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [BufferedUplink(*r) for r in rows]

    def unbuffer(self, ids: list[int]) -> None:
        self._db.executemany("DELETE FROM uplinks WHERE id = ?", [(i,) for i in ids])

    def buffer_depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM uplinks").fetchone()[0])


@functools.lru_cache(maxsize=4096)
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
    ) = row
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
    )
