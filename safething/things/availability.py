"""Availability: is a thing online, and when was it last seen.

Entry ``live`` of the thing MD: ``{"s": "online"|"offline", "t": last seen,
"since": start of this state, "hb": heartbeat seconds, "why": reason}``,
signed by the thing (its runtime, or the gateway holding a custodial
device's key) or its owner; a reader refuses it from anyone else.

A running :class:`~safething.things.thing.Thing` writes ``online`` when it
registers, again every ``hb`` seconds, and ``offline`` when it closes. A
thing that stops without saying so (power cut, crash) is *offline* for its
readers once ``hb`` has passed :data:`MISSED_HEARTBEATS` times without a
word. A gateway writes the same entry for the devices it bridges: online on
any authenticated message, offline on an MQTT last will or after a silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safething.errors import (
    MalformedRecordError,
    NoSuchEntryError,
    SafeThingError,
)
from safething.net import Client, EntryWatch, MutableData, PublicIdentity
from safething.resource import AsyncResource
from safething.things.layout import ThingAddresses
from safething.things.values import dumps, finite, loads, unauthorised

if TYPE_CHECKING:
    from safething.things.client import ThingClient, ThingView

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "LIVE",
    "MISSED_HEARTBEATS",
    "Availability",
    "AvailabilityWatch",
    "availability_of",
    "heartbeat_deadline",
    "live_record",
    "parse_live",
    "write_availability",
]

LIVE = b"live"
"""Key of the liveness entry in the thing MD."""
DEFAULT_HEARTBEAT_S = 30.0
"""How often a running thing says it is alive."""
MISSED_HEARTBEATS = 3
"""Heartbeats missed before readers call a silent thing offline."""
_GRACE_S = 2.0

log = logging.getLogger("safething.things")


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a thing is reachable, as a reader sees it now."""

    thing_id: str
    """The thing."""
    online: bool | None
    """True online, False offline, None: never said (a thing older than this feature)."""
    last_seen: float | None = None
    """Unix time it (or its gateway) last vouched for it."""
    since: float | None = None
    """When the current state began."""
    reason: str = ""
    """Why it is offline: ``stopped``, ``last will``, ``inactive``, ``no heartbeat``..."""

    @property
    def state(self) -> str:
        return {True: "online", False: "offline", None: "unknown"}[self.online]

    def to_dict(self) -> dict[str, Any]:
        return {
            "thing": self.thing_id,
            "state": self.state,
            "online": self.online,
            "last_seen": self.last_seen,
            "since": self.since,
            "reason": self.reason,
        }


def live_record(*, online: bool, since: float, heartbeat: float | None, reason: str = "") -> bytes:
    doc: dict[str, Any] = {"s": "online" if online else "offline", "t": time.time(), "since": since}
    if heartbeat is not None:
        doc["hb"] = heartbeat
    if reason:
        doc["why"] = reason
    return dumps(doc)


async def write_availability(
    client: Client,
    thing_id: str,
    owner: PublicIdentity,
    *,
    online: bool,
    since: float,
    reason: str = "",
) -> None:
    """Write the ``live`` entry of ``thing_id`` as its thing does (with no heartbeat),
    from ``client`` acting as the thing, without a :class:`Thing` object: a gateway
    writing for a custodial thing it has closed (a description to parse, tasks and a
    trust state of its own would cost several times the write). The thing MD is pinned
    to the owners it must have, as the thing pins it."""
    identity = client.identity
    if identity is None:
        raise ValueError("write_availability needs a client acting as the thing")
    address = ThingAddresses.of(thing_id).thing
    md = client.md(address.name, address.tag, owners=(identity.public_sign_key, owner.sign_key))
    await md.put(LIVE, live_record(online=online, since=since, heartbeat=None, reason=reason))


def heartbeat_deadline(doc: dict[str, Any]) -> float | None:
    """When a silent ``online`` record stops counting (None: it does not expire)."""
    hb = doc.get("hb")
    if doc.get("s") != "online" or not isinstance(hb, int | float):
        return None
    return float(doc["t"]) + MISSED_HEARTBEATS * float(hb) + _GRACE_S


