"""Adopting devices that announce themselves with Home Assistant MQTT discovery.

Tasmota, Zigbee2MQTT, ESPHome, OpenMQTTGateway and many others publish a
retained JSON *config* per entity (``homeassistant/<component>/[<node>/]
<object>/config``) or one per device (``homeassistant/device/<id>/config``
with ``cmps``). :class:`HomeAssistantAdopter` reads them, groups the
entities by device (``dev.ids``), and makes each device a custodial
SAFEthing ``ha-<identifier>``:

=============  =============================================================
component      SAFEthing
=============  =============================================================
sensor         dynamic number (``unit_of_meas``, ``stat_cla`` or a numeric
               ``dev_cla``), enum (``dev_cla: enum`` with ``options``) or
               string attribute
binary_sensor  dynamic boolean attribute (``pl_on``/``pl_off``)
switch, light  writable boolean attribute; actions ``TurnOn``/``TurnOff``
               publish ``pl_on``/``pl_off`` (``{"state": "ON"}`` for a JSON
               light) on ``cmd_t``
number         writable number attribute (``min``/``max``/``step``); action
               ``Set(value)``
select         writable enum attribute (``options``)
=============  =============================================================

With more than one switch/light (or number) on a device, the actions take a
``target`` parameter naming the attribute (default: the first). Values come
from ``stat_t`` through ``val_tpl`` (:mod:`safething_gateway.adoption.templates`:
the common forms directly, the rest in Jinja2's sandbox with limits): an entity
whose template is refused is skipped with a log line, as is every malformed
config. The bridge never stops on a
bad message. An empty retained config removes the entity; a device with no
entity left has its thing disabled.

Adopted devices cannot sign: whatever reaches the broker on their topics is
taken as theirs. Their registry record says ``"broker_authenticated": true``
and so does their description text (:data:`BROKER_AUTHENTICATED`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from safething.things import (
    AccessType,
    Action,
    ActionRequest,
    Attribute,
    Param,
    Thing,
    ThingDescription,
)
from safething_gateway.adoption.base import (
    ADOPTED_HISTORY,
    BROKER_AUTHENTICATED,
    AdoptedDevice,
    MqttAdopter,
    UniqueNames,
    attr_name,
    number_text,
    thing_id_for,
)
from safething_gateway.adoption.client import BrokerUnavailableError, MqttAdapter
from safething_gateway.adoption.ha_discovery import (
    _SHARED,
    ABBREVIATIONS,
    PUBLISHER_ORIGIN,
    DiscoveryConfigError,
    apply_base,
    expand_config,
)
from safething_gateway.adoption.templates import (
    TemplateError,
    ValueTemplate,
    command_template,
    jinja_text,
)

__all__ = [
    "ABBREVIATIONS",  # from ha_discovery, still importable from here
    "BROKER_AUTHENTICATED",  # from base, still importable from here
    "PUBLISHER_ORIGIN",  # from ha_discovery, still importable from here
    "BrokerUnavailableError",  # from client, still importable from here
    "DiscoveryConfigError",
    "HomeAssistantAdopter",
    "MqttAdapter",  # from client, still importable from here
    "MqttAdopter",  # from base, still importable from here
    "TemplateError",
    "ValueTemplate",
    "expand_config",
]

log = logging.getLogger("safething.gateway.adoption")

_MAX_DYNAMIC: Final = 50
"""Most dynamic attributes of one adopted thing (its histories must fit in one MD)."""


_NUMERIC_CLASSES_NOT: Final = frozenset({"timestamp", "date", "enum"})
_SUPPORTED: Final = ("sensor", "binary_sensor", "switch", "light", "number", "select")
_SWITCHES: Final = ("switch", "light")
_STATE_JSON: Final = ValueTemplate.parse("{{ value_json.state }}")


@dataclass(frozen=True)
class _Availability:
    topic: str
    online: str
    offline: str
    template: ValueTemplate | None


class _NoValue(ValueError):
    """A state payload that is no value of the entity (``unavailable``, another key...)."""


@dataclass(eq=False)
class _Entity:
    """One discovered entity and how it maps to a SAFEthing attribute."""

    key: str
    source: str
    component: str
    object_id: str
    name: Any
    device_key: str
    kind: str
    state_topic: str | None = None
    command_topic: str | None = None
    template: ValueTemplate | None = None
    command_template: str | None = None
    unit: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    payload_on: Any = "ON"
    payload_off: Any = "OFF"
    state_on: Any = "ON"
    state_off: Any = "OFF"
    json_light: bool = False
    optimistic: bool = False
    qos: int = 0
    retain: bool = False
    availability: tuple[_Availability, ...] = ()
    attr: str = ""
    value: Any = None
    fresh: bool = False

    @property
    def writable(self) -> bool:
        return self.command_topic is not None

    def parse(self, payload: str) -> Any:
        template = self.template or (_STATE_JSON if self.json_light else None)
        raw: Any = template.render(payload) if template is not None else payload
        if self.kind == "boolean":
            text = jinja_text(raw)
            if text == jinja_text(self.state_on):
                return True
            if text == jinja_text(self.state_off):
                return False
            raise _NoValue(f"{text[:40]!r} is neither {self.state_on!r} nor {self.state_off!r}")
        if self.kind == "number":
            if isinstance(raw, bool):
                raise _NoValue(f"{raw!r} is not a number")
            try:
                number = float(raw if isinstance(raw, int | float) else str(raw).strip())
            except ValueError:
                raise _NoValue(f"{jinja_text(raw)[:40]!r} is not a number") from None
            if not math.isfinite(number):
                raise _NoValue(f"{number!r} is not a finite number")
            return number
        text = jinja_text(raw)
        if self.kind == "enum" and text not in (self.choices or ()):
            raise _NoValue(f"{text[:40]!r} is not one of the options")
        if len(text) > 1024:
            raise _NoValue("longer than 1024 characters")
        return text

    def command(self, value: Any) -> str:
        if self.kind == "boolean":
            if self.json_light:
                return json.dumps({"state": "ON" if value else "OFF"})
            payload = self.payload_on if value else self.payload_off
            return jinja_text(payload)
        text = number_text(value) if self.kind == "number" else str(value)
        if self.command_template is not None:
            return re.sub(r"\{\{\s*value\s*\}\}", lambda _: text, self.command_template)
        return text


def _topic(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "+" in value or "#" in value:
        raise DiscoveryConfigError(f"{key} must be a topic name, got {value!r}")
    return value


def _template(config: Mapping[str, Any], key: str) -> ValueTemplate | None:
    text = config.get(key)
    if text is None:
        return None
    if not isinstance(text, str):
        raise DiscoveryConfigError(f"{key} must be a string")
    return ValueTemplate.parse(text)


def _number(config: Mapping[str, Any], key: str, default: float | None) -> float | None:
    value = config.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DiscoveryConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _availability(config: Mapping[str, Any]) -> tuple[_Availability, ...]:
    online = config.get("payload_available", "online")
    offline = config.get("payload_not_available", "offline")
    items: list[_Availability] = []
    listed = config.get("availability")
    if isinstance(listed, list):
        for item in listed:
            if not isinstance(item, Mapping):
                raise DiscoveryConfigError("availability items must be objects")
            topic = _topic(item, "topic")
            if topic is None:
                raise DiscoveryConfigError("an availability item needs a topic")
            items.append(
                _Availability(
                    topic,
                    jinja_text(item.get("payload_available", online)),
                    jinja_text(item.get("payload_not_available", offline)),
                    _template(item, "value_template"),
                )
            )
    topic = _topic(config, "availability_topic")
    if topic is not None:
        items.append(
            _Availability(
                topic,
                jinja_text(online),
                jinja_text(offline),
                _template(config, "availability_template"),
            )
        )
    return tuple(items)


def _device_key(config: Mapping[str, Any], fallback: str) -> str:
    device = config.get("device")
    if isinstance(device, Mapping):
        ids = device.get("identifiers")
        if isinstance(ids, list) and ids:
            ids = ids[0]
        if isinstance(ids, str | int) and not isinstance(ids, bool) and str(ids):
            return str(ids)
        connections = device.get("connections")
        if isinstance(connections, list) and connections:
            first = connections[0]
            if isinstance(first, list) and len(first) == 2:
                return f"{first[0]}_{first[1]}"
    unique = config.get("unique_id")
    if isinstance(unique, str | int) and not isinstance(unique, bool) and str(unique):
        return str(unique)
    return fallback


def _entity(
    key: str, source: str, component: str, object_id: str, config: Mapping[str, Any]
) -> _Entity:
    """Map one expanded config to an entity; :class:`DiscoveryConfigError` if it cannot be
    adopted."""
    if component not in _SUPPORTED:
        raise DiscoveryConfigError(f"unsupported component {component!r}")
    qos = config.get("qos", 0)
    entity = _Entity(
        key=key,
        source=source,
        component=component,
        object_id=object_id,
        name=config.get("name", object_id),
        device_key=_device_key(config, object_id),
        kind="string",
        state_topic=_topic(config, "state_topic"),
        command_topic=_topic(config, "command_topic"),
        template=_template(config, "value_template"),
        qos=qos if qos in (0, 1, 2) else 0,
        retain=config.get("retain") is True,
        optimistic=config.get("optimistic") is True,
        availability=_availability(config),
    )
    if component in ("sensor", "binary_sensor") and entity.state_topic is None:
        raise DiscoveryConfigError(f"a {component} needs a state_topic")
    if component in ("switch", "light", "number", "select") and entity.command_topic is None:
        raise DiscoveryConfigError(f"a {component} needs a command_topic")
    if component == "sensor":
        options = config.get("options")
        device_class = config.get("device_class")
        unit = config.get("unit_of_measurement")
        if device_class == "enum" and isinstance(options, list) and options:
            entity.kind = "enum"
            entity.choices = tuple(dict.fromkeys(jinja_text(o)[:128] for o in options if o != ""))
            if not entity.choices:
                raise DiscoveryConfigError("an enum sensor needs at least one non-empty option")
        elif (
            unit is not None
            or config.get("state_class") is not None
            or (isinstance(device_class, str) and device_class not in _NUMERIC_CLASSES_NOT)
        ):
            entity.kind = "number"
            if isinstance(unit, str) and 0 < len(unit) <= 32:
                entity.unit = unit
    elif component == "binary_sensor":
        entity.kind = "boolean"
        entity.state_on = config.get("payload_on", "ON")
        entity.state_off = config.get("payload_off", "OFF")
    elif component in _SWITCHES:
        entity.kind = "boolean"
        entity.payload_on = config.get("payload_on", "ON")
        entity.payload_off = config.get("payload_off", "OFF")
        entity.state_on = config.get("state_on", entity.payload_on)
        entity.state_off = config.get("state_off", entity.payload_off)
        if component == "light":
            schema = config.get("schema", "default")
            if schema == "json":
                entity.json_light = True
            elif schema in ("default", "basic"):
                entity.template = _template(config, "state_value_template")
            else:
                raise DiscoveryConfigError(f"unsupported light schema {schema!r}")
        if entity.state_topic is None:
            entity.optimistic = True
    elif component == "number":
        entity.kind = "number"
        entity.minimum = _number(config, "min", 1.0)
        entity.maximum = _number(config, "max", 100.0)
        entity.step = _number(config, "step", 1.0)
        low, high = entity.minimum, entity.maximum
        if low is not None and high is not None and low > high:
            raise DiscoveryConfigError("min is above max")
        unit = config.get("unit_of_measurement")
        if isinstance(unit, str) and 0 < len(unit) <= 32:
            entity.unit = unit
    elif component == "select":
        options = config.get("options")
        if not isinstance(options, list) or not options:
            raise DiscoveryConfigError("a select needs a list of options")
        entity.kind = "enum"
        entity.choices = tuple(dict.fromkeys(jinja_text(o)[:128] for o in options if o != ""))
        if not entity.choices:
            raise DiscoveryConfigError("a select needs at least one non-empty option")
    if component in ("number", "select") and config.get("command_template") is not None:
        text = config["command_template"]
        if not isinstance(text, str):
            raise DiscoveryConfigError("command_template must be a string")
        entity.command_template = command_template(text)
    if component in ("number", "select") and entity.state_topic is None:
        entity.optimistic = True
    return entity


@dataclass(eq=False)
class _HaDevice(AdoptedDevice):
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, Any] = field(default_factory=dict)
    entities: dict[str, _Entity] = field(default_factory=dict)
    available: bool | None = None
    available_fresh: bool = False


# --- the adopter ------------------------------------------------------------------------


class HomeAssistantAdopter(MqttAdopter):
    """Adopts every device announced with Home Assistant MQTT discovery on a broker."""

    name = "ha-adopt"
    source = "homeassistant"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        discovery_prefix: str = "homeassistant",
        settle: float = 0.1,
        access: AccessType | str = AccessType.ALL,
        control: AccessType | str = AccessType.OWNER,
    ) -> None:
        super().__init__(
            host,
            port,
            username=username,
            password=password,
            settle=settle,
            access=access,
            control=control,
        )
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self._devices: dict[str, _HaDevice] = {}
        self._by_source: dict[str, list[_Entity]] = {}
        self._state_index: dict[str, list[_Entity]] = {}
        self._avail_index: dict[str, list[tuple[str, _Availability]]] = {}
        self._last: dict[str, str] = {}

    def topics(self) -> list[str]:
        p = self.discovery_prefix
        return [f"{p}/+/+/config", f"{p}/+/+/+/config"]

    def connected(self) -> int:
        return sum(1 for d in self._devices.values() if d.adopted and d.available is not False)

    def devices(self) -> dict[str, str]:
        """Thing id of every device seen, by its Home Assistant identifier."""
        return {key: d.thing_id for key, d in self._devices.items()}

    # --- messages --------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        prefix = self.discovery_prefix + "/"
        if topic.startswith(prefix) and topic.endswith("/config"):
            levels = topic[len(prefix) :].split("/")
            if len(levels) in (3, 4):
                await self._on_config(topic, levels[0], levels[-2], payload)
                return
        await self._on_state(topic, payload.decode("utf-8", errors="replace"))

    async def _on_config(self, topic: str, component: str, object_id: str, payload: bytes) -> None:
        entities: list[_Entity] = []
        if payload.strip():
            try:
                doc = json.loads(payload)
                if not isinstance(doc, dict):
                    raise DiscoveryConfigError("the payload is not a JSON object")
                origin = doc.get("origin", doc.get("o"))
                if isinstance(origin, Mapping) and origin.get("name") == PUBLISHER_ORIGIN:
                    return  # a SAFEthing published by a gateway: a thing already, not a device
                if component == "device":
                    entities = self._device_entities(topic, object_id, doc)
                else:
                    config = apply_base(expand_config(doc))
                    entities = [_entity(topic, topic, component, object_id, config)]
                    self._learn_device(entities[0].device_key, config)
            except (ValueError, DiscoveryConfigError) as e:
                log.warning("%s: skipping discovery config %s: %s", self.name, topic, e)
                return
        self._replace(topic, entities)

    def _device_entities(self, topic: str, object_id: str, doc: dict[str, Any]) -> list[_Entity]:
        top = expand_config(doc)
        components = top.get("components")
        if not isinstance(components, Mapping) or not components:
            raise DiscoveryConfigError("a device config needs a 'cmps' object of components")
        device = top.get("device")
        if not isinstance(device, Mapping) or not device.get("identifiers"):
            raise DiscoveryConfigError("a device config needs 'dev' with 'ids'")
        shared: dict[str, Any] = {k: top[k] for k in _SHARED if k in top}
        entities: list[_Entity] = []
        for cid, raw in components.items():
            if not isinstance(raw, Mapping):
                log.warning("%s: %s: skipping component %r: not an object", self.name, topic, cid)
                continue
            config = expand_config(raw)
            platform = config.pop("platform", None)
            if not config:  # only the platform: the component is being removed
                continue
            config = apply_base({**shared, **config, "device": device})
            try:
                if not isinstance(platform, str):
                    raise DiscoveryConfigError("the component has no platform ('p')")
                entity = _entity(f"{topic}#{cid}", topic, platform, str(cid), config)
            except DiscoveryConfigError as e:
                log.warning("%s: %s: skipping component %r: %s", self.name, topic, cid, e)
                continue
            entities.append(entity)
        if entities:
            self._learn_device(entities[0].device_key, {"device": device, **top})
        return entities

    def _learn_device(self, key: str, config: Mapping[str, Any]) -> None:
        device = self._devices.get(key)
        if device is None:
            device = self._devices[key] = _HaDevice(key, thing_id=thing_id_for("ha", key))
        if isinstance(config.get("device"), Mapping):
            device.info.update(config["device"])
        if isinstance(config.get("origin"), Mapping):
            device.origin.update(config["origin"])

    def _replace(self, source: str, entities: list[_Entity]) -> None:
        touched: set[str] = set()
        previous: dict[str, _Entity] = {}
        for old in self._by_source.pop(source, []):
            previous[old.key] = old
            device = self._devices.get(old.device_key)
            if device is not None:
                device.entities.pop(old.key, None)
                touched.add(device.key)
        for entity in entities:
            before = previous.get(entity.key)
            if before is not None and before.kind == entity.kind:
                entity.value, entity.fresh = before.value, before.fresh
            device = self._devices[entity.device_key]
            device.entities[entity.key] = entity
            touched.add(device.key)
        if entities:
            self._by_source[source] = entities
        self._reindex()
        for entity in entities:  # topics already followed send no retained message again
            if entity.key in previous:
                continue
            cached = self._last.get(entity.state_topic or "")
            if cached is not None:
                self._take(entity, cached)
            for a in entity.availability:
                if a.topic in self._last:
                    self._availability(self._devices[entity.device_key], a, self._last[a.topic])
        for key in touched:
            self._schedule(key)

    def _reindex(self) -> None:
        states: dict[str, list[_Entity]] = {}
        avail: dict[str, list[tuple[str, _Availability]]] = {}
        for device in self._devices.values():
            for entity in device.entities.values():
                if entity.state_topic is not None:
                    states.setdefault(entity.state_topic, []).append(entity)
                for a in entity.availability:
                    avail.setdefault(a.topic, []).append((device.key, a))
        wanted = set(states) | set(avail)
        current = set(self._state_index) | set(self._avail_index)
        self._state_index, self._avail_index = states, avail
        if wanted - current:
            self.subscribe(*sorted(wanted - current))
        if current - wanted:
            self.unsubscribe(*sorted(current - wanted))
            for topic in current - wanted:
                self._last.pop(topic, None)

    async def _on_state(self, topic: str, text: str) -> None:
        entities = self._state_index.get(topic, [])
        availability = self._avail_index.get(topic, [])
        if not entities and not availability:
            return
        self._last[topic] = text
        touched: set[str] = set()
        for entity in entities:
            if self._take(entity, text):
                touched.add(entity.device_key)
        for key, a in availability:
            device = self._devices.get(key)
            if device is not None and self._availability(device, a, text):
                touched.add(key)
        for key in touched:
            device = self._devices.get(key)
            if device is not None:
                await self._flush(device)

    def _availability(self, device: _HaDevice, a: _Availability, text: str) -> bool:
        try:
            value = jinja_text(a.template.render(text)) if a.template else text
        except TemplateError as e:
            log.debug("%s: availability of %s: %s", self.name, device.thing_id, e)
            return False
        if value not in (a.online, a.offline):
            return False
        device.available = value == a.online
        device.available_fresh = True
        return True

    def _take(self, entity: _Entity, text: str) -> bool:
        try:
            entity.value = entity.parse(text)
        except (_NoValue, TemplateError) as e:
            log.debug("%s: %s: no value in %r: %s", self.name, entity.key, text[:60], e)
            return False
        entity.fresh = True
        return True

    async def _flush(self, device: _HaDevice) -> None:
        """Write the values that arrived since the last write (unless a rebuild is due)."""
        if self.live_thing(device) is None:
            return
        for entity in sorted(device.entities.values(), key=lambda e: e.key):
            if entity.fresh and entity.attr:
                entity.fresh = False
                await self.report(device.thing_id, entity.attr, entity.value)
        if device.available_fresh and device.available is not None:
            device.available_fresh = False
            await self.report(device.thing_id, "available", device.available)
            registry = self.gateway.registry
            await registry.call(registry.set_online, device.thing_id, device.available)
            await self.gateway.liveness.mark(
                device.thing_id, device.available, "" if device.available else "unavailable"
            )

    # --- (re)building a device's thing -------------------------------------------------

    def _schedule(self, key: str) -> None:
        device = self._devices.get(key)
        if device is not None:
            self.schedule(device, functools.partial(self._rebuild, key))

    async def _rebuild(self, key: str) -> None:
        device = self._devices.get(key)
        if device is None or not self.settled(device):
            return
        if not device.entities:
            del self._devices[key]
            if device.adopted:
                await self.retire(device.thing_id)
            return
        thing = await self.bring_up(device, lambda: (self._describe(device), self._meta(device)))
        if thing is None:
            return
        self._install(device, thing)
        await self._flush(device)

    def _meta(self, device: _HaDevice) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "identifier": device.key,
            "discovery": sorted({e.source for e in device.entities.values()}),
        }
        for key in ("manufacturer", "model", "name"):
            if isinstance(device.info.get(key), str):
                meta[key] = device.info[key]
        if isinstance(device.origin.get("name"), str):
            meta["origin"] = device.origin["name"]
        return meta

    def _describe(self, device: _HaDevice) -> ThingDescription:
        names = UniqueNames(("available", "manufacturer", "model", "sw_version", "hw_version"))
        attributes: list[Attribute] = []
        for key in ("manufacturer", "model", "sw_version", "hw_version"):
            value = device.info.get(key)
            if isinstance(value, str | int | float) and str(value).strip():
                attributes.append(Attribute(key, "string", value=str(value)[:1024]))
        dynamic = 0
        if any(e.availability for e in device.entities.values()):
            attributes.append(
                Attribute(
                    "available",
                    "boolean",
                    dynamic=True,
                    history=ADOPTED_HISTORY,
                    access=self.access,
                    description="the device's availability topic says online",
                )
            )
            dynamic += 1
        device_name = device.info.get("name")
        switches: list[_Entity] = []
        numbers: list[_Entity] = []
        for entity in sorted(device.entities.values(), key=lambda e: e.key):
            if dynamic >= _MAX_DYNAMIC:
                log.warning(
                    "%s: %s: too many entities; leaving out %s",
                    self.name,
                    device.thing_id,
                    entity.key,
                )
                entity.attr = ""
                continue
            stripped = _strip(entity.name, device_name)
            if attr_name(stripped) is None:  # the device's main feature: name it by its kind
                entity.attr = names.take(entity.component, entity.object_id)
            else:
                entity.attr = names.take(stripped, entity.object_id, entity.component)
            try:
                attributes.append(self._attribute(entity))
            except ValueError as e:
                log.warning("%s: %s: leaving out %s: %s", self.name, device.thing_id, entity.key, e)
                names.used.discard(entity.attr)
                entity.attr = ""
                continue
            dynamic += 1
            if entity.component in _SWITCHES:
                switches.append(entity)
            elif entity.component == "number":
                numbers.append(entity)
        actions: list[Action] = []
        if switches:
            target = _target_param([e.attr for e in switches])
            for verb, text in (("TurnOn", "on"), ("TurnOff", "off")):
                actions.append(
                    Action(
                        verb,
                        params=target,
                        access=self.control,
                        timeout_s=15.0,
                        description=f"publish the {text} payload on the command topic",
                    )
                )
        if numbers:
            first = numbers[0]
            value = (
                Param("value", "number", minimum=first.minimum, maximum=first.maximum)
                if len(numbers) == 1
                else Param("value", "number")
            )
            actions.append(
                Action(
                    "Set",
                    params=[value, *_target_param([e.attr for e in numbers])],
                    access=self.control,
                    timeout_s=15.0,
                    description="publish a new value on the number's command topic",
                )
            )
        origin = device.origin.get("name")
        title = device_name if isinstance(device_name, str) and device_name.strip() else None
        return ThingDescription(
            device.thing_id,
            title=(title or device.thing_id)[:128],
            description=self.note(
                "Adopted from Home Assistant MQTT discovery"
                + (f" (origin: {origin})." if isinstance(origin, str) else ".")
            ),
            attributes=attributes,
            actions=actions,
        )

    def _attribute(self, entity: _Entity) -> Attribute:
        label = entity.name if isinstance(entity.name, str) else entity.object_id
        text = f"Home Assistant {entity.component} {label[:200]!r}"
        if entity.step is not None:
            text += f", step {number_text(entity.step)}"
        return Attribute(
            entity.attr,
            entity.kind,
            unit=entity.unit,
            minimum=entity.minimum,
            maximum=entity.maximum,
            choices=entity.choices,
            dynamic=True,
            writable=entity.writable,
            history=ADOPTED_HISTORY,
            access=self.control if entity.writable else self.access,
            description=text,
        )

    # --- commands -------------------------------------------------------------------------

    def _install(self, device: _HaDevice, thing: Thing) -> None:
        key = device.key
        for action in thing.description.actions:
            if action.name in ("TurnOn", "TurnOff"):
                thing.on_action(action.name, self._switch_handler(key, action.name == "TurnOn"))
            elif action.name == "Set":
                thing.on_action(action.name, self._set_handler(key))
        for entity in device.entities.values():
            if entity.attr and entity.writable:
                thing.on_desired(entity.attr, self._desired_handler(key, entity.attr))

    def _entity_for(self, key: str, attr: str | None, components: tuple[str, ...]) -> _Entity:
        device = self._devices.get(key)
        found = sorted(
            (
                e
                for e in (device.entities.values() if device else ())
                if e.attr and e.component in components
            ),
            key=lambda e: e.key,
        )
        for entity in found:
            if attr is None or entity.attr == attr:
                return entity
        raise DiscoveryConfigError(f"the device no longer announces {attr or components[0]!r}")

    async def _command(self, key: str, entity: _Entity, value: Any) -> None:
        assert entity.command_topic is not None
        await self.publish(
            entity.command_topic,
            entity.command(value),
            qos=max(entity.qos, 1),
            retain=entity.retain,
        )
        log.info("%s: %s <- %s", self.name, entity.command_topic, entity.command(value))

    def _switch_handler(self, key: str, on: bool) -> Callable[[ActionRequest], Awaitable[None]]:
        async def run(request: ActionRequest) -> None:
            entity = self._entity_for(key, request.args.get("target"), _SWITCHES)
            await self._command(key, entity, on)
            if entity.optimistic:
                await self.report(self._devices[key].thing_id, entity.attr, on)

        return run

    def _set_handler(self, key: str) -> Callable[[ActionRequest], Awaitable[None]]:
        async def run(request: ActionRequest) -> None:
            entity = self._entity_for(key, request.args.get("target"), ("number",))
            thing_id = self._devices[key].thing_id
            thing = self.gateway.things[thing_id]
            value = thing.description.attribute(entity.attr).validate(request.args["value"])
            await self._command(key, entity, value)
            if entity.optimistic:
                await self.report(thing_id, entity.attr, value)

        return run

    def _desired_handler(self, key: str, attr: str) -> Callable[[Any], Awaitable[None]]:
        async def apply(value: Any) -> None:
            entity = self._entity_for(key, attr, _SUPPORTED)
            await self._command(key, entity, value)

        return apply


def _strip(name: Any, device_name: Any) -> Any:
    """An entity name without its device's name in front ("Kitchen Temp" -> "Temp")."""
    if (
        isinstance(name, str)
        and isinstance(device_name, str)
        and device_name
        and name.lower().startswith(device_name.lower())
    ):
        return name[len(device_name) :].strip(" -_:")
    return name


def _target_param(names: list[str]) -> list[Param]:
    if len(names) < 2:
        return []
    return [
        Param(
            "target",
            "enum",
            choices=names,
            default=names[0],
            description="which attribute of the device",
        )
    ]


def __getattr__(name: str) -> Any:
    import warnings

    renamed = {"ConfigError": "DiscoveryConfigError", "MqttBridge": "MqttAdapter"}
    if name in renamed:
        warnings.warn(
            f"{__name__}.{name} is now {renamed[name]} (class names are unique across the "
            "gateway package)",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[renamed[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
