"""A device speaking CoAP to the gateway's CoAP bridge (aiocoap client).

The wire layout is described in :mod:`safething_gateway.bridges.coap`::

    async with CoapDevice(link, "127.0.0.1", 5683) as device:
        await device.start()                 # birth
        await device.reading({"moisture": 12})
        await device.observe()               # downlinks as they are queued
        ...
        await device.poll()                  # or fetch them now and then

Every request is confirmable: aiocoap retransmits it until the gateway
acknowledges it (RFC 7252 §4.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiocoap
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from safething.errors import SafeThingError
from safething.resource import AsyncResource
from safething_gateway.bridges.coap import CBOR, JSON, PREFIX, decode_downlinks
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.protocol import ProtocolError, parse_frame

__all__ = ["CoapDevice", "CoapDeviceError"]

log = logging.getLogger("safething.device.coap")


class CoapDeviceError(SafeThingError):
    """The gateway refused a request: ``code`` (e.g. ``"4.01"``) and its diagnostic."""

    def __init__(self, code: str, diagnostic: str) -> None:
        super().__init__(f"{code} {diagnostic}".strip())
        self.code = code
        """The CoAP response code, ``"c.dd"``."""
        self.diagnostic = diagnostic
        """The diagnostic payload, ``"<reason>: <detail>"``."""

    @property
    def reason(self) -> str:
        """The machine-readable word before the colon (``bad_mac``, ``replay``...)."""
        return self.diagnostic.partition(":")[0]


def _code_text(code: Any) -> str:
    return f"{int(code) >> 5}.{int(code) & 0x1F:02d}"


class CoapDevice(AsyncResource):
    """The device side over CoAP: birth, readings, events, results; poll or Observe."""

    def __init__(self, link: DeviceLink, host: str = "127.0.0.1", port: int = 5683) -> None:
        self.link = link
        self.host = host
        self.port = port
        self.downlinks_handled = 0
        """Downlinks verified and acted on (for tests and demos)."""
        self._context: Any = None
        self._observation: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._uplink = asyncio.Lock()
        """Held from taking a counter until the gateway answered: uplinks reach it in
        counter order (one that overtook a lower counter would make that one a replay)."""
        self.observing = asyncio.Event()
        """Set while an Observe registration is active."""

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap://{host}:{self.port}/{'/'.join(PREFIX)}/{self.link.device_id}"

    @property
    def content_format(self) -> int:
        return CBOR if self.link.content_format == "cbor" else JSON

    async def start(self) -> None:
        """Open the client endpoint and announce the device (``birth``)."""
        if self._context is None:
            self._context = await aiocoap.Context.create_client_context(transports=["udp6"])
        async with self._uplink:
            await self.send("birth", self.link.birth())

    async def close(self) -> None:
        """Stop observing and close the endpoint."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._observation is not None and not self._observation.cancelled:
            self._observation.cancel()
        self._observation = None
        self.observing.clear()
        if self._context is not None:
            context, self._context = self._context, None
            await context.shutdown()

    # --- uplinks -----------------------------------------------------------------------

    async def send(self, channel: str, message: bytes) -> Any:
        """POST one framed uplink; the response, or ``CoapDeviceError``.

        The caller frames ``message``; :meth:`up` frames and sends in counter order."""
        if self._context is None:
            raise RuntimeError("call start() first")
        request = aiocoap.Message(
            code=Code.POST,
            uri=f"{self.base}/{channel}",
            payload=message,
            content_format=ContentFormat(self.content_format),
        )
        response = await self._context.request(request).response
        _raise_for(response)
        return response

    async def up(self, channel: str, body: Any) -> Any:
        """Frame ``body`` with the next counter and POST it, one uplink at a time."""
        async with self._uplink:
            return await self.send(channel, self.link.up(channel, body))

    async def reading(self, values: dict[str, Any]) -> None:
        await self.up("reading", values)

    async def event(self, topic: str, data: Any) -> None:
        await self.up(f"event/{topic}", data)

    async def poll(self) -> int:
        """Fetch pending downlinks, act on them, send acks and results; how many arrived."""
        response = await self.up("poll", b"")
        downlinks = decode_downlinks(response.payload, _format_of(response))
        for channel, data in downlinks:
            await self._handle_down(channel, data)
        return len(downlinks)

    # --- downlinks by Observe ------------------------------------------------------------

    async def observe(self) -> None:
        """Register on ``down`` (Observe), act on what is pending, then on each notification
        in a background task until :meth:`close` or the gateway ends the observation."""
        if self._context is None:
            raise RuntimeError("call start() first")
        if self.observing.is_set():
            return
        async with self._uplink:  # the registration carries a counter too
            poll = parse_frame(self.link.up("poll", b""))
            request = aiocoap.Message(
                code=Code.GET,
                uri=f"{self.base}/down?c={poll.counter}&m={poll.mac}",
                observe=0,
                accept=ContentFormat(self.content_format),
            )
            pending = self._context.request(request)
            queue: asyncio.Queue[Any] = asyncio.Queue()
            reader = asyncio.get_running_loop().create_task(
                self._read(pending.observation, queue),
                name=f"coap-device:{self.link.device_id}:read",
            )
            try:
                first = await pending.response
                _raise_for(first)
            except BaseException:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                raise
        self._observation = pending.observation
        self.observing.set()
        queue.put_nowait(first)
        worker = asyncio.get_running_loop().create_task(
            self._work(queue), name=f"coap-device:{self.link.device_id}:downlinks"
        )
        self._tasks += [reader, worker]

    async def _read(self, observation: Any, queue: asyncio.Queue[Any]) -> None:
        """Only move notifications to the queue: aiocoap keeps just the latest one for a
        slow ``async for``, so the slow part (acting, sending) runs in :meth:`_work`."""
        try:
            async for notification in observation:
                queue.put_nowait(notification)
        except Exception as e:
            log.warning("%s: observation failed: %s", self.link.device_id, e)
        finally:
            queue.put_nowait(None)

    async def _work(self, queue: asyncio.Queue[Any]) -> None:
        while (message := await queue.get()) is not None:
            if not message.code.is_successful():
                log.info("%s: observation ended: %s", self.link.device_id, message.payload)
                break
            try:
                for channel, data in decode_downlinks(message.payload, _format_of(message)):
                    await self._handle_down(channel, data)
            except Exception as e:  # refused or lost uplink: the gateway sends it all again
                log.warning("%s: downlink not handled: %s", self.link.device_id, e)
        self.observing.clear()

    async def _handle_down(self, channel: str, data: bytes) -> None:
        async with self._uplink:  # handle_down takes counters for the acks and results
            try:
                uplinks = self.link.handle_down(channel, data)
            except ProtocolError as e:
                log.warning("%s: refused downlink on %s: %s", self.link.device_id, channel, e)
                return
            self.downlinks_handled += 1
            for up_channel, message in uplinks:
                await self.send(up_channel, message)


def _format_of(message: Any) -> int:
    cf = message.opt.content_format
    return int(cf) if cf is not None else CBOR


def _raise_for(response: Any) -> None:
    if not response.code.is_successful():
        raise CoapDeviceError(
            _code_text(response.code), response.payload.decode("utf-8", "replace")
        )