def parse_live(view: ThingView, value: bytes, signer: Any) -> dict[str, Any]:
    """The verified ``live`` record: its signer must be the thing or its owner."""
    refused = unauthorised(
        signer, (view.thing.sign_key, view.owner.sign_key), f"availability of {view.thing_id}"
    )
    if refused is not None:
        raise refused
    doc = loads(value, "availability")
    if (
        not isinstance(doc, dict)
        or doc.get("s") not in ("online", "offline")
        or finite(doc.get("t")) is None
        or any(k in doc and finite(doc[k]) is None for k in ("since", "hb"))
    ):
        raise MalformedRecordError(f"malformed availability record of {view.thing_id}")
    return doc


def availability_of(
    view: ThingView, value: bytes | None, signer: Any, *, now: float | None = None
) -> Availability:
    """What a ``live`` entry says, with a silent thing's heartbeat deadline applied."""
    if value is None:
        return Availability(view.thing_id, None)
    doc = parse_live(view, value, signer)
    t = float(doc["t"])
    since = float(doc.get("since", t))
    reason = str(doc.get("why", ""))
    deadline = heartbeat_deadline(doc)
    current = time.time() if now is None else now
    if doc["s"] == "online" and deadline is not None and current > deadline:
        return Availability(view.thing_id, False, t, deadline, "no heartbeat")
    return Availability(view.thing_id, doc["s"] == "online", t, since, reason)


async def read_availability(view: ThingView) -> Availability:
    try:
        entry = await view.md.get(LIVE)
    except NoSuchEntryError:
        return Availability(view.thing_id, None)
    return availability_of(view, entry.value, entry.signer)


class AvailabilityWatch(AsyncResource):
    """Every change of a thing's availability, the current one first.

    A silent thing turns offline when its heartbeat deadline passes, without
    any write: the watch yields that too.
    """

    def __init__(self, things: ThingClient, thing_id: str) -> None:
        self.things = things
        self.thing_id = thing_id
        self._watch: EntryWatch | None = None
        self._view: ThingView | None = None
        self._last: Availability | None = None
        self._doc_deadline: float | None = None
        self._pending: list[Availability] = []

    async def __aenter__(self) -> AvailabilityWatch:
        await self.start()
        return self

    async def start(self) -> None:
        self._view = await self.things.view(self.thing_id)
        md: MutableData = self._view.md
        self._watch = md.watch(prefixes=(LIVE,))
        try:
            entry = await md.get(LIVE)
            await self._take(entry.value, entry.signer)
        except NoSuchEntryError:
            self._pending.append(Availability(self.thing_id, None))

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()

    async def _take(self, value: bytes | None, signer: Any) -> None:
        assert self._view is not None
        now = availability_of(self._view, value, signer)
        doc = parse_live(self._view, value, signer) if value is not None else {}
        self._doc_deadline = heartbeat_deadline(doc) if now.online else None
        self._emit(now)

    def _emit(self, now: Availability) -> None:
        last = self._last
        if last is None or (last.online, last.since, last.reason) != (
            now.online,
            now.since,
            now.reason,
        ):
            self._pending.append(now)
        self._last = now

    def __aiter__(self) -> AsyncIterator[Availability]:
        return self

    async def __anext__(self) -> Availability:
        if self._watch is None:
            raise RuntimeError("use 'async with things.follow_availability(...)' first")
        while not self._pending:
            timeout = None
            if self._doc_deadline is not None:
                timeout = max(0.0, self._doc_deadline - time.time()) + 0.05
            try:
                async with asyncio.timeout(timeout):
                    entry = await self._watch.__anext__()
            except TimeoutError:
                assert self._last is not None
                deadline, self._doc_deadline = self._doc_deadline, None
                self._emit(
                    Availability(
                        self.thing_id, False, self._last.last_seen, deadline, "no heartbeat"
                    )
                )
                continue
            if entry.key != LIVE:
                continue
            try:
                await self._take(entry.value, entry.signer)
            except SafeThingError as e:
                log.warning("ignoring an availability record of %s: %s", self.thing_id, e)
        return self._pending.pop(0)
