"""The adopter base: making devices found on an MQTT broker custodial things.

:class:`MqttAdopter` is the :class:`~safething_gateway.adoption.client.MqttAdapter`
the Home Assistant and Homie adopters build on: it registers an adopted
device with the gateway (``"broker_authenticated": true``), brings up or
disables its custodial thing, and writes the values the device reports.
The helpers below turn outside identifiers and names into SAFEthing ones.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from safething.errors import SafeThingError
from safething.things import AccessType, Thing, ThingDescription
from safething_gateway.adoption.client import Job, MqttAdapter

__all__ = [
    "ADOPTED_HISTORY",
    "BROKER_AUTHENTICATED",
    "AdoptedDevice",
    "MqttAdopter",
    "UniqueNames",
    "attr_name",
    "number_text",
    "thing_id_for",
]

log = logging.getLogger("safething.gateway.adoption")

BROKER_AUTHENTICATED: Final = "broker_authenticated: true"
"""Marker in the description text of every adopted thing (a console shows it)."""

ADOPTED_HISTORY: Final = 16
"""Values kept per adopted attribute: small, so that a device with many entities fits an MD."""


@dataclass(eq=False, kw_only=True)
class AdoptedDevice:
    """What :class:`MqttAdopter` keeps of every device; each adopter extends it."""

    thing_id: str
    """The id of the device's custodial thing (and registry record)."""
    dirty: bool = False
    """Its announcements changed: its thing is rebuilt once they settle."""
    due: float = 0.0
    """Event-loop time at which the latest announcement has settled."""
    adopted: bool = False
    """The last rebuild brought its thing up."""


class MqttAdopter(MqttAdapter):
    """An :class:`MqttAdapter` that makes devices it finds on the broker custodial things.

    ``access`` is the access type of what adopted devices report (readings,
    state); ``control`` that of their actions and writable attributes
    (default: only the gateway's owner may command them).
    """

    source = "mqtt"
    """``meta["source"]`` of the devices this bridge adopts."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        settle: float = 0.1,
        access: AccessType | str = AccessType.ALL,
        control: AccessType | str = AccessType.OWNER,
    ) -> None:
        super().__init__(host, port, username=username, password=password)
        self.settle = settle
        """Seconds to wait after an announcement for the rest of the device's announcements."""
        self.access = AccessType(access)
        self.control = AccessType(control)

    def note(self, *parts: str) -> str:
        """The description text of an adopted thing, with the broker-authenticated marker."""
        text = " ".join(
            (
                f"{BROKER_AUTHENTICATED}.",
                *parts,
                "It cannot sign: its readings and commands are only as trustworthy as the "
                "MQTT broker's authentication.",
            )
        )
        return text[:1024]

    async def adopt(
        self, thing_id: str, description: ThingDescription, meta: Mapping[str, Any]
    ) -> Thing | None:
        """Register the device (if new) and bring up its custodial thing with ``description``.

        None if the id belongs to a device that is not ours to adopt (provisioned
        another way, or revoked by the owner).
        """
        registry = self.gateway.registry
        record = registry.find(thing_id)
        full_meta: dict[str, Any] = {
            "source": self.source,
            "broker_authenticated": True,
            "broker": self.url,
            **meta,
        }
        if record is None:
            record = await registry.call(registry.add, thing_id, "adopted", meta=full_meta)
            log.info("%s: adopted %s (%s)", self.name, thing_id, description.title)
        elif record.transport != "adopted" or record.meta.get("source") != self.source:
            log.error(
                "%s: cannot adopt %s: the id belongs to a device provisioned another way (%s)",
                self.name,
                thing_id,
                record.transport,
            )
            return None
        elif record.revoked:
            log.info("%s: %s is revoked; not adopting it again", self.name, thing_id)
            return None
        if record.meta != full_meta:
            await registry.call(registry.set_meta, thing_id, full_meta)
        doc = description.to_dict()
        thing = await self.gateway.custodial_thing(record, description)
        if record.description != doc:
            await registry.call(registry.set_description, thing_id, doc)
        if thing.status == "disabled" and record.meta.get("removed"):
            await thing.publish()
            log.info("%s: %s announced itself again; published", self.name, thing_id)
        return thing

    async def retire(self, thing_id: str) -> None:
        """The device withdrew its announcement: disable its thing (its data stays readable)."""
        registry = self.gateway.registry
        record = registry.find(thing_id)
        if record is None or record.meta.get("source") != self.source:
            return
        await registry.call(registry.set_meta, thing_id, {**record.meta, "removed": True})
        await registry.call(registry.set_online, thing_id, False)
        await self.gateway.liveness.mark(thing_id, False, "withdrawn")
        thing = self.gateway.things.get(thing_id)
        if thing is not None and thing.status != "disabled":
            await thing.disable()
            log.info("%s: %s withdrew its announcement; disabled", self.name, thing_id)

    async def report(self, thing_id: str, attribute: str, value: Any) -> bool:
        """``thing.set`` with a log line instead of an exception for a value that does not fit."""
        thing = self.gateway.things.get(thing_id)
        if thing is None:
            return False
        try:
            await thing.set(attribute, value)
        except (SafeThingError, ValueError) as e:
            log.warning("%s: %s: dropping a value of %s: %s", self.name, thing_id, attribute, e)
            return False
        return True

    # --- (re)building a device's thing once its announcements settle -------------------

    def schedule(self, device: AdoptedDevice, rebuild: Job) -> None:
        """Mark ``device`` dirty and run ``rebuild`` on the worker in ``settle`` seconds.

        Every announcement schedules one; only the last one's :meth:`settled` says go.
        """
        device.dirty = True
        device.due = self._running_loop().time() + self.settle
        self.later(self.settle, rebuild)

    def settled(self, device: AdoptedDevice) -> bool:
        """Whether a scheduled rebuild of ``device`` runs now (and clears its mark): not
        when it is no longer dirty, nor when a newer announcement comes with its own timer."""
        if not device.dirty:
            return False
        if self._running_loop().time() < device.due - 0.001:
            return False  # a newer announcement: its own timer comes later
        device.dirty = False
        return True

    async def bring_up(
        self,
        device: AdoptedDevice,
        build: Callable[[], tuple[ThingDescription, Mapping[str, Any]]],
    ) -> Thing | None:
        """:meth:`adopt` ``device`` with the description and meta ``build`` returns.

        None when it is not ours to adopt, or (with a log line) when ``build`` or
        the adoption fails; ``device.adopted`` says whether its thing is up.
        """
        try:
            description, meta = build()
            thing = await self.adopt(device.thing_id, description, meta)
        except (SafeThingError, ValueError) as e:
            log.warning("%s: cannot adopt %s: %s", self.name, device.thing_id, e)
            return None
        device.adopted = thing is not None
        return thing

    def live_thing(self, device: AdoptedDevice) -> Thing | None:
        """The device's thing when values may be written to it now: adopted and no
        rebuild pending (that one writes them)."""
        if device.dirty or not device.adopted:
            return None
        return self.gateway.things.get(device.thing_id)


