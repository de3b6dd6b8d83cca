"""Adopting Home Assistant and Homie devices, and publishing SAFEthings to Home Assistant.

Every test runs a real Mosquitto and a real gateway; the devices' side is a
plain paho client replaying recorded payloads from ``data/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from safething.errors import SafeThingError
from safething.net import Client, Identity
from safething.store import Store
from safething.things import ThingClient, ThingDescription
from safething_gateway.adoption import (
    BROKER_AUTHENTICATED,
    HomeAssistantAdopter,
    HomeAssistantPublisher,
    HomieAdopter,
    TemplateError,
    ValueTemplate,
)
from safething_gateway.adoption.homeassistant import thing_id_for
from safething_gateway.core import Bridge, Gateway
from safething_gateway.registry import Registry
from safething_gateway.testing import Mosquitto, mosquitto, unique_id

from .conftest import SENSOR, Device

DATA = Path(__file__).parent / "data"
T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------


def recorded(name: str) -> dict[str, list[tuple[str, str]]]:
    """A recorded scenario: ``retained`` and ``live`` lists of (topic, payload)."""
    doc = json.loads((DATA / name).read_text(encoding="utf-8"))
    out: dict[str, list[tuple[str, str]]] = {}
    for part in ("retained", "live"):
        out[part] = [
            (
                m["topic"],
                m["payload"] if isinstance(m["payload"], str) else json.dumps(m["payload"]),
            )
            for m in doc.get(part, [])
        ]
    return out


class Probe:
    """The devices' (or Home Assistant's) side of the broker: a plain paho client."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._acks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique_id("probe"))
        self.client.on_message = self._message
        self.client.on_subscribe = self._suback
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def _suback(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            self._acks.setdefault(mid, threading.Event()).set()

    async def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await asyncio.to_thread(info.wait_for_publish, 5)

    async def replay(self, messages: list[tuple[str, str]], *, retain: bool) -> None:
        for topic, payload in messages:
            await self.publish(topic, payload, retain=retain)

    async def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
        assert await asyncio.to_thread(event.wait, 5), f"no SUBACK for {topic}"

    async def expect(self, topic: str, *, timeout: float = 10.0) -> tuple[bytes, bool]:
        """The next message on a topic matching ``topic`` (others are dropped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            assert left > 0, f"nothing on {topic} within {timeout} s"
            try:
                got, payload, retain = await asyncio.to_thread(
                    self.messages.get, True, min(left, 0.5)
                )
            except queue.Empty:
                continue
            if mqtt.topic_matches_sub(topic, got):
                return payload, retain

    async def until(
        self, topic: str, payload: bytes, *, timeout: float = 10.0
    ) -> list[tuple[str, bytes, bool]]:
        """Every message, up to and including the first on ``topic`` saying ``payload``.

        What one client published before that message has arrived by then (the broker
        keeps one queue per subscriber, in order). Reading the queue after :meth:`close`
        instead loses what the network thread had not read yet: paho closes the socket
        right after it writes the DISCONNECT, with what the broker already sent unread.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: list[tuple[str, bytes, bool]] = []
        while not seen or seen[-1][:2] != (topic, payload):
            left = deadline - loop.time()
            assert left > 0, f"no {payload!r} on {topic} within {timeout} s: {seen}"
            with contextlib.suppress(queue.Empty):
                seen.append(await asyncio.to_thread(self.messages.get, True, min(left, 0.5)))
        return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with mosquitto() as b:
        yield b


@pytest.fixture
def probe(broker: Mosquitto) -> Iterator[Probe]:
    p = Probe(broker.port)
    yield p
    p.close()


@contextlib.asynccontextmanager
async def running(
    store: Store, registry: Registry, *bridges: Bridge, owner: Identity | None = None
) -> AsyncIterator[Gateway]:
    gateway = Gateway(
        store=store,
        registry=registry,
        owner=owner or Identity.generate("owner"),
        bridges=bridges,
    )
    async with gateway:
        await gateway.start()
        yield gateway


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 10.0) -> T:
    """Retry ``check`` until it stops raising (the store has no "thing appeared" event)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await check()
            except (AssertionError, SafeThingError, KeyError):
                await asyncio.sleep(0.02)


async def describe(store: Store, thing_id: str, *names: str) -> ThingDescription:
    """The description once it has every attribute in ``names``."""
    async with ThingClient(Client(store)) as things:
        desc = await things.describe(thing_id)
    missing = set(names) - {a.name for a in desc.attributes}
    assert not missing, f"{thing_id} has no {missing} yet"
    return desc


async def value(store: Store, thing_id: str, name: str, identity: Identity | None = None) -> Any:
    async with ThingClient(Client(store, identity)) as things:
        await things.describe(thing_id)
        return (await things.read(thing_id, name)).value


async def value_is(
    store: Store, thing_id: str, name: str, expected: Any, identity: Identity | None = None
) -> None:
    async def check() -> None:
        assert await value(store, thing_id, name, identity) == expected

    await eventually(check)


async def online_is(registry: Registry, thing_id: str, online: bool) -> None:
    """The registry's online flag, set after the value that told it (so waited for)."""

    async def check() -> None:
        assert registry.get(thing_id).online is online

    await eventually(check)


