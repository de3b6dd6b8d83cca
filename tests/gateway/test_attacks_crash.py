"""A gateway that dies between spending a message's counter and acting on it: over MQTT
the broker then redelivers the message, and the gateway would refuse it as a replay.
What the message asked for is journaled with its counter, so nothing is lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from safething.net import Client, Identity
from safething.store import open_store
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.protocol import ReplayError
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


async def _die_while(gateway: Gateway, method: str, call: Any) -> None:
    """Run ``call`` until the gateway is inside ``method``, then cut it off there, as a
    SIGKILL would (nothing after that point runs)."""
    inside = asyncio.Event()
    original = getattr(gateway, method)

    async def hang(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        await asyncio.Event().wait()

    setattr(gateway, method, hang)
    task = asyncio.create_task(call)
    entered = asyncio.create_task(inside.wait())
    await asyncio.wait({task, entered}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    entered.cancel()
    if task.done():
        task.result()  # it ended (an error): the test cannot go on
    assert inside.is_set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    setattr(gateway, method, original)


async def test_a_reading_whose_counter_was_spent_before_a_crash_is_not_lost(
    tmp_path: Path,
) -> None:
    owner = Identity.generate("owner")
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        try:
            device = Device("sensor-01", registry.add("sensor-01", "http").secret)
            birth = device.message("birth", {"description": SENSOR})
            reading = device.message("reading", {"moisture": 42})
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()
                await gateway.handle("sensor-01", "birth", birth)
                await _die_while(gateway, "_data", gateway.handle("sensor-01", "reading", reading))
            assert registry.get("sensor-01").rx_counter == 2  # its counter was spent
            # the broker sends it again: a replay now; the journal has it
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()
                with pytest.raises(ReplayError):
                    await gateway.handle("sensor-01", "reading", reading)
                await gateway.flush()
                things = ThingClient(Client(store))
                assert (await things.read("sensor-01", "moisture")).value == 42
                assert registry.buffer_depth() == 0
        finally:
            registry.close()


async def test_a_birth_whose_counter_was_spent_before_a_crash_is_not_lost(
    tmp_path: Path,
) -> None:
    owner = Identity.generate("owner")
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        registry = Registry(tmp_path / "gateway.db")
        try:
            device = Device("sensor-01", registry.add("sensor-01", "http").secret)
            birth = device.message("birth", {"description": SENSOR})
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()
                await _die_while(gateway, "_thing_for", gateway.handle("sensor-01", "birth", birth))
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()  # registers the thing from the kept description
                with pytest.raises(ReplayError):
                    await gateway.handle("sensor-01", "birth", birth)
                things = ThingClient(Client(store))
                assert await things.status("sensor-01") == "published"
                reading = device.message("reading", {"moisture": 7})
                await gateway.handle("sensor-01", "reading", reading)
                assert (await things.read("sensor-01", "moisture")).value == 7
        finally:
            registry.close()
