"""The WoT HTTP binding: standard Web of Things consumers use the things the gateway reaches.

Mounted on the REST bridge's application (:func:`wot_router`) when the
gateway has a token directory. Every interaction goes through a
:class:`~safething.things.ThingClient` acting as the identity the request's
bearer token stands for (see :mod:`safething_gateway.tokens`): reads return
values that client verified (signature, permission, version) and decrypted
if that identity holds the key; an invoke is an action request signed by
that identity, checked by the thing against the action's access type.

======================================================  ==========================
``GET /wot/<id>``                                        Thing Description (no token
                                                         needed) with ``safe://`` and
                                                         HTTP forms
``GET|HEAD /wot/<id>/properties/<name>``                 readproperty (JSON value)
``PUT /wot/<id>/properties/<name>``                      writeproperty (a desired value)
``GET|HEAD /wot/<id>/properties/<name>/observe``         observeproperty, long-poll
``GET /wot/<id>/properties/<name>/history``              archived values
                                                         (``since``, ``until``, ``every``)
``POST /wot/<id>/actions/<name>``                        invokeaction: JSON object of
                                                         arguments; answers when the
                                                         action ends (its result), with
                                                         ``Location`` of its state
``GET /wot/<id>/actions/<name>/<request id>``            the request's current state
``GET|HEAD /wot/<id>/events/<topic>``                    subscribeevent, long-poll
``GET /wot/<id>/availability``                           online/offline, last seen
``GET /wot``                                             the things, with TD links
======================================================  ==========================

**Long-poll.** ``HEAD`` answers at once (the handshake node-wot makes);
``GET`` answers with the next value. The gateway remembers, per token and
interaction, the last sequence number it served, so a consumer that polls
again after a value gets every later one: events are not lost between polls
(as far back as the topic's ring), a property gives its newest value.

Errors are ``application/problem+json``: 401 no or bad token, 403 the
identity may not read or request that, 404 unknown thing or name, 400 bad
arguments, 409 the action did not end *done* (its state and message in the
body), 502 a record failed verification, 503 the thing is offline and the
consumer asked ``?queue=false``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from safething.errors import (
    AccessDeniedError,
    ActionFailedError,
    NoSuchDataError,
    PermissionDeniedError,
    SafeThingError,
    TamperedDataError,
    ThingOfflineError,
)
from safething.net import Client
from safething.things import (
    ActionHandle,
    Notification,
    ThingClient,
    UnknownFieldError,
    to_thing_description,
)
from safething.things.discovery import list_things
from safething_gateway.core import Gateway
from safething_gateway.replies import problem
from safething_gateway.tokens import TokenError, TokenGrant, TokenStore

__all__ = ["WotBinding", "wot_router"]

log = logging.getLogger("safething_gateway.wot")

PROBLEM_JSON = "application/problem+json"
_MAX_BODY = 64 * 1024
_MAX_HANDLES = 1000
_MAX_CURSORS = 10_000


def _problem(status: int, reason: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="safething"'} if status == 401 else None
    return JSONResponse(
        problem(status, reason, detail, **extra),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def error_response(error: Exception) -> JSONResponse:
    """One mapping from the core's errors to the binding's answers."""
    if isinstance(error, TokenError):
        return _problem(401, "unauthorized", str(error))
    if isinstance(error, AccessDeniedError | PermissionDeniedError):
        return _problem(403, "forbidden", str(error))
    if isinstance(error, ThingOfflineError):
        return _problem(503, "offline", str(error), last_seen=error.last_seen)
    if isinstance(error, TamperedDataError):
        return _problem(502, "tampered", str(error))
    if isinstance(error, NoSuchDataError | UnknownFieldError):
        return _problem(404, "not_found", str(error))
    if isinstance(error, ActionFailedError):
        return _problem(409, "action_" + error.state, str(error), state=error.state)
    if isinstance(error, ValueError | TypeError | SafeThingError):
        return _problem(400, "bad_request", str(error))
    raise error


class WotBinding:
    """State shared by the binding's routes: clients per identity, cursors, handles."""

    def __init__(self, gateway: Gateway, tokens: TokenStore) -> None:
        self.gateway = gateway
        self.tokens = tokens
        self._clients: dict[bytes, ThingClient] = {}
        self._cursors: OrderedDict[tuple[str, str, str, str], int] = OrderedDict()
        self._handles: OrderedDict[str, tuple[str, ActionHandle]] = OrderedDict()
        self.closing = asyncio.Event()

    def grant(self, request: Request) -> TokenGrant:
        return self.tokens.check(request.headers.get("authorization"))

    def client(self, grant: TokenGrant) -> ThingClient:
        key = grant.identity.public_sign_key.value
        things = self._clients.get(key)
        if things is None:
            things = self._clients[key] = ThingClient(Client(self.gateway.store, grant.identity))
        return things

    def cursor(self, key: tuple[str, str, str, str]) -> int | None:
        return self._cursors.get(key)

    def advance(self, key: tuple[str, str, str, str], seq: int) -> None:
        self._cursors[key] = max(seq, self._cursors.get(key, 0))
        self._cursors.move_to_end(key)
        while len(self._cursors) > _MAX_CURSORS:
            self._cursors.popitem(last=False)

    def keep(self, grant: TokenGrant, handle: ActionHandle) -> None:
        self._handles[handle.request_id] = (grant.name, handle)
        while len(self._handles) > _MAX_HANDLES:
            self._handles.popitem(last=False)

    def handle(self, grant: TokenGrant, request_id: str) -> ActionHandle:
        found = self._handles.get(request_id)
        if found is None or found[0] != grant.name:
            raise NoSuchDataError(f"no action request {request_id!r} made with this token")
        return found[1]

    async def close(self) -> None:
        self.closing.set()
        for things in self._clients.values():
            await things.close()
        self._clients.clear()


