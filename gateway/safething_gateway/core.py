"""The gateway: every device becomes a custodial SAFEthing.

Bridges (MQTT, CoAP, HTTP) hand each device message to
:meth:`Gateway.handle` and push what :meth:`Gateway.send` queues. The
gateway checks, in this order, the frame (a counter below 2^63), the MAC
(an unknown device and a wrong MAC get the same answer), whether the
device is revoked, the body's fields that the link itself uses, the counter
(above the last accepted), and only then the device's rate, so a replayed
or forged frame cannot spend the device's tokens, and a refused message does
not spend its counter (the device may send it again). The device's row comes
from the registry's cache of recent rows (:meth:`Registry.cached`); the
transaction that spends the counter checks again that the device is not revoked,
so a device revoked by another process meanwhile is refused. Then it decodes and
type-checks the body against the device's declared description and acts
through the device's :class:`Thing` (whose keys it holds).

**Rate.** Each device has a token bucket (``rate`` per second, ``burst``
deep). A backlog is not a flood: when the gateway starts, a device's bucket
also holds what the device may have sent since its last accepted message
(``rate`` x that time, at most ``backlog``), and when a bridge reconnects
after an outage every bucket gains ``rate`` x its length, so what a broker
kept while the gateway was away is not refused.

**Bounds.** Results for request ids the gateway is not waiting for (yet)
are kept at most :data:`EARLY_RESULT_TTL` seconds, :data:`EARLY_PER_DEVICE`
request ids per device and :data:`EARLY_TOTAL` in all;
:data:`~safething_gateway.registry.MAX_PENDING_DOWNLINKS` downlinks wait
per device. Action requests for the device and desired values go
through a durable queue and are pushed when the device is reachable or
fetched when it polls; the device acknowledges them by counter.

Nothing acknowledged is lost: if the store is unreachable, verified
readings are buffered in the registry and replayed in order later.

**Custodial things on demand.** A gateway with 10,000 devices cannot afford a
running thing per device (each has its own tasks, and restoring one reads and
verifies its MDs: about 12 ms; the running things share two store watches, see
:class:`~safething.things.shared.SharedWatches`). :meth:`Gateway.start`
restores none of the devices that speak the device link: a device's thing is
restored (the same :meth:`Thing.register`, every check of a first start) when
the device's first message since the start has passed every check of the
link, or when something is written into the thing's inbox (an action request,
a desired value). The shared store watch on every inbox (tag 27418) notices the
latter for all devices (its changes that no running thing claims); inboxes
holding entries when the gateway starts are restored at once, in the background.
Adopted devices' things are restored at start, as their adapters expect, and so
are the things of births that a crash or a store outage cut short (the registry
marks a birth registered once its thing is in the store).

**A bound on running things.** Once every device has spoken, every thing would
run (about 55 KB each: 10,000 devices, 527 MB; docs/benchmarks.md). So at most
``max_things`` custodial things of devices that speak the device link run at
once: when more do, the gateway closes those quiet longest (an ordered dict of
the running things, the one that spoke last moved to its end on every message:
O(1) per message) and they are dormant again, restored on demand as above. A
thing is closed only when it has been quiet for ``close_after`` seconds (a
device speaking every few seconds is never closed and restored in a loop). With
``close_births`` (off by default), a thing that has run since its device's birth
and was not closed since may be closed over the bound at once: a birth storm
(every device back after a power cut) would otherwise run every thing for
``close_after`` seconds, and the memory Python takes for them is not given
back. Each such thing costs a restore more (about 4 ms of CPU) when its device
speaks again, after which ``close_after`` protects it as any other; devices that
speak again soon after their birth pay that restore for nothing (10,000 devices
born, then all sending readings: 101 readings/s with it against 485 without, in
alternating ``gateway.sustained10k`` runs), so it suits a gateway short of memory
whose devices speak less often than ``close_after``. The things running since
their birth go the quiet longest first, after those quiet ``close_after``
seconds. Closing cuts nothing short: no
message of the device in hand, nothing in the thing's hands (:meth:`Thing.idle`:
no request taken on or running, no inbox entry being acted on, no write, no
subscription), not a birth whose thing is not known to be in the store, and not
while readings are buffered for the store.
Adopted devices' things are never closed (their adapters hold them). Closing
takes the device's restore lock, so a message or an inbox write meanwhile
restores the thing once the close is done; the thing's trust state is written
before it closes (a restored thing refuses a rollback as a running one does),
and its inbox is looked at once it has closed: a write the closing thing's
branch of the shared watch took but did not serve brings it back at once.
Nothing the world sees changes: the data stays in the store and the device's
availability stays as written (the restored thing keeps its "online since";
offline after its silence, or the gateway stopping, is written for a closed
thing too, with a client acting as it: no thing object). A closed thing holds
no reference cycle, so it is freed when its last reference goes, frozen or not
(``gc.freeze()`` below); cycles among frozen objects are never collected, so
after every :data:`_COLLECT_EVERY` things closed the gateway unfreezes,
collects and freezes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safething.errors import LimitExceededError, SafeThingError, StoreError, ThingError
from safething.net import Client, Identity
from safething.net.trust import TrustState
from safething.resource import AsyncResource, cancel_and_wait
from safething.store import Store, Watch
from safething.things import (
    AccessType,
    ActionRequest,
    ActionState,
    DescriptionError,
    Thing,
    ThingDescription,
    UnknownFieldError,
    ValueTypeError,
)
from safething.things.availability import write_availability
from safething.things.shared import INBOX_PREFIX, SharedWatches
from safething.things.values import finite
from safething_gateway.liveness import DEFAULT_OFFLINE_AFTER_S, Liveness
from safething_gateway.metrics import Metrics
from safething_gateway.protocol import (
    BadMacError,
    BadMessageError,
    Frame,
    PayloadError,
    ProtocolError,
    RateLimitedError,
    ReplayError,
    RevokedDeviceError,
    check_channel,
    check_device_id,
    decode_body,
    encode_body,
    frame,
    parse_frame,
)
from safething_gateway.registry import LINKED_TRANSPORTS, DeviceRecord, Downlink, Registry

__all__ = [
    "DEFAULT_CLOSE_AFTER_S",
    "DEFAULT_MAX_THINGS",
    "EARLY_PER_DEVICE",
    "EARLY_RESULT_TTL",
    "EARLY_TOTAL",
    "MAX_COUNTER",
    "RESTORE_RETRY_S",
    "Bridge",
    "DeviceActionError",
    "Gateway",
    "Health",
    "OutboundDownlink",
]

log = logging.getLogger("safething.gateway")

MAX_COUNTER = 2**63 - 1
"""Largest counter a device may use (a signed 64-bit integer, as the registry keeps it)."""
EARLY_RESULT_TTL = 300.0
"""Seconds a result for a request the gateway is not waiting for is kept."""
EARLY_PER_DEVICE = 16
"""Such results (request ids) kept per device; more are refused."""
EARLY_TOTAL = 1024
"""Such results kept in all; the oldest goes first."""
_EARLY_UPDATES = 8
"""Updates kept per early request id (running..., then the final state)."""
_RESULT_STATES = (
    ActionState.RUNNING,
    ActionState.DONE,
    ActionState.FAILED,
    ActionState.REJECTED,
)
"""The states a device may report for an action (docs/protocol.md)."""
_FREEZE_EVERY = 256
"""``gc.freeze()`` after this many things born or restored since the last one."""
DEFAULT_MAX_THINGS = 2_000
"""Custodial things of linked devices running at once, at most (about 110 MB of
them; a Raspberry Pi 3 has 1 GB, a Pi Zero 2 W 512 MB; docs/gateway.md)."""
DEFAULT_CLOSE_AFTER_S = 60.0
"""Seconds a running custodial thing must have been quiet before it may be closed."""
GC_THRESHOLD = (50_000, 10, 10)
"""The garbage collector's thresholds that :meth:`Gateway.start` sets for its process
(Python's are ``(700, 10, 10)``): the youngest generation is collected after 50,000
more container objects made than freed, not 700. With the running things frozen
(``gc.freeze()``) what is left for the collector is mostly what messages and births
have in hand: at 700 it caught those alive and promoted them, and the older
generations walked them again. The collector's CPU fell from about 200 us to 50 a
birth and from about 20 us to 0-3 a reading; during 1,000 births it collects 4 times,
11-14 ms each, instead of 479 young, 42 middle and 2 full collections (18-24 ms each;
docs/benchmarks.md). The garbage waiting for a collection is bounded by the
threshold (peak RSS with 1,000 devices within 1-3 MB of before).
``Gateway(gc_threshold=None)`` leaves the process's thresholds as they are."""
_COLLECT_EVERY = 4_096
"""After this many things closed, frozen objects are collected once (a pause of about
a second with 3,000 things in memory: docs/benchmarks.md)."""
RESTORE_RETRY_S = 30.0
"""A thing that could not be restored on demand is tried again after this many seconds."""
_UNKNOWN_SECRET = secrets.token_bytes(32)
"""An unknown device's frame is checked against this, so it costs what a wrong MAC costs."""


class DeviceActionError(SafeThingError):
    """The device reported an action as failed or rejected."""


@dataclass(frozen=True, slots=True)
class OutboundDownlink:
    """A downlink framed for its device, with what the frame itself does not carry."""

    channel: str
    """The downlink's channel: its MAC covers it, so the device needs it to verify."""
    counter: int
    """The gateway's counter for this device (also in the frame's header line)."""
    frame: bytes
    """The framed message ``ST2 <counter> <tag>\\n<ciphertext>`` (``ST1 ...`` for a
    device provisioned with ST1), exactly as sent."""


@dataclass(frozen=True, slots=True)
class Health:
    """What :meth:`Gateway.health` found: both parts answer, or the first that does not."""

    devices: int
    """Provisioned devices (0 when the registry did not answer)."""
    problem: tuple[str, str] | None = None
    """``(reason, detail)`` of the part that does not answer
    (``"registry_unavailable"``, ``"store_unavailable"``); None when healthy."""


class Bridge(AsyncResource, ABC):
    """A transport between devices and the gateway (one module per protocol)."""

    name: str = "bridge"

    @abstractmethod
    async def start(self, gateway: Gateway) -> None:
        """Connect / listen. Called once by :meth:`Gateway.start`."""

    @abstractmethod
    async def close(self) -> None:
        """Stop; every task cancelled and awaited."""

    def can_push(self, device_id: str) -> bool:
        """True when a message for ``device_id`` can be delivered now."""
        return False

    async def push(self, device_id: str, channel: str, message: bytes) -> bool:
        """Deliver a framed downlink; True once handed over (e.g. MQTT PUBACK)."""
        return False

    def connected(self) -> int:
        """Devices connected through this bridge now (for metrics)."""
        return 0

    def dropped(self) -> dict[str, int]:
        """Messages this bridge dropped rather than queue them without bound, so far, by
        direction: ``in`` from devices, ``out`` to them (for metrics)."""
        return {"in": 0, "out": 0}

    def endpoints(self) -> list[str]:
        """URLs a person can use, e.g. ``mqtt://127.0.0.1:1883``."""
        return []


@dataclass(slots=True)
class _DeviceLock:
    """A device's restore lock and how many hold it or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)


class Gateway(AsyncResource):
    """One gateway process: a registry, a store, the owner identity, bridges."""

    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        owner: Identity,
        bridges: Sequence[Bridge] = (),
        rate: float = 50.0,
        burst: int = 100,
        backlog: int = 10_000,
        offline_after: float = DEFAULT_OFFLINE_AFTER_S,
        max_things: int = DEFAULT_MAX_THINGS,
        close_after: float = DEFAULT_CLOSE_AFTER_S,
        close_births: bool = False,
        gc_threshold: tuple[int, int, int] | None = GC_THRESHOLD,
    ) -> None:
        """``max_things``: custodial things of linked devices running at once, at most
        (the quiet longest are closed); ``close_after``: seconds a thing must have been
        quiet before it may be closed; ``close_births``: things running since their
        device's birth may be closed over the bound before that (see the module
        docstring); ``gc_threshold``: the garbage collector's thresholds that
        :meth:`start` sets for the whole process (:data:`GC_THRESHOLD`), ``None`` to
        leave them as they are."""
        if isinstance(max_things, bool) or not isinstance(max_things, int) or max_things < 1:
            raise ValueError(f"max_things must be a whole number >= 1, got {max_things!r}")
        if (
            isinstance(close_after, bool)
            or not isinstance(close_after, int | float)
            or not 0 < close_after < float("inf")
        ):
            raise ValueError(f"close_after must be a number of seconds > 0, got {close_after!r}")
        self.max_things = max_things
        self.close_after = float(close_after)
        self.close_births = bool(close_births)
        self.gc_threshold = gc_threshold
        self._gc_before: tuple[int, int, int] | None = None
        """The process's thresholds before :meth:`start` set ``gc_threshold``."""
        self.store = store
        self.registry = registry
        self.owner = owner
        """Owns every custodial thing (the owner key of the gateway)."""
        self.bridges = list(bridges)
        self.rate = rate
        self.burst = burst
        self.backlog = backlog
        """Most messages a device's bucket may hold after an outage (what a broker keeps)."""
        self.metrics = Metrics()
        self.rejected_by_device: dict[str, dict[str, int]] = {}
        """Refused messages per provisioned device and reason, since start (the console)."""
        self.things: dict[str, Thing] = {}
        self.liveness = Liveness(
            self.things, offline_after=offline_after, closed=self._closed_availability
        )
        """Availability of the devices, written into their things."""
        self._buckets: dict[str, _Bucket] = {}
        self._waiting: dict[tuple[str, str], asyncio.Queue[dict[str, Any]]] = {}
        self._early: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
        self._early_count: dict[str, int] = {}
        self._warned_st1: set[str] = set()
        self._buffering = False
        self._inflight: set[int] = set()
        """Journal entries (registry uplinks) their handler is writing to the store now."""
        self._written: set[int] = set()
        """Journal entries written to the store, not yet dropped (the registry was busy)."""
        self._dropping: set[int] = set()
        """Those of them that a call of the registry drops now."""
        self._unborn: set[str] = set()
        """Devices whose birth was accepted while the store was unreachable."""
        self._flush_task: asyncio.Task[None] | None = None
        self._liveness_task: asyncio.Task[None] | None = None
        self._inbox_task: asyncio.Task[None] | None = None
        self._shared: SharedWatches | None = None
        """The store watches every custodial thing shares (see the module docstring)."""
        self._dormant: dict[str, str] = {}
        """Inbox MD name (hex) -> device id of every born device whose thing is restored
        on demand (see the module docstring); it stays here once restored."""
        self._restoring: dict[str, _DeviceLock] = {}
        self._unfrozen = 0
        """Things brought up since the last ``gc.freeze()``."""
        self._failed: dict[str, float] = {}
        """Devices whose thing could not be restored, and when (monotonic)."""
        self._unregistered: set[str] = set()
        """Devices whose latest birth is not known to be in the store (a crash or an
        outage came between): restored in the background at start, then marked."""
        self._recent: OrderedDict[str, float] = OrderedDict()
        """Running things of linked devices -> when last active (monotonic), the quiet
        longest first: what the bound on running things closes."""
        self._newborn: OrderedDict[str, None] = OrderedDict()
        """Running things of linked devices brought up by their device's birth, not closed
        since, the quiet longest first: over the bound they are closed before
        ``close_after`` (see the module docstring)."""
        self._in_hand: dict[str, int] = {}
        """Devices -> their messages being handled now (their thing is not closed)."""
        self._quiet_closed: dict[str, float | None] = {}
        """Devices whose thing was closed while quiet -> since when their availability
        says online (None: offline), as their next thing keeps it."""
        self._closed_since_collect = 0
        """Things closed since the last collection of frozen objects."""
        self._closed_trust: TrustState | None = None
        """The trust state of the writes for things closed while quiet (availability)."""
        self._trust_file: Path | None = None
        """The custodial things' trust file (:meth:`_trust_path`), once made."""
        self._sweep_wanted = asyncio.Event()
        self._sweep_task: asyncio.Task[None] | None = None
        self._started = False
        self._describe_metrics()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bring up the custodial things of known devices, then the bridges."""
        if self._started:
            return
        self._started = True
        self._buffering = self.registry.buffer_depth() > 0
        self._unborn.clear()
        self._dormant.clear()
        # Live before any thing starts: the things' inbox and status feeds come from it,
        # and a write into a dormant thing's inbox from now on is not missed.
        self._shared = SharedWatches(self.store)
        await self._shared.start()
        unclaimed = self._shared.inboxes.unclaimed()
        for device_id, (transport, registered) in self.registry.born().items():
            if transport in LINKED_TRANSPORTS:
                self._dormant[_inbox_name(device_id)] = device_id
                if registered:
                    continue  # restored on demand
            if not registered:  # a birth cut short (rare): its thing is registered now
                self._unregistered.add(device_id)
            # and an adopted device's thing now: its adapter expects it
            record = self.registry.find(device_id)
            if record is not None:
                await self._restore(record)
        self._inbox_task = asyncio.get_running_loop().create_task(
            self._follow_inboxes(unclaimed), name="gateway:inboxes"
        )
        for bridge in self.bridges:
            await bridge.start(self)
        self._flush_task = asyncio.get_running_loop().create_task(
            self._flush_loop(), name="gateway:flush-buffer"
        )
        self._liveness_task = asyncio.get_running_loop().create_task(
            self.liveness.run(), name="gateway:liveness"
        )
        self._sweep_task = asyncio.get_running_loop().create_task(
            self._sweep_loop(), name="gateway:close-quiet-things"
        )
        # Thousands of long-lived things: keep full collections from walking them all
        # (60-170 ms pauses with 1,000 devices, docs/benchmarks.md).
        gc.freeze()
        if self.gc_threshold is not None:
            self._gc_before = gc.get_threshold()
            gc.set_threshold(*self.gc_threshold)

    async def close(self) -> None:
        """Stop bridges, things and tasks; nothing half-written (each write is atomic).

        A cancellation of the caller meanwhile does not cut the close short (bridges
        left open, things not closed): it is raised once everything is closed."""
        cancelled = await cancel_and_wait(
            self._sweep_task, self._flush_task, self._liveness_task, self._inbox_task, log=log
        )
        self._flush_task = self._liveness_task = self._inbox_task = self._sweep_task = None

        async def finish(close: Callable[[], Awaitable[None]]) -> None:
            nonlocal cancelled
            try:
                await close()
            except asyncio.CancelledError:  # passed on at the end
                cancelled = True

        for bridge in reversed(self.bridges):
            try:
                await finish(bridge.close)
            except Exception:
                log.exception("bridge %s did not close cleanly", bridge.name)
        await finish(self.liveness.close)  # (its last writes may use the closed things' trust)
        if self._closed_trust is not None:
            self._closed_trust.close()
            self._closed_trust = None
        for thing in list(self.things.values()):
            await finish(thing.close)
        self.things.clear()
        self._recent.clear()
        self._newborn.clear()
        if self._shared is not None:
            await finish(self._shared.close)
        if self._gc_before is not None:
            # As they were, unless changed since (by another gateway of the process).
            if gc.get_threshold() == self.gc_threshold:
                gc.set_threshold(*self._gc_before)
            self._gc_before = None
        if cancelled:
            raise asyncio.CancelledError

    def endpoints(self) -> list[str]:
        return [e for b in self.bridges for e in b.endpoints()]

    def descriptions(self) -> dict[str, ThingDescription]:
        """The description of every custodial thing: running, or restored on demand."""
        found = {thing_id: thing.description for thing_id, thing in list(self.things.items())}
        for device_id in list(self._dormant.values()):
            if device_id not in found:
                record = self.registry.find(device_id)
                if record is not None and record.description and not record.revoked:
                    found[device_id] = ThingDescription.from_dict(record.description)
        return found

    async def health(self, *, timeout: float = 5.0) -> Health:
        """Whether the device registry and the data store answer (the store within
        ``timeout`` seconds); never raises."""
        try:
            devices = len(self.registry.devices())
        except Exception as e:
            log.warning("health: registry does not answer: %s", e)
            return Health(0, ("registry_unavailable", f"the device registry does not answer: {e}"))
        try:
            async with asyncio.timeout(timeout):
                await self.store.get("gateway.healthz")
        except Exception as e:
            log.warning("health: store does not answer: %s", e)
            return Health(devices, ("store_unavailable", f"the data store does not answer: {e}"))
        return Health(devices)

    def bridge_for(self, device_id: str) -> Bridge | None:
        record = self.registry.cached(device_id)  # (a device's transport never changes)
        if record is None:
            return None
        for bridge in self.bridges:
            if bridge.name == record.transport:
                return bridge
        return None

    # --- uplink --------------------------------------------------------------------------

    async def handle(
        self,
        device_id: str,
        channel: str,
        data: bytes | Frame,
        *,
        content_format: str = "json",
        transport: str = "",
    ) -> list[OutboundDownlink]:
        """Check and act on one device message. Returns the downlinks to send back in the
        same exchange, oldest first, each with its channel (only for ``poll``: every one
        waiting). Raises a :class:`ProtocolError` that the bridge turns into its
        transport's error reply."""
        try:
            result = await self._handle(device_id, channel, data, content_format)
        except ProtocolError as e:
            self.metrics.inc(
                "safething_gateway_rejected_total", reason=e.reason, transport=transport
            )
            counts = self.rejected_by_device.get(device_id)
            if counts is None and len(self.rejected_by_device) < 10_000:  # bounded
                counts = self.rejected_by_device[device_id] = {}
            if counts is not None:
                counts[e.reason] = counts.get(e.reason, 0) + 1
            log.info(
                "rejected %s/%s via %s: %s",
                device_id,
                channel,
                transport,
                e,
                extra={"device": device_id, "reason": e.reason, "transport": transport},
            )
            raise
        self.metrics.inc("safething_gateway_messages_in_total", transport=transport)
        return result

    async def _handle(
        self, device_id: str, channel: str, data: bytes | Frame, content_format: str
    ) -> list[OutboundDownlink]:
        check_device_id(device_id)
        check_channel(channel)
        message = data if isinstance(data, Frame) else parse_frame(data)
        if message.counter > MAX_COUNTER:
            raise BadMessageError(f"the counter must be below 2^63, got {message.counter}")
        # A recently read row (its ``revoked`` may be out of date: the counter's
        # transaction below refuses a device revoked meanwhile, by any process)
        record = self.registry.cached(device_id)
        if record is None:
            # the same work and the same answer as a wrong MAC: ids cannot be listed
            with contextlib.suppress(BadMacError):
                message.verify(_UNKNOWN_SECRET, device_id, channel, uplink=True)
            raise BadMacError(f"wrong MAC for {device_id}/{channel} counter {message.counter}")
        plain = self._open(record, channel, message)
        if record.revoked:
            raise RevokedDeviceError(f"device {device_id!r} is revoked")
        body = decode_body(plain, content_format)  # its errors quote no content
        _check_link_fields(channel, body)
        will = (
            channel == "state"
            and isinstance(body, dict)
            and body.get("online") is False
            and record.will_counter == message.counter
        )
        if not will and message.counter <= record.rx_counter:
            raise ReplayError(
                f"counter {message.counter} of {device_id!r} is not above the last accepted "
                f"({record.rx_counter}): replayed or old message"
            )
        description = None
        born: ThingDescription | None = None
        if channel == "birth":
            try:
                description, born = self._birth_description(record, body)
            except PayloadError as e:
                raise self._sealed_reason(record, channel, e) from e
        self._rate_limit(record)
        uplink: int | None = None
        if not will or not await self.registry.call(
            self.registry.use_will, device_id, message.counter
        ):
            # The counter is spent and, in the same transaction, what must outlive a
            # crash from here on is kept: a reading until it is in the store, a birth's
            # description (over MQTT the broker redelivers an unacknowledged message,
            # but the gateway would refuse it then as a replay).
            journal = (channel, plain, content_format) if _is_data(channel) else None
            try:
                uplink = await self.registry.call(
                    self.registry.accept,
                    device_id,
                    message.counter,
                    journal=journal,
                    description=description,
                )
            except ReplayError:
                self._refund(device_id)
                raise
            self.registry.counted(device_id, message.counter)
        in_hand = self._in_hand
        in_hand[device_id] = in_hand.get(device_id, 0) + 1  # its thing is not closed now
        try:
            if channel != "birth":
                await self._ensure_thing(record)
            try:
                result = await self._dispatch(
                    record, channel, body, plain, content_format, uplink=uplink, born=born
                )
            except PayloadError as e:
                raise self._sealed_reason(record, channel, e) from e
            if channel == "state" and body.get("online") is False:
                await self.liveness.mark(device_id, False, "last will" if will else "said offline")
            else:
                await self.liveness.seen(device_id)
        finally:
            left = in_hand[device_id] - 1
            if left:
                in_hand[device_id] = left
            else:
                del in_hand[device_id]
            if device_id in self._recent:  # it spoke: the quiet longest are first
                self._recent[device_id] = time.monotonic()
                self._recent.move_to_end(device_id)
                if device_id in self._newborn:
                    self._newborn.move_to_end(device_id)
        return result

    def _open(self, record: DeviceRecord, channel: str, message: Frame) -> bytes:
        """The body in clear, once the frame's version is the device's and its tag right.

        A frame of the other version is refused like a wrong MAC (after the same work),
        so that the answer does not tell which version a device id speaks."""
        if message.version is None:  # an empty poll built from a query
            message = replace(message, version=record.protocol)
        elif message.version != record.protocol:
            with contextlib.suppress(BadMacError):
                message.verify(record.secret, record.device_id, channel, uplink=True)
            log.info(
                "device %s was provisioned for ST%d: an ST%d message is refused",
                record.device_id,
                record.protocol,
                message.version,
            )
            raise BadMacError(
                f"wrong MAC for {record.device_id}/{channel} counter {message.counter}"
            )
        plain = message.open(record.secret, record.device_id, channel, uplink=True)
        if record.protocol == 1 and record.device_id not in self._warned_st1:
            self._warned_st1.add(record.device_id)
            log.warning(
                "device %s speaks ST1: its messages travel in clear (a broker, proxy or LAN "
                "sniffer reads them); provision it again for ST2",
                record.device_id,
            )
        return plain

    def _sealed_reason(
        self, record: DeviceRecord, channel: str, error: PayloadError
    ) -> PayloadError:
        """What a refused body's reply may say. An ST2 body is sealed, so is the reason
        (it can quote the values): the detail goes only to the gateway log."""
        if record.protocol == 1:
            return error
        log.info("refused %s/%s body: %s", record.device_id, channel, error)
        return PayloadError(
            f"the {channel} body of {record.device_id} was refused (it is sealed: "
            "the reason is in the gateway log)"
        )

    def _rate_limit(self, record: DeviceRecord) -> None:
        now = time.monotonic()
        device_id = record.device_id
        bucket = self._buckets.get(device_id)
        if bucket is None:
            # first message since the gateway started: it may be a backlog the broker kept
            away = time.time() - record.last_seen if record.last_seen is not None else 0.0
            credit = min(float(self.backlog), max(0.0, away) * self.rate)
            bucket = self._buckets[device_id] = _Bucket(float(self.burst) + credit, now)
        elif bucket.tokens < self.burst:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            raise RateLimitedError(
                f"device {device_id!r} sends faster than {self.rate:g} messages/s"
            )
        bucket.tokens -= 1.0

    def _refund(self, device_id: str) -> None:
        bucket = self._buckets.get(device_id)
        if bucket is not None:
            bucket.tokens += 1.0

    def outage(self, seconds: float) -> None:
        """A bridge was cut off for ``seconds``: what devices sent meanwhile may arrive at
        once, so every bucket may hold that much more (up to :attr:`backlog`)."""
        credit = min(float(self.backlog), max(0.0, seconds) * self.rate)
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens + credit, float(self.burst + self.backlog))

    async def _dispatch(
        self,
        record: DeviceRecord,
        channel: str,
        body: Any,
        raw: bytes,
        content_format: str,
        *,
        uplink: int | None = None,
        born: ThingDescription | None = None,
    ) -> list[OutboundDownlink]:
        """``born``: a birth's description, checked by the caller before the counter."""
        device_id = record.device_id
        registry = self.registry
        if channel == "birth":
            assert born is not None  # checked by _handle before the counter was spent
            await self._birth(record, born)
            await self.deliver(device_id)
        elif channel == "state":
            online = _field(body, "online", bool)
            await registry.call(registry.set_online, device_id, online)
            if online:
                await registry.call(registry.set_will, device_id, body.get("will"))
                await self.deliver(device_id)
        elif channel == "ack":
            await registry.call(registry.ack, device_id, _field(body, "down", int))
        elif channel == "poll":
            await registry.call(registry.set_online, device_id, True)
            return [self._outbound(record, d) for d in registry.pending(device_id)]
        elif channel.startswith("result/"):
            self._result(device_id, channel[len("result/") :], body)
        else:  # reading, event/<topic>: data for the store
            if uplink is None:  # (not journaled by the caller)
                uplink = await registry.call(
                    registry.buffer, device_id, channel, raw, content_format
                )
            if self._buffering:
                return []  # journaled: flush() writes it, in order, once the store answers
            self._inflight.add(uplink)
            try:
                await self._data(record, channel, body)
            except StoreError as e:
                log.warning("store unreachable (%s): buffering %s/%s", e, device_id, channel)
                self._buffering = True
                return []
            except ProtocolError:
                await self._unjournal(uplink)
                raise
            finally:
                self._inflight.discard(uplink)
            await self._unjournal(uplink)
        return []

    async def _unjournal(self, uplink: int) -> None:
        """Drop a journal entry whose message is done with (later, if the registry is
        busy: until then flush() must not write it again), with those a busy registry
        left. Not those another call drops meanwhile: with many readings in flight each
        call named every entry still waiting for its own call, about fifty deletes per
        reading in scripts/profile_gateway_handle.py instead of one."""
        self._written.add(uplink)
        ids = sorted(self._written - self._dropping)
        if not ids:
            return
        self._dropping.update(ids)
        try:
            await self.registry.call(self.registry.unbuffer, ids)
        except StoreError as e:
            log.warning(
                "registry busy (%s): %d journal entries dropped later", e, len(self._written)
            )
            return
        finally:
            self._dropping.difference_update(ids)
        self._written.difference_update(ids)

    @staticmethod
    def _birth_description(
        record: DeviceRecord, body: Any
    ) -> tuple[dict[str, Any], ThingDescription]:
        """The checked description of a birth (before its counter is spent), as a
        document and parsed (handed on to the thing: parsed once per birth)."""
        doc = body.get("description") if isinstance(body, dict) else None
        if not isinstance(doc, dict):
            raise PayloadError("birth needs {'description': <thing description>}")
        try:
            desc, document = _parsed_document(doc)
        except (DescriptionError, ValueError, TypeError) as e:
            raise PayloadError(f"bad description: {e}") from e
        if desc.id != record.device_id:
            raise PayloadError(
                f"description id {desc.id!r} is not the device id {record.device_id!r}"
            )
        return document, desc

    async def _birth(self, record: DeviceRecord, desc: ThingDescription) -> None:
        """The born device's thing (registered and published), then the registry: its
        thing is in the store (unless the store did not answer) and it is online. The
        description itself was kept with the birth's counter (:meth:`Registry.accept`)."""
        try:
            # online: the device has just spoken (its availability goes out with its thing)
            await self._thing_for(record, desc, online=True)
        except StoreError as e:
            # Its counter is taken (and over MQTT the message acknowledged): the device
            # will not send it again, so keep the verified birth and register the thing
            # when the store answers, before the readings buffered after it.
            log.warning("store unreachable (%s): keeping the birth of %s", e, record.device_id)
            self._unborn.add(record.device_id)
            self._buffering = True
        else:
            if self.close_births and record.device_id in self._recent:  # a linked device's
                self._newborn[record.device_id] = None
                self._newborn.move_to_end(record.device_id)
        registry = self.registry
        await registry.call(
            registry.set_born, record.device_id, registered=record.device_id not in self._unborn
        )

    async def _restore(self, record: DeviceRecord) -> None:
        """Bring up the thing of a device born before; a store that does not answer
        leaves it for :meth:`flush` (its readings are journaled meanwhile)."""
        if not record.description or record.revoked:
            return
        try:
            await self._thing_for(record, _parsed(record.description))
        except StoreError as e:
            log.warning("device %s: its thing waits for the store: %s", record.device_id, e)
            self._unborn.add(record.device_id)
            self._buffering = True
        except (SafeThingError, ValueError) as e:
            log.warning("device %s: cannot restore its thing: %s", record.device_id, e)
            self._failed[record.device_id] = time.monotonic()
        else:
            self._failed.pop(record.device_id, None)
            self.metrics.inc("safething_gateway_things_restored_total")
            await self._registered(record.device_id)

    async def _registered(self, device_id: str) -> None:
        """The device's thing is in the store: say so in the registry, if it did not know."""
        if device_id in self._unregistered:
            await self.registry.call(self.registry.mark_registered, device_id)
            self._unregistered.discard(device_id)

    async def _ensure_thing(self, record: DeviceRecord) -> None:
        """Restore the device's thing if it was born and is not running (see the module
        docstring); one restore at a time per device, the others wait for it."""
        device_id = record.device_id
        if device_id in self.things or not record.description or device_id in self._unborn:
            return
        failed = self._failed.get(device_id)
        if failed is not None and time.monotonic() - failed < RESTORE_RETRY_S:
            return  # refused a moment ago (logged): not again for every message or request
        async with self._device_lock(device_id):
            if device_id not in self.things and device_id not in self._unborn:
                await self._restore(record)

    @contextlib.asynccontextmanager
    async def _device_lock(self, device_id: str) -> AsyncIterator[None]:
        """The device's restore lock: one restore, close or availability write of its
        thing at a time. Dropped when no one holds it or waits for it (dropped while one
        waits, a newcomer would take a second lock and restore the thing twice)."""
        held = self._restoring.get(device_id)
        if held is None:
            held = self._restoring[device_id] = _DeviceLock()
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users and self._restoring.get(device_id) is held:
                del self._restoring[device_id]

    async def _follow_inboxes(self, unclaimed: Watch) -> None:
        """The writes into inboxes of things not running (the shared watch on every
        inbox, :class:`SharedWatches`): one into the inbox of a device of this gateway
        restores its thing, which then serves its inbox itself. Inboxes that hold
        entries already are restored first (their listing is tried again every second
        while the store does not answer). The shared watch resumes after a failure
        where it stopped, so nothing written meanwhile is missed."""
        async with unclaimed:
            while True:
                try:
                    keys = await self._inbox_keys()
                    break
                except Exception as e:
                    log.warning("cannot list the inboxes (%s); trying again in 1 s", e)
                    await asyncio.sleep(1.0)
            for name in sorted({k[len(_INBOX_PREFIX) :].split(".", 1)[0] for k in keys}):
                await self._wake(name)
            async for change in unclaimed:
                if change.deleted:  # an entry purged (by a thing closed since): nothing to serve
                    continue
                await self._wake(change.key[len(_INBOX_PREFIX) :].split(".", 1)[0])

    async def _inbox_keys(self) -> list[str]:
        """Store keys of every inbox entry (not headers) of a device with a dormant thing."""
        keys = await self.store.keys(_INBOX_PREFIX)
        return [k for k in keys if not k.endswith(".h")]

    async def _wake(self, name: str) -> None:
        device_id = self._dormant.get(name)
        if device_id is None or device_id in self.things:
            return
        try:
            record = self.registry.find(device_id)
            if record is not None:
                await self._ensure_thing(record)
        except Exception:  # the inboxes of the other devices must still be followed
            log.exception("device %s: restoring its thing for its inbox failed", device_id)

    # --- the bound on running things ---------------------------------------------------

    async def _sweep_loop(self) -> None:
        """Close quiet things whenever more than :attr:`max_things` run: looked at when a
        thing brought up goes over the bound, and every ``close_after / 2`` seconds (1 to
        10) for those that were not quiet long enough then."""
        period = min(10.0, max(1.0, self.close_after / 2))
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._sweep_wanted.wait()
            self._sweep_wanted.clear()
            try:
                await self.close_quiet_things()
            except Exception:
                log.exception("closing quiet things failed")

    async def close_quiet_things(self) -> int:
        """Close the things quiet longest (for :data:`close_after` seconds at least, and
        idle) while more than :attr:`max_things` run; returns how many were closed."""
        if self._closed_since_collect >= _COLLECT_EVERY:
            # A closed thing is freed when its last reference goes (it holds no cycle),
            # but cycles among frozen objects are never collected: now and then, let
            # those be (of things closed by earlier sweeps: the last steps of this one's
            # tasks are referenced for a moment still), then keep the running things out
            # of full collections again.
            self._closed_since_collect = 0
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._unfrozen = 0
        if self._buffering or self._unborn:
            return 0  # readings wait for the store: their things are needed
        now = time.monotonic()
        excess = len(self._recent) - self.max_things
        if excess <= 0:
            return 0
        quiet = []  # the quiet longest first, up to the first one not quiet long enough
        for device_id, last in self._recent.items():
            if now - last < self.close_after:
                break
            quiet.append(device_id)
        # then things running since their birth, however recent (see the module docstring):
        # each quieter than those above, so this is still the quiet longest first
        quiet.extend(self._newborn)
        closed = 0
        for device_id in quiet:
            if closed >= excess:
                break
            if await self._close_quiet(device_id):
                closed += 1
        self._closed_since_collect += closed
        return closed

    def _closable(self, device_id: str, thing: Thing) -> bool:
        last = self._recent.get(device_id)
        return (
            last is not None
            and (time.monotonic() - last >= self.close_after or device_id in self._newborn)
            and device_id not in self._in_hand
            and device_id not in self._unregistered
            and device_id not in self._unborn
            and thing.idle()
        )

    async def _close_quiet(self, device_id: str) -> bool:
        """Close the device's thing if it is still quiet and idle (under its restore lock:
        a message or an inbox write meanwhile restores it once the close is done)."""
        async with self._device_lock(device_id):
            thing = self.things.get(device_id)
            if thing is None or not self._closable(device_id, thing):
                return False
            try:
                thing.trust.sync()  # what it verified outlives it (rollbacks refused)
            except SafeThingError as e:
                log.warning("device %s: its thing stays running: %s", device_id, e)
                return False
            del self.things[device_id]
            del self._recent[device_id]
            self._newborn.pop(device_id, None)
            self._dormant[_inbox_name(device_id)] = device_id  # woken by its inbox
            self._quiet_closed[device_id] = thing.online_since
            self.metrics.inc("safething_gateway_things_closed_total")
            try:
                await thing.close()
            except Exception:
                log.exception("device %s: its thing did not close cleanly", device_id)
            if await self._inbox_holds(device_id):
                # written while it closed, taken by its branch of the shared watch
                record = self.registry.find(device_id)
                if record is not None:
                    await self._restore(record)
            return True

    async def _inbox_holds(self, device_id: str) -> bool:
        """Whether the device's inbox holds an entry (True when the store does not say)."""
        prefix = f"{_INBOX_PREFIX}{_inbox_name(device_id)}."
        try:
            keys = await self.store.keys(prefix)
        except StoreError as e:
            log.warning("device %s: cannot look at its inbox (%s): restoring", device_id, e)
            return True
        return any(not k.endswith(".h") for k in keys)

    async def _closed_availability(self, device_id: str, online: bool, reason: str) -> bool:
        """Write the availability of a device whose thing was closed while quiet (for
        :class:`Liveness`), as its thing would, with a client acting as it (and one
        trust state for all such writes). False for a device with no such thing."""
        if device_id not in self._quiet_closed:
            return False
        async with self._device_lock(device_id):
            running = self.things.get(device_id)
            if running is not None:  # restored meanwhile
                await running.set_availability(online, reason=reason)
                return True
            record = self.registry.find(device_id)
            if device_id not in self._quiet_closed or record is None:
                return False
            if self._closed_trust is None:  # one for all such writes (batched file writes)
                self._closed_trust = TrustState.open(self._trust_path())
            kept = self._quiet_closed[device_id]
            since = kept if online and kept is not None else time.time()
            client = Client(self.store, record.identity, trust=self._closed_trust)
            await write_availability(
                client, device_id, self.owner.public, online=online, since=since, reason=reason
            )
            self._quiet_closed[device_id] = since if online else None
            return True

    async def custodial_thing(self, record: DeviceRecord, description: ThingDescription) -> Thing:
        """The device's custodial thing, started, registered and published; the running
        one when its description is unchanged, else a new one in its place.

        A device with a device link (:attr:`DeviceRecord.linked`) gets its actions and
        writable attributes forwarded to it; any other (an adopted device) gets no
        handlers: its adapter installs its own on the returned thing.
        """
        return await self._thing_for(record, description)

    async def _thing_for(
        self, record: DeviceRecord, desc: ThingDescription, *, online: bool = False
    ) -> Thing:
        """The device's custodial thing, (re)registered if its description changed;
        ``online``: the device has just spoken, so its thing is registered as online (in
        the same commit when it is new)."""
        current = self.things.get(record.device_id)
        if current is not None and current.description == desc:
            return current
        if current is not None:
            await current.close()
        device_id = record.device_id
        closed_quiet = device_id in self._quiet_closed
        thing = Thing(
            desc,
            identity=record.identity,
            owner=self.owner.public,
            store=self.store,
            heartbeat=None,
            trust=self._trust_path(),
            shared=self._shared,
            # its availability as written before it was closed (nothing written again)
            online_since=self._quiet_closed.get(device_id),
        )
        await thing.start()
        try:
            if record.linked:  # adapters of adopted devices install their own handlers
                for action in desc.actions:
                    thing.on_action(action.name, self._forwarder(record.device_id), resume=True)
                for attr in desc.attributes:
                    if attr.writable:
                        thing.on_desired(
                            attr.name, self._desired_sender(record.device_id, attr.name)
                        )
            await thing.register(publish=True, online=online)
        except BaseException as e:
            await thing.close()
            if isinstance(e, LimitExceededError | ThingError):
                raise PayloadError(f"description refused: {e}") from e
            raise
        self.things[device_id] = thing
        if record.linked:  # adopted devices' things are never closed (their adapters)
            self._recent[device_id] = time.monotonic()
            self._recent.move_to_end(device_id)
            if len(self._recent) > self.max_things:
                self._sweep_wanted.set()
        self._unfrozen += 1
        if self._unfrozen >= _FREEZE_EVERY:  # as at start: keep them out of full collections
            self._unfrozen = 0
            gc.freeze()
        if closed_quiet:  # what its availability says is what Liveness knows
            self._quiet_closed.pop(device_id, None)
            if online:
                self.liveness.written(device_id, True)
            return thing
        self.liveness.forget(device_id)
        if online:
            self.liveness.written(device_id, True)
        elif record.online and record.last_seen is not None:
            await self.liveness.seen(device_id, record.last_seen)
        return thing

    def _trust_path(self) -> Path:
        """The custodial things' trust state: local, beside the device keys (one
        ``Path`` made once, not one per thing)."""
        path = self._trust_file
        if path is None:
            path = self._trust_file = self.registry.path.with_name("trust.db")
        return path

    async def _data(self, record: DeviceRecord, channel: str, body: Any) -> None:
        thing = self.things.get(record.device_id)
        if thing is None:
            raise PayloadError(f"device {record.device_id!r} must send 'birth' before data")
        try:
            if channel == "reading":
                if not isinstance(body, dict) or not body:
                    raise PayloadError("a reading is an object of attribute -> value")
                await thing.set_many(body)  # one signed commit for the whole reading
            elif channel.startswith("event/"):
                await thing.notify(channel[len("event/") :], body)
        except (ValueTypeError, UnknownFieldError, ValueError) as e:
            if isinstance(e, ProtocolError):
                raise
            raise PayloadError(str(e)) from e

    async def _flush_loop(self) -> None:
        """Replay buffered readings, in order, once the store answers again."""
        while True:
            await asyncio.sleep(0.5)
            if not self._buffering:
                continue
            try:
                await self.flush()
            except StoreError:
                continue
            except Exception:
                log.exception("flushing buffered readings failed")

    async def flush(self) -> int:
        """Register the things of births kept during an outage, then write buffered
        readings to the store; returns how many readings were written."""
        for device_id in sorted(self._unborn):
            record = self.registry.find(device_id)
            if record is not None and record.description and not record.revoked:
                try:
                    await self._thing_for(record, _parsed(record.description))
                except ProtocolError as e:
                    log.warning("dropping the kept birth of %s: %s", device_id, e)
                else:
                    await self._registered(device_id)
            self._unborn.discard(device_id)
        done = 0
        if self._written:
            await self._unjournal(next(iter(self._written)))
        while True:
            # not those being written by their handler now (nor written, not yet dropped)
            skip = self._inflight | self._written
            batch = [i for i in self.registry.buffered() if i.id not in skip]
            if not batch:
                self._buffering = False
                return done
            for item in batch:
                record = self.registry.find(item.device_id)
                if record is not None and not record.revoked:
                    await self._ensure_thing(record)
                    if record.device_id in self._unborn:
                        raise StoreError(f"the thing of {record.device_id} waits for the store")
                    try:
                        body = decode_body(item.body, item.content_format)
                        await self._data(record, item.channel, body)
                    except ProtocolError as e:
                        log.warning("dropping buffered %s/%s: %s", item.device_id, item.channel, e)
                await self.registry.call(self.registry.unbuffer, [item.id])
                done += 1

    # --- actions and desired values ------------------------------------------------------

    def _forwarder(self, device_id: str) -> Any:
        async def forward(request: ActionRequest) -> Any:
            return await self._forward(device_id, request)

        return forward

    async def _forward(self, device_id: str, request: ActionRequest) -> Any:
        self._check_sealed_args(device_id, request)
        key = (device_id, request.request_id)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        early = self._forget_early(key)
        if early is not None:
            for update in early[1]:
                queue.put_nowait(update)
        self._waiting[key] = queue
        try:
            if early is None:
                body = {
                    "id": request.request_id,
                    "action": request.action,
                    "args": request.args,
                    "deadline": request.deadline,
                }
                await self._send_once(
                    device_id, f"action/{request.request_id}", body, expires=request.deadline
                )
                if self.liveness.online(device_id) is False:  # say so, not a silent wait
                    await request.progress(None, "the device is offline; queued until it returns")
            while True:
                remaining = request.deadline - time.time()
                if remaining <= 0:
                    raise TimeoutError(f"device {device_id!r} did not finish before the deadline")
                try:
                    update = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    raise TimeoutError(
                        f"device {device_id!r} did not finish before the deadline"
                    ) from None
                state = update.get("state")
                if state == ActionState.RUNNING:
                    progress = update.get("progress")
                    await request.progress(finite(progress), str(update.get("message", "")))
                elif state == ActionState.DONE:
                    return update.get("result")
                elif state in (ActionState.FAILED, ActionState.REJECTED):
                    raise DeviceActionError(str(update.get("message") or f"device: {state}"))
        finally:
            self._waiting.pop(key, None)

    def _check_sealed_args(self, device_id: str, request: ActionRequest) -> None:
        """Arguments sealed on the data network (an action whose access is not ``all``)
        never travel in clear: a device on ST1 cannot be sent them."""
        record = self.registry.get(device_id)
        thing = self.things.get(device_id)
        if record.protocol != 1 or thing is None:
            return
        action = next((a for a in thing.description.actions if a.name == request.action), None)
        if action is not None and action.access != AccessType.ALL and request.args:
            raise DeviceActionError(
                f"{device_id} speaks ST1 (in clear): the arguments of {request.action!r} "
                f"({action.access.value} access) are not sent to it; provision it for ST2"
            )

    def _result(self, device_id: str, request_id: str, body: Any) -> None:
        if not isinstance(body, dict) or body.get("state") not in _RESULT_STATES:
            raise PayloadError("a result is {'state': running|done|failed|rejected, ...}")
        key = (device_id, request_id)
        queue = self._waiting.get(key)
        if queue is not None:
            queue.put_nowait(body)
            return
        # A result for a request the gateway is not waiting for (yet: after a restart the
        # thing hands it the request again). Kept briefly, and bounded: a device cannot
        # grow the gateway by sending results for made-up request ids.
        now = time.monotonic()
        early = self._early
        for old in list(itertools.islice(early, 64)):
            if now - early[old][0] < EARLY_RESULT_TTL and len(early) < EARLY_TOTAL:
                break
            self._forget_early(old)
        entry = early.get(key)
        if entry is None:
            if self._early_count.get(device_id, 0) >= EARLY_PER_DEVICE:
                raise PayloadError(
                    f"results for {EARLY_PER_DEVICE} requests the gateway is not waiting for "
                    "are held already; this one is refused"
                )
            entry = early[key] = (now, [])
            self._early_count[device_id] = self._early_count.get(device_id, 0) + 1
        if len(entry[1]) >= _EARLY_UPDATES:
            del entry[1][0]
        entry[1].append(body)

    def _forget_early(self, key: tuple[str, str]) -> tuple[float, list[dict[str, Any]]] | None:
        entry = self._early.pop(key, None)
        if entry is not None:
            left = self._early_count.get(key[0], 0) - 1
            if left > 0:
                self._early_count[key[0]] = left
            else:
                self._early_count.pop(key[0], None)
        return entry

    def _desired_sender(self, device_id: str, attribute: str) -> Any:
        async def send_desired(value: Any) -> None:
            await self.send(device_id, "desired", {attribute: value})

        return send_desired

    async def send(
        self, device_id: str, channel: str, body: Any, *, expires: float | None = None
    ) -> Downlink:
        """Queue a downlink durably and push it if the device is reachable."""
        record = self.registry.get(device_id)
        fmt = "json"
        downlink = await self.registry.call(
            self.registry.enqueue, device_id, channel, encode_body(body, fmt), expires=expires
        )
        bridge = self.bridge_for(device_id)
        if bridge is not None and bridge.can_push(device_id):
            await self._push(bridge, record, downlink)
        return downlink

    async def _send_once(
        self, device_id: str, channel: str, body: Any, *, expires: float
    ) -> Downlink | None:
        """Queue a downlink the device must get at most once (an action request): after a
        gateway restart the resumed request finds it queued already, or acknowledged by
        the device (None: nothing is sent again, the result is awaited)."""
        record = self.registry.get(device_id)
        downlink = await self.registry.call(
            self.registry.enqueue_once,
            device_id,
            channel,
            encode_body(body, "json"),
            expires=expires,
        )
        bridge = self.bridge_for(device_id)
        if downlink is not None and bridge is not None and bridge.can_push(device_id):
            await self._push(bridge, record, downlink)
        return downlink

    async def deliver(self, device_id: str) -> int:
        """Push every queued downlink of a device that just came online."""
        bridge = self.bridge_for(device_id)
        if bridge is None:
            return 0
        # Most devices have nothing queued (every birth asks): one query, not the bridge's
        # and the registry's look-ups of the row too. No await until the push: the same
        # downlinks and the same checks as in the other order.
        pending = self.registry.pending(device_id)
        if not pending or not bridge.can_push(device_id):
            return 0
        record = self.registry.get(device_id)
        sent = 0
        for downlink in pending:
            if not await self._push(bridge, record, downlink):
                break
            sent += 1
        return sent

    async def _push(self, bridge: Bridge, record: DeviceRecord, downlink: Downlink) -> bool:
        out = self._outbound(record, downlink)
        ok = await bridge.push(record.device_id, out.channel, out.frame)
        if ok:
            self.metrics.inc("safething_gateway_messages_out_total", transport=bridge.name)
        return ok

    def _outbound(self, record: DeviceRecord, downlink: Downlink) -> OutboundDownlink:
        data = frame(
            record.secret,
            record.device_id,
            downlink.channel,
            downlink.counter,
            downlink.body,
            version=record.protocol,
            uplink=False,
        )
        return OutboundDownlink(downlink.channel, downlink.counter, data)

    # --- metrics ---------------------------------------------------------------------

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("safething_gateway_messages_in_total", "Device messages accepted")
        m.describe("safething_gateway_messages_out_total", "Messages pushed to devices")
        m.describe("safething_gateway_rejected_total", "Device messages refused, by reason")
        m.gauge(
            "safething_gateway_connected_devices",
            "Devices connected now, by transport",
            lambda: {(("transport", b.name),): float(b.connected()) for b in self.bridges},
        )
        m.gauge(
            "safething_gateway_messages_dropped",
            "QoS 0 messages dropped so far rather than queued without bound: in, from "
            "devices the gateway could not keep up with; out, to a broker that did not "
            "read them (problem reports)",
            lambda: {
                (("direction", direction), ("transport", b.name)): float(count)
                for b in self.bridges
                for direction, count in b.dropped().items()
            },
        )
        m.gauge(
            "safething_gateway_queue_depth",
            "Messages waiting: downlinks for devices, uplinks buffered for the store",
            lambda: {
                (("queue", "downlink"),): float(self.registry.queue_depth()),
                (("queue", "uplink_buffer"),): float(self.registry.buffer_depth()),
            },
        )
        m.describe(
            "safething_gateway_things_closed_total",
            "Custodial things closed while quiet (more than max_things were running)",
        )
        m.describe(
            "safething_gateway_things_restored_total",
            "Custodial things brought up from the store: on demand, or at start",
        )
        m.gauge(
            "safething_gateway_things_running",
            "Custodial things running now",
            lambda: {(): float(len(self.things))},
        )
        m.gauge(
            "safething_gateway_devices",
            "Provisioned devices",
            lambda: {(): float(len(self.registry.devices()))},
        )


