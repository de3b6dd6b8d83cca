"""The REST bridge against a real uvicorn server on a free port, with real HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import cbor2
import httpx
import pytest

from safething.errors import StoreError
from safething.net import Client, Identity
from safething.store import Store
from safething.things import ThingClient
from safething_gateway.bridges.http import HttpBridge, create_app
from safething_gateway.core import Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.device_clients.http import HttpDevice
from safething_gateway.protocol import MAX_MESSAGE_BYTES, ReplayError, frame, parse_frame
from safething_gateway.registry import Registry
from safething_gateway.testing import wait_until as until

from .conftest import SENSOR, Device, tamper

PROBLEM = "application/problem+json"


@pytest.fixture
async def served(store: Store, registry: Registry) -> AsyncIterator[tuple[Gateway, HttpBridge]]:
    bridge = HttpBridge("127.0.0.1", 0, ping_interval=0.5)
    owner = Identity.generate("owner")
    async with Gateway(store=store, registry=registry, owner=owner, bridges=[bridge]) as gateway:
        await gateway.start()
        yield gateway, bridge


@pytest.fixture
def gateway_(served: tuple[Gateway, HttpBridge]) -> Gateway:
    return served[0]


@pytest.fixture
def bridge(served: tuple[Gateway, HttpBridge]) -> HttpBridge:
    return served[1]


@pytest.fixture
async def http(bridge: HttpBridge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=bridge.endpoints()[0], timeout=10) as client:
        yield client


@pytest.fixture
async def device(gateway_: Gateway, bridge: HttpBridge) -> AsyncIterator[HttpDevice]:
    record = gateway_.registry.add("sensor-01", "http")
    link = DeviceLink("sensor-01", record.secret, SENSOR)
    link.on_action = lambda action, args: None
    async with HttpDevice(link, bridge.endpoints()[0]) as d:
        yield d


@pytest.fixture
async def requester(store: Store) -> AsyncIterator[ThingClient]:
    async with ThingClient(Client(store, Identity.generate())) as things:
        yield things


def raw(device: HttpDevice) -> Device:
    """A hand-made sender sharing the device's secret and counter."""
    sender = Device(device.link.device_id, device.link.secret)
    sender.counter = device.link.up_counter
    return sender


def reason(response: httpx.Response) -> str:
    assert response.headers["content-type"] == PROBLEM, response.text
    problem = response.json()
    assert problem["status"] == response.status_code
    return str(problem["type"]).rsplit("/", 1)[-1]


# --- the device's life ---------------------------------------------------------------


async def test_bridge_listens_on_a_free_port(bridge: HttpBridge) -> None:
    assert bridge.port != 0
    assert bridge.endpoints() == [f"http://127.0.0.1:{bridge.port}"]


async def test_birth_readings_subscriber_and_action_by_long_poll(
    gateway_: Gateway, bridge: HttpBridge, device: HttpDevice, store: Store, requester: ThingClient
) -> None:
    await device.start()
    watcher = ThingClient(Client(store))
    assert await watcher.status("sensor-01") == "published"
    async with watcher.subscribe("sensor-01", topic="VeryDryAlarm") as sub:
        await device.reading({"moisture": 12})
        await device.event("VeryDryAlarm", 12)
        async with asyncio.timeout(5):
            note = await anext(aiter(sub))
    assert note.value == 12.0
    assert (await watcher.read("sensor-01", "moisture")).value == 12.0

    poller = asyncio.create_task(device.poll(wait=10))
    await until(lambda: bridge.can_push("sensor-01"))
    assert bridge.connected() == 1
    handle = await requester.request("sensor-01", "OpenValve", psi=40)
    async with asyncio.timeout(5):
        assert await poller == [f"action/{handle.request_id}"]
    assert (await handle.wait(5)).state == "done"
    assert any(s.state == "running" for s in handle.history)
    assert device.link.actions_run == [handle.request_id]
    assert gateway_.registry.pending("sensor-01") == []
    assert bridge.connected() == 0
    assert gateway_.metrics.get("safething_gateway_messages_out_total", transport="http") == 1


async def test_action_delivered_by_server_sent_events(
    gateway_: Gateway, bridge: HttpBridge, device: HttpDevice, requester: ThingClient
) -> None:
    await device.start()
    await gateway_.send("sensor-01", "desired", {"target": 7})  # queued before listening
    async with contextlib.aclosing(device.stream()) as events:
        assert await asyncio.wait_for(anext(events), 5) == "desired"
        assert device.link.desired == {"target": 7}
        assert bridge.can_push("sensor-01")
        handle = await requester.request("sensor-01", "OpenValve", psi=30)
        assert await asyncio.wait_for(anext(events), 5) == f"action/{handle.request_id}"
        assert (await handle.wait(5)).state == "done"
    await until(lambda: bridge.connected() == 0)
    assert gateway_.registry.pending("sensor-01") == []


