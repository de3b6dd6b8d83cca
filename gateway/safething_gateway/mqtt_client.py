"""The one MQTT client of the gateway: MQTT 3.1.1 spoken by the asyncio event loop itself.

Every MQTT user in the gateway goes through :class:`MqttConnection` (the device bridge,
the adoption adapters, the Home Assistant publisher, the reference device), so the
lessons learnt once hold everywhere: ``TCP_NODELAY`` on the socket (without it each
QoS 1 exchange waits ~40 ms for Nagle and delayed ACKs), a cap on unacknowledged QoS 1
messages in flight (16-bit packet ids must never wrap), reconnects with back-off, and
subscriptions added or removed at run time, renewed on every connection.

**Own protocol code, no network thread.** The packets are written and read by
:mod:`safething_gateway.mqtt_codec` (only what the gateway uses: QoS 0 and 1, no TLS);
the socket is registered with the event loop (``add_reader``; ``add_writer`` only while
the kernel's send buffer is full), and the loop reads, writes and keeps the connection
alive (a timer once a second) on its own thread. The owner's callbacks therefore run on
the loop as each packet is read, and what a turn of the loop queues (PUBACKs, publishes)
is written at the start of the next, together (what callbacks queue, right after the
read): one ``send`` for all. paho-mqtt did this job until issue 14; its packet parsing,
callbacks and locks cost three times what this module does per message
(docs/benchmarks.md, "The MQTT connection without paho").

**Bad input from the broker.** A packet that breaks MQTT 3.1.1, one this client never
asked for (QoS 2) or one longer than ``max_packet`` is logged and the connection dropped
(then made again with back-off); nothing of it reaches the owner, and the bytes kept of
an incomplete packet never exceed ``max_packet``.

**Outgoing QoS 1 messages** stay with the connection until the broker acknowledges them:
at most ``max_inflight`` are sent and unacknowledged at a time (the rest wait, in order),
and after a reconnect those not acknowledged are sent again (``dup`` set on the ones sent
before), as paho did. A QoS 0 message published while disconnected fails at once.

**A broker that reads slowly or not at all.** What the kernel does not take waits in
the connection, at most ``max_queued`` bytes (1 MiB) for QoS 0 messages: a QoS 0
message over it is not queued (its future False, one warning until the queue empties
again, counted in :attr:`MqttConnection.dropped`); QoS 1 messages and control packets
always are (QoS 1 is bounded by the in-flight cap). The rest of a partial write is kept
as a view into what was joined, so a backlog is copied once, not at every step.

**One connection per broker login.** The shipped Mosquitto config binds a client id to
its login (``use_username_as_clientid``), so two connections with the gateway's login
would throw each other off. The adapters therefore share the device bridge's connection
when it talks to the same broker with the same login (:meth:`MqttConnection.route`):
the messages of their topic filters go to them, everything else to the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from safething.resource import cancel_and_wait, wait_ended
from safething_gateway import mqtt_codec as codec
from safething_gateway.mqtt_codec import MalformedPacketError, Message

__all__ = ["Message", "MessageLike", "MqttConnection", "Will", "topic_matches"]

log = logging.getLogger("safething.gateway.mqtt")

Will = tuple[str, bytes] | tuple[str, bytes, bool]
"""A last will: ``(topic, payload)`` or ``(topic, payload, retain)``; sent with QoS 1."""


class MessageLike(Protocol):
    """What the owner reads of a received message (:class:`Message`, or a test's stand-in)."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def mid(self) -> int: ...


MessageHandler = Callable[[Message], None]

MISC_INTERVAL_S = 1.0
"""How often the keep-alive is checked (PINGREQ when due, a lost PINGRESP noticed)."""

RECV_SIZE = 64 * 1024
"""Bytes read from the socket in one go (then the loop's other work runs)."""

MAX_PACKET = 1024 * 1024
"""The longest packet accepted from the broker by default (the shipped Mosquitto
forwards at most 64 KiB of payload)."""

MAX_UNACKNOWLEDGED = 60_000
"""QoS 1 messages kept for the broker at most (sent or waiting for a connection): each
holds one of the 65,535 packet ids."""

MAX_QUEUED = 1024 * 1024
"""Bytes waiting to be written (the kernel's send buffer full: a broker reading slowly or
not at all) above which a QoS 0 message is not queued (its future False); QoS 1 messages
(at most ``max_inflight`` written, the rest kept as messages) and control packets
(PUBACK, PINGREQ, DISCONNECT, subscriptions) are always queued."""

CONNECT_TIMEOUT_S = 5.0
"""How long one TCP connect may take (name look-up and handshake)."""

CLOSE_WRITE_S = 1.0
"""How long :meth:`MqttConnection.close` waits for the kernel to take the DISCONNECT."""


class _Link:
    """The TCP side of a connection: its socket, how long a connect may take, and the one
    place bytes are handed to the kernel."""

    def __init__(self) -> None:
        self.connect_timeout = CONNECT_TIMEOUT_S
        """Seconds one TCP connect may take."""
        self.sock: socket.socket | None = None

    def socket(self) -> socket.socket | None:
        """The connected socket, None between connections."""
        return self.sock

    def _sock_send(self, data: bytes | memoryview) -> int:
        sock = self.sock
        assert sock is not None
        return sock.send(data)


class _Out:
    """A QoS 1 message published and not acknowledged yet."""

    __slots__ = ("dup", "mid", "payload", "retain", "sent", "topic")

    def __init__(self, mid: int, topic: bytes, payload: bytes, retain: bool) -> None:
        self.mid = mid
        self.topic = topic
        self.payload = payload
        self.retain = retain
        self.dup = False
        self.sent = False


class MqttConnection:
    """An MQTT 3.1.1 client driven by the asyncio loop it is started on.

    The loop reads and writes the socket, runs the keep-alive and reconnects with
    back-off (``reconnect_delay``: the first wait after a lost connection or a failed
    attempt is its minimum, each further one twice the last, up to its maximum; a
    connection the broker accepted starts again from the minimum). The owner's
    callbacks (``on_connect(generation)``, ``on_disconnect()``, ``on_message(message,
    generation)``) run on the event loop, in the order the packets came. ``will`` runs on
    the loop before every connection attempt and returns the last-will ``(topic,
    payload)`` to register for it. ``manual_ack``: a QoS 1 message is acknowledged only
    when the owner calls :meth:`ack` (else right after ``on_message`` returns).
    Used by the bridge and by the reference device.
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
        reconnect_delay: tuple[float, float] = (1, 30),
        subscriptions: Sequence[tuple[str, int]] = (),
        on_connect: Callable[[int], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_message: Callable[[Message, int], None] | None = None,
        will: Callable[[], Will | None] | None = None,
        fail_on_disconnect: bool = False,
        label: str = "mqtt",
        max_packet: int = MAX_PACKET,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if max_inflight > 0xFFFF // 2:
            raise ValueError("max_inflight must stay well below 65535 packet ids")
        if not 0 < reconnect_delay[0] <= reconnect_delay[1]:
            raise ValueError("reconnect_delay must be (min, max) with 0 < min <= max")
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1 byte")
        if not 0 <= keepalive <= 0xFFFF:
            raise ValueError("keepalive must be 0 to 65535 seconds")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.username = username
        self._password = password
        self.clean_session = clean_session
        self.label = label
        self.subscriptions = list(subscriptions)
        self.fail_on_disconnect = fail_on_disconnect
        """Resolve unacknowledged publishes as False when the connection drops (they are
        still sent again after reconnecting)."""
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        """Bytes waiting to be written above which QoS 0 messages are dropped."""
        self.dropped = 0
        """QoS 0 messages not sent because :attr:`max_queued` bytes waited to be written."""
        self._shedding = False
        """QoS 0 messages are dropped since the queue last emptied (warned once)."""
        self._manual_ack = manual_ack
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_message = on_message
        self._will = will
        self._will_now: tuple[str, bytes, bool] | None = None
        self._routes: dict[str, MessageHandler] = {}
        """Topic filter -> who gets its messages (instead of ``on_message``)."""
        self._ready_listeners: list[Callable[[], None]] = []
        self._subacks: dict[int, tuple[asyncio.Future[None], list[str]]] = {}
        """SUBSCRIBE packet id -> (done when granted, its topic filters)."""
        self._unsubacks: set[int] = set()
        self.connected = False
        """CONNACK seen and no disconnect since."""
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.last_error = ""
        """Why the last connection attempt failed or the connection dropped."""
        self.refused: str | None = None
        """The broker's reason when it refused the last login (CONNACK), else None."""
        self.keepalive = keepalive
        self.client = _Link()
        """The TCP link: ``socket()``, ``connect_timeout``."""
        self._reader = codec.PacketReader(max_packet)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = asyncio.Event()
        self._answer = asyncio.Event()
        self._pubs: dict[int, asyncio.Future[bool]] = {}
        """Packet id -> the publisher's future (QoS 1)."""
        self._out: dict[int, _Out] = {}
        """QoS 1 messages not acknowledged, in the order they were published."""
        self._waiting: deque[_Out] = deque()
        """Those of them not sent yet (the in-flight window was full, or no connection)."""
        self._inflight = 0
        self._last_mid = 0
        self._generation = 0
        self._session = False
        """The broker accepted this socket's CONNECT (and it is still open)."""
        self._subscribe_mid: int | None = None
        self._failing = False
        self._started = False
        self._delays = reconnect_delay
        self._delay: float | None = None
        """The last wait before a reconnect; None after a connection the broker took."""
        self._runner: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[socket.socket] | None = None
        """The TCP connect under way (its own task: close() waits for it)."""
        self._sock: socket.socket | None = None
        """The socket while the loop watches it (reader on, keep-alive timer on)."""
        self._dropped = asyncio.Event()
        self._chunks: list[bytes] = []
        """Packets queued, written together at the next flush."""
        self._rest: memoryview | None = None
        """What the kernel did not take of the last write (written before ``_chunks``)."""
        self._queued = 0
        """Bytes of ``_rest`` and of the first ``_counted`` packets of ``_chunks`` (the
        rest are counted when :attr:`queued` is read: nothing per packet on the hot path)."""
        self._counted = 0
        self._written: list[asyncio.Future[bool]] = []
        """QoS 0 publishers waiting for their message to reach the kernel."""
        self._writing = False
        """A writer is registered: the kernel's send buffer was full."""
        self._flush_soon: asyncio.Handle | None = None
        """A write scheduled for the loop's next turn."""
        self._misc: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None
        """Set once the kernel took all that was queued (while close() waits for it)."""
        self._last_in = 0.0
        self._last_out = 0.0
        self._ping_at = 0.0

    @property
    def queued(self) -> int:
        """Bytes waiting to be written (the kernel's send buffer is full)."""
        chunks = self._chunks
        if self._counted < len(chunks):
            self._queued += sum(map(len, chunks[self._counted :]))
            self._counted = len(chunks)
        return self._queued

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    # --- lifecycle (event loop) ----------------------------------------------------------

    async def start(self) -> None:
        """Connect (and reconnect) in the background, on this event loop. Can be called
        again after :meth:`close`."""
        if self._started:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started = True
        self._delay = None
        self._runner = loop.create_task(self._run(), name=f"{self.label}: mqtt connection")

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
        """Disconnect cleanly (the broker drops the last will). When it returns no task,
        timer or socket of this connection is left and no callback comes any more; a
        connect under way (at most :attr:`_Link.connect_timeout`, 5 s) is waited for."""
        if not self._started:
            return
        self._started = False
        cancelled = await self._stop_connecting()
        if self._session:
            self._send(codec.DISCONNECT_PACKET)
            try:
                await self._write_out(CLOSE_WRITE_S)
            except asyncio.CancelledError:
                cancelled = True
        self._cut()
        self._fail_pending()
        if cancelled:  # the caller's cancellation, passed on now that nothing is left open
            raise asyncio.CancelledError

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a power cut would: the broker
        publishes the last will. For tests and demos."""
        if not self._started:
            return
        self._started = False
        cancelled = await self._stop_connecting()
        self._cut()
        self._fail_pending()
        if cancelled:
            raise asyncio.CancelledError

    async def _stop_connecting(self) -> bool:
        """Stop the connection's task and a TCP connect under way (let finish or time out,
        its socket closed); True if the caller was cancelled meanwhile (it raises that
        once the rest of its cleanup is done)."""
        runner, self._runner = self._runner, None
        cancelled = await cancel_and_wait(runner, log=log)
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            cancelled |= await wait_ended([connecting])
            if not connecting.cancelled() and connecting.exception() is None:
                _close_socket(connecting.result())
        return cancelled

    def _cut(self) -> None:
        """Close the socket, if still open, without a word to the broker."""
        self._drop(None)

    # --- publishing and acknowledging (event loop) ------------------------------------

    def publish(
        self, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> tuple[int, asyncio.Future[bool]]:
        """Send a message; the future becomes True when it is delivered to the broker
        (PUBACK for QoS 1, handed to the kernel for QoS 0), False if it cannot be (QoS 0
        without a connection; QoS 1 when the connection drops, with
        ``fail_on_disconnect``). ``ValueError`` for a topic with wildcards, an empty one
        or a QoS other than 0 and 1."""
        loop = self._loop
        assert loop is not None, "start() first"
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish to the topic {topic!r}")
        future: asyncio.Future[bool] = loop.create_future()
        topic_bytes = topic.encode()
        if qos == 1:
            if len(self._out) >= MAX_UNACKNOWLEDGED:
                log.warning(
                    "%s: %d messages wait for the broker already; not publishing to %s",
                    self.label,
                    len(self._out),
                    topic,
                )
                future.set_result(False)
                return 0, future
            mid = self._next_mid()
            out = _Out(mid, topic_bytes, bytes(payload), retain)
            self._out[mid] = out
            self._pubs[mid] = future
            if self._session and self._inflight < self.max_inflight:
                self._send_out(out)
            else:
                self._waiting.append(out)
            return mid, future
        if qos != 0:
            raise ValueError(f"QoS {qos}: this client publishes with QoS 0 or 1")
        if not self._session:
            future.set_result(False)
            return 0, future
        packet = codec.publish(topic_bytes, payload, 0, retain, False, 0)
        if self.queued + len(packet) > self.max_queued:
            self._shed(topic)
            future.set_result(False)
        else:
            self._send(packet)
            self._written.append(future)
        return 0, future

    def _shed(self, topic: str) -> None:
        """A QoS 0 message not queued: the broker does not take what waits already."""
        self.dropped += 1
        if not self._shedding:
            self._shedding = True
            log.warning(
                "%s: %d bytes wait for %s to read them; dropping QoS 0 messages (to %s "
                "first) until it does",
                self.label,
                self._queued,
                self.url,
                topic,
            )

    def ack(self, message: MessageLike, generation: int) -> None:
        """PUBACK a message received with ``manual_ack``, unless it came on an earlier
        connection (its id may name another message now; the broker sends it again)."""
        if message.qos == 0 or not self._manual_ack:
            return
        if generation == self._generation and self._session:
            self._send(codec.puback(message.mid))

    def _next_mid(self) -> int:
        mid = self._last_mid
        while True:
            mid = mid + 1 if mid < 0xFFFF else 1
            if mid not in self._out and mid not in self._subacks and mid not in self._unsubacks:
                self._last_mid = mid
                return mid

    def _send_out(self, out: _Out) -> None:
        self._inflight += 1
        self._send(codec.publish(out.topic, out.payload, 1, out.retain, out.dup, out.mid))
        out.sent = True

    def _send_waiting(self) -> None:
        waiting = self._waiting
        while waiting and self._inflight < self.max_inflight:
            out = waiting.popleft()
            if self._out.get(out.mid) is out:
                self._send_out(out)

    # --- the connection, kept up by the loop -------------------------------------------

    async def _run(self) -> None:
        """Connect, wait until the connection is gone, wait the back-off, again."""
        while True:
            self._dropped.clear()
            if await self._connect_once():
                await self._dropped.wait()
            low, high = self._delays
            self._delay = low if self._delay is None else min(self._delay * 2, high)
            await asyncio.sleep(self._delay)

    async def _connect_once(self) -> bool:
        """One attempt: the last will, the TCP connect (its own task, bounded by
        ``connect_timeout``), CONNECT written; True once the loop watches the new socket
        (CONNACK or not)."""
        self._prepare_will()
        assert self._loop is not None
        connecting = self._loop.create_task(
            self._open(), name=f"{self.label}: mqtt connect to {self.url}"
        )
        self._connecting = connecting
        try:
            sock = await asyncio.shield(connecting)
        except OSError as e:
            self._connecting = None
            self._unreachable(e)
            return False
        except Exception:
            self._connecting = None
            log.exception("%s: cannot connect to %s", self.label, self.url)
            self.last_error = "connection failed"
            return False
        # (cancelled: close() waits for the attempt and closes its socket)
        self._connecting = None
        return self._attach(sock)

    async def _open(self) -> socket.socket:
        """A TCP connection to the broker, non-blocking, with ``TCP_NODELAY``."""
        loop = asyncio.get_running_loop()
        timeout = self.client.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                addresses: list[tuple[int, Any]]
                try:
                    version = ipaddress.ip_address(self.host).version
                    family = socket.AF_INET6 if version == 6 else socket.AF_INET
                    addresses = [(family, (self.host, self.port))]
                except ValueError:  # a name: looked up on the loop's executor
                    infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                    addresses = [(info[0], info[4]) for info in infos]
                error: OSError | None = None
                for kind, address in addresses:
                    sock = socket.socket(kind, socket.SOCK_STREAM)
                    try:
                        sock.setblocking(False)
                        # Without TCP_NODELAY each QoS 1 exchange waits for Nagle + delayed
                        # ACK (~40 ms).
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(sock, address)
                    except OSError as e:
                        sock.close()
                        error = e
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return sock
                raise error or OSError(f"no address for {self.host}")
        except TimeoutError:
            raise TimeoutError("timed out") from None

    def _prepare_will(self) -> None:
        if self._will is None:
            self._will_now = None
            return
        try:
            will = self._will()
            if will is None:
                self._will_now = None
                return
            retain = bool(will[2]) if len(will) == 3 else False
            self._will_now = (will[0], bytes(will[1]), retain)
        except Exception:
            log.exception("%s: cannot prepare the last will", self.label)

    def _unreachable(self, error: OSError) -> None:
        self.last_error = f"connection refused or unreachable ({error})"
        if not self._failing:
            self._failing = True
            log.warning(
                "%s: cannot reach the MQTT broker at %s (is Mosquitto running?); "
                "retrying with back-off",
                self.label,
                self.url,
            )

    def _attach(self, sock: socket.socket) -> bool:
        loop = self._loop
        if loop is None:
            _close_socket(sock)
            return False
        try:
            packet = codec.connect(
                self.client_id,
                keepalive=self.keepalive,
                clean_session=self.clean_session,
                username=self.username,
                password=self._password,
                will=self._will_now,
            )
        except ValueError as e:
            _close_socket(sock)
            self.last_error = f"cannot send CONNECT: {e}"
            log.error("%s: %s", self.label, self.last_error)
            return False
        self._sock = self.client.sock = sock
        self._reader.clear()
        self._chunks.clear()
        self._rest = None
        self._queued = self._counted = 0
        self._shedding = False
        self._last_in = self._last_out = time.monotonic()
        self._ping_at = 0.0
        loop.add_reader(sock, self._readable)
        self._misc = loop.call_later(MISC_INTERVAL_S, self._keep_alive)
        self._send(packet)
        self._flush()
        return True

    def _drop(self, reason: str | None) -> None:
        """Close the socket, if open: ``reason`` why (None: closed by us, said nothing)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.client.sock = None
        loop = self._loop
        assert loop is not None
        loop.remove_reader(sock)
        if self._writing:
            self._writing = False
            loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        _close_socket(sock)
        if self._drained is not None:
            self._drained.set()
        self._session = False
        self._chunks.clear()
        self._rest = None
        self._queued = self._counted = 0
        self._shedding = False
        self._reader.clear()
        written, self._written = self._written, []
        for future in written:
            if not future.done():
                future.set_result(False)
        # unacknowledged QoS 1 messages are sent again after the next CONNACK
        self._inflight = 0
        self._waiting = deque(self._out.values())
        for granted, _ in self._subacks.values():
            if not granted.done():
                granted.set_result(None)  # not granted on this connection: renewed on the next
        self._subacks.clear()
        self._unsubacks.clear()
        self._dropped.set()
        if reason is not None and self._started and not self._failing:
            self.last_error = reason
            log.warning(
                "%s: lost the connection to %s (%s); reconnecting with back-off",
                self.label,
                self.url,
                reason,
            )
        self._loop_disconnected()

    def _readable(self) -> None:
        """Read what the socket holds (up to :data:`RECV_SIZE` bytes), handle every
        packet it completes, then write what the callbacks queued meanwhile (PUBACKs of
        routed messages, replies)."""
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._drop(f"connection lost: {e}")
            return
        if not data:
            self._drop("the broker closed the connection")
            return
        self._last_in = time.monotonic()
        try:
            for first, body in self._reader.feed(data):
                self._packet(first, body)
                if self._sock is not sock:
                    return  # closed meanwhile
        except MalformedPacketError as e:
            log.warning("%s: a malformed packet from %s: %s", self.label, self.url, e)
            self._drop(f"malformed packet: {e}")
            return
        except Exception:
            log.exception("%s: reading from %s failed; dropping it", self.label, self.url)
            self._drop("a failure reading the connection")
            return
        self._flush()

    def _packet(self, first: int, body: bytes) -> None:
        if first >> 4 == codec.PUBLISH and self._session:
            message = codec.decode_publish(first, body)
            try:  # an exception into the reader would drop the connection
                self._loop_message(message, self._generation)
            except Exception:
                log.exception("%s: handling a message failed", self.label)
            if message.qos and not self._manual_ack and self._session:
                self._send(codec.puback(message.mid))
            return
        kind = codec.check_flags(first)
        if kind == codec.PUBACK and self._session:
            self._acknowledged(codec.decode_mid("PUBACK", body))
        elif kind == codec.CONNACK and not self._session:
            self._connack(*codec.decode_connack(body))
        elif kind == codec.SUBACK and self._session:
            self._suback(*codec.decode_suback(body))
        elif kind == codec.UNSUBACK and self._session:
            self._unsubacks.discard(codec.decode_mid("UNSUBACK", body))
        elif kind == codec.PINGRESP and self._session:
            self._ping_at = 0.0
        else:
            raise MalformedPacketError(f"packet type {kind} out of turn")

    def _acknowledged(self, mid: int) -> None:
        out = self._out.get(mid)
        if out is None or not out.sent:
            log.debug("%s: a PUBACK for packet id %d, which is not in flight", self.label, mid)
            return
        del self._out[mid]
        self._inflight -= 1
        future = self._pubs.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(True)
        if self._waiting:
            self._send_waiting()

    def _connack(self, session_present: bool, code: int) -> None:
        if code:
            reason = codec.CONNACK_REFUSALS.get(code, f"refused with code {code}")
            self.last_error = reason
            if not self._failing:
                self._failing = True
                log.error("%s", _refusal(self.label, self.url, self.username, reason))
            self.refused = reason
            self._answer.set()
            return  # the broker closes the connection
        self._session = True
        self._generation += 1
        wanted = list(self.subscriptions)
        if wanted:
            self._subscribe_mid = self._next_mid()
            self._subacks[self._subscribe_mid] = (self._loop_future(), [t for t, _ in wanted])
            self._send(codec.subscribe(self._subscribe_mid, wanted))
        else:
            self._subscribe_mid = None
        if self._failing or self.connects:
            log.info("%s: connected to %s again", self.label, self.url)
        else:
            log.info("%s: connected to %s", self.label, self.url)
        self._failing = False
        self._delay = None
        try:
            self._loop_connected(self._generation)
        except Exception:
            log.exception("%s: the connection callback failed", self.label)
        # what was not acknowledged on the last connection, then what waited for this one
        for out in self._out.values():
            if out.sent:
                out.dup = True
                out.sent = False
        self._inflight = 0
        self._waiting = deque(self._out.values())
        self._send_waiting()

    def _suback(self, mid: int, codes: list[int]) -> None:
        asked = self._subacks.pop(mid, None)
        if asked is None:
            log.debug("%s: a SUBACK for packet id %d, which was not asked", self.label, mid)
            return
        granted, topics = asked
        if not granted.done():
            granted.set_result(None)
        try:
            if mid == self._subscribe_mid:
                self._loop_subscribed()
            for topic, code in zip(topics, codes, strict=False):
                if code == 0x80:
                    log.error(
                        "%s: the broker refused the subscription to %s: check the ACL of %r",
                        self.label,
                        topic,
                        self.username,
                    )
        except Exception:
            log.exception("%s: the subscription callback failed", self.label)

    def _loop_future(self) -> asyncio.Future[None]:
        assert self._loop is not None
        return self._loop.create_future()

    def _keep_alive(self) -> None:
        """Once a second: a PINGREQ when nothing went out or came in for ``keepalive``
        seconds; the connection dropped when the broker has said nothing for
        ``keepalive`` seconds since (or sent no CONNACK in that time)."""
        self._misc = None
        if self._sock is None or self._loop is None:
            return
        keepalive = self.keepalive
        now = time.monotonic()
        if keepalive and (now - self._last_out >= keepalive or now - self._last_in >= keepalive):
            if self._session and (not self._ping_at or now - self._last_in < keepalive):
                if not self._ping_at or now - self._ping_at >= keepalive:
                    self._send(codec.PINGREQ_PACKET)
                    self._ping_at = now
                    self._flush()
                self._last_in = self._last_out = now
            else:
                self._drop("keep-alive timeout: the broker did not answer")
                return
        self._misc = self._loop.call_later(MISC_INTERVAL_S, self._keep_alive)

    def _send(self, packet: bytes) -> None:
        """Queue a packet; written at the start of the loop's next turn with what else this
        turn queues (one ``send`` for all: written one by one they cost 8 to 15 % more
        CPU per message), or at the end of the read under way."""
        self._chunks.append(packet)
        if self._flush_soon is None and self._sock is not None:
            assert self._loop is not None
            self._flush_soon = self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_soon = None
        self._flush()

    def _flush(self) -> None:
        """Write what is queued, now; what the kernel cannot take yet is written when the
        socket is writable again (a writer registered until then)."""
        if self._writing or not self._chunks or self._sock is None:
            return
        self._write()

    def _writable(self) -> None:
        self._write()

    def _write(self) -> None:
        """Hand the kernel what is queued: the rest of a partial write first (a view into
        it, never copied again), then the packets queued since, joined once."""
        chunks = self._chunks
        while True:
            data: bytes | memoryview
            rest = self._rest
            if rest is None:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
            else:
                data = rest
            try:
                sent = self.client._sock_send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self._drop(f"connection lost: {e}")
                return
            self._last_out = time.monotonic()
            sock = self._sock
            assert sock is not None and self._loop is not None
            if sent < len(data):
                if rest is None:  # all that was queued, joined
                    self._queued = len(data) - sent
                    self._counted = 0
                else:
                    self._queued -= sent
                self._rest = memoryview(data)[sent:]
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(sock, self._writable)
                return
            if rest is None:  # everything written
                if self._counted:
                    self._queued = self._counted = 0
                break
            self._rest = None
            self._queued -= sent
            if not chunks:
                break
        if self._shedding:
            self._shedding = False
            log.info(
                "%s: %s reads again (%d QoS 0 messages dropped so far)",
                self.label,
                self.url,
                self.dropped,
            )
        if self._writing:
            self._writing = False
            self._loop.remove_writer(sock)
            if self._drained is not None:
                self._drained.set()
        if self._written:
            written, self._written = self._written, []
            for future in written:
                if not future.done():
                    future.set_result(True)

    async def _write_out(self, timeout: float) -> None:
        """Write what is queued (the DISCONNECT), for ``timeout`` seconds at most."""
        self._flush()
        if self._sock is None or not self._writing:
            return
        drained = self._drained = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await drained.wait()
        self._drained = None

    # --- what the owner sees ---------------------------------------------------------

    def _loop_connected(self, generation: int) -> None:
        if not self._started:
            return
        self.connected = True
        self.connects += 1
        self.refused = None
        if not self.subscriptions:
            self._up.set()  # else once the broker has granted them (_loop_subscribed)
        self._answer.set()
        if not self.subscriptions:
            self._tell_ready()
        if self._on_connect is not None:
            self._on_connect(generation)

    def _loop_subscribed(self) -> None:
        if self._started and self.connected:
            self._up.set()
            self._answer.set()
            self._tell_ready()

    def _tell_ready(self) -> None:
        for listener in list(self._ready_listeners):
            try:
                listener()
            except Exception:
                log.exception("%s: a connection listener failed", self.label)

    def _loop_message(self, message: Message, generation: int) -> None:
        handler = self._route_of(message) if self._routes else None
        if handler is not None:
            try:
                handler(message)
            finally:
                self.ack(message, generation)  # routed messages are taken at once
            return
        if self._on_message is not None:
            self._on_message(message, generation)
        elif self._manual_ack:
            self.ack(message, generation)

    def _route_of(self, message: Message) -> MessageHandler | None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return None
        for pattern, handler in self._routes.items():
            if topic_matches(pattern, topic):
                return handler
        return None

    # --- run-time subscriptions and routes (event loop) ------------------------------

    def route(
        self, topics: Sequence[str], handler: MessageHandler, *, qos: int = 1
    ) -> asyncio.Future[None] | None:
        """Subscribe to ``topics`` now (if connected) and on every connection, and hand
        their messages to ``handler`` on the event loop instead of ``on_message``.
        Returns, when subscribed now, a future done once the broker granted it."""
        new = [t for t in topics if t not in self._routes]
        for topic in topics:
            self._routes[topic] = handler
        known = {t for t, _ in self.subscriptions}
        self.subscriptions += [(t, qos) for t in new if t not in known]
        if new and self.connected and self._session:
            mid = self._next_mid()
            granted = self._loop_future()
            self._subacks[mid] = (granted, new)
            self._send(codec.subscribe(mid, [(t, qos) for t in new]))
            return granted
        return None

    def unroute(self, topics: Sequence[str]) -> None:
        """Unsubscribe from ``topics`` (given to :meth:`route`)."""
        gone = [t for t in topics if self._routes.pop(t, None) is not None]
        self.subscriptions = [(t, q) for t, q in self.subscriptions if t not in gone]
        if gone and self.connected and self._session:
            mid = self._next_mid()
            self._unsubacks.add(mid)
            self._send(codec.unsubscribe(mid, gone))

    def on_ready(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on the event loop after each connection, once the broker
        has granted the subscriptions; returns a function that removes it."""
        self._ready_listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._ready_listeners.remove(listener)

        return remove

    def set_will(self, will: Callable[[], Will | None] | None, *, now: bool = False) -> None:
        """Change the last will; it is registered at the next connection, or at once
        with ``now`` (the connection is dropped and made again: a persistent session
        keeps what the broker holds)."""
        self._will = will
        if now and self._started and self.connected and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # the loop reads the end: reconnect

    def _loop_disconnected(self) -> None:
        was = self.connected
        self._set_down()
        if self.fail_on_disconnect:
            self._fail_pending()
        if was and self._on_disconnect is not None:
            try:
                self._on_disconnect()
            except Exception:
                log.exception("%s: the disconnection callback failed", self.label)

    def _set_down(self) -> None:
        self.connected = False
        self._up.clear()

    def _fail_pending(self) -> None:
        pubs, self._pubs = self._pubs, {}
        for future in pubs.values():
            if not future.done():
                future.set_result(False)


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches the subscription filter ``pattern`` (``+`` one level,
    ``#`` the rest; topics starting with ``$`` only match filters that name them)."""
    if topic.startswith("$") and not pattern.startswith("$"):
        return False
    if "+" not in pattern and "#" not in pattern:
        return pattern == topic
    wanted = pattern.split("/")
    levels = topic.split("/")
    for i, level in enumerate(wanted):
        if level == "#":
            return True
        if i >= len(levels) or (level != "+" and level != levels[i]):
            return False
    return len(levels) == len(wanted)


def _close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # the broker sees the drop at once
    sock.close()


def _refusal(label: str, url: str, username: str | None, text: str) -> str:
    if text in ("Not authorized", "Bad user name or password"):
        who = f"the login {username!r}" if username else "an anonymous login"
        return (
            f"{label}: the broker at {url} refused {who} ({text}): check the password "
            "file and the ACL, then reload Mosquitto; retrying with back-off"
        )
    return f"{label}: the broker at {url} refused the connection ({text}); retrying with back-off"
