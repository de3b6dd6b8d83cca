"""A gateway on NATS keeps two consumers (its shared watches on every inbox and every
status entry) however many custodial things it runs, and its things still get their
requests and their status through them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import NatsServer, unique_bucket
from safething.things import ThingClient, set_status
from safething_gateway.core import Gateway
from safething_gateway.protocol import parse_frame
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


async def _consumers(url: str, bucket: str) -> list[str]:
    """Names of the consumers on the bucket's stream, as the server lists them."""
    import nats

    client = await nats.connect(url)
    try:
        reply = await client.request(f"$JS.API.CONSUMER.NAMES.KV_{bucket}", b"{}", timeout=10)
        return list(json.loads(reply.data)["consumers"] or [])
    finally:
        await client.close()


async def _settles_at(url: str, bucket: str, count: int) -> list[str]:
    """The consumer names once there are ``count`` (scans make short-lived ones)."""
    async with asyncio.timeout(60):
        while len(names := await _consumers(url, bucket)) != count:
            await asyncio.sleep(0.1)
    return names


async def test_consumers_do_not_grow_with_running_things(
    tmp_path: Path, nats_single: NatsServer
) -> None:
    bucket = unique_bucket()
    url = f"{nats_single.url}?bucket={bucket}"
    store = await open_store(url)
    registry = Registry(tmp_path / "registry.db")
    owner = Identity.generate("owner")
    gateway = Gateway(store=store, registry=registry, owner=owner)
    devices = [Device(f"dev-{i}", registry.add(f"dev-{i}", "http").secret) for i in range(8)]
    try:
        await gateway.start()
        idle = await _settles_at(nats_single.url, bucket, 2)  # every inbox, every status
        for device in devices[:2]:
            description = {**SENSOR, "id": device.device_id}
            await gateway.handle(
                device.device_id, "birth", device.message("birth", {"description": description})
            )
        assert await _settles_at(nats_single.url, bucket, 2) == idle
        for device in devices[2:]:
            description = {**SENSOR, "id": device.device_id}
            await gateway.handle(
                device.device_id, "birth", device.message("birth", {"description": description})
            )
        assert len(gateway.things) == 8
        assert await _settles_at(nats_single.url, bucket, 2) == idle

        # a request reaches its running thing through the shared inbox watch
        controller = ThingClient(Client(store, Identity.generate("controller")))
        valve = devices[5]
        handle = await controller.request(valve.device_id, "OpenValve", psi=40)
        async with asyncio.timeout(30):
            while not (
                down := await gateway.handle(valve.device_id, "poll", valve.message("poll", {}))
            ):
                await asyncio.sleep(0.02)
        msg = parse_frame(down[0].frame)
        request = json.loads(msg.open(valve.secret, valve.device_id, down[0].channel, uplink=False))
        assert (request["action"], request["args"]) == ("OpenValve", {"psi": 40.0})
        rid = request["id"]
        await gateway.handle(
            valve.device_id,
            f"result/{rid}",
            valve.message(f"result/{rid}", {"state": "done", "result": None}),
        )
        assert (await handle.wait(30)).state == "done"
        await controller.close()

        # and the owner's status change reaches it through the shared status watch
        assert gateway.things["dev-3"].status == "published"
        await set_status(Client(store, owner), "dev-3", "disabled")
        async with asyncio.timeout(30):
            while gateway.things["dev-3"].status != "disabled":
                await asyncio.sleep(0.02)
        assert gateway.things["dev-4"].status == "published"
        assert await _settles_at(nats_single.url, bucket, 2) == idle
    finally:
        await gateway.close()
        registry.close()
        await store.close()
    assert await _settles_at(nats_single.url, bucket, 0) == []
