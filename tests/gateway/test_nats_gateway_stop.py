"""A gateway on NATS stopping cleanly says, for each of its online devices, "offline,
gateway stopped", in a signed entry a reader verifies (nobody vouches for the devices any
more). ``scripts/bench_gateway_stop.py`` times the same with thousands of devices."""

from __future__ import annotations

from pathlib import Path

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import NatsServer, unique_bucket
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


async def test_a_stopping_gateway_marks_its_devices_offline(
    tmp_path: Path, nats_single: NatsServer
) -> None:
    store = await open_store(f"{nats_single.url}?bucket={unique_bucket()}")
    registry = Registry(tmp_path / "registry.db")
    gateway = Gateway(store=store, registry=registry, owner=Identity.generate("owner"))
    ids = [f"dev-{i}" for i in range(6)]
    try:
        await gateway.start()
        for device_id in ids:
            device = Device(device_id, registry.add(device_id, "http").secret)
            description = {**SENSOR, "id": device_id}
            await gateway.handle(
                device_id, "birth", device.message("birth", {"description": description})
            )
        reader = ThingClient(Client(store, Identity.generate("reader")))
        assert all([(await reader.availability(d)).online for d in ids])
        await gateway.close()
        for device_id in ids:  # read back and verified against each thing's key
            live = await reader.availability(device_id)
            assert (live.online, live.reason) == (False, "gateway stopped"), device_id
    finally:
        await gateway.close()
        registry.close()
        await store.close()
