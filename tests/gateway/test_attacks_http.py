"""Attacks on the gateway through the HTTP bridge (real uvicorn on a free port).

Each test acts as the attacker of docs/security.md would: with no secret (listing
device ids, replaying a captured frame), or with one device's own secret (numbers
out of range, results for made-up request ids), and checks what the protection
promises: a clear 4xx answer, no counter spent, no tokens spent, bounded memory.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from safething.net import Identity
from safething.store import Store
from safething_gateway import core
from safething_gateway.bridges.http import HttpBridge
from safething_gateway.core import Gateway
from safething_gateway.protocol import MAX_MESSAGE_BYTES
from safething_gateway.registry import DownlinkQueueFullError, Registry

from .conftest import SENSOR, Device


@pytest.fixture
async def served(store: Store, registry: Registry) -> AsyncIterator[tuple[Gateway, str]]:
    bridge = HttpBridge("127.0.0.1", 0)
    owner = Identity.generate("owner")
    async with Gateway(
        store=store, registry=registry, owner=owner, bridges=[bridge], rate=1.0, burst=4
    ) as gateway:
        await gateway.start()
        yield gateway, bridge.endpoints()[0]


@pytest.fixture
async def http(served: tuple[Gateway, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served[1], timeout=10) as client:
        yield client


@pytest.fixture
async def victim(served: tuple[Gateway, str], http: httpx.AsyncClient) -> Device:
    gateway = served[0]
    record = gateway.registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    r = await post(http, device, "birth", {"description": SENSOR})
    assert r.status_code == 204, r.text
    return device


async def post(
    http: httpx.AsyncClient, device: Device, channel: str, body: object, **kw: int
) -> httpx.Response:
    data = device.message(channel, body, **kw)
    return await http.post(f"/st/v1/devices/{device.device_id}/{channel}", content=data)


def problem(r: httpx.Response) -> tuple[int, str, str]:
    doc = r.json()
    return r.status_code, doc["type"].rsplit("/", 1)[-1], doc["detail"]


async def test_a_replayed_frame_does_not_spend_the_victims_tokens(
    served: tuple[Gateway, str], http: httpx.AsyncClient, victim: Device
) -> None:
    """rate 1/s, burst 4 (birth took one): the attacker replays a captured frame ten
    times; every replay is refused as a replay, and the victim's next two fresh readings
    still pass (the rate limit is judged after the MAC and the counter)."""
    captured = victim.message("reading", {"moisture": 5})
    url = "/st/v1/devices/sensor-01/reading"
    assert (await http.post(url, content=captured)).status_code == 204
    for _ in range(10):
        r = await http.post(url, content=captured)
        assert problem(r)[:2] == (409, "replay")
        assert "retry-after" not in r.headers  # nothing to wait for: it is never served
    for value in (6, 7):
        r = await post(http, victim, "reading", {"moisture": value})
        assert r.status_code == 204, r.text


async def test_a_rate_limited_device_is_told_how_long_to_wait(
    served: tuple[Gateway, str], http: httpx.AsyncClient
) -> None:
    gateway = served[0]
    gateway.rate, gateway.burst = 0.001, 1
    device = Device("sensor-02", gateway.registry.add("sensor-02", "http").secret)
    assert (await post(http, device, "poll", {})).status_code == 204
    r = await post(http, device, "poll", {})
    assert problem(r)[:2] == (429, "rate_limited")
    assert r.headers["retry-after"] == "1000"  # one message per 1,000 s


async def test_an_unknown_device_is_answered_like_a_wrong_mac(
    served: tuple[Gateway, str], http: httpx.AsyncClient, victim: Device
) -> None:
    """Without a secret nobody learns which device ids exist (nor which are revoked)."""
    stranger = Device("nobody-01", os.urandom(32))
    forger = Device("sensor-01", os.urandom(32))
    forger.counter = stranger.counter = 41
    unknown = await post(http, stranger, "reading", {"moisture": 1})
    wrong = await post(http, forger, "reading", {"moisture": 1})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.headers.get("www-authenticate") == wrong.headers.get("www-authenticate")
    a, b = unknown.json(), wrong.json()
    assert a["detail"].replace("nobody-01", "X") == b["detail"].replace("sensor-01", "X")
    assert {k: v for k, v in a.items() if k != "detail"} == {
        k: v for k, v in b.items() if k != "detail"
    }
    served[0].registry.revoke("sensor-01")
    forger.counter = 50
    assert problem(await post(http, forger, "reading", {"moisture": 1}))[:2] == (401, "bad_mac")


@pytest.mark.parametrize(
    ("channel", "body", "status", "reason", "words"),
    [
        ("ack", {"down": 2**63}, 422, "bad_payload", "2^63"),
        ("ack", {"down": -1}, 422, "bad_payload", "2^63"),
        ("state", {"online": True, "will": 2**63}, 422, "bad_payload", "2^63"),
        ("state", {"online": True, "will": "7"}, 422, "bad_payload", "will"),
    ],
)
async def test_numbers_out_of_range_answer_422_and_spend_no_counter(
    served: tuple[Gateway, str],
    http: httpx.AsyncClient,
    victim: Device,
    channel: str,
    body: object,
    status: int,
    reason: str,
    words: str,
) -> None:
    before = served[0].registry.get("sensor-01").rx_counter
    r = await post(http, victim, channel, body)
    code, got, detail = problem(r)
    assert (code, got) == (status, reason) and words in detail, r.text
    assert served[0].registry.get("sensor-01").rx_counter == before
    # the same counter is still good for a valid message
    r = await post(http, victim, "reading", {"moisture": 3}, counter=victim.counter)
    assert r.status_code == 204, r.text


@pytest.mark.parametrize("counter", [2**63, 2**64, 10**19 - 1])
async def test_counters_of_2_63_or_more_answer_400_and_spend_nothing(
    served: tuple[Gateway, str], http: httpx.AsyncClient, victim: Device, counter: int
) -> None:
    before = served[0].registry.get("sensor-01").rx_counter
    raw = victim.message("reading", {"moisture": 3}, counter=counter)
    r = await http.post("/st/v1/devices/sensor-01/reading", content=raw)
    code, reason, detail = problem(r)
    assert (code, reason) == (400, "bad_message"), r.text
    assert "2^63" in detail or "decimal" in detail
    assert served[0].registry.get("sensor-01").rx_counter == before
    r = await post(http, victim, "reading", {"moisture": 4}, counter=2**63 - 1)
    assert r.status_code == 204, r.text  # the largest counter works


async def test_results_for_unknown_request_ids_stay_bounded(
    served: tuple[Gateway, str], http: httpx.AsyncClient, victim: Device
) -> None:
    """One device floods results for request ids nobody sent: the gateway keeps at most
    EARLY_PER_DEVICE of them (the rest answer 422), each with a bounded list."""
    gateway = served[0]
    gateway.rate, gateway.burst = 1e6, 10**6
    gateway._buckets.clear()
    refused = 0
    for i in range(core.EARLY_PER_DEVICE + 40):
        body = {"state": "running", "message": "x" * 1000}
        r = await post(http, victim, f"result/fake-{i}", body)
        if r.status_code == 422:
            refused += 1
        else:
            assert r.status_code == 204, r.text
    for _ in range(30):  # many updates for one id: the list stays short
        r = await post(http, victim, "result/fake-0", {"state": "running"})
        assert r.status_code == 204, r.text
    assert refused == 40
    assert len(gateway._early) == core.EARLY_PER_DEVICE
    assert max(len(updates) for _, updates in gateway._early.values()) <= 8


async def test_results_for_unknown_request_ids_are_bounded_in_total(
    served: tuple[Gateway, str], http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many devices (each at its own cap): the total stays at EARLY_TOTAL, oldest out."""
    monkeypatch.setattr(core, "EARLY_TOTAL", 40)
    gateway = served[0]
    gateway.rate, gateway.burst = 1e6, 10**6
    devices = []
    for n in range(6):
        record = gateway.registry.add(f"flood-{n:02d}", "http")
        devices.append(Device(record.device_id, record.secret))
    for device in devices:
        for i in range(core.EARLY_PER_DEVICE):
            r = await post(http, device, f"result/r{i}", {"state": "done"})
            assert r.status_code == 204, r.text
    assert len(gateway._early) == 40
    assert sum(gateway._early_count.values()) == 40
    assert ("flood-05", f"r{core.EARLY_PER_DEVICE - 1}") in gateway._early  # newest kept


