"""The REST bridge: devices speak the SAFEthing device protocol over plain HTTP.

A FastAPI application (:func:`create_app`) served by uvicorn inside the
gateway's event loop (:class:`HttpBridge`). It also serves the operations
endpoints (``/healthz``, ``/metrics``) and its own OpenAPI document.

Uplinks
    ``POST /st/v1/devices/<device_id>/<channel>`` with the framed message
    (``ST2 <counter> <tag>\\n<ciphertext>``, see :mod:`safething_gateway.protocol`)
    as the request body. ``Content-Type: application/json`` (also assumed
    when the header is missing) or ``application/cbor`` says how the body
    after the header line is encoded; anything else is refused with 415.
    Success is ``204 No Content``.

Downlinks, by polling
    ``POST /st/v1/devices/<device_id>/poll[?wait=<seconds>]`` (a framed
    ``poll`` message, body usually empty) answers with **one downlink per
    response**, so that the smallest device needs no parser beyond "read the
    body":

    * ``200``, ``Content-Type: application/octet-stream``, body = the framed
      downlink exactly as its MAC covers it (its body is JSON), headers
      ``ST-Channel: <channel>`` (``action/<id>``, ``desired``...: the MAC
      covers the channel, so the device needs it to verify) and
      ``ST-More: <n>``, how many further downlinks are waiting;
    * ``204`` with ``ST-More: 0`` when nothing is waiting.

    The gateway resends a downlink until the device acknowledges it (channel
    ``ack``, ``{"down": <counter>}``): acknowledge, then poll again while
    ``ST-More`` is above 0. With ``wait`` (seconds, at most 60; larger values
    count as 60) an empty poll is held open until a downlink is queued for the
    device, then answered at once (long-poll).

Downlinks, by Server-Sent Events
    ``GET /st/v1/devices/<device_id>/down/stream?c=<counter>&m=<mac>`` is
    authenticated like a poll: ``c`` and ``m`` are the counter and MAC of a
    ``poll`` message with an empty body (``ST2 <c> <m>\\n``). The stream
    (``text/event-stream``) carries every waiting and every new downlink as
    one event::

        id: <downlink counter>
        event: <channel>
        data: <the framed downlink, standard base64 on one line>

    plus ``: ping`` comment lines every ``ping_interval`` seconds.

Errors
    Every refusal is ``application/problem+json`` (RFC 9457) with the status
    of its :class:`~safething_gateway.protocol.ProtocolError` (400 malformed
    frame, 401 wrong MAC, 403 revoked, 404 unknown device, channel or route,
    409 replayed counter, 413 too large, 415 unsupported body format, 422 bad
    body, 429 rate limit); 503 while the store does not answer; an unexpected
    failure is logged and answered with a generic 500, never a traceback.

Operations
    ``GET /healthz`` (200 ``{"status": "ok", "bridges": [...], "devices": n}``
    or 503 problem), ``GET /metrics`` (Prometheus text),
    ``GET /openapi.json`` and ``GET /docs``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from safething_gateway.bridges.waiters import Waiter, Waiters
from safething_gateway.bridges.wot import WotBinding, wot_router
from safething_gateway.core import Bridge, Gateway
from safething_gateway.protocol import (
    MAGIC,
    MAX_MESSAGE_BYTES,
    BadMessageError,
    ProtocolError,
    TooLargeError,
    empty_frame,
    parse_frame,
)
from safething_gateway.replies import Reply, problem, reply_for
from safething_gateway.tokens import TokenStore

__all__ = ["HttpBridge", "UnsupportedFormatError", "create_app", "reply_response"]

log = logging.getLogger("safething.gateway.http")

PROBLEM_JSON = "application/problem+json"
FRAME_TYPE = "application/octet-stream"
PROMETHEUS_TYPE = "text/plain; version=0.0.4"
MAX_WAIT = 60.0
"""Longest long-poll, in seconds."""
_HELD = 256
"""Downlinks an event stream or long-poll holds before further pushes stay queued."""
_SHUTTING_DOWN = "the gateway is shutting down"
TRANSPORT = "http"

_FORMATS = {"": "json", "application/json": "json", "application/cbor": "cbor"}


class UnsupportedFormatError(ProtocolError):
    """The request body is neither JSON nor CBOR (by its ``Content-Type``)."""

    http, coap, reason = 415, "4.15", "unsupported_format"


# --- errors as problem details, in one place ------------------------------------------


def problem_response(
    problem: dict[str, Any], *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An ``application/problem+json`` response for an RFC 9457 problem dict."""
    return JSONResponse(
        problem, status_code=int(problem["status"]), media_type=PROBLEM_JSON, headers=headers
    )


