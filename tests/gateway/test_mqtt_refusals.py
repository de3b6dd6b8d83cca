"""The MQTT bridge's refusal paths, without a broker: messages handed to the bridge as paho
hands them over (a real gateway behind it), what goes back on the error topic and what
is acknowledged. The broker-backed tests are in test_mqtt.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from safething_gateway.bridges import mqtt as bridge_module
from safething_gateway.bridges.mqtt import MqttBridge, Topics, _Acks, _Received
from safething_gateway.core import Gateway
from safething_gateway.registry import RegistryBusyError
from safething_gateway.testing import wait_until as until

from .conftest import SENSOR, Device, tamper


class _Connection:
    """Stands in for the broker connection: what the bridge publishes and acknowledges."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.acks: list[int] = []

    def publish(self, topic: str, body: bytes, qos: int = 0) -> None:
        # QoS 0: a hint, never queued by the broker for a device that is away
        assert qos == 0, "error reports are published with QoS 0"
        self.published.append((topic, json.loads(body)))

    def ack(self, message: mqtt.MQTTMessage, generation: int) -> None:
        self.acks.append(message.mid)


@pytest.fixture
async def bridge(gateway: Gateway) -> MqttBridge:
    b = MqttBridge("127.0.0.1", 1)  # never started: no connection is made
    connection = _Connection()
    b.connection = connection  # type: ignore[assignment]
    b._acks = _Acks(connection)  # type: ignore[arg-type]
    b._gateway = gateway
    return b


@pytest.fixture
async def device(gateway: Gateway) -> Device:
    device = Device("sensor-01", gateway.registry.add("sensor-01", "mqtt").secret)
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    return device


_mids = iter(range(1, 10**6))


def _message(
    topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, dup: bool = False
) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(next(_mids), topic.encode())
    message.payload, message.qos, message.retain, message.dup = payload, qos, retain, dup
    return message


async def _deliver(bridge: MqttBridge, message: mqtt.MQTTMessage) -> None:
    """As the bridge's worker does for a message the broker handed over."""
    route = bridge.topics.parse(message.topic)
    item = _Received(message, 1, route)
    bridge._acks.expect(item)
    bridge._backlog += 1
    await bridge._process(route[0] if route else "", item)


def _errors(bridge: MqttBridge) -> list[tuple[str, dict[str, Any]]]:
    return bridge.connection.published  # type: ignore[attr-defined, no-any-return]


def test_topic_prefixes_and_parsing() -> None:
    for bad in ("", "st/v1/", "/st", "st//v1", "st/+", "st/#", "st/v+1", "st/v#"):
        with pytest.raises(ValueError, match="bad MQTT topic prefix"):
            Topics(bad)
    topics = Topics("site/st")
    assert topics.parse("site/st/dev-1/up/reading") == ("dev-1", "up", "reading")
    assert topics.parse("site/st/dev-1/up/event/Dry") == ("dev-1", "up", "event/Dry")
    assert topics.parse("site/st/dev-1/down/desired") == ("dev-1", "down", "desired")
    assert topics.parse("site/st/dev-1/err") == ("dev-1", "err", "")
    for other in (
        "site/stx/dev-1/up/reading",  # not under the prefix
        "other/dev-1/up/reading",
        "site/st//up/reading",  # no device id
        "site/st/dev-1/up",  # no channel
        "site/st/dev-1/up/",
        "site/st/dev-1/sideways/reading",
        "site/st/dev-1",
    ):
        assert topics.parse(other) is None, other


async def test_a_retained_message_is_not_handled(
    bridge: MqttBridge, device: Device, gateway: Gateway
) -> None:
    """A retained uplink (anyone who can publish there can leave one for the gateway's
    next subscription) is ignored: not handled, its counter not spent, no error sent."""
    reading = device.message("reading", {"moisture": 7})
    topic = bridge.topics.up("sensor-01", "reading")
    await _deliver(bridge, _message(topic, reading, retain=True))
    assert gateway.registry.get("sensor-01").rx_counter == device.counter - 1
    assert _errors(bridge) == []
    await _deliver(bridge, _message(topic, reading))  # the same, not retained: served
    assert gateway.registry.get("sensor-01").rx_counter == device.counter


async def test_what_is_not_an_uplink_is_ignored(
    bridge: MqttBridge, device: Device, gateway: Gateway
) -> None:
    reading = device.message("reading", {"moisture": 7})
    for topic in (
        bridge.topics.down("sensor-01", "reading"),
        bridge.topics.err("sensor-01"),
        "elsewhere/sensor-01/up/reading",
    ):
        await _deliver(bridge, _message(topic, reading))
    assert gateway.registry.get("sensor-01").rx_counter == device.counter - 1
    assert _errors(bridge) == []
    assert len(bridge.connection.acks) == 3  # type: ignore[attr-defined]  # none redelivered


