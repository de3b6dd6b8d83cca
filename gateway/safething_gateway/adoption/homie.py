"""Adopting devices that follow the Homie convention (v4 and v5).

A Homie device describes itself in retained messages under its base topic:
v4 with one topic per attribute (``homie/<device>/$homie``, ``$nodes``,
``<node>/$properties``, ``<node>/<prop>/$datatype``, ``$format``,
``$settable``, ``$unit``...), v5 with one JSON document
(``homie/5/<device>/$description``). Values are published on
``<node>/<prop>``, commands go to ``<node>/<prop>/set``, and ``$state``
says whether the device is ``ready``, ``sleeping``, ``disconnected`` or
``lost`` (its last will).

:class:`HomieAdopter` makes each device a custodial SAFEthing
``homie-<device>``:

=============================  =================================================
Homie                          SAFEthing
=============================  =================================================
integer / float                dynamic integer / number attribute; ``$format``
                               ``min:max`` gives its bounds, ``$unit`` its unit
boolean                        dynamic boolean attribute (``true``/``false``)
enum                           dynamic enum attribute (choices from ``$format``)
string, color, datetime,       dynamic string attribute
duration, json
settable property              writable attribute + action ``Set<Prop>(value)``
                               publishing to ``.../set``
non-retained, not settable     a topic (momentary events: ``thing.notify``)
``$state``                     dynamic enum attribute ``state``; the registry's
                               online flag follows ``ready``
removed (``$homie`` or         the thing is disabled
``$description`` cleared)
=============================  =================================================

Attribute names are the property ids (``node_prop`` when two nodes share a
property id). Like every adopted device these cannot sign; their records
and descriptions say ``broker_authenticated``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from safething.errors import SafeThingError
from safething.things import (
    AccessType,
    Action,
    ActionRequest,
    Attribute,
    Param,
    Schema,
    Thing,
    ThingDescription,
    Topic,
)
from safething_gateway.adoption.base import (
    ADOPTED_HISTORY,
    AdoptedDevice,
    MqttAdopter,
    UniqueNames,
    number_text,
    thing_id_for,
)

__all__ = ["STATES", "HomieAdopter"]

log = logging.getLogger("safething.gateway.adoption")

STATES: Final = ("init", "ready", "disconnected", "sleeping", "lost", "alert")
"""Values of a Homie device's ``$state`` (the ``state`` attribute of its thing)."""

_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]*")
_RANGE: Final = re.compile(r"^\s*(-?[0-9.eE+-]*)\s*:\s*(-?[0-9.eE+-]*)\s*(?::.*)?$")
_INTEGER: Final = re.compile(r"^-?[0-9]+$")
_FLOAT: Final = re.compile(r"^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")
_MAX_PROPS: Final = 50


