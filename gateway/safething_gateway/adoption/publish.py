"""Publishing the gateway's SAFEthings to Home Assistant (MQTT device-based discovery).

For every custodial thing of the gateway, :class:`HomeAssistantPublisher`
keeps one retained config on ``homeassistant/device/safething_<id>/config``
with one component (``cmps``) per attribute and per action:

===========================  ==================================================
SAFEthing                    Home Assistant component
===========================  ==================================================
number / integer attribute   ``sensor`` (unit, ``measurement``); writable:
                             ``number`` (min/max, box mode when unbounded)
boolean attribute            ``binary_sensor``; writable: ``switch``
enum attribute               ``sensor`` (``device_class: enum``); writable:
                             ``select``
string attribute             ``sensor``
action without required      ``button``: a press requests the action as the
parameters                   gateway's owner
===========================  ==================================================

Values go to retained state topics ``safething/<id>/<attribute>``, pushed
by the store's change feed (one :meth:`ThingClient.subscribe` per dynamic
attribute). Commands from Home Assistant come back on
``safething/<id>/<attribute>/set`` (a desired value, signed by the owner)
and ``safething/<id>/$action/<Action>``. The gateway's availability is
``safething/$gateway`` (``online``; ``offline`` is its last will). When
Home Assistant says it is back (``homeassistant/status`` = ``online``)
every config is published again.

Not published: things adopted from Home Assistant (they are there
already), object and array attributes, attributes only the thing itself
may read, and actions that need arguments a button cannot give.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from safething.errors import NoSuchDataError, SafeThingError
from safething.net import Client
from safething.resource import Tasks
from safething.things import AccessType, Attribute, ThingClient, ThingDescription, ValueType
from safething_gateway.adoption.client import MqttAdapter
from safething_gateway.adoption.ha_discovery import PUBLISHER_ORIGIN
from safething_gateway.core import Gateway
from safething_gateway.mqtt_client import Will

__all__ = ["HomeAssistantPublisher"]

log = logging.getLogger("safething.gateway.adoption")

_ORIGIN = {"name": PUBLISHER_ORIGIN}


@dataclass(eq=False)
class _Published:
    thing_id: str
    description: ThingDescription
    config_topic: str
    tasks: Tasks
    """The thing's followers (one per attribute shown in Home Assistant)."""


