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
``max_inflight`` wait for one at a time (paho's 16-bit message ids must never
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

Threads: paho runs its own network thread (keep-alive, reconnects with
back-off); every callback is handed to the event loop in the order paho saw
it, and the bridge does all its work there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from safething_gateway.core import Bridge, Gateway
from safething_gateway.protocol import ProtocolError, ReplayError, parse_frame
from safething_gateway.registry import RegistryBusyError
from safething_gateway.replies import reply_for

__all__ = ["MqttBridge", "MqttConnection", "Topics"]

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


# --- one paho client, reporting to the event loop ---------------------------------------


class MqttConnection:
    """A paho-mqtt client on its own network thread, reporting to an asyncio loop.

    paho's thread does sockets, keep-alive and reconnects with back-off; the
    owner's callbacks (``on_connect(generation)``, ``on_disconnect()``,
    ``on_message(message, generation)``) run on the event loop, in paho's order.
    ``will`` runs on paho's thread before every connection attempt and returns the
    last-will ``(topic, payload)`` to register for it. Used by the bridge and by
    the reference device.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
        manual_ack: bool = False,
        max_inflight: int = 20,
        keepalive: int = 30,
        reconnect_delay: tuple[int, int] = (1, 30),
        subscriptions: Sequence[tuple[str, int]] = (),
        on_connect: Callable[[int], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_message: Callable[[mqtt.MQTTMessage, int], None] | None = None,
        will: Callable[[], tuple[str, bytes]] | None = None,
        fail_on_disconnect: bool = False,
        label: str = "mqtt",
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.host = host
        self.port = port
        self.username = username
        self.label = label
        self.subscriptions = list(subscriptions)
        self.fail_on_disconnect = fail_on_disconnect
        """Resolve unacknowledged publishes as False when the connection drops (paho
        still sends them again after reconnecting)."""
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_message = on_message
        self._will = will
        self.connected = False
        """The event loop's view: CONNACK seen and no disconnect since."""
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.last_error = ""
        """Why the last connection attempt failed or the connection dropped."""
        self.refused: str | None = None
        """The broker's reason when it refused the last login (CONNACK), else None."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = asyncio.Event()
        self._answer = asyncio.Event()
        self._pubs: dict[int, asyncio.Future[bool]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._subscribe_mid: int | None = None
        self._failing = False
        self._started = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=clean_session,
            manual_ack=manual_ack,
        )
        if username is not None:
            client.username_pw_set(username, password)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(*reconnect_delay)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_connect_fail = self._paho_connect_fail
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        client.on_socket_open = self._paho_socket_open
        client.on_pre_connect = self._paho_pre_connect
        self.client = client
        self.keepalive = keepalive

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    # --- lifecycle (event loop) ----------------------------------------------------------

    async def start(self) -> None:
        """Start paho's network thread; it connects (and reconnects) in the background.
        Can be called again after :meth:`close`."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._started = True
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()

    async def wait_connected(
        self, timeout: float | None = None, *, until_refused: bool = False
    ) -> bool:
        """True once connected and the broker has granted the subscriptions (so nothing
        published from now on is missed); False if ``timeout`` seconds pass first or, with
        ``until_refused``, as soon as the broker refuses the login (see :attr:`refused`)."""
        try:
            async with asyncio.timeout(timeout):
                while not self._up.is_set():
                    if until_refused and self.refused is not None:
                        return False
                    self._answer.clear()
                    await self._answer.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Disconnect cleanly (the broker drops the last will) and stop the thread."""
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
        self._set_down()
        self._fail_pending()

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a power cut would: the broker
        publishes the last will. For tests and demos."""
        if not self._started:
            return
        self._started = False

        def cut() -> None:
            sock = self.client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.client.loop_stop()

        await asyncio.to_thread(cut)
        self._set_down()
        self._fail_pending()

    # --- publishing and acknowledging (event loop) ------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int) -> tuple[int, asyncio.Future[bool]]:
        """Hand a message to paho; the future becomes True when it is delivered to the
        broker (PUBACK for QoS 1, written to the socket for QoS 0)."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[bool] = self._loop.create_future()
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning(
                "%s: cannot publish to %s: %s", self.label, topic, mqtt.error_string(info.rc)
            )
            future.set_result(False)
        elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            future.set_result(False)  # paho keeps only QoS > 0 messages for later
        else:
            self._pubs[info.mid] = future
        return info.mid, future

    def ack(self, message: mqtt.MQTTMessage, generation: int) -> None:
        """PUBACK a message received with ``manual_ack``, unless it came on an earlier
        connection (its id may name another message now; the broker sends it again)."""
        if message.qos == 0:
            return
        with self._lock:
            if generation == self._generation and self.client.is_connected():
                self.client.ack(message.mid, message.qos)

    # --- paho's thread -> event loop ------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(fn, *args)

    def _paho_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if self._will is None:
            return
        try:
            topic, payload = self._will()
            client.will_set(topic, payload, qos=1)
        except Exception:
            log.exception("%s: cannot prepare the last will", self.label)

    def _paho_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Without TCP_NODELAY each QoS 1 exchange waits for Nagle + delayed ACK (~40 ms).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _paho_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            self.last_error = str(reason)
            if not self._failing:
                self._failing = True
                log.error("%s", _refusal(self.label, self.url, self.username, reason))
            self._post(self._loop_refused, str(reason))
            return
        with self._lock:
            self._generation += 1
            generation = self._generation
        if self.subscriptions:
            _, self._subscribe_mid = client.subscribe(self.subscriptions)
        else:
            self._subscribe_mid = None
        if self._failing or self.connects:
            log.info("%s: connected to %s again", self.label, self.url)
        else:
            log.info("%s: connected to %s", self.label, self.url)
        self._failing = False
        self._post(self._loop_connected, generation)

    def _paho_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if self._started and not self._failing:
            self.last_error = str(reason)
            log.warning(
                "%s: lost the connection to %s (%s); reconnecting with back-off",
                self.label,
                self.url,
                reason,
            )
        self._post(self._loop_disconnected)

    def _paho_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.last_error = "connection refused or unreachable"
        if not self._failing:
            self._failing = True
            log.warning(
                "%s: cannot reach the MQTT broker at %s (is Mosquitto running?); "
                "retrying with back-off",
                self.label,
                self.url,
            )

    def _paho_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        if mid == self._subscribe_mid:
            self._post(self._loop_subscribed)
        for (topic, _), reason in zip(self.subscriptions, reasons, strict=False):
            if reason.is_failure:
                log.error(
                    "%s: the broker refused the subscription to %s (%s): check the ACL of %r",
                    self.label,
                    topic,
                    reason,
                    self.username,
                )

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        generation = self._generation  # paho's thread is the only writer
        if self._on_message is not None:
            self._post(self._on_message, message, generation)

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        self._post(self._loop_published, mid, not reason.is_failure)

    # --- event loop side ---------------------------------------------------------------

    def _loop_connected(self, generation: int) -> None:
        if not self._started:
            return
        self.connected = True
        self.connects += 1
        self.refused = None
        if not self.subscriptions:
            self._up.set()  # else once the broker has granted them (_loop_subscribed)
        self._answer.set()
        if self._on_connect is not None:
            self._on_connect(generation)

    def _loop_subscribed(self) -> None:
        if self._started and self.connected:
            self._up.set()
            self._answer.set()

    def _loop_refused(self, reason: str) -> None:
        self.refused = reason
        self._answer.set()

    def _loop_disconnected(self) -> None:
        was = self.connected
        self._set_down()
        if self.fail_on_disconnect:
            self._fail_pending()
        if was and self._on_disconnect is not None:
            self._on_disconnect()

    def _loop_published(self, mid: int, ok: bool) -> None:
        future = self._pubs.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(ok)

    def _set_down(self) -> None:
        self.connected = False
        self._up.clear()

    def _fail_pending(self) -> None:
        pubs, self._pubs = self._pubs, {}
        for future in pubs.values():
            if not future.done():
                future.set_result(False)


def _refusal(label: str, url: str, username: str | None, reason: ReasonCode) -> str:
    text = str(reason)
    if text in ("Not authorized", "Bad user name or password"):
        who = f"the login {username!r}" if username else "an anonymous login"
        return (
            f"{label}: the broker at {url} refused {who} ({text}): check the password "
            "file and the ACL, then reload Mosquitto; retrying with back-off"
        )
    return f"{label}: the broker at {url} refused the connection ({text}); retrying with back-off"


# --- the bridge -----------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Received:
    """A message from the broker: waiting for its device's turn, then for its PUBACK."""

    message: mqtt.MQTTMessage
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
        return sum(
            1
            for r in self._gateway.registry.devices()
            if r.transport == self.name and r.online and not r.revoked
        )

    def endpoints(self) -> list[str]:
        return [self.connection.url]

    # --- receiving ---------------------------------------------------------------------

    # Each device's messages wait in its own lane (a deque) and are handled one at a
    # time, in arrival order; a pool of ``concurrency`` workers takes turns over the
    # devices that have something waiting (``_ready``: each such device once, unless a
    # worker has it). Different devices' messages are handled concurrently, so their
    # store commits can be merged. A lane goes as soon as it is empty.

    def _connected(self, generation: int) -> None:
        """After (re)connecting: push what waits for every device believed online, each
        in its lane, before the messages of the new connection."""
        if self._closing or self._gateway is None:
            return
        if self._down_since is not None:
            # what devices published meanwhile comes at once: not a flood (Gateway.outage)
            self._gateway.outage(time.monotonic() - self._down_since)
            self._down_since = None
        try:
            records = self._gateway.registry.devices()
        except Exception:
            log.exception("mqtt bridge: cannot list the devices to deliver to")
            return
        for record in records:
            if record.transport == self.name and record.online and not record.revoked:
                self._enqueue(record.device_id, _DELIVER)

    def _disconnected(self) -> None:
        self._down_since = time.monotonic()

    def _received(self, message: mqtt.MQTTMessage, generation: int) -> None:
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
