"""A reference device over HTTP: the REST bridge seen from the device (httpx).

Uplinks are ``POST /st/v1/devices/<id>/<channel>`` with the framed message;
downlinks come one per ``poll`` response (``ST-Channel``, ``ST-More``) or as
Server-Sent Events (:meth:`HttpDevice.stream`). See
:mod:`safething_gateway.bridges.http` for the wire details.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from safething.errors import SafeThingError
from safething.resource import AsyncResource
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.protocol import ProtocolError, parse_frame

__all__ = ["GatewayHttpError", "HttpDevice"]

_MEDIA = {"json": "application/json", "cbor": "application/cbor"}


class GatewayHttpError(SafeThingError):
    """The gateway refused a request for a reason outside the device protocol
    (unknown route, shutting down, internal error)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"HTTP {status}: {problem.get('detail') or problem.get('title')}")


def _protocol_errors() -> dict[str, type[ProtocolError]]:
    found: dict[str, type[ProtocolError]] = {}
    todo: list[type[ProtocolError]] = [ProtocolError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.reason, cls)
        todo.extend(cls.__subclasses__())
    return found


def _error(response: httpx.Response) -> Exception:
    """The refusal as the :class:`ProtocolError` the gateway raised (same class)."""
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    reason = str(problem.get("type", "")).rsplit("/", 1)[-1]
    cls = _protocol_errors().get(reason)
    if cls is not None and cls.http == response.status_code:
        return cls(str(problem.get("detail", "")))
    problem.setdefault("status", response.status_code)
    return GatewayHttpError(response.status_code, problem)


class HttpDevice(AsyncResource):
    """A device that talks to the gateway's REST bridge at ``base_url``.

    ``async with HttpDevice(link, "http://127.0.0.1:8080") as device:
    await device.start(); await device.reading({"moisture": 41})``
    Refusals raise the gateway's :class:`ProtocolError` (``ReplayError``...).
    """

    def __init__(self, link: DeviceLink, base_url: str, *, timeout: float = 10.0) -> None:
        self.link = link
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._path = f"/st/v1/devices/{link.device_id}"
        self._uplink = asyncio.Lock()
        """Held from taking a counter until the gateway answered, so uplinks arrive in
        counter order; a long poll holds it only while it is framed (it may wait long)."""

    async def close(self) -> None:
        await self._client.aclose()

    # --- uplinks -------------------------------------------------------------------

    async def _post(self, channel: str, message: bytes, *, wait: float = 0.0) -> httpx.Response:
        response = await self._client.post(
            f"{self._path}/{channel}",
            content=message,
            headers={"Content-Type": _MEDIA[self.link.content_format]},
            params={"wait": f"{wait:g}"} if wait > 0 else None,
            timeout=self.timeout + wait,
        )
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def send(self, channel: str, body: Any) -> httpx.Response:
        """Frame ``body`` for ``channel`` with the next counter and post it."""
        async with self._uplink:
            return await self._post(channel, self.link.up(channel, body))

    async def start(self) -> None:
        """Announce the device and its description (``birth``)."""
        async with self._uplink:
            await self._post("birth", self.link.birth())

    async def reading(self, values: dict[str, Any]) -> None:
        await self.send("reading", values)

    async def event(self, topic: str, data: Any) -> None:
        await self.send(f"event/{topic}", data)

    # --- downlinks -----------------------------------------------------------------

    async def _handle(self, channel: str, message: bytes) -> None:
        async with self._uplink:  # handle_down takes counters for the acks and results
            for up_channel, up in self.link.handle_down(channel, message):
                await self._post(up_channel, up)

    async def poll(self, wait: float = 0) -> list[str]:
        """Fetch and act on every waiting downlink (acks and results are sent back).

        With ``wait`` (seconds), an empty poll waits that long for a downlink.
        Returns the channels handled, in order.
        """
        handled: list[str] = []
        while True:
            if wait > 0:
                async with self._uplink:
                    poll = self.link.up("poll", b"")
                response = await self._post("poll", poll, wait=wait)
            else:
                async with self._uplink:
                    response = await self._post("poll", self.link.up("poll", b""))
            if response.status_code == 204:
                return handled
            channel = response.headers["ST-Channel"]
            await self._handle(channel, response.content)
            handled.append(channel)
            if int(response.headers.get("ST-More", "0")) <= 0:
                return handled
            wait = 0

    async def stream(self) -> AsyncGenerator[str, None]:
        """Listen for downlinks as Server-Sent Events, act on each, yield its channel.

        Use as ``async with contextlib.aclosing(device.stream()) as s: async for ...``
        so that the connection closes when you stop.
        """
        auth = parse_frame(self.link.up("poll", b""))
        async with self._client.stream(
            "GET",
            f"{self._path}/down/stream",
            params={"c": str(auth.counter), "m": auth.mac},
            timeout=httpx.Timeout(self.timeout, read=None),
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _error(response)
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    if not line.startswith(":"):
                        name, _, value = line.partition(":")
                        event[name] = value.removeprefix(" ")
                    continue
                if "data" in event and "event" in event:
                    channel = event["event"]
                    await self._handle(channel, base64.b64decode(event["data"]))
                    yield channel
                event = {}