def thing_id_for(prefix: str, raw: str) -> str:
    """A valid thing and device id (``[A-Za-z0-9_-]``, 5-64) for an outside identifier.

    Clean identifiers map to ``<prefix>-<raw>``; others are cleaned and get a
    short hash so that two identifiers never fold into one id.
    """
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-_")
    suffix = ""
    if clean != raw or not clean:
        suffix = "-" + hashlib.sha256(raw.encode()).hexdigest()[:6]
    room = 64 - len(prefix) - 1 - len(suffix)
    if len(clean) > room:
        suffix = "-" + hashlib.sha256(raw.encode()).hexdigest()[:8]
        room = 64 - len(prefix) - 1 - len(suffix)
    return f"{prefix}-{clean[:room]}{suffix}".replace("--", "-")


def attr_name(text: Any) -> str | None:
    """A SAFEthing name from free text ("Living Room Temp." -> ``living_room_temp``)."""
    if not isinstance(text, str | int | float) or isinstance(text, bool):
        return None
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")[:63]
    if not slug:
        return None
    return slug if slug[0].isalpha() else f"_{slug}"


class UniqueNames:
    """Hands out distinct names: the first free candidate, else the first with a number."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.used = set(reserved)

    def take(self, *candidates: Any) -> str:
        names = [n for n in (attr_name(c) for c in candidates) if n]
        for name in names:
            if name not in self.used:
                self.used.add(name)
                return name
        base = names[0] if names else "value"
        n = 2
        while f"{base[:58]}_{n}" in self.used:
            n += 1
        name = f"{base[:58]}_{n}"
        self.used.add(name)
        return name


def number_text(value: Any) -> str:
    """``21`` for 21.0, ``21.5`` for 21.5 (what devices expect on a command topic)."""
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)
