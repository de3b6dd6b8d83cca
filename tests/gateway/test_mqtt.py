"""The MQTT bridge against a real Mosquitto, a real Gateway and the reference MQTT device."""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import ThingClient
from safething_gateway.bridges.mqtt import MqttBridge, MqttConnection, Topics, _Acks, _Received
from safething_gateway.core import Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.device_clients.mqtt import MqttDevice
from safething_gateway.mosquitto import MosquittoAuth, hash_password
from safething_gateway.registry import Registry
from safething_gateway.testing import (
    GatewaySite,
    broker_user,
    free_port,
    mosquitto,
    mqtt_login,
    open_site,
)
from safething_gateway.testing import unique_id as uid
from safething_gateway.testing import wait_until as until

from .conftest import SENSOR, tamper, until_done

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto is not installed",
)


def describe(device_id: str) -> dict[str, Any]:
    """The conftest sensor, plus a counter attribute whose history holds a whole stream."""
    doc = copy.deepcopy(SENSOR)
    doc["id"] = device_id
    doc["attributes"].append({"name": "n", "type": "integer", "dynamic": True, "history": 500})
    return doc


@dataclass
class Site(GatewaySite):
    """The shared test site (safething_gateway.testing), seen from these tests: devices
    come as reference MQTT devices, the gateway with its one MQTT bridge."""

    client_id: str = field(default_factory=lambda: uid("gw"))

    async def provision(  # type: ignore[override]
        self, transport: str = "mqtt", device_id: str | None = None
    ) -> tuple[DeviceLink, str | None]:
        record, password = await super().provision(transport, device_id or uid("mq"))
        return DeviceLink(record.device_id, record.secret, describe(record.device_id)), password

    def bridge(self, transport: str = "mqtt", **options: Any) -> MqttBridge:  # type: ignore[override]
        return MqttBridge(
            "127.0.0.1",
            self.broker.port,
            username=self.gateway_user,
            password=self.gateway_password,
            client_id=self.client_id,
            **options,
        )

    @asynccontextmanager
    async def gateway(  # type: ignore[override]
        self, bridge_options: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[tuple[Gateway, MqttBridge]]:
        bridge = self.bridge(**(bridge_options or {}))
        async with Gateway(
            store=self.store,
            registry=self.registry,
            owner=self.owner,
            bridges=[bridge],
            **options,
        ) as gateway:
            await gateway.start()
            assert bridge.connection.connected
            yield gateway, bridge

    def device(self, link: DeviceLink, password: str | None, **options: Any) -> MqttDevice:
        return MqttDevice(
            link,
            "127.0.0.1",
            self.broker.port,
            username=link.device_id if password is not None else None,
            password=password,
            **options,
        )


@pytest.fixture
async def site(store: Store, registry: Registry, tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path / "site", store=store, registry=registry) as shared:
        assert shared.auth is not None
        yield Site(
            shared.root,
            store,
            registry,
            shared.broker,
            shared.auth,
            shared.gateway_user,
            shared.gateway_password,
        )


async def published(store: Store, thing_id: str, timeout: float = 30.0) -> None:
    """Until the thing is published (``timeout`` only guards against a hang)."""
    things = ThingClient(Client(store))
    await until(lambda: _status_is(things, thing_id, "published"), timeout=timeout)


async def _status_is(things: ThingClient, thing_id: str, status: str) -> bool:
    try:
        return await things.status(thing_id) == status
    except Exception:
        return False


# --- provisioning ------------------------------------------------------------------------


def test_password_hash_is_mosquitto_passwd_format(tmp_path: Path) -> None:
    # A line written by `mosquitto_passwd -b` (Mosquitto 2.0.11) for alice / secret.
    line = (
        "$7$101$VIJ3nxz3nAyI179C$10wmc35LmWud9qOZwRj37vBoMMuIPTl5TSx2OQHsaTxBd3/Uq4MyevORNoQ3"
        "5sD2vpvqXgjzpLIo7jtwo8Xh2w=="
    )
    import base64

    salt = base64.b64decode(line.split("$")[3])
    assert hash_password("secret", salt=salt) == line
    auth = MosquittoAuth(tmp_path / "p", tmp_path / "a")
    auth.add_gateway_user("gw-user")
    auth.add_device("sensor-01")
    auth.add_device("sensor-02")
    assert auth.remove_device("sensor-01")
    assert not auth.remove_device("sensor-01")
    assert auth.users() == ["gw-user", "sensor-02"]
    acl = (tmp_path / "a").read_text()
    assert "user sensor-01" not in acl
    assert "topic write st/v1/sensor-02/up/#" in acl
    assert "topic read st/v1/+/up/#" in acl
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o600
    for bad in ("x\ntopic readwrite #", "sensor-03\n", "a b"):
        with pytest.raises(ValueError, match="invalid broker user name"):
            auth.add_device(bad)


def test_shipped_mosquitto_snippet_loads_and_locks_the_broker() -> None:
    """gateway/mosquitto-safething.conf under a main config like Debian's."""
    snippet = Path(__file__).parents[2] / "gateway" / "mosquitto-safething.conf"
    user = broker_user()
    with tempfile.TemporaryDirectory(prefix="safething-conf-") as tmp:
        root = Path(tmp)
        (root / "conf.d").mkdir()
        (root / "lib").mkdir()
        port = free_port()
        auth = MosquittoAuth(
            root / "etc" / "mosquitto.passwd", root / "etc" / "mosquitto.acl", owner=user
        )
        password = auth.add_gateway_user("safething-gateway")
        text = (
            snippet.read_text()
            .replace("/etc/safething/", f"{root}/etc/")
            .replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
        )
        (root / "conf.d" / "safething.conf").write_text(text)
        (root / "mosquitto.conf").write_text(
            f"pid_file {root}/mosquitto.pid\npersistence true\n"
            f"persistence_location {root}/lib/\nlog_dest stderr\ninclude_dir {root}/conf.d\n"
        )
        if user is not None:
            for path in (root, root / "lib", root / "etc"):
                shutil.chown(path, user)
        process = subprocess.Popen(
            ["mosquitto", "-c", str(root / "mosquitto.conf")],
            stderr=subprocess.PIPE,
            executable=shutil.which("mosquitto") or "/usr/sbin/mosquitto",
        )
        try:
            deadline = time.monotonic() + 5
            while True:
                assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            assert mqtt_login(port, "safething-gateway", password)
            assert not mqtt_login(port, "safething-gateway", "wrong")
            assert not mqtt_login(port, None, None)
        finally:
            process.terminate()
            process.wait(5)
            assert process.stderr is not None
            process.stderr.close()


async def test_provision_birth_readings_and_an_action(site: Site) -> None:
    async with site.gateway() as (gateway, bridge):
        link, password = await site.provision()
        device_id = link.device_id
        link.on_action = lambda action, args: None
        async with site.device(link, password) as device:
            await device.start()
            await published(site.store, device_id)
            await until(lambda: gateway.registry.get(device_id).online)
            assert bridge.connected() == 1
            assert bridge.endpoints() == [f"mqtt://127.0.0.1:{site.broker.port}"]

            reader = ThingClient(Client(site.store))
            async with (
                reader.subscribe(device_id, topic="VeryDryAlarm") as alarms,
                reader.subscribe(device_id, attribute="moisture") as moisture,
            ):
                await device.reading({"moisture": 12})
                await device.event("VeryDryAlarm", 12)
                async with asyncio.timeout(5):
                    assert (await anext(aiter(moisture))).value == 12.0
                    assert (await anext(aiter(alarms))).value == 12.0

            requester = ThingClient(Client(site.store, Identity.generate()))
            handle = await requester.request(device_id, "OpenValve", psi=40)
            assert (await handle.wait(10)).state == "done"
            assert link.actions_run == [handle.request_id]
            await until(lambda: gateway.registry.pending(device_id) == [])
            await requester.close()
            assert list(device.errors) == []
        # close() announced offline
        await until(lambda: not gateway.registry.get(device_id).online)
        assert bridge.connected() == 0
        assert gateway.metrics.get("safething_gateway_messages_in_total", transport="mqtt") >= 6


async def test_a_device_with_nothing_queued_costs_the_bridge_no_look_up(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every birth (and every 'online') asks for the device's queued downlinks: with
    none, the bridge is not asked whether it can push (a registry read of the row);
    with one queued, it is, and the downlink goes out."""
    async with site.gateway() as (gateway, bridge):
        link, password = await site.provision()
        device_id = link.device_id
        asked: list[str] = []
        can_push = bridge.can_push

        def counted(device: str) -> bool:
            asked.append(device)
            return can_push(device)

        monkeypatch.setattr(bridge, "can_push", counted)
        async with site.device(link, password) as device:
            await device.start()
            await published(site.store, device_id)
            await until(lambda: gateway.registry.get(device_id).online)
            assert asked == []
            assert await gateway.deliver(device_id) == 0
            assert asked == []
            gateway.registry.enqueue(device_id, "desired", b'{"moisture": 3}')
            assert await gateway.deliver(device_id) == 1
            assert asked[:1] == [device_id]
            await until(lambda: link.desired == {"moisture": 3})
            assert list(device.errors) == []


async def test_last_will_marks_a_vanished_device_offline(site: Site) -> None:
    async with site.gateway() as (gateway, _):
        link, password = await site.provision()
        device = site.device(link, password)
        await device.start()
        await published(site.store, link.device_id)
        await device.flush(5)
        things = ThingClient(Client(site.store))
        await until(lambda: _availability(things, link.device_id, "online"))
        await device.abort()  # no DISCONNECT: the broker publishes the will
        await until(lambda: not gateway.registry.get(link.device_id).online)
        assert gateway.metrics.get("safething_gateway_rejected_total", reason="replay") == 0
        # every reader sees it, from the verified thing MD
        gone = await until(lambda: _availability(things, link.device_id, "offline"))
        assert gone.reason == "last will"


async def _availability(things: ThingClient, thing_id: str, state: str) -> Any:
    live = await things.availability(thing_id)
    return live if live.state == state else None


# --- rejections ------------------------------------------------------------------------


async def test_rejections_are_reported_on_the_err_topic(site: Site) -> None:
    async with site.gateway() as (gateway, bridge):
        a_link, a_password = await site.provision()
        b_link, b_password = await site.provision()
        a = site.device(a_link, a_password)
        b = site.device(b_link, b_password)
        await a.start()
        await b.start()
        await published(site.store, a_link.device_id)
        await published(site.store, b_link.device_id)
        topics = Topics()
        a_id, b_id = a_link.device_id, b_link.device_id

        def raw(device: MqttDevice, topic: str, payload: bytes) -> None:
            device.connection.publish(topic, payload, 1)

        async def refused(device: MqttDevice, reason: str) -> dict[str, Any]:
            return await until(  # type: ignore[no-any-return]
                lambda: next((e for e in device.errors if reason in e["type"]), None)
            )

        # wrong MAC: the body changed after framing
        forged = tamper(a_link.up("reading", {"moisture": 1}))
        raw(a, topics.up(a_id, "reading"), forged)
        problem = await refused(a, "bad_mac")
        assert problem["status"] == 401
        assert problem["channel"] == "reading"
        assert problem["counter"] == a_link.up_counter

        # replay: the same message twice
        message = a_link.up("reading", {"moisture": 3})
        raw(a, topics.up(a_id, "reading"), message)
        raw(a, topics.up(a_id, "reading"), message)
        assert (await refused(a, "replay"))["status"] == 409

        # malformed payloads and unknown channels; the bridge keeps serving
        raw(a, topics.up(a_id, "reading"), b"moisture=12")
        raw(a, topics.up(a_id, "reading"), bytes(range(256)))
        raw(a, topics.up(a_id, "launch"), a_link.up("reading", {}))
        raw(a, topics.up(a_id, "reading"), a_link.up("reading", b"{nope"))
        await refused(a, "bad_message")
        await refused(a, "unknown_channel")
        await refused(a, "bad_payload")

        # another device's topic: the broker's ACL drops it, the gateway never sees it
        rejected_before = sum(
            v for (n, _), v in gateway.metrics.counters.items() if "rejected" in n
        )
        raw(a, topics.up(b_id, "reading"), a_link.up("reading", {"moisture": 66}))
        await a.reading({"moisture": 44})  # after it, in order, on a's own topic
        await b.reading({"moisture": 55})
        reader = ThingClient(Client(site.store))
        await until(lambda: _value_is(reader, a_id, "moisture", 44.0))
        await until(lambda: _value_is(reader, b_id, "moisture", 55.0))
        rejected_after = sum(v for (n, _), v in gateway.metrics.counters.items() if "rejected" in n)
        assert rejected_after == rejected_before
        assert list(b.errors) == []

        # revoked: the gateway refuses at once; without its login the device is shut out
        gateway.registry.revoke(a_id)
        await a.reading({"moisture": 7})
        assert (await refused(a, "revoked"))["status"] == 403
        assert site.auth is not None
        site.auth.remove_device(a_id)
        site.broker.reload()
        assert a_password is not None
        await site.login_works(a_id, a_password, False)
        await a.close()
        again = site.device(a_link, a_password)
        with pytest.raises(ConnectionRefusedError, match="refused the login"):
            await again.start()
        await again.close()

        # b was served all along
        await b.reading({"moisture": 56})
        await until(lambda: _value_is(reader, b_id, "moisture", 56.0))
        assert bridge.errors_sent >= 7
        await b.close()


async def _value_of(things: ThingClient, thing_id: str, attribute: str) -> Any:
    try:
        return (await things.read(thing_id, attribute)).value
    except Exception:
        return None


async def _value_is(things: ThingClient, thing_id: str, attribute: str, value: Any) -> bool:
    try:
        return (await things.read(thing_id, attribute)).value == value
    except Exception:
        return False


async def test_qos0_uplinks_the_gateway_cannot_keep_up_with_are_dropped_and_shown(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QoS 0 uplinks past the bridge's backlog limit are dropped (the broker does not
    redeliver them anyway), counted and shown on /metrics; QoS 1 ones never are."""
    import safething_gateway.bridges.mqtt as mqtt_bridge

    monkeypatch.setattr(mqtt_bridge, "_QUEUE_LIMIT", 2)
    async with site.gateway() as (gateway, bridge):
        link, password = await site.provision()
        device = site.device(link, password)
        await device.start()
        await published(site.store, link.device_id)
        topic = Topics().up(link.device_id, "reading")
        for _ in range(50):  # in one burst, faster than the store takes them
            device.connection.publish(topic, b"not even a frame", 0)
        await until(lambda: bridge.dropped()["in"] > 0)
        shown = gateway.metrics.render()
        found = re.search(
            r'^safething_gateway_messages_dropped\{direction="in",transport="mqtt"\} (\S+)$',
            shown,
            re.MULTILINE,
        )
        assert found is not None, shown
        assert 0 < float(found.group(1)) <= 50
        assert 'safething_gateway_messages_dropped{direction="out",transport="mqtt"} 0.0' in shown
        await device.close()


async def test_without_acl_the_gateway_refuses_another_devices_topic(
    tmp_path: Path, store: Store, registry: Registry
) -> None:
    with mosquitto() as server:  # anonymous, no ACL: only the MAC protects b
        site = Site(server.workdir, store, registry, server, None, None, None)
        async with site.gateway() as (gateway, _):
            a_link, _ = await site.provision()
            b_link, _ = await site.provision()
            async with site.device(a_link, None) as a, site.device(b_link, None) as b:
                await a.start()
                await b.start()
                await published(store, b_link.device_id)
                # a frames with its own secret and id, publishes as b
                forged = a_link.up("reading", {"moisture": 99})
                a.connection.publish(Topics().up(b_link.device_id, "reading"), forged, 1)
                problem = await until(lambda: next(iter(b.errors), None))
                assert problem["title"] == "bad mac"
                assert (
                    gateway.metrics.get(
                        "safething_gateway_rejected_total", reason="bad_mac", transport="mqtt"
                    )
                    == 1
                )


# --- restarts ----------------------------------------------------------------------------


async def test_broker_restart_during_a_stream_loses_no_reading(site: Site) -> None:
    total = 300
    async with site.gateway(rate=10_000.0, burst=10_000) as (_, bridge):
        link, password = await site.provision()
        device_id = link.device_id
        async with site.device(link, password) as device:
            await device.start()
            await published(site.store, device_id)

            async def stream() -> None:
                for n in range(1, total + 1):
                    await device.reading({"n": n})
                    await asyncio.sleep(0.004)

            producer = asyncio.create_task(stream())
            # waits that fail only when the stream stops moving, not when it is slow
            await until_done(lambda: device.sent, lambda n: n >= 60, "readings sent")
            connects = bridge.connection.connects
            await asyncio.to_thread(site.broker.restart)
            # what the broker held for the gateway's session survived the restart
            assert (site.broker.workdir / "mosquitto.db").exists()
            await producer
            # still, at most, for the longest back-off (30 s) of the device or the gateway
            # while it reconnects
            await until_done(lambda: device.sent, lambda n: n >= total, "all sent", stall=30)
            await device.flush(20)
            reader = ThingClient(Client(site.store))
            await until_done(
                lambda: _value_of(reader, device_id, "n"),
                lambda n: n == total,
                "the stored n",
                stall=30,
            )
            history = await reader.history(device_id, "n")
            assert [r.value for r in history] == list(range(1, total + 1))
            assert [r.seq for r in history] == list(range(1, total + 1))
            assert bridge.connection.connects > connects  # reconnected and resubscribed
            assert device.buffered > 0  # some were taken while the broker was away
            assert device.dropped == 0
            assert device.sent == total


async def test_gateway_restart_delivers_the_pending_action_of_a_sleepy_device(
    site: Site,
) -> None:
    link, password = await site.provision()
    device_id = link.device_id
    link.on_action = lambda action, args: None
    device = site.device(link, password)
    async with site.gateway() as (gateway, _):
        await device.start()
        await published(site.store, device_id)
        await device.close()  # goes to sleep: state offline
        await until(lambda: not gateway.registry.get(device_id).online)
        requester = ThingClient(Client(site.store, Identity.generate()))
        handle = await requester.request(device_id, "OpenValve", timeout=30, psi=10)
        await until(lambda: site.registry.pending(device_id))
        assert handle.state in ("requested", "accepted", "running")
    # the gateway is down; the request waits in the registry
    assert site.registry.pending(device_id)
    async with site.gateway() as (gateway, _):
        await device.start()  # wakes up: state online, the new bridge pushes the request
        await until(lambda: link.actions_run == [handle.request_id])
        await until(lambda: gateway.registry.pending(device_id) == [])
        status = await handle.wait(15)
        await device.close()
    await requester.close()
    assert status.state == "done", status


# --- concurrency across devices, order within each -----------------------------------------


class Spy:
    """Wraps the gateway's ``handle`` and the bridge's PUBACKs: how many messages are
    handled at once (per device and in all), which are handled, in what order the
    bridge received and acknowledged them. ``gates[device]`` holds that device's
    messages until set; ``delay`` stretches every handling."""

    def __init__(self, gateway: Gateway, bridge: MqttBridge, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.gates: dict[str, asyncio.Event] = {}
        self.running: dict[str, int] = {}
        self.most = 0
        self.most_per_device = 0
        self.arrived: list[bytes] = []
        self.handled: set[bytes] = set()
        self.acked: list[bytes] = []
        self.acked_early: list[bytes] = []
        self._handle = gateway.handle
        gateway.handle = self.handle  # type: ignore[method-assign]
        connection = bridge.connection
        received, ack = connection._on_message, connection.ack
        assert received is not None

        def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
            self.arrived.append(bytes(message.payload))
            received(message, generation)

        def on_ack(message: mqtt.MQTTMessage, generation: int) -> None:
            payload = bytes(message.payload)
            if payload not in self.handled:
                self.acked_early.append(payload)
            self.acked.append(payload)
            ack(message, generation)

        connection._on_message = on_message
        connection.ack = on_ack  # type: ignore[method-assign]

    async def handle(self, device_id: str, channel: str, data: bytes, **options: Any) -> Any:
        self.running[device_id] = self.running.get(device_id, 0) + 1
        self.most_per_device = max(self.most_per_device, self.running[device_id])
        self.most = max(self.most, sum(self.running.values()))
        try:
            gate = self.gates.get(device_id)
            if gate is not None:
                await gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            return await self._handle(device_id, channel, data, **options)
        finally:
            self.running[device_id] -= 1
            self.handled.add(data)


@asynccontextmanager
async def publisher(port: int) -> AsyncIterator[MqttConnection]:
    """One MQTT connection that publishes for many devices (the ACL-less broker allows it)."""
    connection = MqttConnection("127.0.0.1", port, client_id=uid("pub"), label="test publisher")
    await connection.start()
    assert await connection.wait_connected(5)
    try:
        yield connection
    finally:
        await connection.close()


def send(connection: MqttConnection, link: DeviceLink, channel: str, body: Any) -> bytes:
    data = link.birth() if channel == "birth" else link.up(channel, body)
    connection.publish(Topics().up(link.device_id, channel), data, 1)
    return data


def bridge_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mqtt-bridge")]


async def test_devices_are_handled_concurrently_each_in_order(
    store: Store, registry: Registry
) -> None:
    devices, readings = 12, 25
    with mosquitto() as server:
        site = Site(server.workdir, store, registry, server, None, None, None)
        async with site.gateway(rate=10_000.0, burst=10_000) as (gateway, bridge):
            assert len(bridge_tasks()) == bridge.concurrency
            links = [(await site.provision())[0] for _ in range(devices)]
            spy = Spy(gateway, bridge, delay=0.005)
            async with publisher(server.port) as pub:
                for link in links:
                    send(pub, link, "birth", None)
                await until(lambda: all(link.device_id in gateway.things for link in links))
                for n in range(1, readings + 1):  # the devices' messages interleaved
                    for link in links:
                        send(pub, link, "reading", {"n": n})
                total = devices * (readings + 1)
                await until(lambda: len(spy.acked) == total, timeout=30)
            reader = ThingClient(Client(store))
            for link in links:
                await until(lambda: _value_is(reader, link.device_id, "n", readings))  # noqa: B023
                history = await reader.history(link.device_id, "n")
                assert [r.value for r in history] == list(range(1, readings + 1))
            assert spy.most_per_device == 1  # each device's messages one after the other
            assert spy.most > 1  # different devices' at the same time
            assert spy.most <= bridge.concurrency
            assert spy.acked_early == []  # PUBACK only once handled...
            assert spy.acked == spy.arrived  # ...and in the order they came
            assert len(set(spy.arrived)) == total
            refused = [k for k in gateway.metrics.counters if k[0].endswith("rejected_total")]
            assert refused == []
        assert bridge_tasks() == []


async def test_a_slow_device_holds_up_no_other(store: Store, registry: Registry) -> None:
    with mosquitto() as server:
        site = Site(server.workdir, store, registry, server, None, None, None)
        async with site.gateway() as (gateway, bridge):
            slow, quick = [(await site.provision())[0] for _ in range(2)]
            spy = Spy(gateway, bridge)
            reader = ThingClient(Client(store))
            async with publisher(server.port) as pub:
                for link in (slow, quick):
                    send(pub, link, "birth", None)
                await until(lambda: len(spy.acked) == 2)
                gate = spy.gates[slow.device_id] = asyncio.Event()
                held = send(pub, slow, "reading", {"n": 1})
                await until(lambda: spy.running.get(slow.device_id))
                for n in range(1, 6):
                    send(pub, quick, "reading", {"n": n})
                await until(lambda: _value_is(reader, quick.device_id, "n", 5))
                assert spy.running[slow.device_id] == 1  # still held
                assert len(spy.acked) == 2  # the quick ones' PUBACKs wait behind the held one
                gate.set()
                await until(lambda: _value_is(reader, slow.device_id, "n", 1))
                await until(lambda: len(spy.acked) == 8)
            assert spy.acked[2] == held
            assert spy.acked == spy.arrived
            assert spy.acked_early == []


async def test_close_finishes_what_is_being_handled_and_leaves_the_rest_to_the_broker(
    store: Store, registry: Registry
) -> None:
    with mosquitto() as server:
        site = Site(server.workdir, store, registry, server, None, None, None)
        a, b = [(await site.provision())[0] for _ in range(2)]
        async with publisher(server.port) as pub:
            # the guard only stops a hang: close() would wait forever for a's held handler
            # without its close_timeout (never a time limit on a loaded machine)
            async with (
                asyncio.timeout(60),
                site.gateway(bridge_options={"close_timeout": 1.0}) as (gateway, bridge),
            ):
                spy = Spy(gateway, bridge)
                for link in (a, b):
                    send(pub, link, "birth", None)
                await until(lambda: len(spy.acked) == 2)
                spy.gates[a.device_id] = asyncio.Event()  # never set: cut short by close()
                spy.delay = 0.3  # b's reading is handled during close()
                send(pub, b, "reading", {"n": 1})
                send(pub, a, "reading", {"n": 1})
                await until(lambda: spy.running.get(a.device_id) and spy.running.get(b.device_id))
            assert bridge_tasks() == []
            assert len(spy.acked) == 3  # b's reading, not a's
            # The next session: the broker sends a's reading again, not b's.
            async with site.gateway() as (gateway, bridge):
                reader = ThingClient(Client(store))
                await until(lambda: _value_is(reader, a.device_id, "n", 1))
                await until(lambda: _value_is(reader, b.device_id, "n", 1))
                await asyncio.sleep(0.2)
                assert gateway.metrics.get("safething_gateway_rejected_total", reason="replay") == 0
            assert bridge_tasks() == []


async def test_a_birth_during_a_store_outage_is_not_lost(
    tmp_path: Path, registry: Registry
) -> None:
    """The broker has the birth acknowledged and the device believes it was born: the
    gateway keeps it through the outage and registers the thing once the store answers."""
    store = await open_store(f"sqlite://{tmp_path}/vault.db?busy_timeout=100")
    try:
        with mosquitto() as server:
            site = Site(server.workdir, store, registry, server, None, None, None)
            async with site.gateway() as (gateway, _):
                link, _ = await site.provision()
                lock = sqlite3.connect(tmp_path / "vault.db", isolation_level=None, timeout=5)
                lock.execute("BEGIN EXCLUSIVE")  # the store is now unreachable for writers
                try:
                    async with site.device(link, None) as device:
                        await device.start()  # state, then the birth
                        await device.reading({"moisture": 12})
                        # every message arrived and its counter was taken during the outage
                        await until(
                            lambda: registry.get(link.device_id).rx_counter == link.up_counter
                        )
                finally:
                    lock.execute("ROLLBACK")
                    lock.close()
                await published(store, link.device_id)
                reader = ThingClient(Client(store))
                await until(lambda: _value_is(reader, link.device_id, "moisture", 12.0))
                rejected = [v for (n, _), v in gateway.metrics.counters.items() if "rejected" in n]
                assert sum(rejected) == 0
    finally:
        await store.close()


class _FakeConnection:
    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []

    def ack(self, message: mqtt.MQTTMessage, generation: int) -> None:
        self.acks.append((message.mid, generation))


def test_pubacks_go_out_in_arrival_order() -> None:
    connection = _FakeConnection()
    acks = _Acks(connection)  # type: ignore[arg-type]

    def received(mid: int, generation: int, qos: int = 1) -> _Received:
        message = mqtt.MQTTMessage(mid)
        message.qos = qos
        item = _Received(message, generation, None)
        acks.expect(item)
        return item

    one, two, three = received(1, 1), received(2, 1), received(3, 1)
    acks.handled(two)
    acks.handled(three)
    assert connection.acks == []  # 1 is not handled yet
    acks.handled(one)
    assert connection.acks == [(1, 1), (2, 1), (3, 1)]
    # QoS 0 needs no PUBACK and holds none up
    four, five = received(4, 1, qos=0), received(5, 1)
    acks.handled(five)
    acks.handled(four)
    assert connection.acks[3:] == [(5, 1)]
    # a new connection: what the old one left is sent again by the broker, not waited for
    stale = received(6, 1)
    fresh = received(6, 2)
    acks.handled(fresh)
    acks.handled(stale)
    assert connection.acks[4:] == [(6, 2)]


async def test_a_device_whose_thing_was_closed_goes_on_over_mqtt(site: Site) -> None:
    """The bound on running things (max_things), over a real Mosquitto: a device's thing
    is closed while it is quiet; its next readings restore it, and a subscriber gets
    every reading in order; an action requested while it is closed is pushed and run
    once."""
    async with site.gateway(max_things=1, close_after=0.05) as (gateway, _):
        links = [await site.provision() for _ in range(2)]
        for link, _password in links:
            link.on_action = lambda action, args: None
        (quiet, quiet_password), (busy, busy_password) = links
        async with (
            site.device(quiet, quiet_password) as first,
            site.device(busy, busy_password) as second,
        ):
            for device, link in ((first, quiet), (second, busy)):
                await device.start()
                await published(site.store, link.device_id)
            reader = ThingClient(Client(site.store))
            async with reader.subscribe(quiet.device_id, attribute="moisture", after=0) as sub:
                for value in (1, 2, 3):
                    await first.reading({"moisture": value})
                await first.flush(5)

                async def closed() -> bool:
                    await asyncio.sleep(0.2)
                    await second.reading({"moisture": 50})  # the other one keeps speaking
                    await second.flush(5)
                    return quiet.device_id not in gateway.things

                await until(closed, timeout=20)
                requester = ThingClient(Client(site.store, Identity.generate()))
                handle = await requester.request(quiet.device_id, "OpenValve", psi=40)
                assert (await handle.wait(20)).state == "done"
                assert quiet.actions_run == [handle.request_id]
                for value in (4, 5, 6):
                    await first.reading({"moisture": value})
                await first.flush(5)
                seen = []
                async with asyncio.timeout(20):
                    async for note in sub:
                        seen.append((note.seq, note.value))
                        if len(seen) == 6:
                            break
                assert seen == [(n, float(n)) for n in range(1, 7)]
                await requester.close()
            assert list(first.errors) == [] and list(second.errors) == []