async def _next_or_gone(
    binding: WotBinding, request: Request, stream: AsyncIterator[Notification]
) -> Notification | None:
    """The next notification, or None when the consumer went away or the gateway stops."""
    nxt = asyncio.ensure_future(anext(stream))
    closing = asyncio.ensure_future(binding.closing.wait())

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    left = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({nxt, closing, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (closing, left):
            task.cancel()
        await asyncio.gather(closing, left, return_exceptions=True)
    if nxt.done():
        return nxt.result()
    nxt.cancel()
    await asyncio.gather(nxt, return_exceptions=True)
    return None


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(value, ensure_ascii=False, default=str),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _body(request: Request) -> Any:
    data = b""
    async for piece in request.stream():
        data += piece
        if len(data) > _MAX_BODY:
            raise ValueError(f"request body larger than {_MAX_BODY} bytes")
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ValueError(f"request body is not JSON: {e}") from None


def wot_router(binding: WotBinding) -> APIRouter:
    """The routes of the binding (see the module docstring)."""
    router = APIRouter(prefix="/wot", tags=["wot"])

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @router.get("", summary="The things this gateway reaches")
    async def things(request: Request) -> Response:
        try:
            binding.grant(request)
            found = await list_things(Client(binding.gateway.store))
        except Exception as e:
            return error_response(e)
        root = base_url(request)
        return _json(
            {
                "things": [
                    {**s.to_dict(), "td": f"{root}/wot/{s.id}"}
                    for s in found
                    if s.status != "disabled"
                ]
            }
        )

    @router.get("/{thing_id}", summary="Thing Description with HTTP forms")
    async def thing_description(thing_id: str, request: Request) -> Response:
        try:
            description = await ThingClient(Client(binding.gateway.store)).describe(thing_id)
        except Exception as e:
            return error_response(e)
        td = to_thing_description(description, http=base_url(request))
        return _json(td, headers={"Content-Type": "application/td+json"})

    @router.api_route(
        "/{thing_id}/properties/{name}", methods=["GET", "HEAD"], summary="readproperty"
    )
    async def read_property(thing_id: str, name: str, request: Request) -> Response:
        try:
            things = binding.client(binding.grant(request))
            reading = await things.read(thing_id, name)
        except Exception as e:
            return error_response(e)
        return _json(reading.value)

    @router.put("/{thing_id}/properties/{name}", summary="writeproperty (desired value)")
    async def write_property(thing_id: str, name: str, request: Request) -> Response:
        try:
            things = binding.client(binding.grant(request))
            await things.set_desired(thing_id, name, await _body(request))
        except Exception as e:
            return error_response(e)
        return Response(status_code=204)

    @router.get("/{thing_id}/properties/{name}/history", summary="archived values")
    async def history(
        thing_id: str,
        name: str,
        request: Request,
        since: float | None = None,
        until: float | None = None,
        every: float | None = None,
    ) -> Response:
        try:
            things = binding.client(binding.grant(request))
            low = since if since is not None else time.time() - 86_400
            if every is not None:
                buckets = await things.history(thing_id, name, since=low, until=until, every=every)
                return _json({"buckets": [b.to_dict() for b in buckets]})
            readings = await things.history(thing_id, name, since=low, until=until)
        except Exception as e:
            return error_response(e)
        return _json(
            {"points": [{"seq": r.seq, "t": r.timestamp, "value": r.value} for r in readings]}
        )

    async def long_poll(request: Request, thing_id: str, kind: str, name: str) -> Response:
        try:
            grant = binding.grant(request)
            things = binding.client(grant)
            if request.method == "HEAD":
                if kind == "event":
                    (await things.view(thing_id)).description.topic(name)
                else:
                    await things.read(thing_id, name)
                return Response(status_code=200)
            key = (grant.name, thing_id, kind, name)
            sub = things.subscribe(
                thing_id,
                topic=name if kind == "event" else None,
                attribute=name if kind == "attribute" else None,
                after=binding.cursor(key),
            )
            async with sub:
                note = await _next_or_gone(binding, request, sub)
        except Exception as e:
            return error_response(e)
        if note is None:
            return _problem(503, "closing", "the gateway is stopping or the consumer left")
        binding.advance(key, note.seq)
        return _json(note.value)

    @router.api_route(
        "/{thing_id}/properties/{name}/observe",
        methods=["GET", "HEAD"],
        summary="observeproperty (long-poll)",
    )
    async def observe_property(thing_id: str, name: str, request: Request) -> Response:
        return await long_poll(request, thing_id, "attribute", name)

    @router.api_route(
        "/{thing_id}/events/{topic}", methods=["GET", "HEAD"], summary="subscribeevent (long-poll)"
    )
    async def subscribe_event(thing_id: str, topic: str, request: Request) -> Response:
        return await long_poll(request, thing_id, "event", topic)

    @router.post("/{thing_id}/actions/{name}", summary="invokeaction")
    async def invoke(thing_id: str, name: str, request: Request, queue: bool = True) -> Response:
        try:
            grant = binding.grant(request)
            things = binding.client(grant)
            args = await _body(request)
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise ValueError("the action's input is a JSON object of its parameters")
            handle = await things.request(
                thing_id, name, queue_if_offline=queue, **{str(k): v for k, v in args.items()}
            )
            binding.keep(grant, handle)
            location = f"/wot/{thing_id}/actions/{name}/{handle.request_id}"
            result = await handle.result()
        except Exception as e:
            response = error_response(e)
            if isinstance(e, ActionFailedError):
                response.headers["Location"] = location
            return response
        return _json(result, headers={"Location": location})

    @router.get("/{thing_id}/actions/{name}/{request_id}", summary="queryaction")
    async def query_action(thing_id: str, name: str, request_id: str, request: Request) -> Response:
        try:
            handle = binding.handle(binding.grant(request), request_id)
        except Exception as e:
            return error_response(e)
        s = handle.status
        return _json(
            {
                "request": handle.request_id,
                "action": handle.action,
                "status": s.state,
                "progress": s.progress,
                "message": s.message,
                "output": s.result,
                "timestamp": s.timestamp,
                "offline": handle.offline,
            }
        )

    @router.get("/{thing_id}/availability", summary="online/offline and last seen")
    async def availability(thing_id: str, request: Request) -> Response:
        try:
            live = await binding.client(binding.grant(request)).availability(thing_id)
        except Exception as e:
            return error_response(e)
        return _json(live.to_dict())

    return router
