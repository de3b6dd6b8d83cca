"""The MQTT bridge: devices publish to a broker (Mosquitto), the gateway subscribes.

Topic layout (``<prefix>`` is ``st/v1`` unless configured; the version lets a
later layout run beside this one)::

    <prefix>/<device>/up/<channel>     device -> gateway: birth, reading, state, ack,
                                       event/<topic>, result/<request-id>
    <prefix>/<device>/down/<channel>   gateway -> device: action/<request-id>, desired
    <prefix>/<device>/err              gateway -> device: why a message was refused

**Payloads.** Up and down: one framed message ``ST2 <counter> <tag>\\n<ciphertext>``
with a JSON body (:mod:`safething_gateway.protocol`); the MAC covers the
channel named by the topic, so a message moved to another topic or another
device's topic fails its MAC. ``err`` carries RFC 9457 problem details (JSON)
plus ``channel`` and, when the frame parsed, ``counter`` of the refused
message; it is sent with QoS 0.

**Quality of service.** The gateway subscribes with QoS 1 and a persistent
session (``clean_session`` false), so the broker keeps what devices publish
while the gateway is away; it acknowledges each message (PUBACK) only after
:meth:`Gateway.handle` is done with it and with every message that arrived
before it (PUBACKs go out in arrival order, MQTT 3.1.1 §4.6). Downlinks are
published with QoS 1 and count as delivered to the broker when the PUBACK
arrives; at most
``max_inflight`` wait for one at a time (16-bit packet ids must never
wrap under load). The device acknowledges downlinks end to end with its
``ack`` channel; the registry keeps them until then and the bridge pushes
them again whenever the device announces itself online.

**Order and concurrency.** Each device's messages are handled one at a time,
in the order they arrived (their counters must rise). Different devices'
messages are handled concurrently, at most ``concurrency`` at once, so that
one device's store commit does not hold up the others and the store's writer
can merge their commits.

**Presence.** A device sets its last will to a framed ``state``
``{"online": false}`` with a counter it reserves, then publishes ``state``
``{"online": true, "will": <that counter>}``; the gateway accepts that one
counter once, whenever the broker delivers the will.

Threads: none of its own. The connection (:mod:`safething_gateway.mqtt_client`)
speaks MQTT from the event loop (reads, writes, keep-alive, reconnects with
back-off), so its callbacks and the bridge's work, PUBACKs included, all run
there, in the order the packets were read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from safething_gateway.core import Bridge, Gateway
from safething_gateway.mqtt_client import Message, MqttConnection
from safething_gateway.protocol import ProtocolError, ReplayError, parse_frame
from safething_gateway.registry import RegistryBusyError
from safething_gateway.replies import reply_for

__all__ = ["MqttBridge", "MqttConnection", "Topics"]  # MqttConnection: from mqtt_client

log = logging.getLogger("safething.gateway.mqtt")

_QUEUE_LIMIT = 10_000
"""Messages received and not yet handled; QoS 1 is bounded by the broker's in-flight
window, this bounds what QoS 0 publishers can pile up."""


@dataclass(frozen=True, slots=True)
class Topics:
    """The MQTT topic layout of the device link."""

    prefix: str = "st/v1"
    """Versioned prefix of every topic, without a trailing ``/``."""

    def __post_init__(self) -> None:
        parts = self.prefix.split("/")
        if not self.prefix or any(not p or p in ("+", "#") or "+" in p or "#" in p for p in parts):
            raise ValueError(
                f"bad MQTT topic prefix {self.prefix!r}: non-empty levels without wildcards, "
                "no leading or trailing '/'"
            )

    def up(self, device_id: str, channel: str) -> str:
        return f"{self.prefix}/{device_id}/up/{channel}"

    def down(self, device_id: str, channel: str) -> str:
        return f"{self.prefix}/{device_id}/down/{channel}"

    def err(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/err"

    @property
    def all_up(self) -> str:
        """What the gateway subscribes to: every device's uplinks."""
        return f"{self.prefix}/+/up/#"

    def parse(self, topic: str) -> tuple[str, str, str] | None:
        """``(device_id, "up" | "down" | "err", channel)`` of a topic in this layout, else None."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        device_id, _, rest = topic[len(head) :].partition("/")
        if not device_id:
            return None
        if rest == "err":
            return device_id, "err", ""
        direction, sep, channel = rest.partition("/")
        if direction not in ("up", "down") or not sep or not channel:
            return None
        return device_id, direction, channel


# --- the bridge -----------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Received:
    """A message from the broker: waiting for its device's turn, then for its PUBACK."""

    message: Message
    generation: int
    """The connection it came on (:meth:`MqttConnection.ack`)."""
    route: tuple[str, str, str] | None
    """:meth:`Topics.parse` of its topic."""
    handled: bool = False


