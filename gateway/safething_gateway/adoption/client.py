"""What the adopters and the Home Assistant publisher share: :class:`MqttAdapter`.

An adapter is a gateway bridge that talks to an MQTT broker through the gateway's one
MQTT client module (:mod:`safething_gateway.mqtt_client`): TCP_NODELAY, the in-flight
cap, no QoS 0 queue while disconnected, reconnects, subscriptions changed at run time.
When the gateway's device bridge talks to the same broker with the same login, the
adapter rides on its connection (the broker binds a client id to its login, so a second
connection would throw the first off); otherwise it opens its own. Messages reach one
worker task on the event loop, in arrival order, where the adapter keeps all its
state; :meth:`MqttAdapter.publish` waits for the broker's acknowledgement and fails at
once (:class:`BrokerUnavailableError`) when the broker is not connected.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import warnings
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from safething.errors import SafeThingError
from safething.resource import cancel_and_wait
from safething_gateway.core import Bridge, Gateway
from safething_gateway.mqtt_client import Message, MqttConnection, Will

__all__ = ["BrokerUnavailableError", "Job", "MqttAdapter"]

log = logging.getLogger("safething.gateway.adoption")

Job = Callable[[], Awaitable[None]]
"""Work queued for a bridge's worker task."""


class BrokerUnavailableError(SafeThingError, ConnectionError):
    """The MQTT broker cannot take a message now (not connected, or no acknowledgement)."""


class MqttAdapter(Bridge):
    """A bridge on the gateway's MQTT connection (see the module docstring).

    Messages of :meth:`topics` (and of :meth:`subscribe`) are handed, in arrival order,
    to one worker task on the event loop (:meth:`on_message`), which is where all the
    bridge's state lives; :meth:`submit` and :meth:`later` queue more work for it.
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
        self._connection: MqttConnection | None = None
        self._owned = False
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._topics: set[str] = set()
        self._ready = asyncio.Event()
        self._forget_listener: Callable[[], None] | None = None
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

    @property
    def connection(self) -> MqttConnection:
        if self._connection is None:
            raise RuntimeError(f"bridge {self.name} is not started")
        return self._connection

    def endpoints(self) -> list[str]:
        return [self.url]

    def topics(self) -> Iterable[str]:
        """Topic filters subscribed on every connection."""
        return ()

    def will(self) -> Will | None:
        """The last will to register for the connection (e.g. "offline"), or None."""
        return None

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
        new = [t for t in topics if t not in self._topics]
        self._topics.update(new)
        if new and self._connection is not None:
            self._connection.route(new, self._on_message)

    def unsubscribe(self, *topics: str) -> None:
        gone = [t for t in topics if t in self._topics]
        self._topics.difference_update(gone)
        if gone and self._connection is not None:
            self._connection.unroute(gone)

    def is_connected(self) -> bool:
        return self._connection is not None and self._connection.connected

    async def publish(
        self, topic: str, payload: str | bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait until the broker has it (PUBACK for QoS 1).

        Raises :class:`BrokerUnavailableError` at once when not connected
        (nothing is queued for later: a command must not fire long after it
        was asked for).
        """
        connection = self._connection
        if connection is None or self._closed or not connection.connected:
            raise BrokerUnavailableError(f"not connected to the MQTT broker {self.url}")
        data = payload.encode() if isinstance(payload, str) else payload
        _, delivered = connection.publish(topic, data, qos, retain=retain)
        try:
            async with asyncio.timeout(self.publish_timeout):
                ok = await asyncio.shield(delivered)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"the broker {self.url} did not acknowledge a message on {topic!r}"
            ) from None
        if not ok:
            raise BrokerUnavailableError(f"cannot publish to {topic!r} on {self.url}")

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"bridge {self.name} is not started")
        return self._loop

    # --- lifecycle -------------------------------------------------------------------

    def _shared_connection(self, gateway: Gateway) -> MqttConnection | None:
        """The device bridge's connection, when it is to the same broker as this login."""
        from safething_gateway.bridges.mqtt import MqttBridge

        for bridge in gateway.bridges:
            if (
                isinstance(bridge, MqttBridge)
                and bridge.host == self.host
                and bridge.port == self.port
                and bridge.connection.username == self._username
            ):
                return bridge.connection
        return None

    async def start(self, gateway: Gateway) -> None:
        if self._connection is not None:
            return
        self._gateway = gateway
        self._loop = asyncio.get_running_loop()
        self._topics.update(self.topics())
        self._worker = self._loop.create_task(self._work(), name=f"{self.name}:worker")
        shared = self._shared_connection(gateway)
        will = self.will()
        if shared is not None:
            self._connection = shared
            self._forget_listener = shared.on_ready(self._became_ready)
            if will is not None:
                shared.set_will(self.will, now=True)  # registered by reconnecting
            granted = shared.route(sorted(self._topics), self._on_message)
            if shared.connected and not self._ready.is_set():
                if granted is not None:
                    await self._wait(granted)
                if will is None:
                    self._became_ready()
        else:
            connection = MqttConnection(
                self.host,
                self.port,
                client_id=f"safething-{self.name}-{secrets.token_hex(4)}",
                username=self._username,
                password=self._password,
                clean_session=True,
                will=self.will,
                label=self.name,
            )
            self._connection, self._owned = connection, True
            self._forget_listener = connection.on_ready(self._became_ready)
            connection.route(sorted(self._topics), self._on_message)
            await connection.start()
        await self._wait(self._ready.wait())

    async def _wait(self, what: Awaitable[Any]) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await what
        except TimeoutError:
            log.warning(
                "%s: broker %s not reachable yet; retrying in the background", self.name, self.url
            )

    async def close(self) -> None:
        if self._closed:
            return
        if self.is_connected():
            try:
                await self.on_close()
            except Exception:
                log.exception("%s: closing hook failed", self.name)
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        cancelled = await cancel_and_wait(self._worker, log=log)
        self._worker = None
        if self._forget_listener is not None:
            self._forget_listener()
            self._forget_listener = None
        connection = self._connection
        if connection is not None:
            if self._owned:
                await connection.close()
            else:
                connection.unroute(sorted(self._topics))
        if cancelled:  # the caller's cancellation, passed on now that all has ended
            raise asyncio.CancelledError

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: a handler failed; the bridge keeps going", self.name)

    # --- from the connection (event loop) -------------------------------------------

    def _on_message(self, message: Message) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("%s: dropping a message whose topic is not UTF-8", self.name)
            return
        job = functools.partial(self.on_message, topic, bytes(message.payload), message.retain)
        self._jobs.put_nowait(job)

    def _became_ready(self) -> None:
        if self._closed:
            return
        self._ready.set()
        self.submit(self.on_connected)


def __getattr__(name: str) -> Any:
    if name == "MqttBridge":
        warnings.warn(
            "safething_gateway.adoption.client.MqttBridge is now MqttAdapter (the device "
            "bridge is safething_gateway.bridges.mqtt.MqttBridge)",
            DeprecationWarning,
            stacklevel=2,
        )
        return MqttAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
