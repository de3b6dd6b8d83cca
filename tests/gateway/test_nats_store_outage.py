"""The gateway's NATS server dies (SIGKILL) and comes back: readings verified in the
meantime are buffered durably and acknowledged, then written in order once the store
answers again. Nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.store.nats_testing import NatsServer
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


@contextlib.asynccontextmanager
async def _gateway_on_nats(
    tmp_path: Path, bucket: str, timeout: float
) -> AsyncIterator[tuple[NatsServer, Store, Registry, Gateway]]:
    """A gateway (not started) on its own nats-server; all of it stopped at the end."""
    server = NatsServer(tmp_path / "nats")
    await server.start()
    store = await open_store(f"{server.url}?bucket={bucket}&timeout={timeout:g}")
    registry = Registry(tmp_path / "gateway.db")
    gateway = Gateway(store=store, registry=registry, owner=Identity.generate())
    try:
        yield server, store, registry, gateway
    finally:
        await gateway.close()
        registry.close()
        await store.close()
        await server.stop()


async def test_readings_survive_a_nats_outage(tmp_path: Path) -> None:
    async with _gateway_on_nats(tmp_path, "outage", 1) as (server, store, registry, gateway):
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


async def test_a_gateway_starting_while_nats_is_down_waits_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store object was opened, then its only server died: the gateway's two shared
    watches wait for it at the same time (up to the URL's timeout once, not once each),
    say so, and follow the store once it is back."""
    timeout = 5.0
    async with _gateway_on_nats(tmp_path, "startdown", timeout) as (
        server,
        store,
        registry,
        gateway,
    ):
        await server.kill()
        began = time.monotonic()
        await gateway.start()
        waited = time.monotonic() - began
        assert timeout <= waited < 1.6 * timeout  # one after the other: twice the timeout
        warned = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
        assert len(warned) == 2, warned  # each watch says so

        await server.start()
        record = registry.add("valve-01", "http")
        valve = Device("valve-01", record.secret)
        description = {**SENSOR, "id": "valve-01"}
        async with asyncio.timeout(60):  # the birth is buffered until the store answers
            await gateway.handle(
                "valve-01", "birth", valve.message("birth", {"description": description})
            )
            while registry.buffer_depth() or "valve-01" not in gateway.things:
                await asyncio.sleep(0.1)
        controller = ThingClient(Client(store, Identity.generate("controller")))
        await controller.request("valve-01", "OpenValve", psi=40)
        async with asyncio.timeout(60):  # it reaches the thing through the shared watch
            while not await gateway.handle("valve-01", "poll", valve.message("poll", {})):
                await asyncio.sleep(0.05)
