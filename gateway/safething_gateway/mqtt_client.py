"""The one MQTT client of the gateway: a paho-mqtt client driven by the asyncio event loop.

Every MQTT user in the gateway goes through :class:`MqttConnection` (the device bridge,
the adoption adapters, the Home Assistant publisher, the reference device), so the
lessons learnt once hold everywhere: ``TCP_NODELAY`` on the socket (without it each
QoS 1 exchange waits ~40 ms for Nagle and delayed ACKs), a cap on unacknowledged QoS 1
messages in flight (paho's 16-bit message ids must never wrap), nothing queued by paho
while disconnected (``max_queued_messages_set(0)``: a publish either goes out or fails
at once), reconnects with back-off, and subscriptions added or removed at run time,
renewed on every connection.

**No network thread.** paho's socket is registered with the event loop
(``add_reader``; ``add_writer`` only while the kernel's send buffer is full), and paho
reads, writes and keeps the connection alive (``loop_misc`` once a second) on the
loop's thread. Its callbacks therefore run on the loop as paho reads each packet, and
what a turn of the loop queues (PUBACKs, publishes) is written at the start of the
next, together (what callbacks queue, right after paho's read): nothing wakes another
thread or waits for the GIL. Only the TCP connect (name look-up, SYN) runs in a worker
thread, so that a broker that does not answer cannot freeze the gateway.

**One connection per broker login.** The shipped Mosquitto config binds a client id to
its login (``use_username_as_clientid``), so two connections with the gateway's login
would throw each other off. The adapters therefore share the device bridge's connection
when it talks to the same broker with the same login (:meth:`MqttConnection.route`):
the messages of their topic filters go to them, everything else to the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["MqttConnection", "Will"]

log = logging.getLogger("safething.gateway.mqtt")

Will = tuple[str, bytes] | tuple[str, bytes, bool]
"""A last will: ``(topic, payload)`` or ``(topic, payload, retain)``; sent with QoS 1."""

MessageHandler = Callable[[mqtt.MQTTMessage], None]

MISC_INTERVAL_S = 1.0
"""How often paho's ``loop_misc`` runs (PINGREQ when due, a lost PINGRESP noticed)."""

READ_BATCH = 64
"""Packets read in one go when the socket holds more (then the loop's other work runs)."""

CLOSE_WRITE_S = 1.0
"""How long :meth:`MqttConnection.close` waits for the kernel to take the DISCONNECT."""