async def test_sse_wire_format(
    gateway_: Gateway, device: HttpDevice, http: httpx.AsyncClient
) -> None:
    await device.start()
    queued = await gateway_.send("sensor-01", "desired", {"target": 3})
    auth = parse_frame(device.link.up("poll", b""))
    params = {"c": str(auth.counter), "m": auth.mac}
    lines: list[str] = []
    async with http.stream("GET", "/st/v1/devices/sensor-01/down/stream", params=params) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            lines.append(line)
            if line.startswith("data:"):
                break
    framed = frame(
        device.link.secret, "sensor-01", "desired", queued.counter, queued.body, uplink=False
    )
    assert lines[-3:] == [
        f"id: {queued.counter}",
        "event: desired",
        "data: " + base64.b64encode(framed).decode(),
    ]


async def test_an_event_stream_goes_on_after_a_ping(
    gateway_: Gateway, device: HttpDevice, http: httpx.AsyncClient
) -> None:
    await device.start()
    auth = parse_frame(device.link.up("poll", b""))
    params = {"c": str(auth.counter), "m": auth.mac}
    seen: list[str] = []
    async with (
        asyncio.timeout(30),
        http.stream("GET", "/st/v1/devices/sensor-01/down/stream", params=params) as r,
    ):
        async for line in r.aiter_lines():
            seen.append(line)
            if line == ": ping" and len(seen) < 10:  # a quiet interval passed (0.5 s)
                await gateway_.send("sensor-01", "desired", {"target": 4})
            if line.startswith("event:"):
                break
    assert ": ping" in seen and seen[-1] == "event: desired"


async def test_poll_returns_one_downlink_at_a_time_with_st_more(
    gateway_: Gateway, device: HttpDevice, http: httpx.AsyncClient
) -> None:
    await device.start()
    for target in (1, 2, 3):
        await gateway_.send("sensor-01", "desired", {"target": target})
    sender = raw(device)
    r = await http.post("/st/v1/devices/sensor-01/poll", content=sender.message("poll", b""))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["ST-Channel"] == "desired"
    assert r.headers["ST-More"] == "2"
    message = parse_frame(r.content)
    body = message.open(device.link.secret, "sensor-01", "desired", uplink=False)
    assert json.loads(body) == {"target": 1}
    device.link.up_counter = sender.counter
    assert await device.poll() == ["desired"] * 3  # the first again (not acked), 2, 3
    assert device.link.desired == {"target": 3}
    assert await device.poll() == []
    sender = raw(device)
    r = await http.post("/st/v1/devices/sensor-01/poll", content=sender.message("poll", b""))
    assert (r.status_code, r.headers["ST-More"], r.content) == (204, "0", b"")
    for target in (4, 5):  # two waiting: one more after this one
        await gateway_.send("sensor-01", "desired", {"target": target})
    r = await http.post("/st/v1/devices/sensor-01/poll", content=sender.message("poll", b""))
    assert (r.status_code, r.headers["ST-More"]) == (200, "1")


async def test_long_poll_times_out_and_follows_disconnects(
    bridge: HttpBridge, device: HttpDevice, http: httpx.AsyncClient
) -> None:
    await device.start()
    assert await device.poll(wait=0.2) == []
    assert bridge.connected() == 0
    sender = raw(device)
    request = asyncio.create_task(
        http.post("/st/v1/devices/sensor-01/poll?wait=30", content=sender.message("poll", b""))
    )
    await until(lambda: bridge.connected() == 1)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await until(lambda: bridge.connected() == 0)


