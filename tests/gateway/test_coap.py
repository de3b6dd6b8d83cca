"""The CoAP bridge against a real aiocoap server on loopback and a real gateway."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.util.linkformat import parse as parse_links

from safething.errors import StoreError
from safething.net import Client, Identity
from safething.store import Store
from safething.things import ThingClient
from safething_gateway.bridges.coap import (
    CBOR,
    JSON,
    CoapBridge,
    decode_downlinks,
    encode_downlinks,
)
from safething_gateway.core import Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.device_clients.coap import CoapDevice
from safething_gateway.protocol import (
    MAX_MESSAGE_BYTES,
    BadMessageError,
    frame,
    mac,
    parse_frame,
)
from safething_gateway.registry import Registry
from safething_gateway.replies import STORE_RETRY_AFTER

from .conftest import SENSOR, Device, tamper

ID = "sensor-01"


@pytest.fixture
async def bridge(store: Store, registry: Registry) -> AsyncIterator[CoapBridge]:
    coap = CoapBridge(port=0)
    async with Gateway(
        store=store, registry=registry, owner=Identity.generate("owner"), bridges=[coap]
    ) as gateway:
        await gateway.start()
        yield coap


@pytest.fixture
def gateway(bridge: CoapBridge) -> Gateway:
    assert bridge.gateway is not None
    return bridge.gateway


@pytest.fixture
def link(gateway: Gateway) -> DeviceLink:
    record = gateway.registry.add(ID, "coap")
    return DeviceLink(ID, record.secret, SENSOR)


@pytest.fixture
async def device(bridge: CoapBridge, link: DeviceLink) -> AsyncIterator[CoapDevice]:
    async with CoapDevice(link, "127.0.0.1", bridge.port) as d:
        yield d


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    yield context
    await context.shutdown()


async def request(
    client: Any, bridge: CoapBridge, method: Code, path: str, payload: bytes = b"", **options: Any
) -> Any:
    message = aiocoap.Message(
        code=method, uri=f"coap://127.0.0.1:{bridge.port}{path}", payload=payload, **options
    )
    async with asyncio.timeout(30):
        return await client.request(message).response


async def post(
    client: Any, bridge: CoapBridge, channel: str, data: bytes, cf: int = JSON, device: str = ID
) -> Any:
    return await request(
        client, bridge, Code.POST, f"/st/v1/{device}/{channel}", data, content_format=cf
    )


def code(response: Any) -> str:
    return f"{int(response.code) >> 5}.{int(response.code) & 31:02d}"


# --- the whole path: device -> gateway -> SAFEthings and back -------------------------


async def test_birth_readings_events_reach_a_subscriber(
    device: CoapDevice, store: Store, gateway: Gateway, bridge: CoapBridge, client: Any
) -> None:
    await device.start()
    things = ThingClient(Client(store))
    assert await things.status(ID) == "published"
    async with things.subscribe(ID, topic="VeryDryAlarm") as sub:
        await device.reading({"moisture": 12})
        await device.event("VeryDryAlarm", 12)
        async with asyncio.timeout(30):
            note = await anext(aiter(sub))
    assert note.value == 12.0
    assert (await things.read(ID, "moisture")).value == 12.0
    assert gateway.metrics.get("safething_gateway_messages_in_total", transport="coap") == 3
    assert gateway.registry.get(ID).online
    await things.close()
    # an Observe option on a POST is no observation (RFC 7641: GET only): a plain uplink
    for channel, body in (("ack", {"down": 0}), ("reading", {"moisture": 13})):
        response = await request(
            client,
            bridge,
            Code.POST,
            f"/st/v1/{ID}/{channel}",
            device.link.up(channel, body),
            content_format=JSON,
            observe=0,
        )
        assert code(response) == "2.04", response.payload


async def test_action_delivered_by_observe_and_answered(
    device: CoapDevice, link: DeviceLink, store: Store, bridge: CoapBridge, gateway: Gateway
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    link.on_action = lambda action, args: calls.append((action, args))
    await device.start()
    await device.observe()
    assert bridge.can_push(ID)
    assert bridge.connected() == 1
    things = ThingClient(Client(store, Identity.generate()))
    handle = await things.request(ID, "OpenValve", psi=40)
    status = await handle.wait(5)
    assert status.state == "done", status
    assert calls == [("OpenValve", {"psi": 40.0})]
    assert any(s.state == "running" for s in handle.history)
    assert link.actions_run == [handle.request_id]
    assert gateway.registry.pending(ID) == []  # the device's ack came before its result
    assert gateway.metrics.get("safething_gateway_messages_out_total", transport="coap") == 1
    await things.close()


async def test_action_delivered_by_poll(
    device: CoapDevice, link: DeviceLink, store: Store, gateway: Gateway
) -> None:
    link.on_action = lambda action, args: None
    await device.start()
    things = ThingClient(Client(store, Identity.generate()))
    handle = await things.request(ID, "OpenValve")
    async with asyncio.timeout(30):
        while not gateway.registry.pending(ID):  # the gateway's thing picks the request up
            await asyncio.sleep(0.01)
    assert await device.poll() == 1
    status = await handle.wait(5)
    assert status.state == "done"
    assert gateway.registry.pending(ID) == []
    assert await device.poll() == 0
    await things.close()


async def test_observe_sends_what_is_pending_then_every_new_downlink(
    device: CoapDevice, link: DeviceLink, gateway: Gateway
) -> None:
    await device.start()
    await gateway.send(ID, "desired", {"target": 1})  # queued: nobody observes yet
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    def on_desired(values: dict[str, Any]) -> None:
        seen.append(values)
        if values == {"target": 30}:
            done.set()

    link.on_desired = on_desired
    await device.observe()
    for value in range(2, 31):  # more than fits one notification: nothing may be lost
        await gateway.send(ID, "desired", {"target": value})
    async with asyncio.timeout(30):
        await done.wait()
    assert seen == [{"target": v} for v in range(1, 31)]
    async with asyncio.timeout(30):
        while gateway.registry.pending(ID):  # the last ack is on its way
            await asyncio.sleep(0.01)


async def test_unacknowledged_downlinks_come_again_on_the_next_registration(
    bridge: CoapBridge, link: DeviceLink, client: Any, gateway: Gateway
) -> None:
    dev = Device(ID, link.secret)
    await post(client, bridge, "birth", dev.message("birth", {"description": SENSOR}))
    sent = await gateway.send(ID, "desired", {"target": 7})
    for _ in range(2):  # never acknowledged: the same downlink both times
        c = dev.counter = dev.counter + 1
        response = await request(
            client,
            bridge,
            Code.GET,
            f"/st/v1/{ID}/down?c={c}&m={mac(link.secret, ID, 'poll', c, b'')}",
            accept=JSON,
        )
        assert code(response) == "2.05"
        assert int(response.opt.content_format) == JSON
        [(channel, data)] = decode_downlinks(response.payload, JSON)
        assert channel == "desired"
        message = parse_frame(data)
        body = message.open(link.secret, ID, "desired", uplink=False)
        assert (message.counter, json.loads(body)) == (sent.counter, {"target": 7})
    await post(client, bridge, "ack", dev.message("ack", {"down": sent.counter}))
    assert gateway.registry.pending(ID) == []


async def test_a_newer_registration_and_close_end_observations(
    bridge: CoapBridge, link: DeviceLink, gateway: Gateway
) -> None:
    async with CoapDevice(link, "127.0.0.1", bridge.port) as first:
        await first.start()
        await first.observe()
        second = CoapDevice(link, "127.0.0.1", bridge.port)
        await second.start()
        await second.observe()
        async with asyncio.timeout(30):
            while first.observing.is_set():
                await asyncio.sleep(0.01)
        assert bridge.connected() == 1
        await bridge.close()
        async with asyncio.timeout(30):
            while second.observing.is_set():
                await asyncio.sleep(0.01)
        await second.close()
    assert not bridge.can_push(ID)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("Rendering")] == []


# --- resource discovery ------------------------------------------------------------------


async def test_well_known_core_lists_each_coap_device(
    device: CoapDevice, client: Any, bridge: CoapBridge, gateway: Gateway
) -> None:
    gateway.registry.add("mqtt-only-1", "mqtt")
    await device.start()
    response = await request(client, bridge, Code.GET, "/.well-known/core")
    assert code(response) == "2.05"
    assert int(response.opt.content_format) == 40
    links = {
        link.href: dict(link.attr_pairs) for link in parse_links(response.payload.decode()).links
    }
    base = f"/st/v1/{ID}"
    assert links[f"{base}/down"] == {"rt": "safething.down", "ct": "60 50", "obs": None}
    assert links[f"{base}/reading"] == {"rt": "safething.reading", "ct": "50 60"}
    assert links[f"{base}/event/VeryDryAlarm"]["rt"] == "safething.event"
    assert {f"{base}/{c}" for c in ("birth", "state", "ack", "poll")} <= set(links)
    assert not any("mqtt-only-1" in href for href in links)
    only = await request(client, bridge, Code.GET, "/.well-known/core?rt=safething.down")
    assert only.payload.decode() == f'<{base}/down>;rt="safething.down";ct="60 50";obs'


# --- rejections: the code of the ProtocolError and a diagnostic ---------------------------


async def test_rejections_carry_code_and_diagnostic(
    bridge: CoapBridge, link: DeviceLink, client: Any, gateway: Gateway
) -> None:
    dev = Device(ID, link.secret)
    birth = dev.message("birth", {"description": SENSOR})
    assert code(await post(client, bridge, "birth", birth)) == "2.04"

    async def rejected(response: Any, expected: str, reason: str) -> str:
        assert (code(response), response.payload.decode().partition(":")[0]) == (
            expected,
            reason,
        ), response.payload
        assert response.opt.content_format is None  # a diagnostic payload
        return str(response.payload.decode())

    await rejected(await post(client, bridge, "birth", birth), "4.03", "replay")
    forged = tamper(dev.message("reading", {"moisture": 1}))
    await rejected(await post(client, bridge, "reading", forged), "4.01", "bad_mac")
    moved = dev.message("reading", 5)  # a valid message posted to another channel
    await rejected(await post(client, bridge, "event/VeryDryAlarm", moved), "4.01", "bad_mac")
    other = dev.message("reading", {})
    await rejected(
        await post(client, bridge, "reading", other, device="nobody-01"), "4.01", "bad_mac"
    )
    text = await rejected(
        await post(client, bridge, "reading", b"moisture=12"), "4.00", "bad_message"
    )
    assert "ST2 <counter> <tag>" in text
    text = await rejected(
        await post(client, bridge, "reading", dev.message("reading", b"{nope")),
        "4.22",
        "bad_payload",
    )
    assert "not valid JSON" in text
    text = await rejected(
        await post(client, bridge, "reading", dev.message("reading", b"\xff\x00"), cf=CBOR),
        "4.22",
        "bad_payload",
    )
    assert "not valid CBOR" in text
    await rejected(
        await post(client, bridge, "reading", dev.message("reading", {"colour": 1})),
        "4.22",
        "bad_payload",
    )
    big = dev.message("reading", b'"' + b"x" * MAX_MESSAGE_BYTES + b'"')  # block-wise, Size1
    response = await post(client, bridge, "reading", big)
    await rejected(response, "4.13", "too_large")
    assert response.opt.size1 == MAX_MESSAGE_BYTES
    await rejected(
        await post(client, bridge, "reading", dev.message("reading", {}), cf=0),
        "4.15",
        "unsupported_content_format",
    )
    await rejected(await request(client, bridge, Code.GET, "/nowhere"), "4.04", "not_found")
    await rejected(
        await request(client, bridge, Code.GET, f"/st/v1/{ID}/a/b/c"), "4.04", "not_found"
    )
    await rejected(
        await post(client, bridge, "launch", dev.message("launch", {})), "4.04", "unknown_channel"
    )
    await rejected(
        await request(client, bridge, Code.GET, f"/st/v1/{ID}/reading"),
        "4.05",
        "method_not_allowed",
    )
    await rejected(
        await request(client, bridge, Code.POST, f"/st/v1/{ID}/down"), "4.05", "method_not_allowed"
    )
    await rejected(
        await request(client, bridge, Code.GET, f"/st/v1/{ID}/down"), "4.00", "bad_message"
    )
    await rejected(
        await request(client, bridge, Code.GET, f"/st/v1/{ID}/down?c=99&m={'0' * 64}"),
        "4.01",
        "bad_mac",
    )
    await rejected(
        await request(
            client,
            bridge,
            Code.GET,
            f"/st/v1/{ID}/down?c=99&m={mac(link.secret, ID, 'poll', 99, b'')}",
            accept=0,
        ),
        "4.06",
        "not_acceptable",
    )
    gateway.rate, gateway.burst = 0.5, 1
    gateway._buckets.clear()
    assert code(await post(client, bridge, "poll", dev.message("poll", b""))) == "2.05"
    response = await post(client, bridge, "poll", dev.message("poll", b""))
    await rejected(response, "4.29", "rate_limited")
    assert response.opt.max_age == 2
    gateway.registry.revoke(ID)
    await rejected(
        await post(client, bridge, "reading", dev.message("reading", {"moisture": 1})),
        "4.03",
        "revoked",
    )
    assert sum(v for (name, _), v in gateway.metrics.counters.items() if "rejected" in name) == 14


async def test_a_channel_takes_post_and_down_takes_get_only(
    bridge: CoapBridge, link: DeviceLink, client: Any
) -> None:
    """Any other method, whether its code sorts below or above the one taken, is 4.05."""
    for method in (Code.GET, Code.PUT, Code.DELETE, Code.FETCH, Code.PATCH, Code.iPATCH):
        response = await request(client, bridge, method, f"/st/v1/{ID}/reading")
        assert code(response) == "4.05", (method, response.payload)
    for method in (Code.POST, Code.PUT, Code.DELETE, Code.FETCH, Code.PATCH, Code.iPATCH):
        response = await request(client, bridge, method, f"/st/v1/{ID}/down")
        assert code(response) == "4.05", (method, response.payload)


async def test_a_down_request_without_its_counter_or_its_mac_is_a_bad_message(
    bridge: CoapBridge, link: DeviceLink, client: Any
) -> None:
    """A device that sends ``GET down`` with only one of ``c`` and ``m`` (or either empty)
    is told what is missing (4.00), never a 5.00."""
    for query in ("?c=99", f"?m={'0' * 64}", f"?c=&m={'0' * 64}", "?c=99&m="):
        response = await request(client, bridge, Code.GET, f"/st/v1/{ID}/down{query}")
        assert code(response) == "4.00", (query, response.payload)
        assert response.payload.startswith(b"bad_message: down needs ?c=<counter>&m="), query


async def test_a_store_outage_asks_the_device_to_retry_in_5_s(
    bridge: CoapBridge, link: DeviceLink, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = bridge.gateway
    assert gateway is not None

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("no route to vault")

    monkeypatch.setattr(gateway, "handle", unreachable)
    response = await post(client, bridge, "reading", link.up("reading", {"moisture": 1}))
    assert code(response) == "5.03"
    assert response.payload.startswith(b"store_unavailable: ")
    assert response.opt.max_age == STORE_RETRY_AFTER == 5
    assert response.opt.size1 is None  # only a 4.13 says the size limit


async def test_a_registration_cannot_be_replayed(
    bridge: CoapBridge, link: DeviceLink, client: Any
) -> None:
    path = f"/st/v1/{ID}/down?c=5&m={mac(link.secret, ID, 'poll', 5, b'')}"
    assert code(await request(client, bridge, Code.GET, path)) == "2.05"
    response = await request(client, bridge, Code.GET, path, observe=0)
    assert code(response) == "4.03"
    assert response.payload.startswith(b"replay:")
    assert not bridge.can_push(ID)


# --- payload formats and sizes --------------------------------------------------------------


async def test_cbor_bodies_and_downlink_lists(
    bridge: CoapBridge, gateway: Gateway, store: Store, client: Any
) -> None:
    record = gateway.registry.add(ID, "coap")
    link = DeviceLink(ID, record.secret, SENSOR, content_format="cbor")
    async with CoapDevice(link, "127.0.0.1", bridge.port) as device:
        await device.start()
        await device.reading({"moisture": 33.5})
        assert await device.poll() == 0
    assert (await ThingClient(Client(store)).read(ID, "moisture")).value == 33.5
    await gateway.send(ID, "desired", {"target": 3})
    poll = frame(record.secret, ID, "poll", link.up_counter + 1, b"", uplink=True)
    response = await post(client, bridge, "poll", poll, cf=CBOR)
    assert int(response.opt.content_format) == CBOR
    [[channel, data]] = cbor2.loads(response.payload)
    assert channel == "desired"
    assert isinstance(data, bytes)
    parse_frame(data).verify(record.secret, ID, "desired", uplink=False)


async def test_a_large_birth_goes_blockwise(
    bridge: CoapBridge, link: DeviceLink, store: Store
) -> None:
    description = dict(SENSOR)
    description["attributes"] = [
        *SENSOR["attributes"],  # type: ignore[misc]
        *(
            {"name": f"reading_{i:02d}", "type": "number", "dynamic": True, "history": 2}
            for i in range(40)
        ),
    ]
    link.description = description
    assert len(link.birth()) > 2048
    link.up_counter = 0
    async with CoapDevice(link, "127.0.0.1", bridge.port) as device:
        await device.start()
        await device.reading({"reading_39": 1})
    assert (await ThingClient(Client(store)).read(ID, "reading_39")).value == 1


def test_downlink_list_encodings() -> None:
    sealed = frame(bytes(32), ID, "desired", 9, b'{"target": 1}', uplink=False)
    items = [
        ("action/r1", b"ST1 7 " + b"a" * 64 + b"\n{}"),
        ("desired", b"ST1 8 x\n{}"),
        ("desired", sealed),
    ]
    for cf in (CBOR, JSON):
        assert decode_downlinks(encode_downlinks(items, cf), cf) == items
    listed = json.loads(encode_downlinks(items, JSON))
    assert listed[0] == ["action/r1", "ST1 7 " + "a" * 64 + "\n{}"]  # ST1: the frame as text
    assert base64.b64decode(listed[2][1]) == sealed  # ST2 (binary): base64
    with pytest.raises(BadMessageError):
        decode_downlinks(b'[["desired", "not base64!"]]', JSON)
    for cf, garbage in (
        (JSON, b"[nope"),
        (CBOR, b"\xff\xff"),
        (JSON, b'{"a": 1}'),
        (JSON, b'[["desired", "e!A=="]]'),  # base64 with a stray character: not skipped
    ):
        with pytest.raises(BadMessageError):
            decode_downlinks(garbage, cf)
    for odd in (b'[["desired"]]', b'[["desired", "eA==", "more"]]', b'[[7, "eA=="]]'):
        with pytest.raises(BadMessageError, match=r"array of \[channel, frame\] pairs"):
            decode_downlinks(odd, JSON)
    assert cbor2.loads(encode_downlinks([], CBOR)) == []


async def test_a_vanished_observer_is_dropped_and_its_downlink_kept(
    bridge: CoapBridge, link: DeviceLink, gateway: Gateway
) -> None:
    device = CoapDevice(link, "127.0.0.1", bridge.port)
    await device.start()
    await device.observe()
    await device.close()  # gone without a word, as a device that loses power
    await gateway.send(ID, "desired", {"target": 2})  # the notification is refused
    async with asyncio.timeout(30):
        while bridge.can_push(ID):
            await asyncio.sleep(0.01)
    assert [d.channel for d in gateway.registry.pending(ID)] == ["desired"]