async def test_refusals_go_to_the_devices_error_topic(bridge: MqttBridge, device: Device) -> None:
    topic = bridge.topics.up("sensor-01", "reading")
    forged = tamper(device.message("reading", {"moisture": 1}))
    await _deliver(bridge, _message(topic, forged))
    await _deliver(bridge, _message(topic, b"moisture=12"))
    (where, problem), (_, malformed) = _errors(bridge)
    assert where == "st/v1/sensor-01/err"
    assert (problem["status"], problem["channel"], problem["counter"]) == (
        401,
        "reading",
        device.counter,
    )
    assert problem["type"].endswith("/bad_mac")
    assert malformed["type"].endswith("/bad_message")
    assert "counter" not in malformed  # no frame header to take it from
    assert bridge.errors_sent == 2


async def test_a_replay_is_reported_unless_the_broker_marked_it_a_redelivery(
    bridge: MqttBridge, device: Device
) -> None:
    topic = bridge.topics.up("sensor-01", "reading")
    reading = device.message("reading", {"moisture": 7})
    await _deliver(bridge, _message(topic, reading))
    # the broker sends again what was handled before a reconnect (DUP set): no error
    await _deliver(bridge, _message(topic, reading, dup=True))
    assert _errors(bridge) == []
    # a DUP flag does not hide anything else: a forged message is still reported
    await _deliver(bridge, _message(topic, tamper(device.message("reading", {})), dup=True))
    assert [p["type"].rsplit("/", 1)[1] for _, p in _errors(bridge)] == ["bad_mac"]
    await _deliver(bridge, _message(topic, reading))  # the same replayed by anyone else
    assert [p["type"].rsplit("/", 1)[1] for _, p in _errors(bridge)] == ["bad_mac", "replay"]