async def test_a_long_poll_woken_by_a_downlink_counts_the_others_waiting(
    gateway_: Gateway, bridge: HttpBridge, device: HttpDevice, http: httpx.AsyncClient
) -> None:
    await device.start()
    # a device long in service: downlink counters past 256 (numbers CPython does not share)
    with contextlib.closing(sqlite3.connect(gateway_.registry.path)) as db, db:
        db.execute("UPDATE devices SET tx_counter = 1000 WHERE id = 'sensor-01'")
    sender = raw(device)
    request = asyncio.create_task(
        http.post("/st/v1/devices/sensor-01/poll?wait=30", content=sender.message("poll", b""))
    )
    await until(lambda: bridge.can_push("sensor-01"))  # held: nothing was waiting
    for target in (0, 1):  # queued, not pushed
        gateway_.registry.enqueue("sensor-01", "desired", b'{"target": %d}' % target)
    await gateway_.send("sensor-01", "desired", {"target": 2})  # pushed to the held poll
    # it takes one downlink only: a second push is not handed to a poll already answered
    assert not bridge.can_push("sensor-01")
    # two more queued before the held poll resumes (nothing above let it run): counted
    # too, the older ones and the newer ones alike
    gateway_.registry.enqueue("sensor-01", "desired", b'{"target": 3}')
    gateway_.registry.enqueue("sensor-01", "desired", b'{"target": 4}')
    async with asyncio.timeout(30):
        r = await request
    assert (r.status_code, r.headers["ST-Channel"], r.headers["ST-More"]) == (200, "desired", "4")
    body = parse_frame(r.content).open(device.link.secret, "sensor-01", "desired", uplink=False)
    assert json.loads(body) == {"target": 2}