# --- the template subset ----------------------------------------------------------------


def test_value_templates() -> None:
    assert ValueTemplate.parse("{{ value }}").render("21.5") == "21.5"
    assert ValueTemplate.parse("{{value_json.temperature}}").render('{"temperature": 3}') == 3
    tpl = ValueTemplate.parse("{{ value_json['AM2301'].Temperature | float | round(1) }}")
    assert tpl.render('{"AM2301": {"Temperature": "21.46"}}') == 21.5
    assert ValueTemplate.parse('{{ value_json["a"][1] }}').render('{"a": [5, 6]}') == 6
    # beyond the common forms, Jinja2's sandbox (tests/gateway/test_templates.py)
    assert ValueTemplate.parse("{{ value_json.power / 1000 }}").render('{"power": 1500}') == "1.5"
    for text in ("{{ states('sensor.x') }}", "{% for x in value %}{% endfor %}"):
        with pytest.raises(TemplateError):
            ValueTemplate.parse(text)
    with pytest.raises(TemplateError):
        ValueTemplate.parse("{{ value_json.missing }}").render('{"other": 1}')


def test_thing_ids() -> None:
    assert thing_id_for("ha", "A1B2C3") == "ha-A1B2C3"
    odd = thing_id_for("ha", "aa:bb:cc:dd")
    assert odd.startswith("ha-aa-bb-cc-dd-") and odd != thing_id_for("ha", "aa-bb-cc-dd")
    assert len(thing_id_for("homie", "x" * 100)) == 64


# --- Home Assistant discovery ------------------------------------------------------------