async def test_qos0_floods_are_dropped_beyond_the_queue_limit(
    bridge: MqttBridge, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QoS 0 messages not yet handled are bounded (QoS 1 is bounded by the broker's
    in-flight window, and is never dropped: the broker would not send it again)."""
    monkeypatch.setattr(bridge_module, "_QUEUE_LIMIT", 3)
    topic = bridge.topics.up("sensor-01", "reading")
    bridge._backlog = 2
    bridge._received(_message(topic, b"x", qos=0), 1)  # the third: kept
    assert bridge._backlog == 3 and bridge._dropped == 0
    bridge._received(_message(topic, b"x", qos=0), 1)  # the fourth: dropped
    assert bridge._backlog == 3 and bridge._dropped == 1
    bridge._received(_message(topic, b"x", qos=1), 1)  # QoS 1: kept
    assert bridge._backlog == 4 and bridge._dropped == 1
    bridge._received(_message(topic, b"x", qos=0), 1)  # beyond the limit: dropped too
    assert bridge._backlog == 4 and bridge._dropped == 2
    assert [len(lane) for lane in bridge._lanes.values()] == [2]  # 3rd and 5th
    bridge._closing = True  # closing: nothing taken (the broker keeps it)
    bridge._received(_message(topic, b"x", qos=1), 1)
    assert bridge._backlog == 4


def _busy(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, *, times: int) -> list[int]:
    """Make the registry busy for the gateway's first ``times`` messages (as another
    process holding gateway.db's lock would); the count of calls to ``handle``."""
    real = gateway.handle
    calls = [0]

    async def handle(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise RegistryBusyError("database is locked")
        return await real(*args, **kwargs)

    monkeypatch.setattr(gateway, "handle", handle)
    return calls


async def test_a_busy_registry_holds_the_message_until_it_answers(
    bridge: MqttBridge, device: Device, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker acknowledged the message to its device: a busy registry must not lose
    it. It is tried again, and acknowledged only once handled."""
    calls = _busy(gateway, monkeypatch, times=2)
    reading = device.message("reading", {"moisture": 9})
    message = _message(bridge.topics.up("sensor-01", "reading"), reading)
    await _deliver(bridge, message)
    assert calls == [3]
    assert gateway.registry.get("sensor-01").rx_counter == device.counter
    assert bridge.connection.acks == [message.mid]  # type: ignore[attr-defined]
    assert _errors(bridge) == [] and bridge._backlog == 0


async def test_each_device_has_its_own_lane(bridge: MqttBridge, gateway: Gateway) -> None:
    """Messages wait in one lane per device (handled in order, a device at a time), so
    one device's flood or a slow message holds up no other device."""
    for device_id in ("sensor-01", "sensor-02"):
        for _ in range(2):
            bridge._received(_message(bridge.topics.up(device_id, "reading"), b"x"), 1)
    bridge._received(_message("elsewhere/x", b"x"), 1)  # not in the layout: a lane of its own
    assert {key: len(lane) for key, lane in bridge._lanes.items()} == {
        "sensor-01": 2,
        "sensor-02": 2,
        "": 1,
    }


async def test_only_a_poll_is_answered_by_pushing_the_waiting_downlinks(
    bridge: MqttBridge, device: Device, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivered: list[str] = []

    async def deliver(device_id: str) -> int:
        delivered.append(device_id)
        return 0

    monkeypatch.setattr(gateway, "deliver", deliver)
    reading = device.message("reading", {"moisture": 7})
    await _deliver(bridge, _message(bridge.topics.up("sensor-01", "reading"), reading))
    alarm = device.message("event/VeryDryAlarm", 3)  # a channel sorting before "poll"
    await _deliver(bridge, _message(bridge.topics.up("sensor-01", "event/VeryDryAlarm"), alarm))
    assert delivered == []
    poll = device.message("poll", {})
    await _deliver(bridge, _message(bridge.topics.up("sensor-01", "poll"), poll))
    assert delivered == ["sensor-01"]


async def test_an_unforeseen_failure_is_logged_and_the_message_acknowledged(
    bridge: MqttBridge, device: Device, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither retried for ever nor fatal to the worker that handles it."""

    async def broken(device_id: str) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway, "deliver", broken)
    message = _message(bridge.topics.up("sensor-01", "poll"), device.message("poll", {}))
    await _deliver(bridge, message)
    assert bridge.connection.acks == [message.mid]  # type: ignore[attr-defined]
    assert bridge._backlog == 0


async def test_a_failed_delivery_after_a_reconnect_stops_no_worker(
    bridge: MqttBridge, device: Device, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a (re)connection the bridge pushes what waits for each device believed online
    (a marker in its lane). A push that fails (the registry or the store at fault) is
    logged; the worker goes on with the device's messages behind it, so a failing
    delivery cannot take the bridge's workers away one by one."""

    async def broken(device_id: str) -> int:
        raise RuntimeError("the registry went away")

    monkeypatch.setattr(gateway, "deliver", broken)
    bridge._enqueue("sensor-01", bridge_module._DELIVER)
    reading = device.message("reading", {"moisture": 5})
    bridge._received(_message(bridge.topics.up("sensor-01", "reading"), reading), 1)

    def handled() -> bool:
        return gateway.registry.get("sensor-01").rx_counter == device.counter

    worker = asyncio.create_task(bridge._work())  # one worker: both items are its to do
    try:
        await until(lambda: worker.done() or handled(), timeout=30)
        assert not worker.done() and handled()
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert bridge._lanes == {} and bridge._backlog == 0


async def test_a_qos0_flood_is_logged_once_per_thousand_drops(
    bridge: MqttBridge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher flooding QoS 0 past the queue limit does not flood the gateway's log
    (the disk) in turn: one warning at the first drop, then one per thousand."""
    monkeypatch.setattr(bridge_module, "_QUEUE_LIMIT", 1)
    bridge._backlog = 1
    topic = bridge.topics.up("sensor-01", "reading")
    with caplog.at_level(logging.WARNING, logger="safething.gateway.mqtt"):
        for _ in range(2_500):
            bridge._received(_message(topic, b"x", qos=0), 1)
    assert bridge._dropped == 2_500 and bridge._backlog == 1
    warned = [r.args[0] for r in caplog.records if "dropped" in r.getMessage()]  # type: ignore[index]
    assert warned == [1, 1_000, 2_000]


async def test_a_busy_registry_is_tried_again_less_and_less_often(
    bridge: MqttBridge, device: Device, gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding gateway.db's lock for long is not hammered: the message is
    tried again after 0.05 s, then twice as long each time, at most every 2 s."""
    _busy(gateway, monkeypatch, times=8)
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)  # the bridge's waits only, and none really waited

    monkeypatch.setattr(bridge_module, "asyncio", SimpleNamespace(sleep=sleep))
    reading = device.message("reading", {"moisture": 9})
    await _deliver(bridge, _message(bridge.topics.up("sensor-01", "reading"), reading))
    assert gateway.registry.get("sensor-01").rx_counter == device.counter
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
