"""The gateway's NATS server dies (SIGKILL) and comes back: readings verified in the
meantime are buffered durably and acknowledged, then written in order once the store
answers again. Nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import NatsServer
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


async def test_readings_survive_a_nats_outage(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    store = await open_store(f"{server.url}?bucket=outage&timeout=1")
    registry = Registry(tmp_path / "gateway.db")
    gateway = Gateway(store=store, registry=registry, owner=Identity.generate())
    try:
        await gateway.start()
        record = registry.add("sensor-01", "http")
        device = Device("sensor-01", record.secret)
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 1}))

        await server.kill()  # the store is gone: no connection, no answer
        for value in range(2, 7):  # every one is acknowledged (no exception)
            await gateway.handle(
                "sensor-01", "reading", device.message("reading", {"moisture": value})
            )
        assert registry.buffer_depth() == 5
        await server.start()  # same port, same storage

        async with asyncio.timeout(60):
            while registry.buffer_depth():
                await asyncio.sleep(0.1)
        history = await ThingClient(Client(store)).history("sensor-01", "moisture")
        assert [r.value for r in history] == [float(v) for v in range(1, 7)]
        assert [r.seq for r in history] == list(range(1, 7))
    finally:
        await gateway.close()
        registry.close()
        await store.close()
        await server.stop()