async def test_a_poll_waits_as_long_as_asked_even_under_a_second(
    device: HttpDevice, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safething_gateway.bridges import http as http_module

    waits: list[float] = []

    async def no_downlink(request: Any, waiter: Any, timeout: float) -> None:
        waits.append(timeout)  # instead of holding the request open that long

    monkeypatch.setattr(http_module, "_wait_for_downlink", no_downlink)
    await device.start()
    sender = raw(device)
    for wait in ("0.5", "90"):
        r = await http.post(
            f"/st/v1/devices/sensor-01/poll?wait={wait}", content=sender.message("poll", b"")
        )
        assert r.status_code == 204
    assert waits == [0.5, http_module.MAX_WAIT]  # at most MAX_WAIT


async def test_cbor_body(store: Store, device: HttpDevice, http: httpx.AsyncClient) -> None:
    await device.start()
    sender = raw(device)
    r = await http.post(
        "/st/v1/devices/sensor-01/reading",
        content=sender.message("reading", cbor2.dumps({"moisture": 33.5})),
        headers={"Content-Type": "application/cbor"},
    )
    assert r.status_code == 204, r.text
    assert (await ThingClient(Client(store)).read("sensor-01", "moisture")).value == 33.5
    r = await http.post(  # media type parameters are not part of the format
        "/st/v1/devices/sensor-01/reading",
        content=sender.message("reading", b'{"moisture": 34.5}'),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 204, r.text
    assert (await ThingClient(Client(store)).read("sensor-01", "moisture")).value == 34.5


# --- refusals ------------------------------------------------------------------------


async def test_rejections_are_problem_documents(
    gateway_: Gateway, device: HttpDevice, http: httpx.AsyncClient
) -> None:
    await device.start()
    sender = raw(device)
    url = "/st/v1/devices/sensor-01"
    good = sender.message("reading", {"moisture": 5})
    r = await http.post(f"{url}/reading?wait=30", content=good)
    assert r.status_code == 204  # an uplink, answered at once: wait is for polls only
    assert "st-more" not in r.headers
    alarm = sender.message("event/VeryDryAlarm", 5)
    r = await http.post(f"{url}/event/VeryDryAlarm?wait=30", content=alarm)
    assert r.status_code == 204 and "st-more" not in r.headers

    r = await http.post(f"{url}/reading", content=good)
    assert (r.status_code, reason(r)) == (409, "replay")
    assert "www-authenticate" not in r.headers
    forged = tamper(sender.message("reading", {"moisture": 1}))
    r = await http.post(f"{url}/reading", content=forged)
    assert (r.status_code, reason(r)) == (401, "bad_mac")
    assert r.headers["WWW-Authenticate"].startswith("ST2")
    r = await http.post("/st/v1/devices/nobody-01/reading", content=sender.message("reading", {}))
    assert (r.status_code, reason(r)) == (401, "bad_mac")  # alike: ids cannot be listed
    r = await http.post(f"{url}/launch", content=sender.message("launch", {}))
    assert (r.status_code, reason(r)) == (404, "unknown_channel")
    r = await http.post(f"{url}/reading", content=b"moisture=12")
    assert (r.status_code, reason(r)) == (400, "bad_message")
    assert "www-authenticate" not in r.headers  # only a 401 asks for credentials
    r = await http.post(f"{url}/reading", content=sender.message("reading", b"{nope"))
    assert (r.status_code, reason(r)) == (422, "bad_payload")
    assert "not valid JSON" in r.json()["detail"]
    r = await http.post(f"{url}/reading", content=sender.message("reading", {"moisture": "wet"}))
    assert (r.status_code, reason(r)) == (422, "bad_payload")
    assert "wet" not in r.text  # the body is sealed (ST2), so is the reason
    refusals = {
        why: gateway_.metrics.get("safething_gateway_rejected_total", reason=why, transport="http")
        for why in ("unsupported_format", "too_large")
    }
    r = await http.post(
        f"{url}/reading",
        content=good,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (r.status_code, reason(r)) == (415, "unsupported_format")
    r = await http.post(f"{url}/reading", content=b"x" * 20_000)
    assert (r.status_code, reason(r)) == (413, "too_large")
    # the limit itself is allowed (and then read as a frame: not one), one byte more not
    r = await http.post(f"{url}/reading", content=b"x" * MAX_MESSAGE_BYTES)
    assert (r.status_code, reason(r)) == (400, "bad_message")

    async def exactly(size: int) -> AsyncIterator[bytes]:  # no Content-Length
        yield b"x" * (size - 1)
        yield b"x"

    r = await http.post(f"{url}/reading", content=exactly(MAX_MESSAGE_BYTES))
    assert (r.status_code, reason(r)) == (400, "bad_message")
    r = await http.post(f"{url}/reading", content=exactly(MAX_MESSAGE_BYTES + 1))
    assert (r.status_code, reason(r)) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(20):
            yield b"x" * 1000

    r = await http.post(f"{url}/reading", content=chunks())
    assert (r.status_code, reason(r)) == (413, "too_large")
    # refused by the bridge before the gateway saw them, and counted all the same
    assert {
        why: gateway_.metrics.get("safething_gateway_rejected_total", reason=why, transport="http")
        - before
        for why, before in refusals.items()
    } == {"unsupported_format": 1, "too_large": 3}
    for wait in ("soon", "-1"):
        r = await http.post(f"{url}/poll?wait={wait}", content=sender.message("poll", b""))
        assert (r.status_code, reason(r)) == (422, "invalid_request")
        assert "wait" in r.json()["detail"]
    r = await http.get("/no/such/route")
    assert (r.status_code, reason(r)) == (404, "not_found")
    assert r.json()["detail"] == "no such resource: GET /no/such/route"
    r = await http.get(f"{url}/reading")
    assert (r.status_code, reason(r)) == (405, "method_not_allowed")
    assert r.json()["detail"] == f"GET is not allowed on {url}/reading"
    r = await http.get(f"{url}/down/stream", params={"c": "99", "m": "0" * 64})
    assert (r.status_code, reason(r)) == (401, "bad_mac")
    counted = {"reason": "bad_message", "transport": "http"}
    before = gateway_.metrics.get("safething_gateway_rejected_total", **counted)
    r = await http.get(f"{url}/down/stream", params={"c": "x", "m": "0" * 64})
    assert (r.status_code, reason(r)) == (400, "bad_message")
    assert gateway_.metrics.get("safething_gateway_rejected_total", **counted) == before + 1

    gateway_.registry.revoke("sensor-01")
    r = await http.post(f"{url}/reading", content=sender.message("reading", {"moisture": 5}))
    assert (r.status_code, reason(r)) == (403, "revoked")


async def test_device_raises_the_gateway_error_class(device: HttpDevice, gateway_: Gateway) -> None:
    await device.start()
    device.link.up_counter = 0  # a device that lost its counter
    with pytest.raises(ReplayError, match="not above"):
        await device.reading({"moisture": 1})


async def test_unexpected_errors_are_a_generic_500(
    gateway_: Gateway,
    device: HttpDevice,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> list[bytes]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(gateway_, "handle", boom)
    with caplog.at_level(logging.ERROR, logger="safething.gateway.http"):
        r = await http.post("/st/v1/devices/sensor-01/reading", content=b"ST1 1 x\n")
    assert (r.status_code, reason(r)) == (500, "internal_error")
    assert "secret" not in r.text and "Traceback" not in r.text
    assert any("secret internals" in (rec.exc_text or "") for rec in caplog.records)

    async def store_down(*args: Any, **kwargs: Any) -> list[bytes]:
        raise StoreError("vault unreachable")

    monkeypatch.setattr(gateway_, "handle", store_down)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        r = await http.post("/st/v1/devices/sensor-01/reading", content=b"ST1 1 x\n")
    assert (r.status_code, reason(r)) == (503, "store_unavailable")
    # an outage is answered, not an error of the server: no traceback anywhere in the log
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


async def test_a_client_that_leaves_while_sending_its_body_is_no_error(
    bridge: HttpBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody is left to answer: logged at debug, no traceback, the bridge serves on."""
    url = httpx.URL(bridge.endpoints()[0])
    host, port = url.host, url.port
    assert port is not None
    with caplog.at_level(logging.DEBUG, logger="safething.gateway.http"):
        _reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /st/v1/devices/sensor-01/reading HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"x" * 100
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the route is reading the body
        writer.close()
        await writer.wait_closed()
        await until(lambda: any("client left" in r.getMessage() for r in caplog.records))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- operations ----------------------------------------------------------------------


async def test_healthz_metrics_and_openapi(
    gateway_: Gateway,
    bridge: HttpBridge,
    device: HttpDevice,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await device.start()
    await device.reading({"moisture": 40})
    await gateway_.send("sensor-01", "desired", {"target": 4})
    assert await device.poll() == ["desired"]
    await http.post("/st/v1/devices/sensor-01/reading", content=b"junk")

    r = await http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "bridges": [{"name": "http", "endpoints": bridge.endpoints(), "connected": 0}],
        "devices": 1,
    }

    r = await http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    # in: birth, reading, poll, ack, reading (the desired value); out: the desired value
    assert 'safething_gateway_messages_in_total{transport="http"} 5' in text
    assert 'safething_gateway_messages_out_total{transport="http"} 1' in text
    assert 'safething_gateway_rejected_total{reason="bad_message",transport="http"} 1' in text
    assert 'safething_gateway_connected_devices{transport="http"} 0' in text

    r = await http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert set(paths) >= {
        "/st/v1/devices/{device_id}/{channel}",
        "/st/v1/devices/{device_id}/down/stream",
        "/healthz",
        "/metrics",
    }
    for path in paths.values():
        for operation in path.values():
            assert operation["summary"] and operation["description"]
    post = paths["/st/v1/devices/{device_id}/{channel}"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/cbor"}
    assert PROBLEM in post["responses"]["401"]["content"]
    # a poll does not wait unless asked to (wait=0: answered at once when nothing waits)
    (wait,) = (p for p in post["parameters"] if p["name"] == "wait")
    assert (wait["schema"]["default"], wait["schema"]["minimum"]) == (0.0, 0)

    def broken(*args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(gateway_.registry, "devices", broken)
    r = await http.get("/healthz")
    assert (r.status_code, reason(r)) == (503, "registry_unavailable")
    monkeypatch.undo()

    async def unreachable(key: str) -> Any:
        raise StoreError("no route to vault")

    monkeypatch.setattr(gateway_.store, "get", unreachable)
    r = await http.get("/healthz")
    assert (r.status_code, reason(r)) == (503, "store_unavailable")


async def test_app_runs_without_a_server(gateway: Gateway) -> None:
    """``create_app`` is a plain ASGI app: usable with httpx's ASGITransport."""
    record = gateway.registry.add("sensor-02", "http")
    sender = Device("sensor-02", record.secret)
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        desc = dict(SENSOR, id="sensor-02")
        r = await http.post(
            "/st/v1/devices/sensor-02/birth",
            content=sender.message("birth", {"description": desc}),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 204, r.text
        r = await http.post(
            "/st/v1/devices/sensor-02/reading", content=sender.message("reading", {"colour": 1})
        )
        assert (r.status_code, reason(r)) == (422, "bad_payload")
        # the body was sealed (ST2), so is the reason: the detail goes to the gateway log
        assert "colour" not in r.json()["detail"]
        assert (await http.get("/healthz")).json()["devices"] == 1


async def test_close_answers_waiting_requests_and_leaves_no_task(
    gateway_: Gateway, bridge: HttpBridge, device: HttpDevice
) -> None:
    await device.start()
    sender = raw(device)
    async with httpx.AsyncClient(base_url=bridge.endpoints()[0], timeout=10) as http:
        request = asyncio.create_task(
            http.post("/st/v1/devices/sensor-01/poll?wait=60", content=sender.message("poll", b""))
        )
        await until(lambda: bridge.connected() == 1)
        async with asyncio.timeout(5):
            await bridge.close()
            r = await request
    assert (r.status_code, reason(r)) == (503, "shutting_down")
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert not [n for n in names if n.startswith("http")], names
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=bridge.endpoints()[0]) as http:
            await http.get("/healthz")
