"""Many gateways, one network: two ``safething gateway`` processes, each with its own
configuration, registry, owner and devices, on one 3-node NATS cluster (R3). Gateway A
serves an MQTT device (its own private Mosquitto), gateway B a CoAP device. A controller
thing on a third connection subscribes to A's device and requests actions of both: B's
device gets its request by CoAP Observe, A's by MQTT, and both answer. Nothing joins
the two gateway processes but the NATS cluster."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import NatsCluster, unique_bucket
from safething.things import ThingClient
from safething_gateway.device_clients.coap import CoapDevice
from safething_gateway.device_clients.mqtt import MqttDevice
from safething_gateway.registry import Registry
from safething_gateway.testing import unique_id

from .processes import GatewayProcess, link, running


async def test_two_gateway_processes_on_one_cluster(tmp_path: Path, nats_r3: NatsCluster) -> None:
    url = f"{nats_r3.url}?bucket={unique_bucket()}&replicas=3"
    site_a = GatewayProcess(tmp_path / "a", url, "mqtt")
    site_b = GatewayProcess(tmp_path / "b", url, "coap")
    sensor_id, valve_id = unique_id("sensor"), unique_id("valve")
    ran_a: list[tuple[str, dict[str, Any]]] = []
    ran_b: list[tuple[str, dict[str, Any]]] = []
    sensor = link(sensor_id, site_a.provision(sensor_id), ran_a)
    valve = link(valve_id, site_b.provision(valve_id), ran_b)

    async with (
        running(site_a, site_b) as (mqtt_port, coap_port),
        MqttDevice(sensor, "127.0.0.1", mqtt_port) as mqtt_device,
        CoapDevice(valve, "127.0.0.1", coap_port) as coap_device,
        await open_store(url) as store,
    ):
        await mqtt_device.start()
        await coap_device.start()
        await coap_device.observe()  # the valve takes its downlinks by Observe
        controller = ThingClient(Client(store, Identity.generate("controller")))
        async with controller:

            async def published(thing_id: str) -> bool:
                with contextlib.suppress(Exception):
                    return await controller.status(thing_id) == "published"
                return False

            async with asyncio.timeout(60):
                while not (await published(sensor_id) and await published(valve_id)):
                    await asyncio.sleep(0.1)

            async with controller.subscribe(sensor_id, topic="VeryDryAlarm") as alarms:
                await mqtt_device.event("VeryDryAlarm", 9)
                async with asyncio.timeout(60):
                    alarm = await anext(aiter(alarms))
            assert alarm.value == 9.0

            # the alarm behind gateway A opens the valve behind gateway B ...
            opened = await controller.request(valve_id, "OpenValve", psi=40, timeout=60)
            done_b = await opened.wait(60)
            # ... and an action of A's device goes down through A's MQTT broker
            opened_a = await controller.request(sensor_id, "OpenValve", psi=12, timeout=60)
            done_a = await opened_a.wait(60)

    assert ran_b == [("OpenValve", {"psi": 40.0})]
    assert ran_a == [("OpenValve", {"psi": 12.0})]
    assert (done_b.state, done_a.state) == ("done", "done")
    # each gateway answered for its own devices only: neither registry knows the other's
    for gateway, mine, other in ((site_a, sensor_id, valve_id), (site_b, valve_id, sensor_id)):
        registry = Registry(gateway.registry_path)
        try:
            assert registry.find(mine) is not None
            assert registry.find(other) is None
        finally:
            registry.close()
