"""The MQTT plumbing the adopters and the Home Assistant publisher share.

:class:`MqttBridge` is a gateway bridge holding one paho-mqtt client: paho's
network thread hands every message, in arrival order, to one worker task on
the event loop, where the bridge keeps all its state. Subscriptions are kept
across reconnects; :meth:`MqttBridge.publish` waits for the broker's
acknowledgement and fails at once (:class:`BrokerUnavailableError`) when the
broker is not connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import threading
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from safething.errors import SafeThingError
from safething_gateway.core import Bridge, Gateway

__all__ = ["BrokerUnavailableError", "Job", "MqttBridge"]

log = logging.getLogger("safething.gateway.adoption")

Job = Callable[[], Awaitable[None]]
"""Work queued for a bridge's worker task."""


class BrokerUnavailableError(SafeThingError, ConnectionError):
    """The MQTT broker cannot take a message now (not connected, or no acknowledgement)."""


class MqttBridge(Bridge):
    """A bridge holding one paho-mqtt client.

    paho's network thread hands every message, in arrival order, to one
    worker task on the event loop (:meth:`on_message`), which is where all
    the bridge's state lives; :meth:`submit` and :meth:`later` queue more
    work for that task. Reconnects are paho's; subscriptions are renewed on
    every connection.
    """

    name = "mqtt-client"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._username = username
        self._password = password
        self._gateway: Gateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._lock = threading.Lock()
        self._topics: set[str] = set()
        self._up = False
        self._ready = asyncio.Event()
        self._connect_mid: int | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._closed = False

    # --- for subclasses -----------------------------------------------------------------

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError(f"bridge {self.name} is not started")
        return self._gateway

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def endpoints(self) -> list[str]:
        return [self.url]

    def topics(self) -> Iterable[str]:
        """Topic filters subscribed on every connection."""
        return ()

    def prepare(self, client: mqtt.Client) -> None:
        """Called once before connecting (e.g. to set a last will)."""

    async def on_connected(self) -> None:
        """Called on the worker after each connection, once its subscriptions are granted."""

    @abstractmethod
    async def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        """One MQTT message, on the worker, in arrival order."""

    async def on_close(self) -> None:
        """Called before disconnecting (e.g. to say "offline")."""

    def submit(self, job: Job) -> None:
        """Run ``job`` on the worker after what is already queued."""
        self._jobs.put_nowait(job)

    def later(self, delay: float, job: Job) -> None:
        """Run ``job`` on the worker in ``delay`` seconds (cancelled by :meth:`close`)."""
        loop = self._running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._timers.discard(handle)
            self.submit(job)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def subscribe(self, *topics: str) -> None:
        """Subscribe now (if connected) and on every reconnection."""
        with self._lock:
            new = [t for t in topics if t not in self._topics]
            self._topics.update(new)
            up = self._up
        if new and up and self._client is not None:
            self._client.subscribe([(t, 1) for t in new])

    def unsubscribe(self, *topics: str) -> None:
        with self._lock:
            gone = [t for t in topics if t in self._topics]
            self._topics.difference_update(gone)
            up = self._up
        if gone and up and self._client is not None:
            self._client.unsubscribe(gone)

    def is_connected(self) -> bool:
        with self._lock:
            return self._up

    async def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait until the broker has it (PUBACK for QoS 1).

        Raises :class:`BrokerUnavailableError` at once when not connected
        (nothing is queued for later: a command must not fire long after it
        was asked for).
        """
        client = self._client
        if client is None or self._closed or not self.is_connected():
            raise BrokerUnavailableError(f"not connected to the MQTT broker {self.url}")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailableError(
                f"cannot publish to {topic!r}: {mqtt.error_string(info.rc)}"
            )
        future: asyncio.Future[None] = self._running_loop().create_future()
        self._acks[info.mid] = future
        try:
            async with asyncio.timeout(self.publish_timeout):
                await future
        except TimeoutError:
            raise BrokerUnavailableError(
                f"the broker {self.url} did not acknowledge a message on {topic!r}"
            ) from None
        finally:
            self._acks.pop(info.mid, None)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"bridge {self.name} is not started")
        return self._loop

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        if self._client is not None:
            return
        self._gateway = gateway
        self._loop = asyncio.get_running_loop()
        with self._lock:
            self._topics.update(self.topics())
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"safething-{self.name}-{secrets.token_hex(4)}",
            clean_session=True,
        )
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.reconnect_delay_set(1, 30)
        self.prepare(client)
        self._client = client
        self._worker = self._loop.create_task(self._work(), name=f"{self.name}:worker")
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._ready.wait()
        except TimeoutError:
            log.warning(
                "%s: broker %s not reachable yet; retrying in the background", self.name, self.url
            )

    async def close(self) -> None:
        if self._closed:
            return
        if self._client is not None and self.is_connected():
            try:
                await self.on_close()
            except Exception:
                log.exception("%s: closing hook failed", self.name)
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        client = self._client
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(BrokerUnavailableError(f"bridge {self.name} closed"))
        self._acks.clear()

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: a handler failed; the bridge keeps going", self.name)

    # --- paho callbacks (network thread) ------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning(
                "%s: broker %s refused the connection: %s", self.name, self.url, reason_code
            )
            return
        with self._lock:
            self._up = True
            topics = sorted(self._topics)
        mid: int | None = None
        if topics:
            _, mid = client.subscribe([(t, 1) for t in topics])
        self._call(self._connected, mid)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._up = False
        if not self._closed:
            log.info(
                "%s: disconnected from %s (%s); reconnecting", self.name, self.url, reason_code
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        self._call(self._subscribed, mid, refused)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("%s: dropping a message whose topic is not UTF-8", self.name)
            return
        job = functools.partial(self.on_message, topic, bytes(message.payload), message.retain)
        self._call(self._jobs.put_nowait, job)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call(self._published, mid)

    # --- back on the event loop -------------------------------------------------------

    def _connected(self, mid: int | None) -> None:
        self._connect_mid = mid
        if mid is None:
            self._became_ready()

    def _subscribed(self, mid: int, refused: list[str]) -> None:
        if refused:
            log.warning("%s: the broker refused a subscription: %s", self.name, ", ".join(refused))
        if mid == self._connect_mid:
            self._became_ready()

    def _became_ready(self) -> None:
        self._ready.set()
        self.submit(self.on_connected)

    def _published(self, mid: int) -> None:
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(None)