_INBOX_PREFIX = INBOX_PREFIX
"""Store-key prefix of every thing's inbox MD (what :meth:`Gateway._follow_inboxes` watches)."""


_PARSED: OrderedDict[str, tuple[ThingDescription, dict[str, Any]]] = OrderedDict()
"""The last descriptions parsed, by the canonical JSON of all but their id (a parse is
about 150 us), each with its ``to_dict()`` (about 20 us): the devices of one model send
one description but for their ids, a device that sends its birth again (a reboot) or
whose thing is restored sends its own."""
_PARSED_MAX = 64


def _key(doc: dict[str, Any]) -> str | None:
    """The canonical JSON of ``doc``; None for one that is not JSON (from CBOR)."""
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return None


def _parsed(doc: dict[str, Any]) -> ThingDescription:
    """``ThingDescription.from_dict(doc)``; see :func:`_parsed_document`."""
    return _parsed_document(doc)[0]


def _parsed_document(doc: dict[str, Any]) -> tuple[ThingDescription, dict[str, Any]]:
    """``ThingDescription.from_dict(doc)`` and its ``to_dict()``; when a description that
    differs at most in its id was parsed a moment ago, its parsed parts are taken and only
    the id (and a title that defaults to it) is checked: everything else in ``doc`` is
    what was checked then. Its document is then that one's with this id and title: the
    lists of its parts are shared with that one's, which nothing changes (the registry
    writes it as JSON)."""
    thing_id = doc.get("id") if isinstance(doc, dict) else None
    key = None
    if isinstance(thing_id, str):
        key = _key({k: v for k, v in doc.items() if k != "id"})
    model = None if key is None else _PARSED.get(key)
    if model is None:
        desc = ThingDescription.from_dict(doc)
        document = desc.to_dict()
        if key is not None:
            _PARSED[key] = (desc, document)
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
        return desc, {**document}
    parsed, document = model
    if parsed.id == thing_id:
        return parsed, {**document}
    desc = ThingDescription(
        str(thing_id),
        title=doc.get("title"),  # as from_dict: None (absent) is the id
        description=parsed.description,
        attributes=parsed.attributes,
        topics=parsed.topics,
        actions=parsed.actions,
    )
    return desc, {**document, "id": desc.id, "title": desc.title}  # (keys keep their places)


