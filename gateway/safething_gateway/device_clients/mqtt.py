"""A reference MQTT device: the device side of :mod:`safething_gateway.bridges.mqtt`.

What a firmware has to get right, in one readable place:

* **Counters reach the gateway in order.** The gateway refuses any counter not
  above the last one it accepted, so messages are framed (given their
  counter) only when they are sent, and sent in counter order. Readings taken
  while the broker is away wait *unframed* in a bounded buffer (oldest
  dropped first when it is full); acknowledgements and results, which
  :meth:`DeviceLink.handle_down` frames at once, go before them.
* **QoS 1, and nothing new before the old is acknowledged.** After a
  reconnect the connection sends again what had no PUBACK; the device waits until
  those are acknowledged before it sends anything framed later.
* **Last will.** Before each connection attempt the device reserves a counter
  for a framed ``state`` ``{"online": false}`` and registers it as its will;
  once connected it publishes ``state`` ``{"online": true, "will": <counter>}``
  (and the gateway then pushes what waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from typing import Any

from safething.resource import AsyncResource, cancel_and_wait
from safething_gateway.bridges.mqtt import MqttConnection, Topics
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.mqtt_client import Message
from safething_gateway.protocol import ProtocolError

__all__ = ["MqttDevice"]

log = logging.getLogger("safething.gateway.device.mqtt")

_DATA = ("reading", "event/")


class MqttDevice(AsyncResource):
    """One device on an MQTT broker. ``async with MqttDevice(link, host, port) as d:``."""

    def __init__(
        self,
        link: DeviceLink,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        prefix: str = "st/v1",
        client_id: str | None = None,
        keepalive: int = 30,
        max_inflight: int = 20,
        buffer: int = 1000,
        connect_timeout: float = 10.0,
    ) -> None:
        if buffer < 1:
            raise ValueError("buffer must hold at least one message")
        self.link = link
        self.topics = Topics(prefix)
        self.max_inflight = max_inflight
        self.buffer = buffer
        """Most messages kept while the broker is unreachable."""
        self.connect_timeout = connect_timeout
        self.errors: deque[dict[str, Any]] = deque(maxlen=100)
        """Problem reports the gateway sent on the ``err`` topic, newest last."""
        self.sent = 0
        """Data messages (readings, events) the broker acknowledged."""
        self.buffered = 0
        """Data messages taken while not connected (sent later, in order)."""
        self.dropped = 0
        """Data messages dropped because the offline buffer was full."""
        self._framed: deque[tuple[str, bytes]] = deque()
        self._outbox: deque[tuple[str, Any]] = deque()
        self._inflight: dict[int, str] = {}
        self._resend: set[int] = set()
        self._announce: int | None = None
        self._will_counter: int | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        device_id = link.device_id
        self.connection = MqttConnection(
            host,
            port,
            client_id=client_id or device_id,
            username=username,
            password=password,
            clean_session=True,
            max_inflight=max_inflight,
            keepalive=keepalive,
            subscriptions=[
                (self.topics.down(device_id, "#"), 1),
                (self.topics.err(device_id), 0),
            ],
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            on_message=self._received,
            will=self._reserve_will,
            label=f"device {device_id}",
        )

    @property
    def device_id(self) -> str:
        return self.link.device_id

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect (with the last will), announce online, send the birth message.

        ``ConnectionRefusedError`` at once if the broker refuses the login (unknown
        device, wrong password); ``ConnectionError`` if no broker answers within
        ``connect_timeout``."""
        if self._sender is not None:
            return
        self._sender = asyncio.get_running_loop().create_task(
            self._send_loop(), name=f"mqtt-device:{self.device_id}:send"
        )
        await self.connection.start()
        conn = self.connection
        if not await conn.wait_connected(self.connect_timeout, until_refused=True):
            await self._stop(abort=False)
            if conn.refused is not None:
                raise ConnectionRefusedError(
                    f"device {self.device_id}: the broker at {conn.url} refused the login "
                    f"({conn.refused})"
                )
            raise ConnectionError(
                f"device {self.device_id}: no broker at {conn.url} accepted the connection "
                f"within {self.connect_timeout:g} s ({conn.last_error or 'no answer'})"
            )
        self._queue("birth", {"description": self.link.description})

    async def close(self) -> None:
        """Announce offline, send what is buffered (a few seconds at most), disconnect."""
        if self._sender is None:
            return
        if self.connection.connected:
            self._queue("state", {"online": False})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    while self.connection.connected and not self._idle():
                        self._progress.clear()
                        await self._progress.wait()
        await self._stop(abort=False)

    async def abort(self) -> None:
        """Drop off the network without a word (the broker publishes the last will)."""
        await self._stop(abort=True)

    async def _stop(self, *, abort: bool) -> None:
        if abort:
            await self.connection.abort()
        else:
            await self.connection.close()
        sender, self._sender = self._sender, None
        if await cancel_and_wait(sender, log=log):
            raise asyncio.CancelledError  # (the caller's, passed on once the sender ended)

    # --- data --------------------------------------------------------------------

    async def reading(self, values: dict[str, Any]) -> None:
        """Send attribute values; kept in order while the broker is unreachable."""
        await self._data("reading", values)

    async def event(self, topic: str, data: Any = None) -> None:
        """Send an event of one of the device's topics."""
        await self._data(f"event/{topic}", data)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is acknowledged by the broker."""
        async with asyncio.timeout(timeout):
            while not self._idle():
                self._progress.clear()
                await self._progress.wait()

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker (buffered or in flight)."""
        return len(self._framed) + len(self._outbox) + len(self._inflight)

    def _idle(self) -> bool:
        return self.connection.connected and self.pending == 0 and self._announce is None

    async def _data(self, channel: str, body: Any) -> None:
        if self._sender is None:
            raise RuntimeError(f"device {self.device_id}: start() first")
        # Connected: wait for room (back-pressure). Offline: keep the newest.
        while self.connection.connected and len(self._outbox) >= self.buffer:
            self._progress.clear()
            await self._progress.wait()
        if not self.connection.connected:
            self.buffered += 1
            if len(self._outbox) >= self.buffer:
                self._drop_oldest()
        self._queue(channel, body)

    def _drop_oldest(self) -> None:
        for i, (channel, _) in enumerate(self._outbox):
            if channel.startswith(_DATA):
                del self._outbox[i]
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning(
                        "device %s: offline buffer full (%d); %d oldest readings dropped",
                        self.device_id,
                        self.buffer,
                        self.dropped,
                    )
                return

    def _queue(self, channel: str, body: Any) -> None:
        self._outbox.append((channel, body))
        self._wake.set()

    # --- sending, in counter order ----------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._pump()

    def _pump(self) -> None:
        if not self.connection.connected or self._resend:
            return  # what is sent again after a reconnect goes first
        while len(self._inflight) < self.max_inflight:
            if self._framed:
                channel, data = self._framed.popleft()
            elif self._announce is not None:
                channel = "state"
                data = self.link.up(channel, {"online": True, "will": self._announce})
                self._announce = None
            elif self._outbox:
                channel, body = self._outbox.popleft()
                data = self.link.up(channel, body)
            else:
                return
            mid, future = self.connection.publish(self.topics.up(self.device_id, channel), data, 1)
            self._inflight[mid] = channel
            future.add_done_callback(functools.partial(self._acked, mid))

    def _acked(self, mid: int, future: asyncio.Future[bool]) -> None:
        channel = self._inflight.pop(mid, None)
        self._resend.discard(mid)
        if channel is not None and channel.startswith(_DATA) and future.result():
            self.sent += 1
        self._progress.set()
        self._wake.set()

    # --- connection events -----------------------------------------------------

    def _reserve_will(self) -> tuple[str, bytes]:
        """Before each connection attempt (on the event loop): a fresh last will."""
        data = self.link.up("state", {"online": False})
        self._will_counter = self.link.up_counter
        return self.topics.up(self.device_id, "state"), data

    def _connected(self, generation: int) -> None:
        self._resend = set(self._inflight)
        self._announce = self._will_counter
        self._wake.set()
        self._progress.set()

    def _disconnected(self) -> None:
        self._progress.set()

    def _received(self, message: Message, generation: int) -> None:
        parsed = self.topics.parse(message.topic)
        if parsed is None or parsed[0] != self.device_id:
            return
        _, kind, channel = parsed
        if kind == "err":
            self._error(bytes(message.payload))
        elif kind == "down":
            try:
                replies = self.link.handle_down(channel, bytes(message.payload))
            except ProtocolError as e:
                log.warning("device %s: refusing downlink %s: %s", self.device_id, channel, e)
                return
            except Exception:
                log.exception("device %s: downlink %s failed", self.device_id, channel)
                return
            self._framed.extend(replies)
            self._wake.set()

    def _error(self, payload: bytes) -> None:
        try:
            problem = json.loads(payload)
        except ValueError:
            problem = {"detail": payload.decode(errors="replace")}
        if not isinstance(problem, dict):
            problem = {"detail": problem}
        self.errors.append(problem)
        level = logging.DEBUG if problem.get("title") == "replay" else logging.WARNING
        log.log(
            level,
            "device %s: the gateway refused %s #%s: %s",
            self.device_id,
            problem.get("channel"),
            problem.get("counter"),
            problem.get("detail"),
        )
