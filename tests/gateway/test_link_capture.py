"""What the broker and the LAN see of an ST2 device: sizes and timing, never a value.

The attacker of docs/security.md on the device link: the broker's administrator (a
subscriber on ``#`` with an admin login) and a sniffer between the devices and the
gateway (here a TCP proxy in front of the HTTP bridge and a UDP proxy in front of the
CoAP bridge, each keeping every byte both ways). Three ST2 devices, one per transport,
send Owner-access readings with values that can be recognised, the owner requests an
Owner-access action with a recognisable argument, and each device sends a reading the
gateway refuses (a value quoted in a reply would leak it). None of it is in any capture,
while the readings reached a SAFEthing reader and the argument reached the device.

The same run has an ST1 device per transport: its values ARE in the captures, which shows
that the captures see the traffic (a capture that saw nothing would pass the first half).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from safething.net import Client
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.device_clients.coap import CoapDevice, CoapDeviceError
from safething_gateway.device_clients.http import GatewayHttpError, HttpDevice
from safething_gateway.device_clients.mqtt import MqttDevice
from safething_gateway.protocol import ProtocolError
from safething_gateway.testing import GatewaySite, open_site
from safething_gateway.testing import unique_id as uid

# --- the attacker's taps ---------------------------------------------------------------


@dataclass
class TcpTap:
    """A TCP proxy 127.0.0.1:port -> 127.0.0.1:target that keeps every byte both ways."""

    target: int
    seen: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await r.read(65536):
                    self.seen += data
                    w.write(data)
                    await w.drain()
            w.close()

        both = [
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ]
        self.tasks.update(both)
        await asyncio.gather(*both, return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class _Relay(asyncio.DatagramProtocol):
    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self.deliver = deliver

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.deliver(data)


class UdpTap(asyncio.DatagramProtocol):
    """A UDP proxy (one upstream socket per client address) that keeps every datagram."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.seen = bytearray()
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: dict[Any, asyncio.DatagramTransport] = {}
        self.opening: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen += data
        up = self.upstream.get(addr)
        if up is None:
            task = asyncio.ensure_future(self._open(addr, data))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)
        else:
            up.sendto(data)

    async def _open(self, addr: Any, first: bytes) -> None:
        loop = asyncio.get_running_loop()

        def back(data: bytes) -> None:
            self.seen += data
            assert self.transport is not None
            self.transport.sendto(data, addr)

        up, _ = await loop.create_datagram_endpoint(
            lambda: _Relay(back), remote_addr=("127.0.0.1", self.target)
        )
        self.upstream[addr] = up
        up.sendto(first)

    def close(self) -> None:
        for up in self.upstream.values():
            up.close()
        if self.transport is not None:
            self.transport.close()