class MqttConnection:
    """A paho-mqtt client driven by the asyncio loop it is started on.

    The loop reads and writes paho's socket, runs its keep-alive and reconnects with
    back-off (``reconnect_delay``: the first wait after a lost connection or a failed
    attempt is its minimum, each further one twice the last, up to its maximum; a
    connection the broker accepted starts again from the minimum). The owner's
    callbacks (``on_connect(generation)``, ``on_disconnect()``, ``on_message(message,
    generation)``) run on the event loop, in paho's order. ``will`` runs on the loop
    before every connection attempt and returns the last-will ``(topic, payload)`` to
    register for it. Used by the bridge and by the reference device.
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
        on_message: Callable[[mqtt.MQTTMessage, int], None] | None = None,
        will: Callable[[], Will | None] | None = None,
        fail_on_disconnect: bool = False,
        label: str = "mqtt",
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if not 0 < reconnect_delay[0] <= reconnect_delay[1]:
            raise ValueError("reconnect_delay must be (min, max) with 0 < min <= max")
        self.host = host
        self.port = port
        self.username = username
        self.label = label
        self.subscriptions = list(subscriptions)
        self.fail_on_disconnect = fail_on_disconnect
        """Resolve unacknowledged publishes as False when the connection drops (paho
        still sends them again after reconnecting)."""
        self._manual_ack = manual_ack
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_message = on_message
        self._will = will
        self._routes: dict[str, MessageHandler] = {}
        """Topic filter -> who gets its messages (instead of ``on_message``)."""
        self._ready_listeners: list[Callable[[], None]] = []
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self.connected = False
        """CONNACK seen and no disconnect since."""
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.last_error = ""
        """Why the last connection attempt failed or the connection dropped."""
        self.refused: str | None = None
        """The broker's reason when it refused the last login (CONNACK), else None."""
        self.keepalive = keepalive
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up = asyncio.Event()
        self._answer = asyncio.Event()
        self._pubs: dict[int, asyncio.Future[bool]] = {}
        self._generation = 0
        self._subscribe_mid: int | None = None
        self._failing = False
        self._started = False
        self._delays = reconnect_delay
        self._delay: float | None = None
        """The last wait before a reconnect; None after a connection the broker took."""
        self._runner: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[MQTTErrorCode] | None = None
        """paho's ``reconnect()`` (TCP connect, CONNECT queued) on a worker thread."""
        self._sock: Any = None
        """paho's socket while the loop watches it (reader on, keep-alive timer on)."""
        self._dropped = asyncio.Event()
        self._writing = False
        """A writer is registered: the kernel's send buffer was full."""
        self._flush_soon: asyncio.Handle | None = None
        """A write scheduled for the loop's next turn."""
        self._misc: asyncio.TimerHandle | None = None
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
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        client.on_socket_open = self._paho_socket_open
        client.on_socket_close = self._paho_socket_close
        client.on_socket_register_write = self._paho_want_write
        client.on_socket_unregister_write = self._paho_written
        self.client = client

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
        self.client.connect_async(self.host, self.port, self.keepalive)
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
        connect under way (at most paho's connect timeout, 5 s) is waited for."""
        if not self._started:
            return
        self._started = False
        await self._stop_connecting()
        if self.client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await self._write_out(CLOSE_WRITE_S)  # paho closes the socket once it is sent
        self._cut()
        self._fail_pending()

    async def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a power cut would: the broker
        publishes the last will. For tests and demos."""
        if not self._started:
            return
        self._started = False
        await self._stop_connecting()
        self._cut()
        self._fail_pending()

    async def _stop_connecting(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            # a blocking connect cannot be interrupted; its socket is closed below
            await asyncio.wait([connecting])
            if not connecting.cancelled():
                connecting.exception()  # retrieved: the attempt no longer matters

    def _cut(self) -> None:
        """Close paho's socket, if still open, without a word to the broker."""
        sock = self.client.socket()
        if sock is not None:
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the broker sees the drop at once
            # paho's public way to close its socket (and forget the connection)
            self.client.connect_async(self.host, self.port, self.keepalive)
        self._detach()
        self._loop_disconnected()

    # --- publishing and acknowledging (event loop) ------------------------------------

    def publish(
        self, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> tuple[int, asyncio.Future[bool]]:
        """Hand a message to paho; the future becomes True when it is delivered to the
        broker (PUBACK for QoS 1, written to the socket for QoS 0)."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[bool] = self._loop.create_future()
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
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
        if message.qos == 0 or not self._manual_ack:
            return
        if generation == self._generation and self.client.is_connected():
            self.client.ack(message.mid, message.qos)

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
        """One attempt: the last will, then paho's ``reconnect()`` (a blocking TCP
        connect, then CONNECT queued) on a worker thread; True once the loop watches
        the new socket (CONNACK or not)."""
        self._prepare_will()
        assert self._loop is not None
        connecting = self._loop.run_in_executor(None, self.client.reconnect)
        self._connecting = connecting
        try:
            await asyncio.shield(connecting)
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
        return self._attach()

    def _prepare_will(self) -> None:
        if self._will is None:
            return
        try:
            will = self._will()
            if will is None:
                self.client.will_clear()
                return
            retain = bool(will[2]) if len(will) == 3 else False
            self.client.will_set(will[0], will[1], qos=1, retain=retain)
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

    def _attach(self) -> bool:
        sock = self.client.socket()
        loop = self._loop
        if sock is None or loop is None:
            return False
        self._sock = sock
        loop.add_reader(sock, self._readable)
        self._misc = loop.call_later(MISC_INTERVAL_S, self._keep_alive)
        self._flush()  # CONNECT, queued on the worker thread
        return True

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
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
        self._dropped.set()

    def _readable(self) -> None:
        """Read what the socket holds, up to :data:`READ_BATCH` packets (paho's
        ``loop_read`` takes one packet when nothing of ours is in flight, and one packet
        per turn of a busy loop would starve the bridge), then write what the callbacks
        queued meanwhile (PUBACKs of routed messages, replies)."""
        sock = self._sock
        for _ in range(READ_BATCH):
            self._step(self.client.loop_read)
            if self._sock is not sock:
                return  # closed meanwhile
            try:
                if not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                    break  # the end: the next turn's read sees it and closes
            except OSError:  # BlockingIOError: nothing more for now
                break
        self._flush()

    def _writable(self) -> None:
        self._step(self.client.loop_write)

    def _keep_alive(self) -> None:
        self._misc = None
        self._step(self.client.loop_misc)
        self._flush()  # a PINGREQ
        if self._sock is not None and self._loop is not None:
            self._misc = self._loop.call_later(MISC_INTERVAL_S, self._keep_alive)

    def _flush_now(self) -> None:
        self._flush_soon = None
        self._flush()

    def _flush(self) -> None:
        """Write what paho has queued, now; what the kernel cannot take yet is written
        when the socket is writable again (a writer registered until then)."""
        if self._sock is None or self._writing or not self.client.want_write():
            return
        self._step(self.client.loop_write)
        sock = self._sock
        if sock is not None and self.client.want_write() and not self._writing:
            assert self._loop is not None
            self._writing = True
            self._loop.add_writer(sock, self._writable)

    def _step(self, step: Callable[[], MQTTErrorCode]) -> None:
        """Run one of paho's network steps; a bug in it drops the connection (to be made
        again) instead of leaving a socket the loop would call on forever."""
        try:
            step()
        except Exception:
            log.exception("%s: paho failed; dropping the connection", self.label)
            sock = self._sock
            self._detach()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                self.client.connect_async(self.host, self.port, self.keepalive)
                self._loop_disconnected()

    async def _write_out(self, timeout: float) -> None:
        """Write what paho has queued (the DISCONNECT), for ``timeout`` seconds at most."""
        if self.client.socket() is not None:
            self._step(self.client.loop_write)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.client.socket() is not None and self.client.want_write():
                    await asyncio.sleep(0.01)
                    self._step(self.client.loop_write)

    # --- paho's callbacks (the loop's thread; socket ones also the connect thread) -----

    def _paho_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Without TCP_NODELAY each QoS 1 exchange waits for Nagle + delayed ACK (~40 ms).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _paho_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if sock is self._sock:
            self._detach()

    def _paho_want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # A publish, PUBACK or SUBSCRIBE queued by the owner's code is written at the
        # start of the loop's next turn, with whatever else this turn queues (one
        # loop_write for all: written one by one they cost the connection 8 to 15 %
        # more CPU per message). Queued inside paho's read (a callback answering a
        # message), _readable writes it when the read is over; queued on the connect
        # thread (CONNECT, before the loop watches the socket), _attach writes it.
        if self._sock is not None and sock is self._sock and self._flush_soon is None:
            assert self._loop is not None
            self._flush_soon = self._loop.call_soon(self._flush_now)

    def _paho_written(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._writing and sock is self._sock and self._loop is not None:
            self._writing = False
            self._loop.remove_writer(sock)

    def _paho_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        try:
            if reason.is_failure:
                self.last_error = str(reason)
                if not self._failing:
                    self._failing = True
                    log.error("%s", _refusal(self.label, self.url, self.username, reason))
                self.refused = str(reason)
                self._answer.set()
                return
            self._generation += 1
            wanted = list(self.subscriptions)
            if wanted:
                _, self._subscribe_mid = client.subscribe(wanted)
            else:
                self._subscribe_mid = None
            if self._failing or self.connects:
                log.info("%s: connected to %s again", self.label, self.url)
            else:
                log.info("%s: connected to %s", self.label, self.url)
            self._failing = False
            self._delay = None
            self._loop_connected(self._generation)
        except Exception:  # paho would handle the CONNACK again
            log.exception("%s: the connection callback failed", self.label)

    def _paho_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        try:
            if self._started and not self._failing:
                self.last_error = str(reason)
                log.warning(
                    "%s: lost the connection to %s (%s); reconnecting with back-off",
                    self.label,
                    self.url,
                    reason,
                )
            self._loop_disconnected()
        except Exception:
            log.exception("%s: the disconnection callback failed", self.label)

    def _paho_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        try:
            if mid == self._subscribe_mid:
                self._loop_subscribed()
            else:
                self._loop_suback(mid)
            for (topic, _), reason in zip(self.subscriptions, reasons, strict=False):
                if reason.is_failure:
                    log.error(
                        "%s: the broker refused the subscription to %s (%s): check the ACL of %r",
                        self.label,
                        topic,
                        reason,
                        self.username,
                    )
        except Exception:
            log.exception("%s: the subscription callback failed", self.label)

    def _paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:  # an exception into paho would have it handle the same packet again
            self._loop_message(message, self._generation)
        except Exception:
            log.exception("%s: handling a message failed", self.label)

    def _paho_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        future = self._pubs.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(not reason.is_failure)

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

    def _loop_suback(self, mid: int) -> None:
        granted = self._subacks.pop(mid, None)
        if granted is not None and not granted.done():
            granted.set_result(None)

    def _tell_ready(self) -> None:
        for listener in list(self._ready_listeners):
            try:
                listener()
            except Exception:
                log.exception("%s: a connection listener failed", self.label)

    def _loop_message(self, message: mqtt.MQTTMessage, generation: int) -> None:
        handler = self._route_of(message)
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

    def _route_of(self, message: mqtt.MQTTMessage) -> MessageHandler | None:
        if not self._routes:
            return None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return None
        for pattern, handler in self._routes.items():
            if mqtt.topic_matches_sub(pattern, topic):
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
        if new and self.connected and self._loop is not None:
            _, mid = self.client.subscribe([(t, qos) for t in new])
            granted: asyncio.Future[None] = self._loop.create_future()
            if mid is None:
                granted.set_result(None)  # not sent (the connection just dropped)
            else:
                self._subacks[mid] = granted
            return granted
        return None

    def unroute(self, topics: Sequence[str]) -> None:
        """Unsubscribe from ``topics`` (given to :meth:`route`)."""
        gone = [t for t in topics if self._routes.pop(t, None) is not None]
        self.subscriptions = [(t, q) for t, q in self.subscriptions if t not in gone]
        if gone and self.connected:
            self.client.unsubscribe(gone)

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
        if now and self._started and self.connected:
            sock = self.client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the loop reads the end: reconnect

    def _loop_disconnected(self) -> None:
        was = self.connected
        self._set_down()
        if self.fail_on_disconnect:
            self._fail_pending()
        if was and self._on_disconnect is not None:
            self._on_disconnect()

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