async def test_downlinks_per_device_are_capped(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "gateway.db", max_pending=5)
    try:
        registry.add("sensor-01", "http")
        for _ in range(5):
            registry.enqueue("sensor-01", "desired", b"{}")
        with pytest.raises(DownlinkQueueFullError):
            registry.enqueue("sensor-01", "desired", b"{}")
        registry.ack("sensor-01", 2)
        registry.enqueue("sensor-01", "desired", b"{}")  # room again after an ack
        assert len(registry.pending("sensor-01")) == 4
    finally:
        registry.close()


async def test_half_open_connections_do_not_stop_device_requests(
    store: Store, registry: Registry
) -> None:
    """Slowloris: the attacker opens more connections than the process has file
    descriptors for and sends half a request head on each. The oldest half-open ones are
    closed to make room, so a device's request still gets through."""
    bridge = HttpBridge("127.0.0.1", 0, max_connections=100, header_timeout=60)
    owner = Identity.generate("owner")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    attackers: list[socket.socket] = []
    try:
        async with Gateway(store=store, registry=registry, owner=owner, bridges=[bridge]) as gw:
            await gw.start()
            record = gw.registry.add("sensor-01", "http")
            device = Device("sensor-01", record.secret)
            url = bridge.endpoints()[0]
            # 2 descriptors per attacker connection in this process (client and server
            # side): room for 300 + 100 and a few more, not for 300 + 300
            in_use = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 460, hard))
            accepted = 0
            for _ in range(300):
                try:
                    s = socket.create_connection(("127.0.0.1", bridge.port))
                except OSError:
                    break
                s.sendall(b"POST /st/v1/devices/sensor-01/reading HTTP/1.1\r\nHost: x\r\n")
                attackers.append(s)
                await asyncio.sleep(0.002)  # the server accepts as they come
                accepted += 1
            assert accepted == 300  # every attacker connection got through to the server
            async with httpx.AsyncClient(base_url=url, timeout=20) as http:
                r = await post(http, device, "birth", {"description": SENSOR})
                assert r.status_code == 204, r.text
            # the oldest half-open connections were closed by the server
            closed = 0
            for s in attackers[:50]:
                s.settimeout(5)
                try:
                    closed += s.recv(1) == b""
                except OSError:
                    closed += 1
            assert closed == 50
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for s in attackers:
            s.close()