class BrokerAdmin:
    """A subscriber on ``#`` with a login whose ACL reads every topic (and writes one topic
    of its own, :attr:`marker_topic`, for :meth:`caught_up`)."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._marker_topic = self.marker_topic(user)
        self._marker = b""
        self._marked = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uid("admin"))
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", 1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    @staticmethod
    def marker_topic(user: str) -> str:
        return f"capture/{user}/marker"

    def _message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        with self._lock:
            self.seen.append((message.topic, payload))
            if self._marker and payload == self._marker:
                self._marked.set()

    def wait_subscribed(self) -> None:
        assert self._subscribed.wait(10), "the admin's subscription to # was not granted"

    async def caught_up(self, timeout: float = 15.0) -> None:
        """Wait until the admin has read every message the broker took before this call.

        The admin publishes a marker and waits for it on ``#``: Mosquitto delivers to one
        subscriber in the order it took the messages, so the marker comes after all of
        them. What the admin holds before that may lack the tail its network thread had
        not read yet (a thread behind on a loaded machine): a value looked for in it
        would be missed, and one looked for as absent not looked for at all."""
        with self._lock:
            self._marker = f"marker-{secrets.token_hex(8)}".encode()
            self._marked.clear()
        self.client.publish(self._marker_topic, self._marker, qos=1)
        assert await asyncio.to_thread(self._marked.wait, timeout), (
            f"the admin's marker did not come back within {timeout:g} s"
        )

    def payloads(self) -> bytes:
        with self._lock:
            return b"\n".join(t.encode() + b" " + p for t, p in self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- the site -------------------------------------------------------------------------------

DESCRIPTION = {
    "format": 1,
    "title": "Door lock",
    "attributes": [
        {"name": "moisture", "type": "number", "dynamic": True, "access": "owner"},
        {"name": "note", "type": "string", "dynamic": True, "access": "owner"},
    ],
    "actions": [
        {"name": "Unlock", "params": [{"name": "code", "type": "string"}], "access": "owner"}
    ],
}


@dataclass
class Site:
    site: GatewaySite
    gateway: Gateway
    http: TcpTap
    coap: UdpTap
    admin: BrokerAdmin

    @property
    def broker_port(self) -> int:
        return self.site.broker.port

    async def provision(self, transport: str, version: int) -> tuple[DeviceLink, str | None]:
        device_id = uid(f"{transport}{version}")
        record = self.site.registry.add(device_id, transport, protocol=version)
        password = None
        if transport == "mqtt":
            assert self.site.auth is not None
            password = self.site.auth.add_device(device_id)
            self.site.broker.reload()
            await self.site.login_works(device_id, password, True)
        link = DeviceLink(
            device_id, record.secret, dict(DESCRIPTION, id=device_id), version=version
        )
        return link, password


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path / "site") as gs:
        assert gs.auth is not None
        admin_user = uid("admin")
        admin_password = gs.auth._add(  # the broker's admin, and its own marker topic
            admin_user,
            "admin",
            ["topic read #", f"topic write {BrokerAdmin.marker_topic(admin_user)}"],
        )
        gs.broker.reload()
        await gs.login_works(admin_user, admin_password, True)
        admin = BrokerAdmin(gs.broker.port, admin_user, admin_password)
        await asyncio.to_thread(admin.wait_subscribed)
        async with gs.gateway("mqtt", "coap", "http") as gateway:
            http = TcpTap(gs.bridges["http"].port)  # type: ignore[attr-defined]
            await http.start()
            coap = UdpTap(gs.bridges["coap"].port)  # type: ignore[attr-defined]
            await coap.start()
            try:
                yield Site(gs, gateway, http, coap, admin)
            finally:
                await http.close()
                coap.close()
                admin.close()


async def until(check: Callable[[], Any], timeout: float = 15) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := check()):
            await asyncio.sleep(0.02)
        return value


@dataclass
class Marks:
    """Values nobody could guess, to look for in the captures."""

    note: str = field(default_factory=lambda: f"note-{secrets.token_hex(8)}")
    moisture: float = field(default_factory=lambda: 1000 + secrets.randbelow(10**6) / 64)
    code: str = field(default_factory=lambda: f"code-{secrets.token_hex(8)}")
    refused: str = field(default_factory=lambda: f"wet-{secrets.token_hex(8)}")

    def texts(self) -> list[bytes]:
        return [self.note.encode(), repr(self.moisture).encode(), self.code.encode(),
                self.refused.encode()]  # fmt: skip


async def _one_device(site: Site, transport: str, version: int) -> Marks:
    """Provision, start, send readings and a refused reading, run an Owner action."""
    marks = Marks()
    link, password = await site.provision(transport, version)
    got: list[dict[str, Any]] = []
    link.on_action = lambda action, args: got.append(args)
    values = {"moisture": marks.moisture, "note": marks.note}
    device: Any
    if transport == "mqtt":
        device = MqttDevice(
            link, "127.0.0.1", site.broker_port, username=link.device_id, password=password
        )
    elif transport == "coap":
        device = CoapDevice(link, "127.0.0.1", site.coap.port)
    else:
        device = HttpDevice(link, f"http://127.0.0.1:{site.http.port}")
    async with device:
        await device.start()
        await device.reading(values)
        with contextlib.suppress(ProtocolError, GatewayHttpError, CoapDeviceError):
            await device.reading({"moisture": marks.refused})
        if transport == "mqtt":
            await device.flush(10)
            await until(lambda: any("bad_payload" in e.get("type", "") for e in device.errors))
        owner = ThingClient(Client(site.gateway.store, site.gateway.owner))
        await until(lambda: link.device_id in site.gateway.things)

        async def arrived() -> bool:
            try:
                return (await owner.read(link.device_id, "note")).value == marks.note
            except Exception:
                return False

        async with asyncio.timeout(15):
            while not await arrived():
                await asyncio.sleep(0.05)
        assert (await owner.read(link.device_id, "moisture")).value == marks.moisture
        handle = await owner.request(link.device_id, "Unlock", code=marks.code)
        if transport != "mqtt" and version == 2:
            async with asyncio.timeout(15):
                while not got:
                    await device.poll()
                    await asyncio.sleep(0.05)
        state = await handle.wait(15)
        if version == 2:
            assert state.state == "done", state
            assert got == [{"code": marks.code}]  # the argument reached the device
        else:  # sealed arguments are never sent in clear: the value is not on the wire
            assert state.state == "failed" and got == []
            marks.code = ""
    return marks


async def test_the_broker_and_the_lan_see_no_value_of_an_st2_device(site: Site) -> None:
    sealed = {t: await _one_device(site, t, 2) for t in ("mqtt", "coap", "http")}
    clear = {t: await _one_device(site, t, 1) for t in ("mqtt", "coap", "http")}
    await site.admin.caught_up()  # everything the broker took, not what was read so far
    captures = {
        "mqtt": site.admin.payloads(),
        "coap": bytes(site.coap.seen),
        "http": bytes(site.http.seen),
    }
    for transport, capture in captures.items():
        # the captures did see the traffic: an ST1 device's values are in them
        for text in clear[transport].texts():
            if text:
                assert text in capture, (transport, text)
        for text in sealed[transport].texts():
            assert text not in capture, (transport, text)
    # the admin saw the ST2 devices' messages themselves, not only their absence: a
    # reading, and the action carrying the argument
    assert b"/up/reading ST2 " in captures["mqtt"]
    assert re.search(rb"/down/action/\S+ ST2 ", captures["mqtt"])
    assert b"ST2 " in captures["http"] and b"ST2 " in captures["coap"]