def reply_response(reply: Reply) -> JSONResponse:
    """The HTTP rendering of a :class:`Reply` (see :mod:`safething_gateway.replies`)."""
    headers = {}
    if reply.status == 401:
        headers["WWW-Authenticate"] = f'{MAGIC.decode()} realm="safething"'
    if reply.retry_after is not None:
        headers["Retry-After"] = str(reply.retry_after)
    return problem_response(reply.problem(), headers=headers)


def _where(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def _rate(request: Request) -> float | None:
    gateway = getattr(request.app.state, "gateway", None)
    return None if gateway is None else float(gateway.rate)


_HTTP_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_format",
}


def _install_error_handlers(app: FastAPI) -> None:
    async def refused(request: Request, exc: Exception) -> Response:
        return reply_response(reply_for(exc, where=_where(request), rate=_rate(request)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        reason = _HTTP_REASONS.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            detail = f"no such resource: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        else:
            detail = str(exc.detail)
        return problem_response(problem(exc.status_code, reason, detail), headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg"))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(problem(422, "invalid_request", detail, errors=errors))

    app.add_exception_handler(ProtocolError, refused)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, refused)


class _GuardedRoute(APIRoute):
    """Answers a refusal, a store outage (503) or an unexpected exception (a logged,
    generic 500) inside the route, through :func:`reply_for` (Starlette's last-resort
    handler would re-raise it to the server)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (StarletteHTTPException, RequestValidationError):
                raise
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                log.debug("client left during %s %s", request.method, request.url.path)
                return Response(status_code=400)
            except Exception as e:  # the one mapping of errors to replies
                return reply_response(reply_for(e, where=_where(request), rate=_rate(request)))

        return guarded


# --- OpenAPI fragments ------------------------------------------------------------------

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status"],
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "Malformed frame or request",
        401: "Wrong MAC",
        403: "Device revoked",
        404: "Unknown device, channel or route",
        409: "Replayed or old counter",
        413: f"Message larger than {MAX_MESSAGE_BYTES} bytes",
        415: "Body neither JSON nor CBOR",
        422: "Body does not decode or does not match the device's description",
        429: "Device rate limit exceeded",
        503: "Data store or registry unavailable",
    }
    return {
        s: {
            "description": texts[s],
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}},
        }
        for s in statuses
    }


_FRAME_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A framed device message: `ST2 <counter> <tag>\\n<ciphertext>`; the body "
        "it seals is JSON or CBOR as `Content-Type` says.",
        "content": {
            "application/json": {"schema": {"type": "string", "format": "binary"}},
            "application/cbor": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_POLL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One framed downlink (only for `poll`); more may wait",
        "content": {FRAME_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "ST-Channel": {
                "description": "The downlink's channel (covered by its MAC)",
                "schema": {"type": "string"},
            },
            "ST-More": {
                "description": "How many further downlinks are waiting",
                "schema": {"type": "integer"},
            },
        },
    },
    204: {"description": "Accepted; for `poll`: nothing waiting (`ST-More: 0`)"},
}


# --- the application ------------------------------------------------------------------


class _EventStream(StreamingResponse):
    """An SSE response that always unregisters its listener, even if never started."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _format_of(request: Request) -> str:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fmt = _FORMATS.get(media)
    if fmt is None:
        raise UnsupportedFormatError(
            f"Content-Type {media!r}: use application/json or application/cbor"
        )
    return fmt


async def _read_limited(request: Request) -> bytes:
    """The request body, refused with ``TooLargeError`` as soon as it passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadMessageError("Content-Length must be a number")
        if int(declared) > MAX_MESSAGE_BYTES:
            raise TooLargeError(f"message of {declared} bytes; the limit is {MAX_MESSAGE_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise TooLargeError(f"message over the limit of {MAX_MESSAGE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _wait_for_downlink(
    request: Request, waiter: Waiter, timeout: float
) -> tuple[str, bytes] | None:
    """The first downlink pushed to ``waiter``; ``None`` on timeout or disconnect.
    Raises ``_Closing`` when the bridge shuts down."""
    loop = asyncio.get_running_loop()
    got = loop.create_task(waiter.get(), name=f"http:long-poll:{waiter.device_id}")
    gone = loop.create_task(_until_disconnect(request), name=f"http:disconnect:{waiter.device_id}")
    try:
        await asyncio.wait({got, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (got, gone):
            task.cancel()
        await asyncio.gather(got, gone, return_exceptions=True)
    if got.cancelled():
        return None
    item = got.result()
    if item is None:
        raise _Closing
    return item


class _Closing(Exception):
    """The bridge is shutting down."""


def _closing_response() -> JSONResponse:
    return problem_response(
        problem(503, "shutting_down", "the gateway is shutting down; retry"),
        headers={"Retry-After": "5"},
    )


def _sse_event(channel: str, message: bytes) -> str:
    counter = parse_frame(message).counter
    data = base64.b64encode(message).decode()
    return f"id: {counter}\nevent: {channel}\ndata: {data}\n\n"


def create_app(
    gateway: Gateway,
    *,
    waiters: Waiters | None = None,
    ping_interval: float = 15.0,
    wot: WotBinding | None = None,
) -> FastAPI:
    """The REST bridge's ASGI application for ``gateway``.

    ``waiters`` is where long-polls and event streams wait for pushed downlinks
    (:class:`HttpBridge` passes its own); without one, a private one is used and
    waiting requests see only what is queued when they arrive or poll.
    ``wot``: also serve the WoT HTTP binding (:mod:`safething_gateway.bridges.wot`).
    """
    hub = waiters if waiters is not None else Waiters()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            hub.close(_SHUTTING_DOWN)
            if wot is not None:
                await wot.close()

    app = FastAPI(
        title="SAFEthing gateway",
        version="1",
        summary="Device protocol over HTTP, and the gateway's operations endpoints",
        description=__doc__ or "",
        lifespan=lifespan,
    )
    app.router.route_class = _GuardedRoute
    app.state.gateway = gateway
    app.state.waiters = hub
    _install_error_handlers(app)
    if wot is not None:
        app.include_router(wot_router(wot))

    def sent(count: int = 1) -> None:
        gateway.metrics.inc("safething_gateway_messages_out_total", count, transport=TRANSPORT)

    def rejected(error: ProtocolError) -> ProtocolError:
        """Count a refusal made here, before the gateway saw the message."""
        gateway.metrics.inc(
            "safething_gateway_rejected_total", reason=error.reason, transport=TRANSPORT
        )
        return error

    def downlink_response(channel: str, message: bytes, *, more: int) -> Response:
        return Response(
            message,
            media_type=FRAME_TYPE,
            headers={"ST-Channel": channel, "ST-More": str(more)},
        )

    @app.post(
        "/st/v1/devices/{device_id}/{channel:path}",
        summary="Send a device message (uplink), or poll for downlinks",
        description=(
            "The body is one framed message `ST2 <counter> <tag>\\n<ciphertext>` for this device "
            "and channel (`birth`, `reading`, `event/<topic>`, `result/<request>`, `state`, "
            "`ack`, `poll`). Uplinks answer 204. `poll` answers 200 with one framed "
            "downlink (headers `ST-Channel`, `ST-More`) or 204 when none is waiting; "
            "with `wait` it holds an empty poll open until a downlink is queued."
        ),
        status_code=204,
        response_class=Response,
        responses={**_POLL_RESPONSES, **_problems(400, 401, 403, 404, 409, 413, 415, 422, 429)},
        openapi_extra=_FRAME_BODY,
        tags=["devices"],
    )
    async def device_message(
        request: Request,
        device_id: str,
        channel: str,
        wait: float = Query(
            0.0,
            ge=0,
            description=f"`poll` only: seconds to hold an empty poll open (at most {MAX_WAIT:g})",
        ),
    ) -> Response:
        try:
            fmt = _format_of(request)
            data = await _read_limited(request)
        except ProtocolError as e:
            raise rejected(e) from None
        downlinks = await gateway.handle(
            device_id, channel, data, content_format=fmt, transport=TRANSPORT
        )
        if channel != "poll":
            return Response(status_code=204)
        if downlinks:
            sent()
            first = downlinks[0]
            return downlink_response(first.channel, first.frame, more=len(downlinks) - 1)
        if wait > 0:
            waiter = hub.add(device_id, once=True, limit=_HELD)
            try:
                item = await _wait_for_downlink(request, waiter, min(wait, MAX_WAIT))
            except _Closing:
                return _closing_response()
            finally:
                hub.remove(waiter)
            if item is not None:
                down_channel, message = item
                counter = parse_frame(message).counter
                more = sum(1 for d in gateway.registry.pending(device_id) if d.counter != counter)
                return downlink_response(down_channel, message, more=more)
        return Response(status_code=204, headers={"ST-More": "0"})

    @app.get(
        "/st/v1/devices/{device_id}/down/stream",
        summary="Receive downlinks as Server-Sent Events",
        description=(
            "Authenticated like a poll: `c` and `m` are the counter and MAC of a `poll` "
            "message with an empty body (`ST2 <c> <m>\\n`). Each waiting and each new "
            "downlink is one event: `id:` its counter, `event:` its channel, `data:` the "
            "framed downlink in standard base64. Comment lines (`: ping`) keep the "
            "connection alive."
        ),
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "An endless event stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_problems(400, 401, 403, 404, 409, 422, 429),
        },
        tags=["devices"],
    )
    async def down_stream(
        device_id: str,
        c: str = Query(description="Counter of the empty `poll` message"),
        m: str = Query(description="MAC (64 hex digits) of the empty `poll` message"),
    ) -> Response:
        try:
            header = empty_frame(c, m)
        except ProtocolError as e:
            raise rejected(e) from None
        first = await gateway.handle(device_id, "poll", header, transport=TRANSPORT)
        stream = hub.add(device_id, limit=_HELD)

        async def events() -> AsyncIterator[str]:
            yield ": SAFEthing downlinks\n\n"
            for downlink in first:
                sent()
                yield _sse_event(downlink.channel, downlink.frame)
            while True:
                try:
                    item = await asyncio.wait_for(stream.get(), ping_interval)
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if item is None:
                    return
                yield _sse_event(*item)

        return _EventStream(events(), on_close=lambda: hub.remove(stream))

    @app.get(
        "/healthz",
        summary="Health of the gateway",
        description=(
            '200 `{"status": "ok", "bridges": [...], "devices": n}` when the '
            "registry and the data store answer, else 503 with a problem document."
        ),
        responses={
            200: {
                "description": "Healthy",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["ok"]},
                                "bridges": {"type": "array", "items": {"type": "object"}},
                                "devices": {"type": "integer"},
                            },
                        }
                    }
                },
            },
            **_problems(503),
        },
        tags=["operations"],
    )
    async def healthz() -> Response:
        health = await gateway.health()
        if health.problem is not None:
            return problem_response(problem(503, *health.problem))
        devices = health.devices
        bridges = [
            {"name": b.name, "endpoints": b.endpoints(), "connected": b.connected()}
            for b in gateway.bridges
        ]
        return JSONResponse({"status": "ok", "bridges": bridges, "devices": devices})

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        description="Counters (messages in, out, rejected by reason) and gauges "
        "(connected devices, queue depths, provisioned devices) in the Prometheus "
        "text exposition format 0.0.4.",
        response_class=Response,
        responses={200: {"description": "Metrics", "content": {PROMETHEUS_TYPE: {}}}},
        tags=["operations"],
    )
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=PROMETHEUS_TYPE)

    return app


# --- the bridge -----------------------------------------------------------------------


def _guarded_protocol(
    base: type[asyncio.Protocol], *, header_timeout: float, max_connections: int
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with two limits it lacks, against slowloris: a connection
    that has not sent a whole request head within ``header_timeout`` seconds is closed,
    and above ``max_connections`` the oldest such half-open connection is closed to make
    room (the newcomer is refused only when every connection is busy with a request)."""
    waiting: dict[Any, asyncio.TimerHandle] = {}  # half-open connections, oldest first
    open_: set[Any] = set()

    class Guarded(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            open_.add(self)
            if len(open_) > max_connections:
                victim = next((p for p in waiting if p is not self), None)
                if victim is None:
                    log.warning("http: %d connections, all busy: refusing one", len(open_))
                    transport.close()
                    return
                log.info("http: %d connections: closing the oldest half-open one", len(open_))
                victim._st_close()
            loop = asyncio.get_running_loop()
            waiting[self] = loop.call_later(header_timeout, self._st_expired)

        def _st_expired(self) -> None:
            waiting.pop(self, None)
            if getattr(self, "cycle", None) is None:  # still no request head
                self._st_close()

        def _st_close(self) -> None:
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()
            transport = getattr(self, "transport", None)
            if transport is not None:
                transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            open_.discard(self)
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self in waiting and getattr(self, "cycle", None) is not None:
                waiting.pop(self).cancel()  # a request head arrived: no longer half-open

    return Guarded


class _Server(uvicorn.Server):
    """uvicorn inside someone else's event loop: it reports when it listens and leaves
    the process's signal handlers alone (the gateway's owner handles signals)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpBridge(Bridge):
    """Serves :func:`create_app` with uvicorn on ``bind``:``port`` (``port=0``: a free
    port, known as :attr:`port` once started)."""

    name = "http"

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 8080,
        *,
        ping_interval: float = 15.0,
        access_log: bool = False,
        header_timeout: float = 10.0,
        keep_alive: int = 5,
        max_connections: int = 1000,
        tokens: TokenStore | None = None,
    ) -> None:
        self.bind = bind
        self.tokens = tokens
        """With a token directory, the WoT HTTP binding is served too."""
        self.wot: WotBinding | None = None
        self.port = port
        self.header_timeout = header_timeout
        """Seconds a new connection has to send a whole request head (slowloris)."""
        self.keep_alive = keep_alive
        """Seconds an idle keep-alive connection stays open (also bounds a slow second
        request head)."""
        self.max_connections = max_connections
        """Open connections at most; the oldest half-open one makes room for a new one.
        Keep it well below the process's file limit (``LimitNOFILE`` in the unit)."""
        self.ping_interval = ping_interval
        self.access_log = access_log
        self.waiters = Waiters()
        self.app: FastAPI | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, gateway: Gateway) -> None:
        if self._task is not None:
            return
        self.waiters = Waiters()
        self.wot = WotBinding(gateway, self.tokens) if self.tokens is not None else None
        self.app = create_app(
            gateway, waiters=self.waiters, ping_interval=self.ping_interval, wot=self.wot
        )
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.create_server((self.bind, self.port), family=family)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=self.access_log,
            lifespan="on",
            timeout_graceful_shutdown=5,
            server_header=False,
            timeout_keep_alive=self.keep_alive,
            backlog=128,  # accepted in one go before the limits above can act
        )
        config.load()
        config.http_protocol_class = _guarded_protocol(
            config.http_protocol_class,
            header_timeout=self.header_timeout,
            max_connections=self.max_connections,
        )
        server = self._server = _Server(config)
        task = asyncio.get_running_loop().create_task(
            self._serve(server, sock), name=f"http-bridge:{self.bind}:{self.port}"
        )
        ready = asyncio.get_running_loop().create_task(
            server.ready.wait(), name="http-bridge:startup"
        )
        try:
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled while starting: leave nothing running
            server.should_exit = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if not server.ready.is_set():
            error = task.exception() if not task.cancelled() else None
            sock.close()
            self._server = None
            raise RuntimeError(f"HTTP bridge on {self.bind}:{self.port} did not start") from error
        self._task = task
        log.info("HTTP bridge listening on %s", self.endpoints()[0])

    @staticmethod
    async def _serve(server: _Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as e:  # uvicorn exits on a failed startup
            raise RuntimeError(f"uvicorn startup failed (exit {e.code})") from None
        finally:
            sock.close()

    async def close(self) -> None:
        task, server = self._task, self._server
        self._task = self._server = None
        # waiting requests answer now, so uvicorn need not wait for them
        self.waiters.close(_SHUTTING_DOWN)
        if self.wot is not None:
            self.wot.closing.set()
        if task is None or server is None:
            return
        server.should_exit = True
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except Exception:
            log.exception("HTTP bridge stopped with an error")

    def can_push(self, device_id: str) -> bool:
        return self.waiters.can_push(device_id)

    async def push(self, device_id: str, channel: str, message: bytes) -> bool:
        return self.waiters.push(device_id, channel, message)

    def connected(self) -> int:
        return self.waiters.connected()

    def endpoints(self) -> list[str]:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return [f"http://{host}:{self.port}"]
