"""Live updates: one store change feed in, one server-sent-event stream per browser tab out.

The hub watches every thing MD (type tag 27417) through the store's change
feed. A change of a thing's description, keys or status re-reads it into the
index; a change of a dynamic attribute or an event is read back through the
verified :class:`ConsoleData` reads (never taken from the raw change) and
sent to the tabs that show that thing. A tab says what it shows with the
keys of its stream (``thing:<id>``, ``things``, ``devices``). Each tab's
queue is bounded: a tab that stops reading loses its oldest updates, the
server never grows without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from safething.errors import SafeThingError
from safething.net import TAG_THING
from safething.resource import Tasks
from safething.things import ActionHandle
from safething_gateway.console.data import ConsoleData

__all__ = ["Hub", "Listener"]

log = logging.getLogger("safething.console")

QUEUE_SIZE = 256
HEARTBEAT_S = 15.0
DEVICES_EVERY_S = 1.0


@dataclass(eq=False)
class Listener:
    """One tab's stream."""

    keys: frozenset[str]
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: int = 0

    def send(self, text: str) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(text)


def _shown(row: Any) -> tuple[Any, ...]:
    """What the things list shows of a row (a heartbeat only moves ``last_seen``)."""
    return (row.title, row.status, row.online, row.attributes, row.topics, row.actions)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class Hub:
    """Fans verified changes out to the listening tabs."""

    def __init__(self, data: ConsoleData) -> None:
        self.data = data
        self.listeners: set[Listener] = set()
        self._tasks = Tasks("console:", log=log)
        self._devices_seen: Any = None

    async def start(self) -> None:
        self._tasks.spawn(self._index_then_watch(), "watch-things")
        self._tasks.spawn(self._watch_devices(), "watch-devices")
        self._tasks.spawn(self._watch_deadlines(), "watch-deadlines")

    async def close(self) -> None:
        await self._tasks.cancel_all()

    def watching(self, key: str) -> bool:
        return any(key in listener.keys for listener in self.listeners)

    def publish(self, key: str, event: str, data: dict[str, Any]) -> None:
        text = _sse(event, data)
        for listener in self.listeners:
            if key in listener.keys:
                listener.send(text)

    async def stream(self, keys: frozenset[str]) -> AsyncIterator[str]:
        """The text of one tab's event stream, until the tab goes away."""
        listener = Listener(keys)
        self.listeners.add(listener)
        try:
            yield "retry: 2000\n\n" + _sse("hello", {"keys": sorted(keys)})
            for key in keys:
                if key.startswith("thing:"):
                    await self._snapshot(listener, key[len("thing:") :])
            while True:
                try:
                    text = await asyncio.wait_for(listener.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    text = ": keep-alive\n\n"
                yield text
        finally:
            self.listeners.discard(listener)

    async def _snapshot(self, listener: Listener, thing_id: str) -> None:
        """The current values, so a tab that was hidden catches up at once."""
        try:
            view = await self.data.view(thing_id)
        except SafeThingError:
            return
        for attr in view.description.attributes:
            if attr.dynamic:
                value = await self.data.value(view, attr.name)
                listener.send(_sse("value", self._value_doc(thing_id, value)))
                if attr.writable:
                    listener.send(
                        _sse(
                            "desired",
                            self._desired_doc(view, value, await self.data.desired(view, value)),
                        )
                    )
        row = self.data.index.get(thing_id)
        if row is not None:
            listener.send(_sse("status", self._status_doc(row)))

    @staticmethod
    def _status_doc(row: Any) -> dict[str, Any]:
        online = {True: "online", False: "offline", None: "unknown"}[row.online]
        return {"thing": row.id, "status": row.status, "online": online, "last_seen": row.last_seen}

    @staticmethod
    def _value_doc(thing_id: str, v: Any) -> dict[str, Any]:
        return {
            "thing": thing_id,
            "name": v.name,
            "value": v.value,
            "seq": v.seq,
            "t": v.t,
            "signer": v.signer,
        }

    # --- the store feed -------------------------------------------------------------------

    async def _index_then_watch(self) -> None:
        prefix = f"md.{TAG_THING}."
        async with self.data.store.watch(prefix) as watch:  # open first: nothing falls between
            await self.data.load_index()
            self.publish("things", "things", {"count": len(self.data.index.rows)})
            async for change in watch:
                try:
                    await self._changed(change.key, change.deleted)
                except (SafeThingError, ValueError, KeyError, TypeError) as e:
                    log.debug("console: ignoring change %s: %s", change.key, e)

    async def _changed(self, store_key: str, deleted: bool = False) -> None:
        parts = store_key.split(".", 4)
        if len(parts) < 4:
            return
        name_hex = parts[2]
        if parts[3] == "h":
            return
        if len(parts) != 5 or parts[3] != "e":
            return
        key = bytes.fromhex(parts[4]).decode(errors="replace")
        thing_id = self.data.index.by_name.get(name_hex)
        if key in ("desc", "keys", "status", "live") or thing_id is None:
            before = self.data.index.rows.get(thing_id) if thing_id else None
            row = await self.data.learn(name_hex)
            if row is None:
                return
            if before is None or _shown(before) != _shown(row):  # not for each heartbeat
                self.publish("things", "things", {"thing": row.id})
            self.publish(f"thing:{row.id}", "status", self._status_doc(row.at(time.time())))
            return
        if key.startswith("sub/"):
            await self.data.subscription_changed(thing_id, key[4:], deleted)
            return
        listen = f"thing:{thing_id}"
        if not self.watching(listen):
            return
        if key.startswith("a/"):
            view = await self.data.view(thing_id)
            value = await self.data.value(view, key[2:])
            self.publish(listen, "value", self._value_doc(thing_id, value))
            if view.description.attribute(value.name).writable:
                await self._desired(view, value)
        elif key.startswith("e/"):
            topic = key[2:].rsplit("/", 1)[0]
            view = await self.data.view(thing_id)
            events = await self.data.events(view, topic, limit=1)
            if events:
                self.publish(listen, "event", {"thing": thing_id, "topic": topic, **events[0]})

    async def desired_changed(self, thing_id: str, name: str) -> None:
        """A desired value was asked for: tell the tabs showing the thing."""
        if self.watching(f"thing:{thing_id}"):
            view = await self.data.view(thing_id)
            await self._desired(view, await self.data.value(view, name))

    async def _desired(self, view: Any, reported: Any) -> None:
        desired = await self.data.desired(view, reported)
        self.publish(
            f"thing:{view.thing_id}", "desired", self._desired_doc(view, reported, desired)
        )

    @staticmethod
    def _desired_doc(view: Any, reported: Any, d: Any) -> dict[str, Any]:
        return {
            "thing": view.thing_id,
            "name": d.name,
            "state": d.state or "none",
            "value": d.value,
            "known": d.known,
            "t": d.t,
        }

    async def _watch_deadlines(self) -> None:
        """A thing that stops without a word is offline once its heartbeat deadline
        passes, with nothing written: say so to the tabs when it does."""
        while True:
            await asyncio.sleep(DEVICES_EVERY_S)
            now = time.time()
            index = self.data.index
            for thing_id, until in list(index.deadlines.items()):
                row = index.rows.get(thing_id)
                if until < now and row is not None:
                    del index.deadlines[thing_id]
                    self.publish("things", "things", {"thing": thing_id})
                    self.publish(f"thing:{thing_id}", "status", self._status_doc(row.at(now)))

    async def _watch_devices(self) -> None:
        """The registry has no change feed: compare a snapshot while a devices tab is open."""
        while True:
            await asyncio.sleep(DEVICES_EVERY_S)
            if self.data.registry is None or not self.watching("devices"):
                continue
            snapshot = [
                (d.id, d.state, d.last_seen, sorted(d.rejected.items()))
                for d in self.data.devices()
            ]
            if snapshot != self._devices_seen:
                self._devices_seen = snapshot
                self.publish("devices", "devices", {"count": len(snapshot)})

    # --- actions --------------------------------------------------------------------------

    def follow(self, handle: ActionHandle, on_final: Any = None) -> None:
        """Send each state of a request to the tabs showing its thing; ``await
        on_final(status)`` with the final one."""
        self._tasks.spawn(self._follow(handle, on_final), f"follow-{handle.request_id}")

    async def _follow(self, handle: ActionHandle, on_final: Any) -> None:
        key = f"thing:{handle.thing_id}"
        waiter = asyncio.get_running_loop().create_task(handle.wait())
        try:
            async for status in handle.states():
                self.publish(
                    key,
                    "action",
                    {
                        "thing": handle.thing_id,
                        "request": handle.request_id,
                        "action": handle.action,
                        "state": status.state,
                        "progress": status.progress,
                        "message": status.message,
                        "result": status.result,
                    },
                )
                if status.final and on_final is not None:
                    await on_final(status)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, SafeThingError):
                await waiter