class HomeAssistantPublisher(MqttAdapter):
    """Makes the gateway's custodial things devices in Home Assistant."""

    name = "ha-publish"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        discovery_prefix: str = "homeassistant",
        state_prefix: str = "safething",
        rescan: float = 1.0,
    ) -> None:
        super().__init__(host, port, username=username, password=password)
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self.state_prefix = state_prefix.rstrip("/")
        self.rescan = rescan
        """Seconds between looks at the gateway's things (new, changed or gone)."""
        self._entries: dict[str, _Published] = {}
        self._things: ThingClient | None = None
        self._presses = Tasks(f"{self.name}:press:")

    @property
    def status_topic(self) -> str:
        """Where the gateway says ``online`` (retained) and its last will ``offline``."""
        return f"{self.state_prefix}/$gateway"

    @property
    def birth_topic(self) -> str:
        return f"{self.discovery_prefix}/status"

    def topics(self) -> list[str]:
        return [
            self.birth_topic,
            f"{self.state_prefix}/+/+/set",
            f"{self.state_prefix}/+/$action/+",
        ]

    def will(self) -> Will:
        return (self.status_topic, b"offline", True)

    def config_topic(self, thing_id: str) -> str:
        return f"{self.discovery_prefix}/device/{_node(thing_id)}/config"

    def state_topic(self, thing_id: str, attribute: str) -> str:
        return f"{self.state_prefix}/{thing_id}/{attribute}"

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        self._things = ThingClient(Client(gateway.store, gateway.owner))
        await super().start(gateway)
        self.later(self.rescan, self._rescan_job)

    async def on_connected(self) -> None:
        await self.publish(self.status_topic, "online", retain=True)
        await self.sync(republish=True)

    async def on_close(self) -> None:
        with contextlib.suppress(SafeThingError):
            await self.publish(self.status_topic, "offline", retain=True)

    async def close(self) -> None:
        await self._stop_tasks()
        await super().close()  # stops the worker: nothing starts new tasks after this
        await self._stop_tasks()
        self._entries.clear()
        if self._things is not None:
            await self._things.close()

    async def _stop_tasks(self) -> None:
        for entry in self._entries.values():
            await entry.tasks.cancel_all()
        await self._presses.cancel_all()

    async def _rescan_job(self) -> None:
        try:
            if self.is_connected():
                await self.sync()
        finally:
            self.later(self.rescan, self._rescan_job)

    # --- configs -------------------------------------------------------------------

    def _wanted(self) -> dict[str, ThingDescription]:
        gateway = self.gateway
        wanted: dict[str, ThingDescription] = {}
        for thing_id, description in gateway.descriptions().items():
            record = gateway.registry.find(thing_id)
            if record is not None and record.meta.get("source") == "homeassistant":
                continue  # adopted from Home Assistant: it knows the device already
            wanted[thing_id] = description
        return wanted

    async def sync(self, *, republish: bool = False) -> None:
        """Publish configs of new or changed things, remove those of gone things;
        with ``republish``, publish every config again."""
        wanted = self._wanted()
        for thing_id in [t for t in self._entries if t not in wanted]:
            entry = self._entries.pop(thing_id)
            await entry.tasks.cancel_all()
            await self.publish(entry.config_topic, b"", retain=True)
            log.info("%s: removed %s from Home Assistant", self.name, thing_id)
        for thing_id, description in wanted.items():
            current = self._entries.get(thing_id)
            if current is not None and current.description == description:
                if republish:
                    await self._publish_config(current)
                continue
            if current is not None:
                await current.tasks.cancel_all()
            tasks = Tasks(f"{self.name}:{thing_id}:")
            entry = _Published(thing_id, description, self.config_topic(thing_id), tasks)
            self._entries[thing_id] = entry
            await self._publish_config(entry)
            self._follow(entry)

    async def _publish_config(self, entry: _Published) -> None:
        doc = self.discovery_config(entry.description)
        await self.publish(entry.config_topic, json.dumps(doc, ensure_ascii=False), retain=True)
        log.debug("%s: published the config of %s", self.name, entry.thing_id)

    def discovery_config(self, description: ThingDescription) -> dict[str, Any]:
        """The device-based discovery config of a thing."""
        thing_id = description.id
        node = _node(thing_id)
        components: dict[str, dict[str, Any]] = {}
        for attr in description.attributes:
            component = self._attribute_component(thing_id, attr)
            if component is not None:
                component["unique_id"] = f"{node}_{attr.name}"
                components[f"attr_{attr.name}"] = component
        for action in description.actions:
            if any(p.required for p in action.params):
                continue  # a button cannot give arguments
            components[f"action_{action.name}"] = {
                "platform": "button",
                "name": action.name,
                "unique_id": f"{node}_action_{action.name}",
                "command_topic": f"{self.state_prefix}/{thing_id}/$action/{action.name}",
                "payload_press": "PRESS",
            }
        device: dict[str, Any] = {
            "identifiers": [node],
            "name": description.title,
            "manufacturer": "SAFEthing",
            "model": _static(description, "model") or "custodial thing",
            "serial_number": thing_id,
        }
        firmware = _static(description, "firmware") or _static(description, "sw_version")
        if firmware:
            device["sw_version"] = firmware
        return {
            "device": device,
            "origin": _ORIGIN,
            "availability_topic": self.status_topic,
            "qos": 1,
            "components": components,
        }

    def _attribute_component(self, thing_id: str, attr: Attribute) -> dict[str, Any] | None:
        schema = attr.schema
        kind = schema.type
        if attr.access == AccessType.THING or kind in (ValueType.OBJECT, ValueType.ARRAY):
            return None
        state = self.state_topic(thing_id, attr.name)
        out: dict[str, Any] = {"name": attr.name, "state_topic": state}
        if not attr.dynamic:
            out["entity_category"] = "diagnostic"
        command = f"{state}/set"
        if kind is ValueType.BOOLEAN:
            out.update(payload_on="true", payload_off="false")
            if attr.writable:
                out.update(platform="switch", command_topic=command)
            else:
                out["platform"] = "binary_sensor"
        elif kind in (ValueType.NUMBER, ValueType.INTEGER):
            if schema.unit:
                out["unit_of_measurement"] = schema.unit
            if attr.writable:
                out.update(platform="number", command_topic=command)
                out["min"] = schema.minimum if schema.minimum is not None else -1e9
                out["max"] = schema.maximum if schema.maximum is not None else 1e9
                out["step"] = 1 if kind is ValueType.INTEGER else 0.001
                if schema.minimum is None or schema.maximum is None:
                    out["mode"] = "box"
            else:
                out["platform"] = "sensor"
                if attr.dynamic:
                    out["state_class"] = "measurement"
        elif kind is ValueType.ENUM:
            out["options"] = list(schema.choices or ())
            if attr.writable:
                out.update(platform="select", command_topic=command)
            else:
                out.update(platform="sensor", device_class="enum")
        else:
            out["platform"] = "sensor"
        return out

    # --- states -----------------------------------------------------------------------

    def _follow(self, entry: _Published) -> None:
        for attr in entry.description.attributes:
            if self._attribute_component(entry.thing_id, attr) is None:
                continue
            topic = self.state_topic(entry.thing_id, attr.name)
            if attr.dynamic:
                entry.tasks.spawn(
                    self._follow_attribute(entry.thing_id, attr.name, topic), attr.name
                )
            else:
                entry.tasks.spawn(self._publish_state(topic, attr.value), attr.name)

    async def _follow_attribute(self, thing_id: str, attribute: str, topic: str) -> None:
        things = self._things
        assert things is not None
        try:
            async with things.subscribe(thing_id, attribute=attribute) as sub:
                with contextlib.suppress(NoSuchDataError):
                    await self._publish_state(topic, (await things.read(thing_id, attribute)).value)
                async for note in sub:
                    await self._publish_state(topic, note.value)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: stopped following %s.%s", self.name, thing_id, attribute)

    async def _publish_state(self, topic: str, value: Any) -> None:
        if value is None:
            return
        try:
            await self.publish(topic, _state_text(value), retain=True)
        except SafeThingError as e:
            log.info("%s: state of %s not published: %s", self.name, topic, e)

    # --- commands from Home Assistant ------------------------------------------------

    async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        text = payload.decode("utf-8", errors="replace")
        if topic == self.birth_topic:
            if text == "online":
                log.info("%s: Home Assistant is online; publishing every config", self.name)
                await self.sync(republish=True)
            return
        prefix = self.state_prefix + "/"
        if retain or not topic.startswith(prefix):
            return  # a retained command is an old one: never replay it
        levels = topic[len(prefix) :].split("/")
        if len(levels) != 3:
            return
        thing_id, middle, last = levels
        entry = self._entries.get(thing_id)
        if entry is None:
            log.info("%s: command for unknown thing %s ignored", self.name, thing_id)
            return
        if middle == "$action":
            self._press(thing_id, last)
        elif last == "set":
            await self._set(entry, middle, text)

    def _press(self, thing_id: str, action: str) -> None:
        async def run() -> None:
            things = self._things
            assert things is not None
            try:
                handle = await things.request(thing_id, action)
                status = await handle.wait()
                log.info(
                    "%s: %s.%s from Home Assistant: %s", self.name, thing_id, action, status.state
                )
            except asyncio.CancelledError:
                raise
            except (SafeThingError, ValueError, KeyError) as e:
                log.warning(
                    "%s: %s.%s from Home Assistant failed: %s", self.name, thing_id, action, e
                )

        self._presses.spawn(run(), action)

    async def _set(self, entry: _Published, attribute: str, text: str) -> None:
        things = self._things
        assert things is not None
        try:
            attr = entry.description.attribute(attribute)
            value = _parse(attr, text)
            await things.set_desired(entry.thing_id, attribute, value)
        except (SafeThingError, ValueError, KeyError) as e:
            log.warning(
                "%s: set %s.%s = %r from Home Assistant refused: %s",
                self.name,
                entry.thing_id,
                attribute,
                text[:40],
                e,
            )


def _node(thing_id: str) -> str:
    return "safething_" + re.sub(r"[^A-Za-z0-9_-]", "_", thing_id)


def _static(description: ThingDescription, name: str) -> str | None:
    for attr in description.attributes:
        if attr.name == name and not attr.dynamic and isinstance(attr.value, str):
            return attr.value
    return None


def _state_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _parse(attr: Attribute, text: str) -> Any:
    kind = attr.schema.type
    if kind is ValueType.BOOLEAN:
        lowered = text.strip().lower()
        if lowered in ("true", "on", "1"):
            return True
        if lowered in ("false", "off", "0"):
            return False
        raise ValueError(f"{text[:40]!r} is not true or false")
    if kind is ValueType.INTEGER:
        return int(float(text))
    if kind is ValueType.NUMBER:
        return float(text)
    return text
