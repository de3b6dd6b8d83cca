"""The plain-JSON MQTT mirror (opt-in): verified readings for Node-RED, Telegraf, Home Assistant.

Device topics carry sealed ``ST1`` frames that only the gateway opens; tools
that speak plain MQTT get this read-only copy instead. For every thing in the
store (found again every ``rescan`` seconds) the mirror publishes, under
``prefix`` (default ``safething-json``)::

    <prefix>/$gateway                          online | offline (retained; last will)
    <prefix>/<thing id>/availability           online | offline | unknown (retained)
    <prefix>/<thing id>/properties/<attribute> {"value": v, "t": unix time, "seq": n}
                                               (retained)
    <prefix>/<thing id>/events/<topic>         {"data": d, "t": unix time, "seq": n}

Only what anyone may read is mirrored: attributes and topics of access type
All. Owner, Group and Thing data stays encrypted on the network; the broker
is not trusted with it. Every value was verified by a read-only
:class:`~safething.things.ThingClient` (signature, permission, version)
before it is published.

The mirror subscribes to nothing: it accepts no commands. A message someone
publishes under the prefix changes nothing (a retained one is overwritten by
the next verified value). Commands go through signed requests only (the WoT
HTTP binding, the CLI, the Python API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from safething.errors import NoSuchDataError, SafeThingError
from safething.net import Client
from safething.resource import Tasks
from safething.things import AccessType, ThingClient, ThingDescription
from safething.things.discovery import list_things
from safething_gateway.adoption.client import MqttAdapter
from safething_gateway.core import Gateway
from safething_gateway.mqtt_client import Will

__all__ = ["JsonMirror"]

log = logging.getLogger("safething.gateway.mirror")


@dataclass(eq=False)
class _Mirrored:
    description: ThingDescription
    tasks: Tasks
    """The thing's followers (availability, each attribute and topic)."""


class JsonMirror(MqttAdapter):
    """Publishes verified, public readings as plain JSON; never reads a command."""

    name = "json-mirror"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        prefix: str = "safething-json",
        rescan: float = 5.0,
    ) -> None:
        super().__init__(host, port, username=username, password=password)
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("$"):
            raise ValueError(f"mirror prefix {prefix!r}: a plain topic prefix, no wildcards")
        self.prefix = prefix.rstrip("/")
        self.rescan = rescan
        self._mirrored: dict[str, _Mirrored] = {}
        self._things: ThingClient | None = None

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/$gateway"

    def topics(self) -> list[str]:
        return []  # read-only: no subscription, so no command can arrive

    def will(self) -> Will:
        return (self.status_topic, b"offline", True)

    def property_topic(self, thing_id: str, attribute: str) -> str:
        return f"{self.prefix}/{thing_id}/properties/{attribute}"

    def event_topic(self, thing_id: str, topic: str) -> str:
        return f"{self.prefix}/{thing_id}/events/{topic}"

    def availability_topic(self, thing_id: str) -> str:
        return f"{self.prefix}/{thing_id}/availability"

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        self._things = ThingClient(Client(gateway.store))  # no identity: public data only
        await super().start(gateway)
        self.later(self.rescan, self._rescan_job)

    async def on_connected(self) -> None:
        await self.publish(self.status_topic, "online", retain=True)
        await self.sync()

    async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        log.warning("%s: ignoring a message on %s (the mirror takes no commands)", self.name, topic)

    async def on_close(self) -> None:
        with contextlib.suppress(SafeThingError):
            await self.publish(self.status_topic, "offline", retain=True)

    async def close(self) -> None:
        await self._stop()
        await super().close()
        await self._stop()
        if self._things is not None:
            await self._things.close()

    async def _stop(self) -> None:
        for entry in self._mirrored.values():
            await entry.tasks.cancel_all()
        self._mirrored.clear()

    async def _rescan_job(self) -> None:
        try:
            if self.is_connected():
                await self.sync()
        except Exception:
            log.exception("%s: rescan failed", self.name)
        finally:
            self.later(self.rescan, self._rescan_job)

    async def sync(self) -> None:
        """Follow new or changed things; stop following gone ones."""
        things = self._things
        assert things is not None
        found = {s.id for s in await list_things(things.client) if s.status != "disabled"}
        for thing_id in [t for t in self._mirrored if t not in found]:
            await self._mirrored.pop(thing_id).tasks.cancel_all()
        for thing_id in found:
            try:
                description = await things.describe(thing_id)
            except SafeThingError as e:
                log.info("%s: %s not mirrored: %s", self.name, thing_id, e)
                continue
            current = self._mirrored.get(thing_id)
            if current is not None and current.description == description:
                continue
            if current is not None:
                await current.tasks.cancel_all()
            tasks = Tasks(f"{self.name}:{thing_id}:")
            entry = self._mirrored[thing_id] = _Mirrored(description, tasks)
            self._follow(thing_id, entry)

    def _follow(self, thing_id: str, entry: _Mirrored) -> None:
        spawn = entry.tasks.spawn

        spawn(self._follow_availability(thing_id), "availability")
        for attr in entry.description.attributes:
            if attr.access != AccessType.ALL:
                continue
            if attr.dynamic:
                spawn(self._follow_attribute(thing_id, attr.name), attr.name)
            else:
                spawn(
                    self._send(
                        self.property_topic(thing_id, attr.name),
                        {"value": attr.value, "t": None, "seq": 0},
                        retain=True,
                    ),
                    attr.name,
                )
        for topic in entry.description.topics:
            if topic.access == AccessType.ALL:
                spawn(self._follow_topic(thing_id, topic.name), "event-" + topic.name)

    async def _guarded(self, what: str, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: stopped following %s", self.name, what)

    async def _follow_attribute(self, thing_id: str, attribute: str) -> None:
        things = self._things
        assert things is not None
        topic = self.property_topic(thing_id, attribute)

        async def run() -> None:
            async with things.subscribe(thing_id, attribute=attribute) as sub:
                with contextlib.suppress(NoSuchDataError):
                    r = await things.read(thing_id, attribute)
                    await self._send(topic, {"value": r.value, "t": r.timestamp, "seq": r.seq})
                async for note in sub:
                    doc = {"value": note.value, "t": note.timestamp, "seq": note.seq}
                    await self._send(topic, doc)

        await self._guarded(f"{thing_id}.{attribute}", run())

    async def _follow_topic(self, thing_id: str, name: str) -> None:
        things = self._things
        assert things is not None
        topic = self.event_topic(thing_id, name)

        async def run() -> None:
            async with things.subscribe(thing_id, topic=name) as sub:
                async for note in sub:
                    doc = {"data": note.value, "t": note.timestamp, "seq": note.seq}
                    await self._send(topic, doc, retain=False)

        await self._guarded(f"{thing_id} events {name}", run())

    async def _follow_availability(self, thing_id: str) -> None:
        things = self._things
        assert things is not None
        topic = self.availability_topic(thing_id)

        async def run() -> None:
            async with things.follow_availability(thing_id) as watch:
                async for live in watch:
                    await self._publish_text(topic, live.state)

        await self._guarded(f"{thing_id} availability", run())

    async def _send(self, topic: str, doc: dict[str, Any], *, retain: bool = True) -> None:
        await self._publish_text(topic, json.dumps(doc, ensure_ascii=False, default=str), retain)

    async def _publish_text(self, topic: str, text: str, retain: bool = True) -> None:
        try:
            await self.publish(topic, text, retain=retain)
        except SafeThingError as e:
            log.info("%s: %s not published: %s", self.name, topic, e)