@dataclass(frozen=True)
class _Prop:
    """One Homie property and how it maps to SAFEthing."""

    node: str
    prop: str
    name: str
    datatype: str
    format: str | None = None
    unit: str | None = None
    settable: bool = False
    retained: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.prop)

    def schema(self) -> Schema:
        unit = self.unit if self.unit and len(self.unit) <= 32 else None
        if self.datatype in ("integer", "float"):
            low, high = _bounds(self.format)
            kind = "integer" if self.datatype == "integer" else "number"
            if kind == "integer":
                low = math.ceil(low) if low is not None else None
                high = math.floor(high) if high is not None else None
            if low is not None and high is not None and low > high:
                low = high = None
            return Schema(kind, unit=unit, minimum=low, maximum=high)
        if self.datatype == "boolean":
            return Schema("boolean", unit=unit)
        if self.datatype == "enum":
            choices = [c for c in dict.fromkeys(_csv(self.format or "")) if len(c) <= 128]
            if choices:
                return Schema("enum", unit=unit, choices=choices)
        return Schema("string", unit=unit)

    def parse(self, text: str, schema: Schema) -> Any:
        """The typed value of a payload; ``ValueError`` if it is none."""
        kind = schema.type.value
        if kind == "integer":
            if not _INTEGER.match(text.strip()):
                raise ValueError(f"{text[:40]!r} is not an integer")
            return int(text)
        if kind == "number":
            if not _FLOAT.match(text.strip()):
                raise ValueError(f"{text[:40]!r} is not a float")
            return float(text)
        if kind == "boolean":
            if text not in ("true", "false"):
                raise ValueError(f"{text[:40]!r} is not true or false")
            return text == "true"
        if kind == "enum":
            return text.strip()
        return text

    def payload(self, value: Any) -> str:
        """A value as Homie writes it on the wire."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if self.datatype == "integer":
            return str(int(value))
        if self.datatype == "float":
            return number_text(value)
        return str(value)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _bounds(text: str | None) -> tuple[float | None, float | None]:
    match = _RANGE.match(text or "")
    if match is None:
        return None, None
    out: list[float | None] = []
    for part in (match[1], match[2]):
        try:
            number = float(part) if part else None
        except ValueError:
            number = None
        out.append(number if number is None or math.isfinite(number) else None)
    return out[0], out[1]


def _camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[-_]+", name) if p)


@dataclass(eq=False)
class _HomieDevice(AdoptedDevice):
    version: int
    id: str
    root: str
    attrs: dict[str, str] = field(default_factory=dict)
    """v4: ``$homie``, ``$nodes``, ``<node>/$properties``, ``<node>/<prop>/$datatype``..."""
    document: dict[str, Any] | None = None
    """v5: the ``$description`` document."""
    state: str | None = None
    state_fresh: bool = False
    raw: dict[tuple[str, str], str] = field(default_factory=dict)
    written: dict[tuple[str, str], str] = field(default_factory=dict)
    props: dict[tuple[str, str], tuple[_Prop, str, Schema]] = field(default_factory=dict)
    """By (node, prop): the property, its SAFEthing name, its schema (as built last)."""
    events: set[tuple[str, str]] = field(default_factory=set)
    """Properties mapped to topics (momentary events)."""
    actions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """``Set<Prop>`` action name -> (node, prop)."""


class HomieAdopter(MqttAdopter):
    """Adopts every Homie v4 and v5 device under ``base`` on a broker."""

    name = "homie-adopt"
    source = "homie"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        base: str = "homie",
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
        self.base = base.rstrip("/")
        self._devices: dict[tuple[int, str], _HomieDevice] = {}

    def topics(self) -> list[str]:
        return [f"{self.base}/#"]

    def connected(self) -> int:
        return sum(1 for d in self._devices.values() if d.adopted and d.state == "ready")

    def devices(self) -> dict[str, str]:
        """Thing id of every device seen, by its Homie topic."""
        return {d.root: d.thing_id for d in self._devices.values()}

    # --- messages ------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        prefix = self.base + "/"
        if not topic.startswith(prefix):
            return
        levels = topic[len(prefix) :].split("/")
        if levels[0] == "5" and len(levels) >= 3:
            version, device_id, rest = 5, levels[1], levels[2:]
        else:
            version, device_id, rest = 4, levels[0], levels[1:]
        if not rest or not _ID.fullmatch(device_id):
            return
        text = payload.decode("utf-8", errors="replace")
        device = self._device(version, device_id, text)
        if device is None:
            return
        if rest == ["$state"]:
            await self._on_state(device, text)
        elif version == 5 and rest == ["$description"]:
            self._on_description(device, text)
        elif version == 4 and any(level.startswith("$") for level in rest):
            key = "/".join(rest)
            if text:
                device.attrs[key] = text
            else:
                device.attrs.pop(key, None)
            self._schedule(device)
        elif len(rest) == 2 and not rest[1].startswith("$"):
            await self._on_value(device, (rest[0], rest[1]), text)

    def _device(self, version: int, device_id: str, text: str) -> _HomieDevice | None:
        key = (version, device_id)
        device = self._devices.get(key)
        if device is None:
            if not text:
                return None  # a device we never saw, being cleared
            root = f"{self.base}/5/{device_id}" if version == 5 else f"{self.base}/{device_id}"
            device = self._devices[key] = _HomieDevice(
                version, device_id, root, thing_id=thing_id_for("homie", device_id)
            )
        return device

    async def _on_state(self, device: _HomieDevice, text: str) -> None:
        if not text:
            if device.version == 5:  # v5 removes a device by clearing $state and $description
                device.document = None
                self._schedule(device)
            return
        if text not in STATES:
            log.info("%s: %s: unknown $state %r", self.name, device.root, text[:40])
            return
        device.state = text
        device.state_fresh = True
        await self._flush(device)

    def _on_description(self, device: _HomieDevice, text: str) -> None:
        if not text:
            device.document = None
        else:
            try:
                document = json.loads(text)
                if not isinstance(document, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                log.warning("%s: skipping $description of %s: %s", self.name, device.root, e)
                return
            device.document = document
        self._schedule(device)

    async def _on_value(self, device: _HomieDevice, key: tuple[str, str], text: str) -> None:
        device.raw[key] = text
        await self._flush(device)

    async def _flush(self, device: _HomieDevice) -> None:
        thing = self.live_thing(device)
        if thing is None:
            return
        for key, text in list(device.raw.items()):
            if device.written.get(key) == text or key not in device.props:
                continue
            device.written[key] = text
            prop, name, schema = device.props[key]
            if key in device.events:  # a momentary event is notified once
                del device.raw[key]
                device.written.pop(key, None)
            try:
                value = prop.parse(text, schema)
            except ValueError as e:
                log.debug("%s: %s/%s/%s: %s", self.name, device.root, *key, e)
                continue
            if key in device.events:
                try:
                    await thing.notify(name, value)
                except (SafeThingError, ValueError) as e:
                    log.warning(
                        "%s: %s: dropping an event %s: %s", self.name, device.thing_id, name, e
                    )
            else:
                await self.report(device.thing_id, name, value)
        if device.state_fresh and device.state is not None:
            device.state_fresh = False
            await self.report(device.thing_id, "state", device.state)
            registry = self.gateway.registry
            await registry.call(registry.set_online, device.thing_id, device.state == "ready")
            ready = device.state == "ready"
            await self.gateway.liveness.mark(
                device.thing_id, ready, "" if ready else f"$state {device.state}"
            )

    # --- (re)building ---------------------------------------------------------------------

    def _schedule(self, device: _HomieDevice) -> None:
        self.schedule(device, functools.partial(self._rebuild, (device.version, device.id)))

    async def _rebuild(self, key: tuple[int, str]) -> None:
        device = self._devices.get(key)
        if device is None or not self.settled(device):
            return
        try:
            model = self._model(device)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("%s: skipping %s: malformed announcement: %s", self.name, device.root, e)
            return
        if model is None:
            if device.adopted:
                device.adopted = False
                await self.retire(device.thing_id)
            return
        title, version, props = model
        before = set(device.props)
        thing = await self.bring_up(
            device,
            lambda: (
                self._describe(device, title, version, props),
                {"homie": version, "topic": device.root, "name": title},
            ),
        )
        if thing is None:
            return
        self._install(device, thing)
        for prop_key in [k for k in device.written if k not in before]:
            del device.written[prop_key]  # newly described: its value gets its first write
        device.state_fresh = device.state is not None
        await self._flush(device)

    def _model(self, device: _HomieDevice) -> tuple[str, str, list[_Prop]] | None:
        """(name, Homie version, properties), or None when the device is not (or no longer)
        announced."""
        if device.version == 5:
            doc = device.document
            if doc is None:
                return None
            version = str(doc.get("homie", "5"))
            nodes = doc.get("nodes") or {}
            if isinstance(nodes, list):  # early v5 drafts: lists of objects with an "id"
                nodes = {str(n["id"]): n for n in nodes}
            props: list[_Prop] = []
            for node_id, node in dict(nodes).items():
                properties = node.get("properties") or {}
                if isinstance(properties, list):
                    properties = {str(p["id"]): p for p in properties}
                for prop_id, p in dict(properties).items():
                    if not _ID.fullmatch(str(node_id)) or not _ID.fullmatch(str(prop_id)):
                        continue
                    props.append(
                        _Prop(
                            str(node_id),
                            str(prop_id),
                            str(p.get("name") or prop_id),
                            str(p.get("datatype", "string")),
                            _opt(p.get("format")),
                            _opt(p.get("unit")),
                            p.get("settable") is True,
                            p.get("retained", True) is not False,
                        )
                    )
            return str(doc.get("name") or device.id), version, props
        attrs = device.attrs
        if "$homie" not in attrs:
            return None
        props = []
        for node in _csv(attrs.get("$nodes", "")):
            if not _ID.fullmatch(node):  # v3 arrays (node[]) and the like
                log.info("%s: %s: skipping node %r", self.name, device.root, node)
                continue
            for prop in _csv(attrs.get(f"{node}/$properties", "")):
                base = f"{node}/{prop}/"
                datatype = attrs.get(base + "$datatype")
                if datatype is None or not _ID.fullmatch(prop):
                    log.debug("%s: %s: %s/%s not described yet", self.name, device.root, node, prop)
                    continue
                props.append(
                    _Prop(
                        node,
                        prop,
                        attrs.get(base + "$name") or prop,
                        datatype,
                        attrs.get(base + "$format"),
                        attrs.get(base + "$unit"),
                        attrs.get(base + "$settable") == "true",
                        attrs.get(base + "$retained") != "false",
                    )
                )
        return attrs.get("$name") or device.id, attrs["$homie"], props

    def _describe(
        self, device: _HomieDevice, title: str, version: str, props: list[_Prop]
    ) -> ThingDescription:
        names = UniqueNames(("state", "homie"))
        counts: dict[str, int] = {}
        for p in props:
            counts[p.prop] = counts.get(p.prop, 0) + 1
        attributes = [
            Attribute("homie", "string", value=version[:64] or "?"),
            Attribute(
                "state",
                "enum",
                choices=STATES,
                dynamic=True,
                history=ADOPTED_HISTORY,
                access=self.access,
                description="the device's Homie $state",
            ),
        ]
        topics: list[Topic] = []
        offered: list[Action] = []
        device.props = {}
        device.events = set()
        device.actions = {}
        for p in sorted(props, key=lambda p: p.key)[:_MAX_PROPS]:
            wanted = p.prop if counts[p.prop] == 1 else f"{p.node}_{p.prop}"
            name = names.take(wanted, f"{p.node}_{p.prop}")
            schema = p.schema()
            text = f"Homie {p.node}/{p.prop} {p.name[:200]!r} ({p.datatype})"
            if not p.retained and not p.settable:
                topics.append(
                    Topic(
                        name,
                        schema,
                        history=ADOPTED_HISTORY,
                        access=self.access,
                        description=text,
                    )
                )
                device.events.add(p.key)
            else:
                attributes.append(
                    Attribute(
                        name,
                        schema,
                        dynamic=True,
                        writable=p.settable,
                        history=ADOPTED_HISTORY,
                        access=self.control if p.settable else self.access,
                        description=text,
                    )
                )
            if p.settable:
                action = f"Set{_camel(name)}"[:60]
                n = 2
                while action in device.actions:
                    action = f"Set{_camel(name)}"[:60] + str(n)
                    n += 1
                device.actions[action] = p.key
                offered.append(
                    Action(
                        action,
                        params=[Param("value", schema)],
                        access=self.control,
                        timeout_s=15.0,
                        description=f"publish to {device.root}/{p.node}/{p.prop}/set",
                    )
                )
            device.props[p.key] = (p, name, schema)
        if len(props) > _MAX_PROPS:
            log.warning("%s: %s: too many properties; kept %d", self.name, device.root, _MAX_PROPS)
        return ThingDescription(
            device.thing_id,
            title=title[:128] or device.thing_id,
            description=self.note(f"Adopted from the Homie convention {version} at {device.root}."),
            attributes=attributes,
            topics=topics,
            actions=offered,
        )

    # --- commands -----------------------------------------------------------------------

    def _install(self, device: _HomieDevice, thing: Thing) -> None:
        key = (device.version, device.id)
        for action, prop_key in device.actions.items():
            thing.on_action(action, self._set_handler(key, prop_key))
        for prop, name, _ in device.props.values():
            if prop.settable and prop.key not in device.events:
                thing.on_desired(name, self._desired_handler(key, prop.key))

    async def _send(self, key: tuple[int, str], prop_key: tuple[str, str], value: Any) -> None:
        device = self._devices.get(key)
        if device is None or prop_key not in device.props:
            raise SafeThingError("the device no longer announces this property")
        prop, _, _ = device.props[prop_key]
        topic = f"{device.root}/{prop.node}/{prop.prop}/set"
        await self.publish(topic, prop.payload(value), qos=1, retain=False)
        log.info("%s: %s <- %s", self.name, topic, prop.payload(value))

    def _set_handler(
        self, key: tuple[int, str], prop_key: tuple[str, str]
    ) -> Callable[[ActionRequest], Awaitable[None]]:
        async def run(request: ActionRequest) -> None:
            await self._send(key, prop_key, request.args["value"])

        return run

    def _desired_handler(
        self, key: tuple[int, str], prop_key: tuple[str, str]
    ) -> Callable[[Any], Awaitable[None]]:
        async def apply(value: Any) -> None:
            await self._send(key, prop_key, value)

        return apply


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
