from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from safething.net import Identity
from safething.store import Store, open_store
from safething_gateway.core import Gateway
from safething_gateway.protocol import frame
from safething_gateway.registry import Registry
from safething_gateway.testing import broker_files_dir

SENSOR = {
    "format": 1,
    "id": "sensor-01",
    "title": "Soil sensor",
    "attributes": [
        {"name": "moisture", "type": "number", "minimum": 0, "maximum": 100, "dynamic": True},
        {"name": "target", "type": "number", "dynamic": True, "writable": True},
    ],
    "topics": [{"name": "VeryDryAlarm", "type": "number"}],
    "actions": [
        {"name": "OpenValve", "params": [{"name": "psi", "type": "number", "default": 30}]}
    ],
}


async def until_done(
    measure: Callable[[], Any],
    done: Callable[[Any], bool],
    what: str,
    *,
    stall: float = 10.0,
    limit: float = 600.0,
) -> Any:
    """Poll ``measure()`` (sync or async: a count, a value that moves on) until
    ``done(value)``; that value. Fails when the value stays the same for ``stall``
    seconds, not when the whole wait is long: a slow machine's wait that moves on is not
    cut short (a bound on the whole wait fails a slow run that would have ended well),
    and one stuck fails with what it was waiting for. ``limit`` only guards against a
    hang of a value that keeps changing without ever being done."""
    loop = asyncio.get_running_loop()
    last: Any = object()
    since = start = loop.time()
    while True:
        assert loop.time() - start < limit, f"{what}: not done within {limit:g} s"
        value = measure()
        if asyncio.iscoroutine(value):
            value = await value
        if done(value):
            return value
        if value != last:
            last, since = value, loop.time()
        elif loop.time() - since > stall:
            raise AssertionError(f"{what}: stuck at {value!r} for {stall:g} s")
        await asyncio.sleep(0.01)


def tamper(message: bytes) -> bytes:
    """The message with the last bit of its body flipped (an attacker who changes a byte
    of ciphertext, or of an ST1 body, without the keys)."""
    return message[:-1] + bytes([message[-1] ^ 1])


class Device:
    """A device's side of the link, written from docs/protocol.md."""

    def __init__(self, device_id: str, secret: bytes, *, version: int = 2) -> None:
        self.device_id = device_id
        self.secret = secret
        self.version = version
        self.counter = 0

    def message(self, channel: str, body: Any, *, counter: int | None = None) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
        if counter >= 2**64:  # no nonce for it: an attacker's header with any tag
            return b"ST%d %d %s\n" % (self.version, counter, b"0" * 64) + raw
        return frame(
            self.secret, self.device_id, channel, counter, raw, version=self.version, uplink=True
        )


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with await open_store("memory://") as s:
        yield s


@pytest.fixture
def broker_files() -> Iterator[Path]:
    """A directory for the files a test broker reads (its user must reach them)."""
    with broker_files_dir() as path:
        yield path


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "gateway.db")
    yield r  # type: ignore[misc]
    r.close()


@pytest.fixture
async def gateway(store: Store, registry: Registry) -> AsyncIterator[Gateway]:
    async with Gateway(store=store, registry=registry, owner=Identity.generate("owner")) as g:
        await g.start()
        yield g
