"""The store stops answering (its SQLite file is locked by another process's
exclusive transaction): verified readings are buffered durably, acknowledged,
and written in order once the store is back. Nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from safething.net import Client, Identity
from safething.store import open_store
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


async def test_readings_survive_a_store_outage(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db?busy_timeout=100"
    store = await open_store(url)
    registry = Registry(tmp_path / "gateway.db")
    gateway = Gateway(store=store, registry=registry, owner=Identity.generate())
    await gateway.start()
    record = registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 1}))

    lock = sqlite3.connect(tmp_path / "vault.db", isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")  # the store is now unreachable for writers
    try:
        for value in range(2, 12):  # every one is acknowledged (no exception)
            await gateway.handle(
                "sensor-01", "reading", device.message("reading", {"moisture": value})
            )
        assert registry.buffer_depth() == 10
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    async with asyncio.timeout(10):
        while registry.buffer_depth():
            await asyncio.sleep(0.05)
    history = await ThingClient(Client(store)).history("sensor-01", "moisture")
    assert [r.value for r in history] == [float(v) for v in range(1, 12)]
    assert [r.seq for r in history] == list(range(1, 12))
    await gateway.close()
    registry.close()
    await store.close()


async def test_buffer_survives_a_gateway_restart(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db?busy_timeout=100"
    registry_path = tmp_path / "gateway.db"
    owner = Identity.generate()
    store = await open_store(url)
    registry = Registry(registry_path)
    gateway = Gateway(store=store, registry=registry, owner=owner)
    await gateway.start()
    record = registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    lock = sqlite3.connect(tmp_path / "vault.db", isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    for value in (5, 6, 7):
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": value}))
    await gateway.close()  # the gateway stops during the outage
    registry.close()
    lock.execute("ROLLBACK")
    lock.close()

    registry = Registry(registry_path)
    gateway = Gateway(store=store, registry=registry, owner=owner)
    await gateway.start()
    async with asyncio.timeout(10):
        while registry.buffer_depth():
            await asyncio.sleep(0.05)
    history = await ThingClient(Client(store)).history("sensor-01", "moisture")
    assert [r.value for r in history] == [5.0, 6.0, 7.0]
    await gateway.close()
    registry.close()
    await store.close()


async def test_a_birth_during_a_store_outage_is_kept_and_registered_later(
    tmp_path: Path,
) -> None:
    """The gateway accepts the birth's counter, so the device cannot send the same
    message again; over MQTT the message is acknowledged to the broker and the device
    believes it was born. The gateway must therefore keep the birth, not drop it."""
    url = f"sqlite://{tmp_path}/vault.db?busy_timeout=100"
    store = await open_store(url)
    registry = Registry(tmp_path / "gateway.db")
    gateway = Gateway(store=store, registry=registry, owner=Identity.generate())
    await gateway.start()
    record = registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    lock = sqlite3.connect(tmp_path / "vault.db", isolation_level=None, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")  # the store is now unreachable for writers
    try:
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 9}))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    things = ThingClient(Client(store))
    async with asyncio.timeout(10):
        while registry.buffer_depth() or "sensor-01" not in gateway.things:
            await asyncio.sleep(0.05)
    assert await things.status("sensor-01") == "published"
    assert (await things.read("sensor-01", "moisture")).value == 9.0
    await gateway.close()
    registry.close()
    await store.close()