async def test_a_connection_without_a_request_head_is_closed(
    store: Store, registry: Registry
) -> None:
    bridge = HttpBridge("127.0.0.1", 0, header_timeout=0.5)
    owner = Identity.generate("owner")
    async with Gateway(store=store, registry=registry, owner=owner, bridges=[bridge]) as gw:
        await gw.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # half a head, never finished
        await writer.drain()
        async with asyncio.timeout(30):
            assert await reader.read() == b""  # closed by the server
        writer.close()


async def _half_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sent half a request head, and no more (a slowloris)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    return reader, writer


async def test_past_max_connections_the_oldest_half_open_one_is_closed(
    store: Store, registry: Registry
) -> None:
    """One connection more than max_connections closes the oldest half-open one, and
    only it: the others still get their answer once their request head is complete."""
    bridge = HttpBridge("127.0.0.1", 0, max_connections=3, header_timeout=60)
    owner = Identity.generate("owner")
    async with Gateway(store=store, registry=registry, owner=owner, bridges=[bridge]) as gw:
        await gw.start()
        connections = []
        try:
            for _ in range(4):
                connections.append(await _half_open(bridge.port))
            async with asyncio.timeout(30):
                assert await connections[0][0].read() == b""  # the oldest: closed
            for reader, writer in connections[1:]:
                writer.write(b"\r\n")  # the head is complete
                await writer.drain()
                async with asyncio.timeout(30):
                    assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        finally:
            for _, writer in connections:
                writer.close()


async def test_a_connection_that_sent_its_request_is_not_taken_for_half_open(
    store: Store, registry: Registry
) -> None:
    """A client that completed a request and keeps its connection open (keep-alive) is
    no slowloris: past max_connections the half-open connection is closed, not the
    older one that already sent its request head, which still gets its next answer."""
    bridge = HttpBridge("127.0.0.1", 0, max_connections=2, header_timeout=60)
    owner = Identity.generate("owner")
    async with Gateway(store=store, registry=registry, owner=owner, bridges=[bridge]) as gw:
        await gw.start()
        connections = []
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
            connections.append((reader, writer))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # a whole request
            await writer.drain()
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 ")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)  # its body: the connection is idle now
            for _ in range(2):  # a half-open one, then one past max_connections
                connections.append(await _half_open(bridge.port))
            async with asyncio.timeout(30):
                assert await connections[1][0].read() == b""  # the half-open one: closed
            reader, writer = connections[0]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the next request
            await writer.drain()
            async with asyncio.timeout(30):
                assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        finally:
            for _, writer in connections:
                writer.close()


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    served: tuple[Gateway, str], victim: Device
) -> None:
    """A Content-Length over the limit is answered 413 at once: the client cannot hold
    the connection by announcing a large body and sending it slowly, or never."""
    port = int(served[1].rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /st/v1/devices/sensor-01/reading HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_MESSAGE_BYTES + 1)
        )  # and no body
        await writer.drain()
        async with asyncio.timeout(30):
            assert (await reader.readline()).startswith(b"HTTP/1.1 413 ")
    finally:
        writer.close()


async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    served: tuple[Gateway, str], victim: Device
) -> None:
    """Without a Content-Length the body is counted as it comes: the server answers 413
    once it passes the limit, while the sender has not even finished (never read whole
    into memory)."""
    port = int(served[1].rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /st/v1/devices/sensor-01/reading HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 1000
        for _ in range(3 * MAX_MESSAGE_BYTES // len(chunk)):  # and no last chunk
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        async with asyncio.timeout(30):
            assert (await reader.readline()).startswith(b"HTTP/1.1 413 ")
    finally:
        writer.close()
