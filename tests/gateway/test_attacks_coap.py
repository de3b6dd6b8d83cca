"""Block-wise (RFC 7959 Block1) state against a real aiocoap server: bounded per device
and in all, the id checked at the first block, nothing kept once a message is done."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from safething.net import Identity
from safething.store import Store
from safething_gateway.bridges import coap as coap_module
from safething_gateway.bridges.coap import JSON, CoapBridge
from safething_gateway.core import Gateway
from safething_gateway.protocol import MAX_MESSAGE_BYTES
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device


@pytest.fixture
async def bridge(store: Store, registry: Registry) -> AsyncIterator[CoapBridge]:
    coap = CoapBridge(port=0)
    async with Gateway(
        store=store, registry=registry, owner=Identity.generate("owner"), bridges=[coap]
    ) as gateway:
        await gateway.start()
        yield coap


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    yield context
    await context.shutdown()


def held(bridge: CoapBridge) -> list[int]:
    """The partial bodies the server holds now (whichever spool the resource uses)."""
    spool = bridge.resources._block1
    parts = getattr(spool, "parts", None)
    if parts is not None:
        return [len(v[3].payload) for v in parts.values()]
    return [len(m.payload) for m in spool._assemblies._items.values()]


async def block(
    client: Any, bridge: CoapBridge, device: str, channel: str, number: int, data: bytes, more: bool
) -> Any:
    message = aiocoap.Message(
        code=Code.POST,
        uri=f"coap://127.0.0.1:{bridge.port}/st/v1/{device}/{channel}",
        payload=data,
        content_format=JSON,
    )
    message.opt.block1 = BlockOption.BlockwiseTuple(number, more, 6)  # 1024-byte blocks
    async with asyncio.timeout(30):
        return await client.request(message, handle_blockwise=False).response


def code(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 31:02d}"


async def test_block1_state_is_bounded_per_device_and_in_all(
    bridge: CoapBridge, client: Any
) -> None:
    assert bridge.gateway is not None
    bridge.gateway.registry.add("sensor-01", "coap")
    for i in range(10):  # ten unfinished uploads of one device (ten channels)
        r = await block(client, bridge, "sensor-01", f"event/t{i}", 0, b"x" * 1024, True)
        assert code(r) == "2.31"  # Continue: the server took the block
    assert len(held(bridge)) == 2
    for n in range(8):
        bridge.gateway.registry.add(f"other-{n:02d}", "coap")
    bridge.block1.total = 5
    for n in range(8):
        r = await block(client, bridge, f"other-{n:02d}", "reading", 0, b"y" * 1024, True)
        assert code(r) == "2.31"
    assert len(held(bridge)) == 5


async def test_block1_state_holds_256_uploads_in_all_by_default(
    bridge: CoapBridge, client: Any
) -> None:
    """The bound in all at its documented default: a stranger who starts 257 uploads
    under as many device ids (unknown ones: an id costs nothing) leaves 256 held, its
    oldest gone."""
    for n in range(257):
        r = await block(client, bridge, f"stranger-{n:03d}", "reading", 0, b"z" * 1024, True)
        assert code(r) == "2.31", (n, r.payload)
    assert len(held(bridge)) == 256
    assert {v[1] for v in bridge.block1.parts.values()} == {
        f"stranger-{n:03d}" for n in range(1, 257)
    }


async def test_an_unknown_devices_blocks_are_not_kept_and_it_is_answered_like_a_wrong_mac(
    bridge: CoapBridge, client: Any
) -> None:
    assert bridge.gateway is not None
    bridge.gateway.registry.add("sensor-01", "coap")
    answers = []
    for device in (Device("nobody-01", os.urandom(32)), Device("sensor-01", os.urandom(32))):
        data = device.message("reading", {"v": "z" * 2500})
        chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
        for number, chunk in enumerate(chunks):
            more = number < len(chunks) - 1
            r = await block(client, bridge, device.device_id, "reading", number, chunk, more)
            if more:
                assert code(r) == "2.31"
                sizes = held(bridge)
                assert len(sizes) == 1
                if device.device_id == "nobody-01":
                    assert sizes == [1024]  # only the first block (the frame's header)
        answers.append((code(r), r.payload.decode().replace(device.device_id, "X")))
        assert held(bridge) == []  # done: dropped at once
    assert answers[0] == answers[1]
    assert answers[0][0] == "4.01"


async def test_a_finished_blockwise_message_leaves_nothing_behind(
    bridge: CoapBridge, client: Any
) -> None:
    assert bridge.gateway is not None
    record = bridge.gateway.registry.add("sensor-01", "coap")
    device = Device("sensor-01", record.secret)
    doc = dict(SENSOR, title="d" * 3000)  # a birth of three blocks
    message = aiocoap.Message(
        code=Code.POST,
        uri=f"coap://127.0.0.1:{bridge.port}/st/v1/sensor-01/birth",
        payload=device.message("birth", {"description": doc}),
        content_format=JSON,
    )
    async with asyncio.timeout(30):
        r = await client.request(message).response
    assert code(r) not in ("2.31", "4.08"), r.payload  # the whole message was answered
    assert held(bridge) == []


async def test_a_block_past_the_size_limit_is_refused_at_once(
    bridge: CoapBridge, client: Any
) -> None:
    """Block1 offsets count: a block that would carry the body past MAX_MESSAGE_BYTES is
    refused (4.13) before anything is assembled, even a block of one byte, and a full
    block that skips ahead past the limit (its offset plus its length: whatever the
    block number, odd or even)."""
    assert bridge.gateway is not None
    bridge.gateway.registry.add("sensor-01", "coap")
    first = MAX_MESSAGE_BYTES // 1024  # this block starts exactly at the limit
    full = b"x" * 1024
    for number, data in ((first, b"x"), (first + 1, full), (first + 20, full)):
        r = await block(client, bridge, "sensor-01", "reading", number, data, True)
        assert code(r) == "4.13", (number, r.payload)
        assert r.opt.size1 == MAX_MESSAGE_BYTES
    assert held(bridge) == []
    # an upload of exactly the limit is assembled (and then read as a frame: not one)
    for number in range(first):
        more = number < first - 1
        r = await block(client, bridge, "sensor-01", "reading", number, b"x" * 1024, more)
        assert code(r) == ("2.31" if more else "4.00"), (number, r.payload)


def _open_requests(bridge: CoapBridge) -> int:
    """Requests the server still tracks (each a token manager's entry)."""
    return sum(len(t.incoming_requests) for t in bridge._context.request_interfaces)


async def test_refused_requests_leave_no_request_state_behind(
    bridge: CoapBridge, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refusal is the request's last response: the server forgets the request, so
    a flood of refused requests (each with its own token) holds no memory."""
    assert bridge.gateway is not None
    bridge.gateway.registry.add("sensor-01", "coap")
    base = f"coap://127.0.0.1:{bridge.port}"
    requests = [
        aiocoap.Message(code=Code.GET, uri=f"{base}/no/such/path"),  # not found
        aiocoap.Message(code=Code.POST, uri=f"{base}/st/v1/sensor-01"),  # no channel
        aiocoap.Message(code=Code.POST, uri=f"{base}/st/v1/sensor-01/launch"),
        aiocoap.Message(
            code=Code.POST, uri=f"{base}/st/v1/sensor-01/reading", payload=b"x" * 20_000
        ),
        aiocoap.Message(code=Code.POST, uri=f"{base}/st/v1/sensor-01/reading", payload=b"x"),
    ]
    for message in requests:
        async with asyncio.timeout(30):
            r = await client.request(message, handle_blockwise=False).response
        assert code(r).startswith("4."), r.payload
        assert (r.opt.size1 is not None) == (code(r) == "4.13")  # only 4.13 says the limit

    async def bug(*args: Any) -> Any:
        raise RuntimeError("a bug at /srv/secret/path")

    monkeypatch.setattr(bridge, "_uplink", bug)  # a failure no refusal foresaw: 5.00
    message = aiocoap.Message(code=Code.POST, uri=f"{base}/st/v1/sensor-01/reading")
    async with asyncio.timeout(30):
        r = await client.request(message, handle_blockwise=False).response
    assert code(r) == "5.00"
    # the gateway's own 5.00 (not aiocoap's bare one): what failed is in its log only
    assert r.payload == b"internal_error: the gateway failed to handle it; see its log"
    async with asyncio.timeout(30):
        while _open_requests(bridge):  # the last reply may still be on its way out
            await asyncio.sleep(0.01)
    assert not bridge._tasks  # nor a reference to any request's task


async def test_block1_state_expires_and_a_device_loses_its_oldest_first(
    bridge: CoapBridge, client: Any
) -> None:
    assert bridge.gateway is not None
    bridge.gateway.registry.add("sensor-01", "coap")

    def channels() -> list[str]:
        return [v[3].opt.uri_path[-1] for v in bridge.block1.parts.values()]

    for topic in ("t0", "t1", "t2"):  # a third upload of one device: its oldest goes
        r = await block(client, bridge, "sensor-01", f"event/{topic}", 0, b"x" * 1024, True)
        assert code(r) == "2.31"
    assert channels() == ["t1", "t2"]
    # t1's last block came longer ago than the ttl, t2's not quite: t1 expires (with
    # room for more uploads of the device, so that expiry, not its cap, removes it)
    bridge.block1.per_device = 5
    for key, (stamp, *rest) in list(bridge.block1.parts.items()):
        age = bridge.block1.ttl + 1 if rest[2].opt.uri_path[-1] == "t1" else 1
        bridge.block1.parts[key] = (stamp - age, *rest)
    r = await block(client, bridge, "sensor-01", "reading", 0, b"x" * 1024, True)
    assert channels() == ["t2", "reading"]
    # another device's uploads count against its own cap only, never this one's
    bridge.block1.per_device = 2
    bridge.gateway.registry.add("sensor-00", "coap")
    for topic in ("u0", "u1", "u2"):
        r = await block(client, bridge, "sensor-00", f"event/{topic}", 0, b"y" * 1024, True)
        assert code(r) == "2.31"
    assert channels() == ["t2", "reading", "u1", "u2"]


async def test_block1_uploads_expire_10_s_after_their_last_block(
    bridge: CoapBridge, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented expiry as a figure, on the bridge's own clock (moved by the test):
    an upload whose last block came 10.5 s ago is gone, one of 9.5 s ago is kept."""
    assert bridge.gateway is not None
    clock = [1_000.0]
    monkeypatch.setattr(coap_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    bridge.gateway.registry.add("sensor-01", "coap")
    bridge.gateway.registry.add("sensor-02", "coap")
    for topic in ("old", "young"):
        r = await block(client, bridge, "sensor-01", f"event/{topic}", 0, b"x" * 1024, True)
        assert code(r) == "2.31"
        clock[0] += 1.0
    clock[0] = 1_010.5  # "old" last heard of 10.5 s ago, "young" 9.5 s ago
    r = await block(client, bridge, "sensor-02", "reading", 0, b"y" * 1024, True)
    assert code(r) == "2.31"
    assert [v[3].opt.uri_path[-1] for v in bridge.block1.parts.values()] == [
        "young",
        "reading",
    ]


async def test_blocks_out_of_order_are_an_incomplete_request(
    bridge: CoapBridge, client: Any
) -> None:
    """A block that does not follow the ones kept is answered 4.08 (Request Entity
    Incomplete), as RFC 7959 §2.9.2 asks, and its upload is dropped."""
    assert bridge.gateway is not None
    bridge.gateway.registry.add("sensor-01", "coap")
    r = await block(client, bridge, "sensor-01", "reading", 0, b"x" * 1024, True)
    assert code(r) == "2.31"
    r = await block(client, bridge, "sensor-01", "reading", 2, b"x" * 1024, True)
    assert code(r) == "4.08", r.payload
    assert held(bridge) == []


async def test_a_request_in_progress_is_tracked_for_close(
    bridge: CoapBridge, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() finishes or cancels what is being handled: each request's task is known."""
    held_up, release = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any) -> Any:
        held_up.set()
        await release.wait()
        return aiocoap.Message(code=Code.CHANGED)

    monkeypatch.setattr(bridge, "_uplink", slow)
    message = aiocoap.Message(
        code=Code.POST, uri=f"coap://127.0.0.1:{bridge.port}/st/v1/sensor-01/reading"
    )
    pending = asyncio.ensure_future(client.request(message).response)
    async with asyncio.timeout(30):
        await held_up.wait()
    assert len(bridge._tasks) == 1
    release.set()
    async with asyncio.timeout(30):
        assert code(await pending) == "2.04"
    assert not bridge._tasks
