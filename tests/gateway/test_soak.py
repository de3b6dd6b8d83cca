"""The soak: 1,000 devices over MQTT QoS 1 while the gateway is killed with SIGKILL three
times and Mosquitto restarted three times. Zero acknowledged readings lost, each
device's order kept; prints readings/s and recovery times (JSON on one line).

Not in CI: ``./scripts/test -m slow -k soak -s`` (several minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from safething.net import Client
from safething.things import ThingClient
from safething_gateway.bridges.mqtt import MqttConnection, Topics
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.testing import wait_until as until

from .test_attacks_mqtt import child_site
from .test_mqtt import _value_is

pytestmark = pytest.mark.slow

DEVICES = 1_000
READINGS = 20
"""Readings per device (plus its birth), one every ``PERIOD`` seconds."""
PERIOD = 3.0
PUBLISHERS = 8
IN_FLIGHT = 400


async def _publish(connection: MqttConnection, topic: str, data: bytes) -> None:
    """Until the broker acknowledges it (again after a restart: a duplicate is refused
    by the gateway as a replay, which loses nothing)."""
    while True:
        if not connection.connected:
            await connection.wait_connected(1)
            continue
        _, done = connection.publish(topic, data, 1)
        try:
            async with asyncio.timeout(10):
                if await asyncio.shield(done):
                    return
        except TimeoutError:
            pass
        await asyncio.sleep(0.2)


async def test_soak_1000_devices_through_kills_and_broker_restarts() -> None:
    topics = Topics()
    async with child_site(DEVICES) as (child, links, store, port):
        broker = child.broker
        publishers = [
            MqttConnection(
                "127.0.0.1",
                port,
                client_id=f"soak-pub-{i}",
                max_inflight=100,
                fail_on_disconnect=True,
                label=f"soak publisher {i}",
            )
            for i in range(PUBLISHERS)
        ]
        for p in publishers:
            await p.start()
            assert await p.wait_connected(10)
        acked = 0
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def device(i: int, link: DeviceLink) -> None:
            nonlocal acked
            connection = publishers[i % PUBLISHERS]
            async with slots:
                await _publish(connection, topics.up(link.device_id, "birth"), link.birth())
            for n in range(1, READINGS + 1):
                async with slots:
                    data = link.up("reading", {"n": n})
                    await _publish(connection, topics.up(link.device_id, "reading"), data)
                acked += 1
                await asyncio.sleep(PERIOD)

        started = time.monotonic()
        senders = [asyncio.create_task(device(i, link)) for i, link in enumerate(links)]
        total = DEVICES * READINGS
        outages: list[dict[str, Any]] = []
        try:
            for step in range(6):
                await until(lambda s=step: acked >= total * (s + 1) // 8, timeout=600)
                before = child.accepted
                t0 = time.monotonic()
                if step % 2 == 0:
                    await asyncio.to_thread(child.kill)
                    await asyncio.sleep(1.0)  # a backlog piles up at the broker
                    t1 = time.monotonic()
                    await asyncio.to_thread(child.start)
                    kind = "gateway SIGKILL"
                else:
                    await asyncio.to_thread(broker.restart)
                    t1 = time.monotonic()
                    kind = "Mosquitto restart"
                await until(lambda b=before: child.accepted > b, timeout=120)
                outages.append(
                    {
                        "what": kind,
                        "down_s": round(t1 - t0, 3),
                        "recovered_s": round(time.monotonic() - t1, 3),
                    }
                )
            await asyncio.gather(*senders)
            sent_s = time.monotonic() - started
            # every acknowledged reading arrives, each device's in order
            reader = ThingClient(Client(store))
            last = links[-1].device_id
            await until(lambda: _value_is(reader, last, "n", READINGS), timeout=600)
            stored = 0
            for link in links:
                await until(
                    lambda d=link.device_id: _value_is(reader, d, "n", READINGS), timeout=600
                )
                history = await reader.history(link.device_id, "n")
                assert [r.value for r in history] == list(range(1, READINGS + 1)), link.device_id
                stored += len(history)
            done_s = time.monotonic() - started
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            for p in publishers:
                await p.close()
        print(
            json.dumps(
                {
                    "soak": {
                        "devices": DEVICES,
                        "readings_acknowledged": acked,
                        "readings_stored_in_order": stored,
                        "readings_lost": acked - stored,
                        "sent_s": round(sent_s, 1),
                        "all_stored_s": round(done_s, 1),
                        "readings_per_s": round(acked / done_s, 1),
                        "rejected_by_rate_limit": child.rate_limited,
                        "outages": outages,
                    }
                }
            )
        )
        assert acked == total
        assert child.rate_limited == 0
