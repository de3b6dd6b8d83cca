"""The CoAP bridge: devices speak CoAP over UDP (RFC 7252) to an aiocoap server.

Resources (``<device>`` is the device id, ``<channel>`` an uplink channel of
:mod:`safething_gateway.protocol`, one or two path segments)::

    POST /st/v1/<device>/<channel>      birth, reading, state, ack, poll,
                                        event/<topic>, result/<request-id>
    GET  /st/v1/<device>/down?c=<counter>&m=<mac>     (Observe: 0 to observe)
    GET  /.well-known/core

**Uplinks.** The payload of a ``POST`` is one framed message
``ST2 <counter> <tag>\\n<ciphertext>`` (``ST1`` for a device provisioned with
it); the tag covers the channel named by the path. Content-Format 50
(``application/json``) or 60 (``application/cbor``) says how the sealed body is
encoded (absent: JSON; anything else: 4.15). The reply
is 2.04 Changed with no payload, or for ``poll`` 2.05 Content carrying the
downlink list. Bodies larger than a datagram go block-wise (RFC 7959, Block1);
a message above ``MAX_MESSAGE_BYTES`` is refused with 4.13 and ``Size1`` as
soon as its size is known (the ``Size1`` option or the block offset), before
anything else is done with it.

**Downlinks.** ``GET .../down`` is authenticated as a ``poll`` uplink with an
empty body: the query carries that message's counter ``c`` and MAC ``m``
(the frame the gateway checks is ``ST2 <c> <m>\\n``, so
``m = HMAC-SHA256(mac key up, "ST2\\n<device>\\npoll\\n<c>\\n")``). The reply is
2.05 with every pending downlink. With ``Observe: 0`` the request also
registers an observation (RFC 7641): each downlink queued afterwards is sent
as a notification (2.05, confirmable when the registration was) as soon as
the gateway queues it. One observation per device; a newer registration
ends the older one (final 5.03). The device acknowledges each downlink with an
``ack`` uplink (``{"down": <counter>}``); the gateway keeps unacknowledged
downlinks and sends them again in the reply to the next poll or registration.

**Downlink list** (reply to ``poll``, ``GET .../down`` and each notification):
an array of ``[channel, frame]`` pairs, oldest first, possibly empty, where
``frame`` is the framed downlink ``ST2 <counter> <tag>\\n<ciphertext>`` (body
JSON) whose tag covers ``channel``:

* Content-Format 60 (CBOR, the default): ``[[text, bytes], ...]``, e.g.
  ``[["action/r1", h'5354312037...']]``;
* Content-Format 50 (JSON): ``[["action/r1", "U1QyIDcg..."]]``, the frame in
  base64 (an ST1 frame as it is: ``"ST1 7 9f2c...\\n{...}"``).

The format is the request's Accept option (50 or 60; anything else: 4.06),
else the Content-Format of the ``poll`` request, else CBOR. A notification
holds as many downlinks as fit in one datagram (1024 bytes of payload); the
rest follow in further notifications.

**Errors** are replied with the CoAP code of the :class:`ProtocolError` and a
diagnostic payload (RFC 7252 §5.5.2, UTF-8 text, no Content-Format)
``<reason>: <detail>``, e.g. ``4.01`` ``bad_mac: wrong MAC for ...``; the
reason word separates the two kinds of 4.03 (``revoked``, ``replay``) and of
4.04 (``unknown_device``, ``unknown_channel``; ``not_found`` for a path
outside the layout). 4.29 carries ``Max-Age``, the seconds to wait. A store
outage is 5.03 (``store_unavailable``), any other failure 5.00
(``internal_error``), its text in the gateway's log only: nothing escapes to
aiocoap's bare 5.00. The mapping is :func:`safething_gateway.replies.reply_for`,
the same for every transport.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import aiocoap
import cbor2
from aiocoap import error as coap_error
from aiocoap import resource
from aiocoap.blockwise import ContinueException, IncompleteException
from aiocoap.blockwise import _extract_block_key as _block_key
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.util.linkformat import Link, LinkFormat

from safething_gateway.bridges.waiters import Waiters
from safething_gateway.broker import free_port
from safething_gateway.core import Bridge, Gateway
from safething_gateway.protocol import (
    MAX_MESSAGE_BYTES,
    BadMessageError,
    Frame,
    ProtocolError,
    TooLargeError,
    check_channel,
    empty_frame,
)
from safething_gateway.replies import Reply, reply_for

__all__ = ["PREFIX", "CoapBridge", "decode_downlinks", "encode_downlinks"]

log = logging.getLogger("safething.gateway.coap")

PREFIX = ("st", "v1")
"""Path of the device resources."""
JSON, CBOR, LINK_FORMAT = 50, 60, 40
"""The content formats used here (RFC 7252 §12.3, RFC 8949)."""
_FORMATS = {JSON: "json", CBOR: "cbor"}
_NOTIFICATION_BUDGET = 1024
"""Payload bytes per notification (one datagram without block-wise transfer)."""
_CLOSE_GRACE = 1.0

_LINKS = (
    ("birth", "safething.birth"),
    ("state", "safething.state"),
    ("reading", "safething.reading"),
    ("ack", "safething.ack"),
    ("poll", "safething.poll"),
)


# --- payload encodings -----------------------------------------------------------------


def encode_downlinks(downlinks: Sequence[tuple[str, bytes]], content_format: int = CBOR) -> bytes:
    """The downlink list: ``[[channel, frame], ...]`` in CBOR (60) or JSON (50)."""
    if content_format == JSON:
        items = [[channel, _frame_text(data)] for channel, data in downlinks]
        return json.dumps(items, separators=(",", ":")).encode()
    return bytes(cbor2.dumps([[channel, bytes(data)] for channel, data in downlinks]))


def _frame_text(data: bytes) -> str:
    """A frame as a JSON string: an ST1 frame as it is (text), any other in base64 (an ST2
    frame's ciphertext is binary)."""
    if data.startswith(b"ST1 "):
        return data.decode()
    return base64.b64encode(data).decode()


def _frame_bytes(text: str) -> bytes:
    if text.startswith("ST1 "):
        return text.encode()
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        raise BadMessageError(f"a JSON downlink frame is ST1 text or base64: {e}") from e


def decode_downlinks(payload: bytes, content_format: int = CBOR) -> list[tuple[str, bytes]]:
    """Inverse of :func:`encode_downlinks`; ``BadMessageError`` if it is not a downlink list."""
    if not payload:
        return []
    try:
        items = json.loads(payload) if content_format == JSON else cbor2.loads(payload)
    except Exception as e:
        raise BadMessageError(f"not a downlink list: {e}") from e
    if not isinstance(items, list):
        raise BadMessageError("a downlink list is an array of [channel, frame] pairs")
    out: list[tuple[str, bytes]] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise BadMessageError("a downlink list is an array of [channel, frame] pairs")
        data = _frame_bytes(item[1]) if isinstance(item[1], str) else item[1]
        if not isinstance(data, bytes):
            raise BadMessageError("a downlink frame is a byte or text string")
        out.append((item[0], data))
    return out


def _code(text: str) -> Code:
    """``"4.01"`` -> the CoAP code."""
    major, _, minor = text.partition(".")
    return Code((int(major) << 5) + int(minor))


def _diagnostic(code: Code | str, reason: str, detail: str, **options: Any) -> aiocoap.Message:
    """An error reply with an RFC 7252 §5.5.2 diagnostic payload."""
    return aiocoap.Message(
        code=_code(code) if isinstance(code, str) else code,
        payload=f"{reason}: {detail}".encode(),
        **options,
    )


def coap_reply(reply: Reply) -> aiocoap.Message:
    """The CoAP rendering of a :class:`Reply` (see :mod:`safething_gateway.replies`):
    its code and a diagnostic payload; 4.13 with ``Size1``, a wait as ``Max-Age`` (4.29,
    and 5.03, whose Max-Age says when to retry: RFC 7252 §5.9.3.4; without one a device
    would wait the default 60 s)."""
    options: dict[str, Any] = {}
    if reply.reason == TooLargeError.reason:
        options["size1"] = MAX_MESSAGE_BYTES
    if reply.retry_after is not None:
        options["max_age"] = reply.retry_after
    return aiocoap.Message(code=_code(reply.coap), payload=reply.diagnostic(), **options)


def _error_reply(error: BaseException, gateway: Gateway, where: str) -> aiocoap.Message:
    return coap_reply(reply_for(error, where=where, rate=gateway.rate))


class _Reply(Exception):
    """Ends handling early with a ready reply (bad options, unknown path)."""

    def __init__(self, message: aiocoap.Message) -> None:
        super().__init__(message.code)
        self.message = message


def _batch(
    pending: list[tuple[str, bytes]], content_format: int
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Split off the longest head of ``pending`` that fits one notification (at least one)."""
    n = min(len(pending), 1)
    while (
        n < len(pending)
        and len(encode_downlinks(pending[: n + 1], content_format)) <= _NOTIFICATION_BUDGET
    ):
        n += 1
    return pending[:n], pending[n:]


# --- the aiocoap resources ------------------------------------------------------------


class _Root(resource.Site):  # type: ignore[misc]
    """The site, answering unknown paths with a diagnostic."""

    async def render_to_pipe(self, pipe: Any) -> None:
        try:
            await super().render_to_pipe(pipe)
        except coap_error.NotFound:
            path = "/" + "/".join(pipe.request.opt.uri_path)
            pipe.add_response(
                _diagnostic(
                    Code.NOT_FOUND, "not_found", f"no resource {path}; see /.well-known/core"
                ),
                is_last=True,
            )


class _Block1Assemblies:
    """Block1 (RFC 7959) partial bodies, bounded: aiocoap's own spool keeps every one
    ~93 s (MAX_TRANSMIT_WAIT) with no cap, before any id or MAC can be checked.

    A MAC covers the whole body, so it is checked once the last block is in; the device
    id is checked at the first block: for an id the registry does not know, only that
    first block is kept (it carries the frame's header), the others are acknowledged
    and dropped, and the end is answered like a wrong MAC, as for a whole message. At
    most ``per_device`` assemblies per device id and ``total`` in all are kept (the
    oldest goes), each at most ``ttl`` seconds after its last block; a finished one is
    dropped at once."""

    def __init__(
        self, bridge: CoapBridge, *, ttl: float = 10.0, per_device: int = 2, total: int = 256
    ) -> None:
        self.bridge = bridge
        self.ttl = ttl
        self.per_device = per_device
        self.total = total
        self.parts: dict[Any, tuple[float, str, bool, Any]] = {}
        """block key -> (last block's time, device id, known device, assembled request)"""

    def feed_and_take(self, request: Any) -> Any:
        block1 = request.opt.block1
        if block1 is None:
            return request
        key = _block_key(request)
        now = time.monotonic()
        self._expire(now)
        if block1.block_number == 0:
            self.parts.pop(key, None)
            device_id = request.opt.uri_path[0] if request.opt.uri_path else ""
            known = self.bridge._known_device(device_id)
            mine = [k for k, v in self.parts.items() if v[1] == device_id]
            while len(mine) >= self.per_device:
                self.parts.pop(mine.pop(0), None)
            while len(self.parts) >= self.total:
                self.parts.pop(next(iter(self.parts)))
            self.parts[key] = (now, device_id, known, request)
        else:
            entry = self.parts.pop(key, None)
            if entry is None:
                raise IncompleteException
            _, device_id, known, assembled = entry
            if known:
                try:
                    assembled._append_request_block(request)
                except ValueError:
                    raise IncompleteException from None
            else:
                assembled.opt.block1 = block1  # nothing kept beyond the first block
            self.parts[key] = (now, device_id, known, assembled)  # now the newest
        if block1.more:
            raise ContinueException(block1)
        return self.parts.pop(key)[3]

    def _expire(self, now: float) -> None:
        while self.parts:
            key, (stamp, *_) = next(iter(self.parts.items()))
            if now - stamp < self.ttl:
                return
            del self.parts[key]


class _DeviceResources(resource.Resource, resource.PathCapable):  # type: ignore[misc]
    """Everything under ``/st/v1``: routes ``<device>/<channel>`` to the bridge."""

    def __init__(self, bridge: CoapBridge) -> None:
        super().__init__()
        self.bridge = bridge
        self._block1 = bridge.block1

    def get_link_description(self) -> None:
        return None  # the bridge lists the per-device resources itself

    async def render_to_pipe(self, pipe: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.bridge._tasks.add(task)
        try:
            request = pipe.request
            try:
                device_id, channel = _route(request)
                if channel == "down" and request.opt.observe == 0:
                    await self.bridge._observe(pipe, device_id, request)
                    return
                _check_size(request)
            except _Reply as reply:
                pipe.add_response(reply.message, is_last=True)
                return
            except ProtocolError as e:
                pipe.add_response(self.bridge._reject(e), is_last=True)
                return
            # block-wise assembly (Block1) and slicing (Block2), then render()
            await super().render_to_pipe(pipe)
        except coap_error.RenderableError:
            raise  # aiocoap's own replies, e.g. 2.31 Continue between Block1 blocks
        except Exception as e:
            where = f"CoAP request {pipe.request!r}"
            pipe.add_response(coap_reply(reply_for(e, where=where)), is_last=True)
        finally:
            if task is not None:
                self.bridge._tasks.discard(task)

    async def render(self, request: Any) -> aiocoap.Message:
        try:
            device_id, channel = _route(request)
            if channel == "down":
                return await self.bridge._fetch(device_id, request)
            return await self.bridge._uplink(device_id, channel, request)
        except _Reply as reply:
            return reply.message
        except ProtocolError as e:
            return self.bridge._reject(e)


def _route(request: Any) -> tuple[str, str]:
    """``(device_id, channel)`` of a request under ``/st/v1``; checks path and method."""
    path = tuple(request.opt.uri_path)
    if len(path) not in (2, 3) or not all(path):
        where = "/".join((*PREFIX, *path))
        raise _Reply(
            _diagnostic(
                Code.NOT_FOUND,
                "not_found",
                f"no resource /{where}; use /st/v1/<device>/<channel> or /st/v1/<device>/down",
            )
        )
    device_id, channel = path[0], "/".join(path[1:])
    if channel == "down":
        if request.code != Code.GET:
            raise _Reply(
                _diagnostic(Code.METHOD_NOT_ALLOWED, "method_not_allowed", "down takes GET")
            )
        return device_id, channel
    check_channel(channel)  # UnknownChannelError: 4.04
    if request.code != Code.POST:
        raise _Reply(
            _diagnostic(Code.METHOD_NOT_ALLOWED, "method_not_allowed", f"{channel} takes POST")
        )
    return device_id, channel


def _check_size(request: Any) -> None:
    """``TooLargeError`` as soon as a message is known to exceed the limit, before
    block-wise assembly."""
    size = len(request.payload)
    block1 = request.opt.block1
    if block1 is not None:
        size = max(size, block1.block_number * block1.size + len(request.payload))
    if request.opt.size1 is not None:
        size = max(size, int(request.opt.size1))
    if size > MAX_MESSAGE_BYTES:
        raise TooLargeError(f"message of {size} bytes; the limit is {MAX_MESSAGE_BYTES}")


def _body_format(request: Any) -> str:
    """``"json"`` or ``"cbor"`` from the Content-Format option (absent: JSON)."""
    cf = request.opt.content_format
    if cf is None:
        return "json"
    if int(cf) not in _FORMATS:
        raise _Reply(
            _diagnostic(
                Code.UNSUPPORTED_CONTENT_FORMAT,
                "unsupported_content_format",
                f"content-format {int(cf)}; use 50 (JSON) or 60 (CBOR)",
            )
        )
    return _FORMATS[int(cf)]


def _reply_format(request: Any) -> int:
    """The downlink list's content format: Accept, else the request's, else CBOR."""
    accept = request.opt.accept
    if accept is not None:
        if int(accept) not in _FORMATS:
            raise _Reply(
                _diagnostic(
                    Code.NOT_ACCEPTABLE,
                    "not_acceptable",
                    f"downlink lists come as 60 (CBOR) or 50 (JSON), not {int(accept)}",
                )
            )
        return int(accept)
    cf = request.opt.content_format
    return int(cf) if cf is not None and int(cf) in _FORMATS else CBOR


# --- the bridge ----------------------------------------------------------------------------


class CoapBridge(Bridge):
    """CoAP over UDP with aiocoap: uplinks by POST, downlinks by poll or Observe.

    ``port=0`` picks a free UDP port; :attr:`port` is the real one after
    :meth:`start`.
    """

    name = "coap"

    def __init__(self, bind: str = "127.0.0.1", port: int = 5683) -> None:
        self.bind = bind
        self.port = port
        self.gateway: Gateway | None = None
        self._context: Any = None
        self._observations = Waiters(exclusive=True)
        """One waiter per device holding an Observe registration on ``down``."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self.block1 = _Block1Assemblies(self)
        """Partial Block1 bodies (bounded; see :class:`_Block1Assemblies`)."""

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, gateway: Gateway) -> None:
        if self._context is not None:
            return
        self.gateway = gateway
        self._observations = Waiters(exclusive=True)
        site = _Root()
        site.add_resource(
            [".well-known", "core"], resource.WKCResource(self._links, impl_info=None)
        )
        self.resources = _DeviceResources(self)
        site.add_resource(list(PREFIX), self.resources)
        for attempt in range(5):
            port = self.port or free_port(socket.SOCK_DGRAM)
            try:
                self._context = await aiocoap.Context.create_server_context(
                    site,
                    bind=(self.bind, port),
                    transports=["udp6"],
                    loggername="safething.gateway.coap.aiocoap",
                )
            except OSError as e:
                if self.port or e.errno != errno.EADDRINUSE or attempt == 4:
                    raise
                continue
            self.port = port
            break
        log.info("CoAP bridge listening on %s", self.endpoints()[0])

    async def close(self) -> None:
        """End every observation (final 5.03), finish in-flight requests, stop aiocoap."""
        if self._context is None:
            return
        self._observations.close("the gateway is shutting down")
        tasks = set(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=_CLOSE_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        context, self._context = self._context, None
        await context.shutdown()

    # --- Bridge ------------------------------------------------------------------------

    def can_push(self, device_id: str) -> bool:
        return self._observations.can_push(device_id)

    async def push(self, device_id: str, channel: str, message: bytes) -> bool:
        return self._observations.push(device_id, channel, message)

    def connected(self) -> int:
        return self._observations.connected()

    def endpoints(self) -> list[str]:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return [f"coap://{host}:{self.port}"]

    # --- requests --------------------------------------------------------------------

    def _reject(self, error: ProtocolError) -> aiocoap.Message:
        """The reply to a message refused here before it reached the gateway (counted)."""
        gateway = self._gateway()
        gateway.metrics.inc(
            "safething_gateway_rejected_total", reason=error.reason, transport="coap"
        )
        log.info("rejected a CoAP request: %s", error)
        return _error_reply(error, gateway, "CoAP request")

    def _known_device(self, device_id: str) -> bool:
        """A provisioned, not revoked device (a read: microseconds, on the loop)."""
        if self.gateway is None:
            return False
        try:
            record = self.gateway.registry.find(device_id)
        except Exception:
            return False
        return record is not None and not record.revoked

    def _gateway(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the CoAP bridge is not started")
        return self.gateway

    async def _handle(
        self, device_id: str, channel: str, data: bytes | Frame, content_format: str
    ) -> list[tuple[str, bytes]]:
        """``Gateway.handle`` with its errors turned into replies; downlinks with channels."""
        gateway = self._gateway()
        try:
            downlinks = await gateway.handle(
                device_id, channel, data, content_format=content_format, transport="coap"
            )
        except Exception as e:  # a refusal (counted and logged by the gateway), or not
            raise _Reply(_error_reply(e, gateway, f"{device_id}/{channel}")) from None
        return [(d.channel, d.frame) for d in downlinks]

    async def _uplink(self, device_id: str, channel: str, request: Any) -> aiocoap.Message:
        body_format = _body_format(request)
        reply_format = _reply_format(request) if channel == "poll" else CBOR
        downlinks = await self._handle(device_id, channel, request.payload, body_format)
        if channel == "poll":
            return aiocoap.Message(
                code=Code.CONTENT,
                payload=encode_downlinks(downlinks, reply_format),
                content_format=ContentFormat(reply_format),
            )
        return aiocoap.Message(code=Code.CHANGED)

    async def _poll(self, device_id: str, request: Any) -> list[tuple[str, bytes]]:
        """Authenticate ``GET down?c=&m=`` as a ``poll`` with an empty body."""
        query = dict(q.partition("=")[::2] for q in request.opt.uri_query)
        counter, tag = query.get("c"), query.get("m")
        if not counter or not tag:
            raise BadMessageError("down needs ?c=<counter>&m=<mac of an empty poll message>")
        return await self._handle(device_id, "poll", empty_frame(counter, tag), "json")

    async def _fetch(self, device_id: str, request: Any) -> aiocoap.Message:
        reply_format = _reply_format(request)
        downlinks = await self._poll(device_id, request)
        return aiocoap.Message(
            code=Code.CONTENT,
            payload=encode_downlinks(downlinks, reply_format),
            content_format=ContentFormat(reply_format),
        )

    async def _observe(self, pipe: Any, device_id: str, request: Any) -> None:
        """Serve one Observe registration until the device goes or the gateway stops."""
        reply_format = _reply_format(request)
        pending = await self._poll(device_id, request)
        # Registered in the same step as the poll above (no await in between), so no
        # downlink queued meanwhile can miss both the first reply and the observation.
        observation = self._observations.add(device_id)
        sequence = 0
        try:
            while True:
                batch, pending = _batch(pending, reply_format)
                pipe.add_response(
                    aiocoap.Message(
                        code=Code.CONTENT,
                        payload=encode_downlinks(batch, reply_format),
                        content_format=ContentFormat(reply_format),
                        observe=sequence,
                    ),
                    is_last=False,
                )
                sequence = (sequence + 1) & 0xFFFFFF
                if not pending:
                    taken = await observation.take()
                    if taken is None:
                        pipe.add_response(
                            _diagnostic(
                                Code.SERVICE_UNAVAILABLE,
                                "observation_ended",
                                observation.end_reason or "ended",
                            ),
                            is_last=True,
                        )
                        return
                    pending = taken
        finally:
            self._observations.remove(observation)

    # --- /.well-known/core ---------------------------------------------------------------

    def _links(self) -> LinkFormat:
        """CoRE Link Format (RFC 6690): each CoAP device's resources, ``down`` observable.

        ``event/<topic>`` is listed for each topic of the device's description (known
        after its birth); ``result/<request-id>`` exists per request and is not listed.
        """
        links: list[Link] = []
        if self.gateway is None:
            return LinkFormat(links)
        for record in self.gateway.registry.devices():
            if record.transport != self.name or record.revoked:
                continue
            base = "/" + "/".join((*PREFIX, record.device_id))
            for channel, rt in _LINKS:
                links.append(Link(f"{base}/{channel}", rt=rt, ct="50 60"))
            topics = (record.description or {}).get("topics") or []
            for topic in topics:
                name = topic.get("name") if isinstance(topic, dict) else None
                if isinstance(name, str):
                    links.append(Link(f"{base}/event/{name}", rt="safething.event", ct="50 60"))
            links.append(Link(f"{base}/down", rt="safething.down", ct="60 50", obs=None))
        return LinkFormat(links)
