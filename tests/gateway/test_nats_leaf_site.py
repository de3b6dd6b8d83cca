"""A site that keeps working offline: ``safething gateway`` with ``[leaf] enabled`` runs
the site's own nats-server, a leaf node of a hub with its own JetStream domain, and keeps
its store there. The hub keeps a read-only copy of the site's bucket
(``site_copy_config``). With the hub down, the site's MQTT device keeps sending readings
and a controller at the site keeps seeing them and gets the device's action done; with
the hub back, the hub has every record, in the site's order, and a client at the hub
reads the device's latest reading, verified, from the copy."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import nats

from safething.errors import StoreError
from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats import site_copy_config
from safething.things import ThingClient
from safething_gateway.device_clients.mqtt import MqttDevice
from safething_gateway.testing import unique_id

from .processes import hub_and_site, link, running


async def stream_messages(url: str, stream: str) -> list[tuple[str, bytes]]:
    """Every message of ``stream`` in sequence order: (subject, data)."""
    client = await nats.connect(url)
    try:
        reply = await client.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
        state = json.loads(reply.data)["state"]
        found = []
        for seq in range(state["first_seq"], state["last_seq"] + 1):
            reply = await client.request(
                f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=5
            )
            message = json.loads(reply.data).get("message")
            if message is not None:  # replaced by a later write of its key
                found.append((message["subject"], base64.b64decode(message.get("data", ""))))
        return found
    finally:
        await client.close()


async def test_a_gateway_with_its_own_leaf_server_works_while_the_hub_is_down(
    tmp_path: Path,
) -> None:
    hub, site, site_port = hub_and_site(tmp_path, "mqtt")
    await hub.start()
    sensor_id = unique_id("sensor")
    ran: list[tuple[str, dict[str, Any]]] = []
    sensor = link(sensor_id, site.provision(sensor_id), ran)
    site_url = f"nats://127.0.0.1:{site_port}"
    try:
        async with (
            running(site) as (mqtt_port,),
            MqttDevice(sensor, "127.0.0.1", mqtt_port) as device,
            await open_store(f"{site_url}?bucket=site1") as site_store,
        ):
            await device.start()
            hub_client = await nats.connect(hub.url)
            reply = await hub_client.request(
                "$JS.API.STREAM.CREATE.KV_site1-site1",
                json.dumps(site_copy_config("site1", "site1")).encode(),
                timeout=10,
            )
            await hub_client.close()
            assert "error" not in json.loads(reply.data), reply.data
            controller = ThingClient(Client(site_store, Identity.generate("controller")))
            async with controller:
                async with asyncio.timeout(60):
                    while True:
                        try:
                            if await controller.status(sensor_id) == "published":
                                break
                        except Exception:
                            pass
                        await asyncio.sleep(0.1)
                async with controller.subscribe(sensor_id, attribute="moisture") as readings:
                    await device.reading({"moisture": 1})
                    async with asyncio.timeout(60):
                        assert (await anext(aiter(readings))).value == 1

                    await hub.kill()  # the hub is unreachable: the site goes on
                    levels = list(range(2, 12))
                    for level in levels:
                        await device.reading({"moisture": level})
                    seen: list[Any] = []
                    async with asyncio.timeout(60):
                        async for note in readings:
                            seen.append(note.value)
                            if note.value == levels[-1]:
                                break
                # readings are attribute values: a subscriber that falls behind may skip
                # one, never see them out of order
                assert seen == sorted(seen) and seen[-1] == levels[-1]
                assert set(seen) <= set(levels)
                handle = await controller.request(sensor_id, "OpenValve", psi=7, timeout=60)
                assert (await handle.wait(60)).state == "done"
                assert ran == [("OpenValve", {"psi": 7.0})]

            await hub.start()  # back: the hub catches up, in order
            async with asyncio.timeout(60):
                while True:  # every record the site holds, in the site's order
                    at_site = await stream_messages(site_url, "KV_site1")
                    at_hub = [
                        (subject.replace("$KV.site1-site1.", "$KV.site1.", 1), data)
                        for subject, data in await stream_messages(hub.url, "KV_site1-site1")
                    ]
                    if at_hub == at_site:
                        break
                    await asyncio.sleep(0.2)
            async with await open_store(f"{hub.url}?bucket=site1-site1") as hub_store:
                at_the_hub = ThingClient(Client(hub_store, Identity.generate("hub-console")))
                async with at_the_hub:
                    reading = await at_the_hub.read(sensor_id, "moisture")
            assert reading.value == levels[-1]

            # and from the hub, through the leaf connection, a request reaches the device
            async with asyncio.timeout(60):
                while True:
                    try:
                        site_from_hub = await open_store(
                            f"{hub.url}?bucket=site1&domain=site1&timeout=10"
                        )
                        break
                    except StoreError:
                        await asyncio.sleep(0.2)
            async with site_from_hub:
                hub_controller = ThingClient(Client(site_from_hub, Identity.generate("hub")))
                async with hub_controller:
                    handle = await hub_controller.request(sensor_id, "OpenValve", psi=8, timeout=60)
                    assert (await handle.wait(60)).state == "done"
            assert ran == [("OpenValve", {"psi": 7.0}), ("OpenValve", {"psi": 8.0})]
    finally:
        await hub.stop()