def _inbox_name(thing_id: str) -> str:
    """The hex name of a thing's inbox MD (:class:`~safething.things.layout.ThingAddresses`:
    ``XorName.of(thing_id + "/inbox")``, SHA3-256; hashed here directly, about half the
    cost, as start-up does it for every device)."""
    return hashlib.sha3_256((thing_id + "/inbox").encode()).hexdigest()


def _field(body: Any, name: str, kind: type) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PayloadError(f"field {name!r} must be a {kind.__name__}")
    if isinstance(value, int) and not 0 <= value <= MAX_COUNTER:
        raise PayloadError(f"field {name!r} must be a counter from 0 to 2^63-1, got {value}")
    return value


def _is_data(channel: str) -> bool:
    """A reading or event: data for the store (journaled until written)."""
    return channel == "reading" or channel.startswith("event/")


def _check_link_fields(channel: str, body: Any) -> None:
    """The body fields the link itself uses, checked before the counter is spent."""
    if channel == "state":
        if _field(body, "online", bool) and body.get("will") is not None:
            _field(body, "will", int)
    elif channel == "ack":
        _field(body, "down", int)
    elif channel == "reading":
        if not isinstance(body, dict) or not body:
            raise PayloadError("a reading is an object of attribute -> value")
    elif channel.startswith("result/") and (
        not isinstance(body, dict) or body.get("state") not in _RESULT_STATES
    ):
        raise PayloadError("a result is {'state': running|done|failed|rejected, ...}")