async def test_tasmota_classic_discovery(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    scenario = recorded("tasmota_sonoff.json")
    await probe.replay(scenario["retained"], retain=True)
    adopter = HomeAssistantAdopter("127.0.0.1", broker.port)
    async with running(store, registry, adopter) as gateway:
        desc = await eventually(
            lambda: describe(store, "ha-A1B2C3", "lamp", "am2301_temperature", "am2301_humidity")
        )
        assert desc.title == "Kitchen"
        assert BROKER_AUTHENTICATED in desc.description
        lamp = desc.attribute("lamp")
        assert lamp.schema.type == "boolean" and lamp.writable
        assert desc.attribute("am2301_temperature").schema.unit == "°C"
        assert desc.attribute("model").value == "Sonoff Basic"
        assert {a.name for a in desc.actions} == {"TurnOn", "TurnOff"}
        record = registry.get("ha-A1B2C3")
        assert record.transport == "adopted"
        assert record.meta["broker_authenticated"] is True
        assert record.meta["source"] == "homeassistant"
        await value_is(store, "ha-A1B2C3", "available", True)  # the retained LWT

        async def online() -> None:  # and every reader sees the thing online
            async with ThingClient(Client(store)) as things:
                assert (await things.availability("ha-A1B2C3")).online is True

        await eventually(online)

        owner = gateway.owner
        for topic, payload in scenario["live"]:
            await probe.publish(topic, payload)
        await value_is(store, "ha-A1B2C3", "am2301_temperature", 21.4)
        await value_is(store, "ha-A1B2C3", "am2301_humidity", 48.2)
        await value_is(store, "ha-A1B2C3", "lamp", True, owner)

        await probe.subscribe("tasmota_A1B2C3/cmnd/POWER")
        async with ThingClient(Client(store, owner)) as things:
            handle = await things.request("ha-A1B2C3", "TurnOff")
            assert await handle.result(10) is None
        assert await probe.expect("tasmota_A1B2C3/cmnd/POWER") == (b"OFF", False)
        assert adopter.connected() == 1

        # Only the owner may command it.
        async with ThingClient(Client(store, Identity.generate("stranger"))) as things:
            handle = await things.request("ha-A1B2C3", "TurnOn")
            assert (await handle.wait(10)).state == "rejected"


async def test_adopted_thing_survives_a_gateway_restart(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    scenario = recorded("tasmota_sonoff.json")
    await probe.replay(scenario["retained"], retain=True)
    owner = Identity.generate("owner")
    first = HomeAssistantAdopter("127.0.0.1", broker.port)
    async with running(store, registry, first, owner=owner):
        await eventually(lambda: describe(store, "ha-A1B2C3", "lamp", "am2301_temperature"))
        await probe.replay(scenario["live"], retain=False)
        await value_is(store, "ha-A1B2C3", "am2301_temperature", 21.4)

    adopter = HomeAssistantAdopter("127.0.0.1", broker.port)
    async with running(store, registry, adopter, owner=owner) as gateway:
        assert "ha-A1B2C3" in gateway.things  # restored from the registry before any message

        async def adopted() -> None:
            assert adopter.connected() == 1

        await eventually(adopted)
        assert await value(store, "ha-A1B2C3", "am2301_temperature") == 21.4
        await probe.subscribe("tasmota_A1B2C3/cmnd/POWER")
        async with ThingClient(Client(store, gateway.owner)) as things:
            await (await things.request("ha-A1B2C3", "TurnOn")).result(10)
        assert await probe.expect("tasmota_A1B2C3/cmnd/POWER") == (b"ON", False)
        assert registry.pending("ha-A1B2C3") == []


async def test_zigbee2mqtt_value_json_and_json_light(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    scenario = recorded("zigbee2mqtt.json")
    await probe.replay(scenario["retained"], retain=True)
    adopter = HomeAssistantAdopter("127.0.0.1", broker.port)
    climate, bulb = "ha-zigbee2mqtt_0x00158d0001a2b3c4", "ha-zigbee2mqtt_0x000b57fffe123456"
    async with running(store, registry, adopter) as gateway:
        desc = await eventually(
            lambda: describe(store, climate, "temperature", "humidity", "linkquality")
        )
        assert desc.attribute("temperature").schema.unit == "°C"
        assert desc.attribute("manufacturer").value == "Aqara"
        assert "Zigbee2MQTT" in desc.description
        light = await eventually(lambda: describe(store, bulb, "light"))
        assert light.attribute("light").writable
        await value_is(store, climate, "available", True)  # {"state": "online"} via a template
        await value_is(store, bulb, "available", True)  # the same (shared) availability topic

        async with ThingClient(Client(store)) as things:
            await things.describe(climate)
            async with things.subscribe(climate, attribute="temperature") as sub:
                await probe.replay(scenario["live"], retain=False)
                async with asyncio.timeout(10):
                    note = await anext(aiter(sub))
        assert note.value == 22.75
        await value_is(store, climate, "humidity", 52.1)
        await value_is(store, bulb, "light", True, gateway.owner)

        await probe.subscribe("zigbee2mqtt/hallway_bulb/set")
        async with ThingClient(Client(store, gateway.owner)) as things:
            await (await things.request(bulb, "TurnOn")).result(10)
        payload, _ = await probe.expect("zigbee2mqtt/hallway_bulb/set")
        assert json.loads(payload) == {"state": "ON"}


async def test_device_based_discovery(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    scenario = recorded("device_discovery.json")
    await probe.replay(scenario["retained"], retain=True)
    adopter = HomeAssistantAdopter("127.0.0.1", broker.port)
    thing_id = "ha-garden-ctl-01"
    async with running(store, registry, adopter) as gateway:
        owner = gateway.owner
        desc = await eventually(
            lambda: describe(
                store, thing_id, "soil_moisture", "valve", "watering_time", "mode", "leak"
            )
        )
        assert desc.title == "Garden controller"
        duration = desc.attribute("watering_time")
        assert (duration.schema.minimum, duration.schema.maximum) == (1, 120)
        assert desc.attribute("mode").schema.choices == ("auto", "manual", "off")
        assert {a.name for a in desc.actions} == {"TurnOn", "TurnOff", "Set"}
        assert registry.get(thing_id).meta["origin"] == "garden2mqtt"
        # Retained state, shared by every component.
        await value_is(store, thing_id, "soil_moisture", 41.5)
        await value_is(store, thing_id, "leak", False)
        await value_is(store, thing_id, "valve", False, owner)
        await value_is(store, thing_id, "mode", "auto", owner)

        await probe.replay(scenario["live"], retain=False)
        await value_is(store, thing_id, "soil_moisture", 38.0)
        await value_is(store, thing_id, "leak", True)
        await value_is(store, thing_id, "watering_time", 20.0, owner)

        await probe.subscribe("garden/ctl01/+/set")
        async with ThingClient(Client(store, owner)) as things:
            await (await things.request(thing_id, "Set", value=30)).result(10)
            assert await probe.expect("garden/ctl01/duration/set") == (b"30", False)
            await (await things.request(thing_id, "TurnOn")).result(10)
            assert await probe.expect("garden/ctl01/valve/set") == (b"open", False)
            with pytest.raises(ValueError, match="between 1 and 120"):
                await things.request(thing_id, "Set", value=500)
            await things.set_desired(thing_id, "mode", "off")
            assert await probe.expect("garden/ctl01/mode/set") == (b"off", False)

            # An empty retained config removes the device: its thing is disabled.
            await probe.publish("homeassistant/device/garden-ctl-01/config", b"", retain=True)

            async def disabled() -> None:
                assert await things.status(thing_id) == "disabled"

            await eventually(disabled)
        assert registry.get(thing_id).meta["removed"] is True


async def test_malformed_configs_are_skipped_and_the_bridge_keeps_working(
    broker: Mosquitto,
    probe: Probe,
    store: Store,
    registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="safething.gateway.adoption")
    await probe.replay(recorded("malformed.json")["retained"], retain=True)
    adopter = HomeAssistantAdopter("127.0.0.1", broker.port)
    async with running(store, registry, adopter) as gateway:
        # The good component of the mixed device config is adopted...
        await eventually(lambda: describe(store, "ha-mixed-01", "pressure"))
        # ...and a config published later, after all the bad ones, still is.
        await probe.publish(
            "homeassistant/binary_sensor/door-02/config",
            json.dumps({"name": "Door", "stat_t": "door2/state", "dev": {"ids": ["door-02"]}}),
            retain=True,
        )
        await eventually(lambda: describe(store, "ha-door-02", "door"))
        await probe.publish("door2/state", "ON")
        await value_is(store, "ha-door-02", "door", True)

        # A state that is no value of the entity is dropped, not written.
        await probe.publish("door2/state", "garbage")
        await probe.publish("mixed/pressure", "1013.5")
        await value_is(store, "ha-mixed-01", "pressure", 1013.5)
        assert await value(store, "ha-door-02", "door") is True

        assert set(gateway.things) == {"ha-mixed-01", "ha-door-02"}
        assert {r.device_id for r in registry.devices()} == {"ha-mixed-01", "ha-door-02"}
    skipped = "\n".join(r.getMessage() for r in caplog.records if "skipping" in r.getMessage())
    for expected in (
        "broken_json",
        "not_an_object",
        "unsupported component 'vacuum'",
        "a sensor needs a state_topic",
        "a switch needs a command_topic",
        "unsupported template",
        "only value and value_json, not states",
        "no for here",
        "unsupported light schema 'template'",
        "'nop'",
    ):
        assert expected in skipped, f"no log line for {expected!r}:\n{skipped}"


# --- Homie ----------------------------------------------------------------------------------


async def test_homie_v4_device(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    scenario = recorded("homie4_thermostat.json")
    await probe.replay(scenario["retained"], retain=True)
    adopter = HomieAdopter("127.0.0.1", broker.port)
    thing_id = "homie-thermostat-01"
    async with running(store, registry, adopter) as gateway:
        owner = gateway.owner
        desc = await eventually(
            lambda: describe(store, thing_id, "target", "mode", "heating", "temperature")
        )
        assert desc.title == "Hallway thermostat"
        assert BROKER_AUTHENTICATED in desc.description
        target = desc.attribute("target")
        assert target.writable and target.schema.unit == "°C"
        assert (target.schema.minimum, target.schema.maximum) == (5, 30)
        assert desc.attribute("mode").schema.choices == ("off", "heat", "eco")
        humidity = desc.attribute("humidity")
        assert humidity.schema.type == "integer" and humidity.schema.maximum == 100
        assert not desc.attribute("heating").writable
        assert {a.name for a in desc.actions} == {"SetTarget", "SetMode"}
        assert registry.get(thing_id).meta == {
            "source": "homie",
            "broker_authenticated": True,
            "broker": adopter.url,
            "homie": "4.0.0",
            "topic": "homie/thermostat-01",
            "name": "Hallway thermostat",
        }
        await value_is(store, thing_id, "temperature", 19.8)
        await value_is(store, thing_id, "humidity", 48)
        await value_is(store, thing_id, "heating", True)
        await value_is(store, thing_id, "target", 20.5, owner)
        await value_is(store, thing_id, "state", "ready")
        await online_is(registry, thing_id, True)

        await probe.subscribe("homie/thermostat-01/thermostat/+/set")
        async with ThingClient(Client(store, owner)) as things:
            await (await things.request(thing_id, "SetTarget", value=21.5)).result(10)
            assert await probe.expect("homie/thermostat-01/thermostat/target/set") == (
                b"21.5",
                False,
            )
            await things.set_desired(thing_id, "mode", "eco")
            assert await probe.expect("homie/thermostat-01/thermostat/mode/set") == (
                b"eco",
                False,
            )
        await probe.replay(scenario["live"], retain=True)
        await value_is(store, thing_id, "temperature", 20.1)
        await value_is(store, thing_id, "state", "lost")
        await online_is(registry, thing_id, False)


async def test_homie_v5_device(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    scenario = recorded("homie5_lamp.json")
    await probe.replay(scenario["retained"], retain=True)
    adopter = HomieAdopter("127.0.0.1", broker.port)
    thing_id = "homie-desk-lamp"
    async with running(store, registry, adopter) as gateway:
        owner = gateway.owner
        desc = await eventually(lambda: describe(store, thing_id, "power", "brightness", "color"))
        assert desc.title == "Desk lamp"
        assert desc.attribute("homie").value == "5.0"
        assert desc.attribute("brightness").schema.unit == "%"
        assert [t.name for t in desc.topics] == ["press"]  # not retained: momentary events
        assert {a.name for a in desc.actions} == {"SetPower", "SetBrightness", "SetColor"}
        await value_is(store, thing_id, "power", True, owner)
        await value_is(store, thing_id, "color", "255,200,150", owner)

        async with ThingClient(Client(store)) as things:
            await things.describe(thing_id)
            async with things.subscribe(thing_id, topic="press") as sub:
                await probe.publish(*scenario["live"][0])
                async with asyncio.timeout(10):
                    note = await anext(aiter(sub))
            assert note.value == "double"

        await probe.subscribe("homie/5/desk-lamp/light/+/set")
        async with ThingClient(Client(store, owner)) as things:
            await (await things.request(thing_id, "SetBrightness", value=40)).result(10)
            assert await probe.expect("homie/5/desk-lamp/light/brightness/set") == (b"40", False)
            await (await things.request(thing_id, "SetPower", value=False)).result(10)
            assert await probe.expect("homie/5/desk-lamp/light/power/set") == (b"false", False)
        await probe.publish(*scenario["live"][1], retain=True)
        await value_is(store, thing_id, "brightness", 40, owner)

        # Clearing $description (and $state) removes the device: its thing is disabled.
        await probe.publish("homie/5/desk-lamp/$description", b"", retain=True)
        await probe.publish("homie/5/desk-lamp/$state", b"", retain=True)

        async def disabled() -> None:
            async with ThingClient(Client(store)) as things:
                assert await things.status(thing_id) == "disabled"
                live = await things.availability(thing_id)
                assert (live.online, live.reason) == (False, "withdrawn")

        await eventually(disabled)


# --- publishing to Home Assistant ----------------------------------------------------------


async def test_publisher_device_config_birth_states_and_buttons(
    broker: Mosquitto, probe: Probe, store: Store, registry: Registry
) -> None:
    record = registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    config_topic = "homeassistant/device/safething_sensor-01/config"
    await probe.subscribe(config_topic)
    await probe.subscribe("safething/sensor-01/#")
    publisher = HomeAssistantPublisher("127.0.0.1", broker.port, rescan=0.05)
    async with running(store, registry, publisher) as gateway:
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
        doc = json.loads((await probe.expect(config_topic))[0])
        assert doc["device"]["identifiers"] == ["safething_sensor-01"]
        assert doc["device"]["name"] == "Soil sensor"
        assert doc["availability_topic"] == "safething/$gateway"
        cmps = doc["components"]
        assert cmps["attr_moisture"] == {
            "platform": "sensor",
            "name": "moisture",
            "unique_id": "safething_sensor-01_moisture",
            "state_topic": "safething/sensor-01/moisture",
            "state_class": "measurement",
        }
        assert cmps["attr_target"]["platform"] == "number"
        assert cmps["attr_target"]["command_topic"] == "safething/sensor-01/target/set"
        assert cmps["action_OpenValve"] == {
            "platform": "button",
            "name": "OpenValve",
            "unique_id": "safething_sensor-01_action_OpenValve",
            "command_topic": "safething/sensor-01/$action/OpenValve",
            "payload_press": "PRESS",
        }

        # Home Assistant restarts: its birth message brings every config again, retained.
        await probe.subscribe("homeassistant/status")
        await probe.publish("homeassistant/status", "online")
        # what the broker sent before the birth message is read (a config still in
        # flight then is not taken for the one sent again)
        await probe.until("homeassistant/status", b"online")
        assert json.loads((await probe.expect(config_topic))[0]) == doc
        late = Probe(broker.port)
        try:
            await late.subscribe(config_topic)
            payload, retained = await late.expect(config_topic)
            assert retained and json.loads(payload) == doc
        finally:
            late.close()

        # An attribute change reaches its state topic.
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 12}))
        payload, _ = await probe.expect("safething/sensor-01/moisture")
        assert json.loads(payload) == 12.0

        # A button press requests the action as the owner; a set asks for a desired value.
        await probe.publish("safething/sensor-01/$action/OpenValve", "PRESS")
        await probe.publish("safething/sensor-01/target/set", "21")

        async def forwarded() -> None:
            channels = {d.channel.split("/")[0] for d in registry.pending("sensor-01")}
            assert {"action", "desired"} <= channels

        await eventually(forwarded)
        actions = [d for d in registry.pending("sensor-01") if d.channel.startswith("action/")]
        assert json.loads(actions[0].body)["action"] == "OpenValve"
        desired = [d for d in registry.pending("sensor-01") if d.channel == "desired"]
        assert json.loads(desired[0].body) == {"target": 21.0}