class _Deliver:
    """Lane marker: push what waits for this device (the bridge has (re)connected)."""


_DELIVER = _Deliver()


class _Acks:
    """PUBACKs in the order the messages arrived, as MQTT 3.1.1 §4.6 asks, each sent only
    once its message and every earlier one of the same connection are handled."""

    def __init__(self, connection: MqttConnection) -> None:
        self._connection = connection
        self._order: deque[_Received] = deque()
        self._generation = 0

    def expect(self, item: _Received) -> None:
        """Called in arrival order for every message."""
        if item.message.qos == 0:
            return
        if item.generation != self._generation:
            # A new connection: the broker sends again what the old one left unacknowledged,
            # and an ack on the new one cannot name a message of the old (see ack()).
            self._order.clear()
            self._generation = item.generation
        self._order.append(item)

    def handled(self, item: _Received) -> None:
        item.handled = True
        order = self._order
        while order and order[0].handled:
            head = order.popleft()
            self._connection.ack(head.message, head.generation)


class MqttBridge(Bridge):
    """Devices on an MQTT broker <-> the gateway (see the module docstring)."""

    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        prefix: str = "st/v1",
        client_id: str = "safething-gateway",
        max_inflight: int = 100,
        keepalive: int = 30,
        push_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        concurrency: int = 32,
        close_timeout: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.host = host
        self.port = port
        self.topics = Topics(prefix)
        self.push_timeout = push_timeout
        """Seconds to wait for the broker's PUBACK of a downlink."""
        self.connect_timeout = connect_timeout
        """Seconds :meth:`start` waits for the first connection (it keeps trying after)."""
        self.concurrency = concurrency
        """Messages handled at the same time at most (each of a different device)."""
        self.close_timeout = close_timeout
        """Seconds :meth:`close` lets messages being handled finish (and be acknowledged)."""
        self.errors_sent = 0
        """Problem reports published to devices' ``err`` topics."""
        self._gateway: Gateway | None = None
        self._lanes: dict[str, deque[_Received | _Deliver]] = {}
        self._ready: asyncio.Queue[str | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._backlog = 0
        self._closing = False
        self._slots = asyncio.Semaphore(max_inflight)
        self._dropped = 0
        self._down_since: float | None = None
        self.connection = MqttConnection(
            host,
            port,
            client_id=client_id,
            username=username,
            password=password,
            clean_session=False,
            manual_ack=True,
            max_inflight=max_inflight,
            keepalive=keepalive,
            subscriptions=[(self.topics.all_up, 1)],
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            on_message=self._received,
            fail_on_disconnect=True,
            label="mqtt bridge",
        )
        self._acks = _Acks(self.connection)

    # --- Bridge --------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        if self._gateway is not None:
            return
        self._gateway = gateway
        self._closing = False
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(), name=f"mqtt-bridge:worker-{i}")
            for i in range(self.concurrency)
        ]
        await self.connection.start()
        if not await self.connection.wait_connected(self.connect_timeout):
            log.warning(
                "mqtt bridge: no broker at %s after %g s (%s); devices wait until it answers",
                self.connection.url,
                self.connect_timeout,
                self.connection.last_error or "no answer",
            )

    async def close(self) -> None:
        """Take no new message; let those being handled finish and be acknowledged (for
        at most :attr:`close_timeout` seconds), then disconnect. What is left is not
        acknowledged: the broker keeps it for the gateway's next session."""
        self._closing = True
        workers, self._workers = self._workers, []
        try:
            for _ in workers:
                self._ready.put_nowait(None)  # wakes the idle ones: they return
            if workers:
                await asyncio.wait(workers, timeout=self.close_timeout)
        finally:
            for task in workers:
                task.cancel()
            for outcome in await asyncio.gather(*workers, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("mqtt bridge: a worker failed", exc_info=outcome)
            await self.connection.close()
            self._lanes.clear()
            self._ready = asyncio.Queue()
            self._acks = _Acks(self.connection)
            self._backlog = 0

    def can_push(self, device_id: str) -> bool:
        if not self.connection.connected or self._gateway is None:
            return False
        record = self._gateway.registry.find(device_id)
        return (
            record is not None
            and record.transport == self.name
            and record.online
            and not record.revoked
        )

    async def push(self, device_id: str, channel: str, message: bytes) -> bool:
        topic = self.topics.down(device_id, channel)
        async with self._slots:
            if not self.connection.connected:
                return False
            _, delivered = self.connection.publish(topic, message, qos=1)
            try:
                async with asyncio.timeout(self.push_timeout):
                    return await asyncio.shield(delivered)
            except TimeoutError:
                log.warning(
                    "mqtt bridge: no PUBACK for %s within %g s; it stays queued for the device",
                    topic,
                    self.push_timeout,
                )
                return False

    def connected(self) -> int:
        if self._gateway is None:
            return 0
        return self._gateway.registry.online(self.name)

    def dropped(self) -> dict[str, int]:
        return {"in": self._dropped, "out": self.connection.dropped}

    def endpoints(self) -> list[str]:
        return [self.connection.url]

    # --- receiving ---------------------------------------------------------------------

    # Each device's messages wait in its own lane (a deque) and are handled one at a
    # time, in arrival order; a pool of ``concurrency`` workers takes turns over the
    # devices that have something waiting (``_ready``: each such device once, unless a
    # worker has it). Different devices' messages are handled concurrently, so their
    # store commits can be merged. A lane goes as soon as it is empty.

    def _connected(self, generation: int) -> None:
        """After (re)connecting: push what waits for every device believed online (those
        with a downlink queued), each in its lane, before the messages of the new
        connection."""
        if self._closing or self._gateway is None:
            return
        if self._down_since is not None:
            # what devices published meanwhile comes at once: not a flood (Gateway.outage)
            self._gateway.outage(time.monotonic() - self._down_since)
            self._down_since = None
        try:
            waiting = self._gateway.registry.waiting(self.name)
        except Exception:
            log.exception("mqtt bridge: cannot list the devices to deliver to")
            return
        for device_id in waiting:
            self._enqueue(device_id, _DELIVER)

    def _disconnected(self) -> None:
        self._down_since = time.monotonic()

    def _received(self, message: Message, generation: int) -> None:
        if self._closing:
            return  # not acknowledged: the broker keeps it for the next session
        if message.qos == 0 and self._backlog >= _QUEUE_LIMIT:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "mqtt bridge: %d QoS 0 messages dropped, the gateway cannot keep up",
                    self._dropped,
                )
            return
        route = self.topics.parse(message.topic)
        item = _Received(message, generation, route)
        self._acks.expect(item)
        self._backlog += 1
        self._enqueue(route[0] if route is not None else "", item)

    def _enqueue(self, key: str, item: _Received | _Deliver) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            self._lanes[key] = deque((item,))
            self._ready.put_nowait(key)
        else:
            lane.append(item)  # its device is in _ready or with a worker: it comes round

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            if key is None or self._closing:
                return
            lane = self._lanes[key]
            item = lane.popleft()
            try:
                await self._process(key, item)
            finally:
                if lane:
                    self._ready.put_nowait(key)  # behind the devices already waiting
                else:
                    del self._lanes[key]

    async def _process(self, key: str, item: _Received | _Deliver) -> None:
        assert self._gateway is not None
        if isinstance(item, _Deliver):
            try:
                await self._gateway.deliver(key)
            except Exception:
                log.exception("mqtt bridge: delivering to %s failed", key)
            return
        try:
            delay = 0.05
            while True:
                try:
                    await self._handle(item)
                except RegistryBusyError as e:
                    # The broker has acknowledged this message to its device: it must not be
                    # lost. Keep it (unacknowledged, its device's later ones behind it) and
                    # try again until the registry answers or the gateway stops.
                    log.warning(
                        "mqtt bridge: %s waits, the registry is busy: %s", item.message.topic, e
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                except Exception:
                    log.exception("mqtt bridge: unexpected error on %s", item.message.topic)
                break
            self._acks.handled(item)  # not when cancelled: then the broker sends it again
        finally:
            self._backlog -= 1

    async def _handle(self, item: _Received) -> None:
        assert self._gateway is not None
        message, parsed = item.message, item.route
        if parsed is None or parsed[1] != "up":
            log.debug("mqtt bridge: ignoring %s (not an uplink topic)", message.topic)
            return
        device_id, _, channel = parsed
        if message.retain:
            log.info("mqtt bridge: ignoring a retained message on %s", message.topic)
            return
        data = bytes(message.payload)
        try:
            await self._gateway.handle(
                device_id, channel, data, content_format="json", transport=self.name
            )
        except RegistryBusyError:
            raise
        except Exception as e:  # a refusal, a store outage or a bug: one mapping
            if message.dup and isinstance(e, ReplayError):
                return  # the broker sent again what was handled before a reconnect
            reply = reply_for(e, where=f"mqtt {device_id}/{channel}", rate=self._gateway.rate)
            self._report(device_id, channel, data, reply.problem())
            return
        if channel == "poll":  # answered by pushing, each downlink on its own topic
            await self._gateway.deliver(device_id)

    def _report(self, device_id: str, channel: str, data: bytes, problem: dict[str, Any]) -> None:
        """Tell the device why its message was refused (QoS 0: a hint, not a record)."""
        problem["channel"] = channel
        with contextlib.suppress(ProtocolError):
            problem["counter"] = parse_frame(data).counter
        body = json.dumps(problem, separators=(",", ":")).encode()
        self.connection.publish(self.topics.err(device_id), body, qos=0)
        self.errors_sent += 1
