"""Two gateways, each with its own registry, devices and connection to one NATS server
(in one test process, driven as their bridges drive them): device A's alarm, entering
through gateway A, reaches a subscriber on gateway B's connection, which requests an
action of device B; device B polls gateway B, runs it and answers. Nothing joins the
two gateways but the NATS store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import NatsServer, unique_bucket
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.protocol import parse_frame
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


async def test_a_device_behind_one_gateway_drives_one_behind_another(
    tmp_path: Path, nats_single: NatsServer
) -> None:
    url = f"{nats_single.url}?bucket={unique_bucket()}"
    store_a, store_b = await open_store(url), await open_store(url)
    registry_a, registry_b = Registry(tmp_path / "a.db"), Registry(tmp_path / "b.db")
    gateway_a = Gateway(store=store_a, registry=registry_a, owner=Identity.generate("a"))
    gateway_b = Gateway(store=store_b, registry=registry_b, owner=Identity.generate("b"))
    try:
        await gateway_a.start()
        await gateway_b.start()
        sensor = Device("sensor-a1", registry_a.add("sensor-a1", "http").secret)
        valve = Device("valve-b1", registry_b.add("valve-b1", "http").secret)
        for gateway, device in ((gateway_a, sensor), (gateway_b, valve)):
            description = {**SENSOR, "id": device.device_id}
            await gateway.handle(
                device.device_id, "birth", device.message("birth", {"description": description})
            )

        things_b = ThingClient(Client(store_b, Identity.generate("controller-b")))
        async with things_b.subscribe("sensor-a1", topic="VeryDryAlarm") as alarms:
            await gateway_a.handle(
                "sensor-a1", "event/VeryDryAlarm", sensor.message("event/VeryDryAlarm", 9)
            )
            async with asyncio.timeout(10):
                alarm = await anext(aiter(alarms))
        assert alarm.value == 9.0

        handle = await things_b.request("valve-b1", "OpenValve", psi=40)
        async with asyncio.timeout(10):
            while not (
                down := await gateway_b.handle("valve-b1", "poll", valve.message("poll", {}))
            ):
                await asyncio.sleep(0.02)
        msg = parse_frame(down[0].frame)
        request = json.loads(msg.open(valve.secret, "valve-b1", down[0].channel, uplink=False))
        assert (request["action"], request["args"]) == ("OpenValve", {"psi": 40.0})
        await gateway_b.handle("valve-b1", "ack", valve.message("ack", {"down": msg.counter}))
        rid = request["id"]
        await gateway_b.handle(
            "valve-b1",
            f"result/{rid}",
            valve.message(f"result/{rid}", {"state": "done", "result": None}),
        )
        assert (await handle.wait(10)).state == "done"
        # and the first gateway's connection sees the valve's side too
        things_a = ThingClient(Client(store_a))
        assert await things_a.status("valve-b1") == "published"
        await things_a.close()
        await things_b.close()
    finally:
        await gateway_a.close()
        await gateway_b.close()
        registry_a.close()
        registry_b.close()
        await store_a.close()
        await store_b.close()
