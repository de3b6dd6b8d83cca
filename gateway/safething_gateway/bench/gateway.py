"""Benchmarks of the gateway: devices on MQTT, CoAP and HTTP becoming SAFEthings.

Everything runs on ``127.0.0.1``: a private Mosquitto on a free port
(:func:`safething_gateway.testing.mosquitto`), the gateway's registry and a
SQLite store (WAL, ``synchronous=NORMAL``) in the group's temporary
directory. What each metric means and how it is measured is written up in
``docs/benchmarks.md``.

Groups:

``gateway.latency``
    ``gateway_<transport>_device_to_subscriber_latency_*`` for ``mqtt``,
    ``coap`` and ``http``: the reference device of that transport sends a
    reading, the gateway verifies it and writes it to the device's custodial
    thing, a :class:`~safething.things.ThingClient` subscription yields it.
    Next to each, in the same run and interleaved sample by sample,
    ``raw_<transport>_latency_*``: the same payload over the bare transport
    (paho -> Mosquitto -> paho; aiocoap POST to a resource that only
    answers; httpx POST to a FastAPI route that only answers), and
    ``gateway_<transport>_vs_raw_latency_ratio``.
``gateway.load``
    ``gateway_sustained_readings_per_s``: a gateway in a child process
    (:mod:`safething_gateway.bench._gateway_child`) with 1,000 provisioned devices,
    each born over MQTT, then a stream of readings spread over every device
    for a bounded time; readings are counted in the store at the end (each
    device's last sequence number). ``gateway_peak_rss_mb``: the child's
    peak resident set (``VmHWM``) over start, births and load.
    A new gateway process then starts on the same registry and store (its
    start-up time and memory in ``params``; ``gateway.scale`` measures start-up
    with 10,000 devices: :mod:`safething_gateway.bench.scale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import aiocoap
import httpx
import paho.mqtt.client as mqtt
import uvicorn
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat
from fastapi import FastAPI, Request, Response
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import safething
import safething_gateway
from safething.bench.common import (
    DELIVERY_TIMEOUT_S,
    PERCENTILES,
    STORE_SETTINGS,
    Sampling,
    background,
    by_name,
    child_env,
    logged_child_error,
    sqlite_url,
    start_logged,
    with_p_target,
    with_target,
)
from safething.bench.crypto import sign_verify_rate
from safething.bench.runner import (
    BenchContext,
    GroupFunc,
    Metric,
    latency_metrics,
    metric,
    rate_metric,
    ratio_metric,
)
from safething.errors import NoSuchDataError
from safething.net import Client, Identity
from safething.store import open_store
from safething.things import Notification, Subscription, ThingClient
from safething_gateway.bridges.coap import JSON, CoapBridge
from safething_gateway.bridges.http import HttpBridge
from safething_gateway.bridges.mqtt import MqttBridge, MqttConnection, Topics
from safething_gateway.core import Bridge, Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.device_clients.coap import CoapDevice
from safething_gateway.device_clients.http import HttpDevice
from safething_gateway.device_clients.mqtt import MqttDevice
from safething_gateway.protocol import frame
from safething_gateway.registry import Registry
from safething_gateway.testing import Mosquitto, free_port, mosquitto

__all__ = [
    "GROUPS",
    "LONG_GROUPS",
    "TRANSPORTS",
    "latency_group",
    "load_10k_group",
    "load_group",
    "sensor_description",
    "soak_group",
]

TRANSPORTS = ("mqtt", "coap", "http")
"""Every device transport, in the order they are measured."""
RSS_TARGET_MB = 150.0
"""Issue target: the gateway's peak resident set with 1,000 devices (a 1 GB Raspberry Pi 3)."""
SUSTAINED_TARGET_PER_S = 5_000.0
"""Issue 14: readings a second through one gateway with 1,000 devices (MQTT QoS 1)."""
SUSTAINED_10K_TARGET_PER_S = 3_000.0
"""Issue 14: the same with 10,000 devices."""
LOAD_P99_TARGET_MS = 50.0
"""Issue 14: device -> subscriber p99 under that load."""
MQTT_RATIO_TARGET = 3.0
"""Issue 14: an idle MQTT device -> subscriber p50 at most this many raw hops (same run)."""
SOAK_PACE_PER_S = 5_050
"""The soak's pace: 5,000 readings/s and 1 % over, so that a gateway that keeps up shows
at least 5,000/s once the last reading's handling is counted in the time."""
SOAK_RSS_GROWTH_MB = 10.0
"""What "flat" means for the soak's resident set: growth from a tenth of the run to its end."""

_MIB = 1024
"""KiB per MiB: ``VmRSS`` and ``VmHWM`` are in KiB."""


@dataclass(frozen=True, slots=True)
class _GatewaySizes(Sampling):
    gap_s: float
    """Pause after each sample, raw or through the gateway."""
    devices: int
    """Devices of the load run."""
    load_s: float
    """How long the load generator sends readings."""
    backlog: int
    """Most readings sent and not yet handled by the gateway during the load run."""
    connections: int
    """MQTT connections the load generator shares among the devices."""
    report_s: float
    """Period of the gateway child's progress reports."""
    relay_s: float = 5.0
    """How long the raw Mosquitto relay rate is measured (before the gateway's load)."""
    watched: int = 50
    """Devices of the load run whose readings a subscriber follows (latency under load)."""
    pace: float | None = None
    """Readings per second the generator aims at (None: as fast as the gateway takes them)."""


def _sizes(ctx: BenchContext) -> _GatewaySizes:
    return _GatewaySizes(
        samples=ctx.size(300, 20),
        warmup=ctx.size(5, 2),
        gap_s=0.010,
        devices=ctx.size(1_000, 100),
        load_s=ctx.size(20, 3),
        backlog=500,
        connections=4,
        report_s=0.05,
        relay_s=ctx.size(5, 1),
        watched=ctx.size(50, 4),
    )


def sensor_description(device_id: str) -> dict[str, Any]:
    """The soil sensor of ``docs/protocol.md`` §3 (the gateway tests' ``SENSOR``)."""
    return copy.deepcopy(
        {
            "format": 1,
            "id": device_id,
            "title": "Soil sensor",
            "attributes": [
                {
                    "name": "moisture",
                    "type": "number",
                    "unit": "%",
                    "minimum": 0,
                    "maximum": 100,
                    "dynamic": True,
                },
                {"name": "model", "type": "string", "value": "GD-1"},
                {"name": "target", "type": "number", "dynamic": True, "writable": True},
            ],
            "topics": [{"name": "VeryDryAlarm", "type": "number"}],
            "actions": [
                {
                    "name": "OpenValve",
                    "params": [{"name": "psi", "type": "number", "minimum": 0, "maximum": 100}],
                },
                {"name": "CloseValve"},
            ],
        }
    )


def _reading(i: int) -> dict[str, float]:
    """Reading ``i``: consecutive readings always differ."""
    return {"moisture": float(i % 101)}


async def _until(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Until ``check()`` is true, looking every 10 ms (for state owned by other code)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.01)


# --- raw transports: the same payload, nothing behind it -----------------------------------


Sampler = Callable[[int], Awaitable[float]]
"""Takes sample ``i``; returns its latency in ms."""


def _payload(i: int) -> bytes:
    """A raw payload of the size of a framed reading (header line, MAC, JSON body)."""
    body = json.dumps(_reading(i)).encode()
    return frame(b"\x00" * 32, "bench-raw-01", "reading", i + 1, body, uplink=True)


class _PahoClient:
    """A bare paho client on its own network thread (TCP_NODELAY, as our clients set)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311
        )
        self.client.on_socket_open = self._socket_open
        self.client.on_connect = self._connect

    @staticmethod
    def _socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._resolve(self.connected, None if not reason.is_failure else str(reason))

    def _resolve(self, future: asyncio.Future[None], error: str | None) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(ConnectionError(f"raw MQTT client: {error}"))

        self.loop.call_soon_threadsafe(settle)

    async def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        async with asyncio.timeout(DELIVERY_TIMEOUT_S):
            await self.connected

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)


@asynccontextmanager
async def _raw_mqtt(port: int) -> AsyncIterator[Sampler]:
    """paho publishes (QoS 1) -> Mosquitto -> a paho subscriber (QoS 1) stamps it."""
    topic = "bench/raw/reading"
    arrivals: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    subscriber = _PahoClient(port, "safething-bench-raw-sub")
    subscribed: asyncio.Future[None] = subscriber.loop.create_future()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        now = time.perf_counter_ns()  # on paho's thread, as soon as the message is read
        subscriber.loop.call_soon_threadsafe(arrivals.put_nowait, (bytes(message.payload), now))

    def on_subscribe(client: mqtt.Client, userdata: Any, *args: Any) -> None:
        subscriber._resolve(subscribed, None)

    subscriber.client.on_message = on_message
    subscriber.client.on_subscribe = on_subscribe
    publisher = _PahoClient(port, "safething-bench-raw-pub")
    await subscriber.start()
    try:
        subscriber.client.subscribe(topic, qos=1)
        async with asyncio.timeout(DELIVERY_TIMEOUT_S):
            await subscribed
        await publisher.start()
        try:

            async def sample(i: int) -> float:
                payload = _payload(i)
                stamp = time.perf_counter_ns()
                publisher.client.publish(topic, payload, qos=1)
                async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                    got, arrived = await arrivals.get()
                if got != payload:
                    raise RuntimeError(f"raw MQTT: sample {i} received another payload")
                return (arrived - stamp) / 1e6

            yield sample
        finally:
            await publisher.stop()
    finally:
        await subscriber.stop()


class _Sink(resource.Resource):  # type: ignore[misc]
    """A CoAP resource that takes a POST and answers 2.04 Changed, nothing else."""

    async def render_post(self, request: Any) -> aiocoap.Message:
        return aiocoap.Message(code=Code.CHANGED)


@asynccontextmanager
async def _raw_coap() -> AsyncIterator[Sampler]:
    """aiocoap POST (confirmable) -> a trivial aiocoap resource -> 2.04 back."""
    site = resource.Site()
    site.add_resource(["sink"], _Sink())
    server: Any = None
    port = 0
    for attempt in range(5):
        port = free_port(socket.SOCK_DGRAM)
        try:
            server = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", port), transports=["udp6"]
            )
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == 4:
                raise
            continue
        break
    try:
        client = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:

            async def sample(i: int) -> float:
                request = aiocoap.Message(
                    code=Code.POST,
                    uri=f"coap://127.0.0.1:{port}/sink",
                    payload=_payload(i),
                    content_format=ContentFormat(JSON),
                )
                stamp = time.perf_counter_ns()
                async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                    response = await client.request(request).response
                done = time.perf_counter_ns()
                if response.code != Code.CHANGED:
                    raise RuntimeError(f"raw CoAP: sample {i} answered {response.code}")
                return (done - stamp) / 1e6

            yield sample
        finally:
            await client.shutdown()
    finally:
        await server.shutdown()


class _Uvicorn(uvicorn.Server):
    """uvicorn inside this event loop, leaving the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _sink_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/sink", status_code=204)
    async def sink(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    return app


@asynccontextmanager
async def _raw_http() -> AsyncIterator[Sampler]:
    """httpx POST (keep-alive) -> a trivial FastAPI route on uvicorn -> 204 back."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        _sink_app(), log_config=None, access_log=False, lifespan="off", server_header=False
    )
    server = _Uvicorn(config)
    task = asyncio.get_running_loop().create_task(
        server.serve(sockets=[sock]), name="bench-raw-http:serve"
    )
    try:
        await _until(lambda: server.started or task.done(), "raw HTTP server start", 10)
        if task.done():
            task.result()
            raise RuntimeError("raw HTTP server stopped at start")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=DELIVERY_TIMEOUT_S
        ) as client:

            async def sample(i: int) -> float:
                payload = _payload(i)
                stamp = time.perf_counter_ns()
                response = await client.post(
                    "/sink", content=payload, headers={"Content-Type": "application/json"}
                )
                done = time.perf_counter_ns()
                if response.status_code != 204:
                    raise RuntimeError(f"raw HTTP: sample {i} answered {response.status_code}")
                return (done - stamp) / 1e6

            yield sample
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def _raw(transport: str, broker: Mosquitto) -> contextlib.AbstractAsyncContextManager[Sampler]:
    if transport == "mqtt":
        return _raw_mqtt(broker.port)
    if transport == "coap":
        return _raw_coap()
    return _raw_http()


# --- through the gateway: reference device -> gateway -> store -> subscriber ---------------


Sender = Callable[[dict[str, Any]], Awaitable[None]]
"""Sends one reading from the device."""


@asynccontextmanager
async def _device(
    transport: str, link: DeviceLink, bridges: dict[str, Bridge], broker: Mosquitto
) -> AsyncIterator[Sender]:
    """The reference device of ``transport``, started (its ``birth`` sent)."""
    if transport == "mqtt":
        async with MqttDevice(link, "127.0.0.1", broker.port) as mqtt_device:
            await mqtt_device.start()
            yield mqtt_device.reading
    elif transport == "coap":
        coap = bridges["coap"]
        assert isinstance(coap, CoapBridge)
        async with CoapDevice(link, "127.0.0.1", coap.port) as coap_device:
            await coap_device.start()
            yield coap_device.reading
    else:
        (endpoint,) = bridges["http"].endpoints()
        async with HttpDevice(link, endpoint, timeout=DELIVERY_TIMEOUT_S) as http_device:
            await http_device.start()
            yield http_device.reading


async def _receive(sub: Subscription, arrivals: asyncio.Queue[tuple[Notification, int]]) -> None:
    """Stamp each notification the moment the subscription yields it."""
    async for note in sub:
        arrivals.put_nowait((note, time.perf_counter_ns()))


@dataclass
class _Run:
    """The samples of one transport, taken in turns: raw, gateway, raw, gateway..."""

    gateway_ms: list[float] = field(default_factory=list)
    raw_ms: list[float] = field(default_factory=list)


async def _transport_run(
    transport: str,
    gateway: Gateway,
    things: ThingClient,
    bridges: dict[str, Bridge],
    broker: Mosquitto,
    sizes: _GatewaySizes,
) -> _Run:
    device_id = f"bench-{transport}-01"
    record = gateway.registry.add(device_id, transport)
    link = DeviceLink(device_id, record.secret, sensor_description(device_id))
    run = _Run()
    async with _device(transport, link, bridges, broker) as send, _raw(transport, broker) as raw:
        await _until(lambda: device_id in gateway.things, f"{transport} birth", DELIVERY_TIMEOUT_S)
        async with things.subscribe(device_id, attribute="moisture") as sub:
            arrivals: asyncio.Queue[tuple[Notification, int]] = asyncio.Queue()
            async with background(_receive(sub, arrivals), f"bench-gateway:{transport}:receive"):
                for i in range(sizes.total):
                    run.raw_ms.append(await raw(i))
                    await asyncio.sleep(sizes.gap_s)
                    values = _reading(i)
                    stamp = time.perf_counter_ns()
                    await send(values)
                    try:
                        async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                            note, arrived = await arrivals.get()
                    except TimeoutError:
                        raise RuntimeError(
                            f"{transport}: reading {i} did not reach the subscriber within "
                            f"{DELIVERY_TIMEOUT_S:g} s"
                        ) from None
                    if note.value != values["moisture"]:
                        raise RuntimeError(
                            f"{transport}: reading {i} was {values}, the subscriber got "
                            f"{note.value!r}"
                        )
                    run.gateway_ms.append((arrived - stamp) / 1e6)
                    await asyncio.sleep(sizes.gap_s)
    run.gateway_ms = run.gateway_ms[sizes.warmup :]
    run.raw_ms = run.raw_ms[sizes.warmup :]
    return run


_GATEWAY_PATH = {
    "mqtt": "MqttDevice.reading (QoS 1) -> Mosquitto -> MqttBridge -> Gateway.handle",
    "coap": "CoapDevice.reading (confirmable POST) -> CoapBridge (aiocoap) -> Gateway.handle",
    "http": "HttpDevice.reading (httpx POST) -> HttpBridge (FastAPI on uvicorn) -> Gateway.handle",
}
_RAW_PATH = {
    "mqtt": "paho publish (QoS 1) -> Mosquitto -> paho subscriber (QoS 1); one way",
    "coap": "aiocoap confirmable POST -> aiocoap resource answering 2.04; round trip",
    "http": "httpx POST (keep-alive) -> FastAPI route on uvicorn answering 204; round trip",
}


def _latency_report(transport: str, run: _Run, sizes: _GatewaySizes) -> list[Metric]:
    common = {
        "warmup": sizes.warmup,
        "gap_ms": sizes.gap_s * 1000,
        "clock": "perf_counter, one process",
        "interleaved": "raw and gateway samples taken in turns, one at a time",
        "percentiles": PERCENTILES,
        "payload_bytes": len(_payload(0)),
    }
    through = latency_metrics(
        f"gateway_{transport}_device_to_subscriber_latency",
        run.gateway_ms,
        params={
            **common,
            "transport": transport,
            "path": _GATEWAY_PATH[transport]
            + " (MAC, counter, rate limit, type check) -> Thing.set (signed, one store commit)"
            " -> ThingClient.subscribe(attribute='moisture') yields it",
            "from": "just before the device's reading() is called",
            "to": "the subscription yields the notification",
            "store": STORE_SETTINGS,
            "in_one_process": "device, bridges, gateway, subscriber (Mosquitto apart)",
        },
        layer="gateway",
    )
    raw = latency_metrics(
        f"raw_{transport}_latency",
        run.raw_ms,
        params={**common, "transport": transport, "path": _RAW_PATH[transport]},
        layer="raw",
    )
    ratio = ratio_metric(
        f"gateway_{transport}_vs_raw_latency_ratio",
        by_name(through, f"gateway_{transport}_device_to_subscriber_latency_p50_ms"),
        by_name(raw, f"raw_{transport}_latency_p50_ms"),
    )
    if transport == "mqtt":
        ratio = with_target(ratio, "<=", MQTT_RATIO_TARGET)
    return [*through, *raw, ratio]


async def latency_group(ctx: BenchContext) -> list[Metric]:
    """Device -> gateway -> subscriber on each transport, next to the bare transport."""
    sizes = _sizes(ctx)
    runs: dict[str, _Run] = {}
    with mosquitto() as broker:
        registry = Registry(ctx.workdir / "registry.db")
        try:
            async with await open_store(sqlite_url(ctx.workdir / "latency.db")) as store:
                bridges: dict[str, Bridge] = {
                    "mqtt": MqttBridge(
                        "127.0.0.1", broker.port, client_id="safething-bench-latency"
                    ),
                    "coap": CoapBridge("127.0.0.1", 0),
                    "http": HttpBridge("127.0.0.1", 0),
                }
                async with Gateway(
                    store=store,
                    registry=registry,
                    owner=Identity.generate("bench-owner"),
                    bridges=list(bridges.values()),
                ) as gateway:
                    await gateway.start()
                    async with ThingClient(Client(store)) as things:
                        for transport in TRANSPORTS:
                            runs[transport] = await _transport_run(
                                transport, gateway, things, bridges, broker, sizes
                            )
        finally:
            registry.close()
    return [
        m for transport in TRANSPORTS for m in _latency_report(transport, runs[transport], sizes)
    ]


# --- sustained load: 1,000 devices over MQTT, the gateway in a child process ---------------


class _GatewayChild:
    """``python -m safething_gateway.bench._gateway_child`` and what it reports (JSON lines)."""

    def __init__(self, args: list[str], log_path: Path, *, stop_timeout: float = 60.0) -> None:
        self.args = args
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        """Seconds a clean stop may take (the gateway closes every thing it runs)."""
        self.reports: list[dict[str, Any]] = []
        """Every line the child wrote, in order."""
        self.ready: dict[str, Any] = {}
        self.closed: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def latest(self) -> dict[str, Any]:
        return self.reports[-1]

    def failed(self, what: str) -> RuntimeError:
        return logged_child_error("gateway child", what, self._proc, self.log_path, "its log")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                doc = json.loads(line)
                self.reports.append(doc)
                if doc["event"] == "ready":
                    self.ready = doc
                elif doc["event"] == "closed":
                    self.closed = doc
                self._changed.set()
        finally:
            self._changed.set()

    async def wait(self, done: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> None:
        """Until a report satisfies ``done``; fails when the child ends first."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(timeout):
                while not (self.reports and done(self.latest)):
                    if self._reader.done():
                        self._reader.result()
                        raise self.failed(f"ended while waiting for {what}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise self.failed(f"{what}: not within {timeout:g} s") from None

    async def next_report(self) -> None:
        """Until the child writes its next line."""
        count = len(self.reports)
        await self.wait(lambda _: len(self.reports) > count, "a report", DELIVERY_TIMEOUT_S)

    @asynccontextmanager
    async def running(self, startup_timeout: float) -> AsyncIterator[_GatewayChild]:
        self._proc = await start_logged(
            ["-m", "safething_gateway.bench._gateway_child", *self.args],
            self.log_path,
            stdin=asyncio.subprocess.PIPE,
            env=child_env(safething, safething_gateway),
        )
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name="bench-gateway:child-reports"
        )
        try:
            await self.wait(lambda r: r["event"] == "ready", "start", startup_timeout)
            yield self
            await self._stop()
        finally:
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _stop(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(b"stop\n")
        await self._proc.stdin.drain()
        self._proc.stdin.close()
        await self.wait(lambda r: r["event"] == "closed", "a clean stop", self.stop_timeout)
        async with asyncio.timeout(30):
            await self._proc.wait()
        if self._proc.returncode != 0:
            raise self.failed("did not exit cleanly")


class _LoadGenerator:
    """Many devices sharing a few MQTT connections; each device frames with its own
    id, secret and counter, and always goes through the same connection (in order)."""

    def __init__(self, port: int, links: Sequence[DeviceLink], connections: int) -> None:
        self.links = links
        self.topics = Topics()
        self.connections = [
            MqttConnection(
                "127.0.0.1",
                port,
                client_id=f"safething-bench-load-{k}",
                max_inflight=100,
                label=f"bench load {k}",
            )
            for k in range(connections)
        ]
        self.published = 0
        self.acked = 0
        self.refused = 0

    async def start(self) -> None:
        for connection in self.connections:
            await connection.start()
        for connection in self.connections:
            if not await connection.wait_connected(DELIVERY_TIMEOUT_S):
                raise ConnectionError(f"load generator: no broker at {connection.url}")

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()

    def _acked(self, future: asyncio.Future[bool]) -> None:
        if future.result():
            self.acked += 1
        else:
            self.refused += 1

    def send(self, index: int, channel: str, body: Any) -> None:
        """Frame ``body`` for device ``index`` with its next counter and publish it (QoS 1)."""
        link = self.links[index]
        data = link.birth() if channel == "birth" else link.up(channel, body)
        self.publish(index, self.topics.up(link.device_id, channel), data)

    def publish(self, index: int, topic: str, data: bytes) -> None:
        """Publish ``data`` (QoS 1) on the connection of device ``index``."""
        connection = self.connections[index % len(self.connections)]
        _, future = connection.publish(topic, data, 1)
        future.add_done_callback(self._acked)
        self.published += 1


@dataclass
class _LoadRun:
    births_s: float
    load_s: float
    """From the first reading sent to the report that saw the last one handled."""
    sent: int
    handled: int
    rejected: int
    per_device: list[int]
    """Readings sent per device."""
    per_second: list[int]
    """Readings the gateway handled in each second of the run."""
    ready: dict[str, Any]
    after_births: dict[str, Any]
    drained: dict[str, Any]
    closed: dict[str, Any]
    broker_acks: int
    latency_ms: list[float]
    """Device -> subscriber latency of each reading of the watched devices."""
    watched: int
    """Readings of the watched devices sent (``latency_ms`` has one per arrival)."""
    pace: float
    """Readings a second of the watched phase."""
    paced: _Phase
    """The watched phase (the soak: the whole run)."""
    relay: tuple[int, float]
    """Raw Mosquitto relay in the same run: messages received, seconds."""
    rss_kb: list[tuple[float, int]]
    """``(seconds since the first reading, VmRSS in KiB)`` of every report of the load."""


def _handled(report: dict[str, Any]) -> int:
    return int(report["in"]) + int(report["rejected"])


def _per_second(reports: Sequence[dict[str, Any]], start: float, base: int) -> list[int]:
    """Messages handled in each whole second after ``start`` (from the child's reports)."""
    counts: list[int] = []
    mark, last = start + 1.0, base
    for report in reports:
        if report["event"] != "report" or report["t"] < start:
            continue
        while report["t"] >= mark:
            counts.append(_handled(report) - last)
            last = _handled(report)
            mark += 1.0
    return counts


def _provision(path: Path, count: int, prefix: str = "bench-load") -> list[DeviceLink]:
    """``count`` devices in a new registry, each with its own secret and thing keys."""
    registry = Registry(path)
    try:
        links = []
        for i in range(count):
            device_id = f"{prefix}-{i:05d}"
            record = registry.add(device_id, "mqtt")
            links.append(DeviceLink(device_id, record.secret, sensor_description(device_id)))
        return links
    finally:
        registry.close()


def _child_args(workdir: Path, url: str, port: int, sizes: _GatewaySizes) -> list[str]:
    return [
        "--store",
        url,
        "--registry",
        str(workdir / "registry.db"),
        "--owner",
        str(workdir / "owner.identity"),
        "--mqtt-port",
        str(port),
        "--report-ms",
        str(sizes.report_s * 1000),
    ]


async def _raw_relay(
    port: int, generator: _LoadGenerator, sizes: _GatewaySizes
) -> tuple[int, float]:
    """The load generator's connections publish a framed reading's bytes (QoS 1) to
    Mosquitto, one paho subscriber (QoS 1) takes them: ``(received, seconds)`` from the
    first sent to the last received, at most ``sizes.backlog`` sent and not yet received
    (the gateway run's window). The transport of the load run with nothing behind it."""
    topic = "bench/relay/reading"
    payload = _payload(0)
    got = [0, 0.0]  # received, time.monotonic() of the last; written on paho's thread only
    subscriber = _PahoClient(port, "safething-bench-relay-sub")
    subscribed: asyncio.Future[None] = subscriber.loop.create_future()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        got[1] = time.monotonic()
        got[0] += 1

    def on_subscribe(client: mqtt.Client, userdata: Any, *args: Any) -> None:
        subscriber._resolve(subscribed, None)

    subscriber.client.on_message = on_message
    subscriber.client.on_subscribe = on_subscribe
    await subscriber.start()
    try:
        subscriber.client.subscribe(topic, qos=1)
        async with asyncio.timeout(DELIVERY_TIMEOUT_S):
            await subscribed
        sent = 0
        started = time.monotonic()
        end = started + sizes.relay_s
        while time.monotonic() < end:
            room = sizes.backlog - (sent - int(got[0]))
            if room <= 0:
                await asyncio.sleep(0.001)
                continue
            for _ in range(min(room, 100)):
                generator.publish(sent, topic, payload)
                sent += 1
            await asyncio.sleep(0)
        await _until(lambda: got[0] >= sent, "the relayed messages", DELIVERY_TIMEOUT_S)
        return int(got[0]), float(got[1]) - started
    finally:
        await subscriber.stop()


class _Watcher:
    """A subscriber in this process following ``moisture`` of a few devices of the load
    run (read from the store the gateway writes, verified): the latency of each reading
    from just before the generator frames and publishes it to the subscription yielding
    it. The ``k``-th reading of a device (from 0) is its sequence number ``k + 1``."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.stamps: dict[int, dict[int, int]] = {i: {} for i in indices}
        """Device index -> sequence number -> ``perf_counter_ns`` just before sending."""
        self.arrivals: list[tuple[int, int, int]] = []
        """``(device index, seq, perf_counter_ns)`` of each notification."""
        self._changed = asyncio.Event()

    async def follow(self, sub: Subscription, index: int) -> None:
        async for note in sub:
            self.arrivals.append((index, note.seq, time.perf_counter_ns()))
            self._changed.set()

    def stamp(self, index: int, seq: int) -> None:
        stamps = self.stamps.get(index)
        if stamps is not None:
            stamps[seq] = time.perf_counter_ns()

    @property
    def watched(self) -> int:
        return sum(len(s) for s in self.stamps.values())

    def _complete(self) -> bool:
        last = dict.fromkeys(self.stamps, 0)
        for index, seq, _ in self.arrivals:
            last[index] = max(last[index], seq)
        return all(last[i] >= max(s, default=0) for i, s in self.stamps.items())

    async def drained(self, timeout: float) -> None:
        """Until every watched device's last reading arrived (or ``timeout``: what arrived
        counts, the rest is reported as missing)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._complete():
                    self._changed.clear()
                    await self._changed.wait()

    def latencies_ms(self) -> list[float]:
        samples = []
        for index, seq, arrived in self.arrivals:
            sent = self.stamps[index].get(seq)
            if sent is not None:
                samples.append((arrived - sent) / 1e6)
        return samples


@dataclass
class _Phase:
    """Readings sent for a while, then drained: what the gateway handled meanwhile."""

    sent: int
    seconds: float
    """From the first reading sent to the report that saw the last one handled."""
    drained: dict[str, Any]
    """That report."""


async def _phase(
    child: _GatewayChild,
    generator: _LoadGenerator,
    per_device: list[int],
    sizes: _GatewaySizes,
    *,
    seconds: float,
    pace: float | None,
    watcher: _Watcher | None = None,
) -> _Phase:
    """Readings to the devices in turn for ``seconds``, at most ``sizes.backlog`` sent and
    not yet handled, and at most ``pace`` a second when given; then until all are handled."""
    n = len(per_device)
    base = _handled(child.latest)
    sent = 0
    started = time.monotonic()
    end = started + seconds
    while (now := time.monotonic()) < end:
        room = sizes.backlog - (sent - (_handled(child.latest) - base))
        if pace is not None:
            room = min(room, int(pace * (now - started)) - sent)
        if room <= 0:
            if pace is None:
                await child.next_report()
            else:
                await asyncio.sleep(0.002)
            continue
        for _ in range(min(room, 100)):
            index = sent % n
            if watcher is not None:
                watcher.stamp(index, per_device[index] + 1)
            generator.send(index, "reading", _reading(per_device[index]))
            per_device[index] += 1
            sent += 1
        await asyncio.sleep(0)
    await child.wait(
        lambda r: _handled(r) - base >= sent, "the last readings", 30 + sizes.backlog * 0.2
    )
    drained = child.latest
    return _Phase(sent, drained["t"] - started, drained)


async def _load_run(
    child: _GatewayChild, generator: _LoadGenerator, sizes: _GatewaySizes, url: str
) -> tuple[float, _Phase, list[int], dict[str, Any], _Phase, _Watcher, float]:
    """Births; readings for ``sizes.load_s`` as fast as the gateway takes them (or at
    ``sizes.pace``); then, unless paced, half as long again at the target rate (or 80 % of
    the rate just measured, if lower) with a few devices watched by a subscriber."""
    n = len(generator.links)
    started = time.monotonic()
    for index in range(n):
        generator.send(index, "birth", None)
    await child.wait(lambda r: _handled(r) >= n, f"{n} births", 30 + 0.5 * n)
    after_births = child.latest
    if after_births["rejected"]:
        raise child.failed(f"{after_births['rejected']} of {n} births were refused")
    births_s = after_births["t"] - started

    watcher = _Watcher(sorted({k * n // sizes.watched for k in range(sizes.watched)}))
    per_device = [0] * n
    async with (
        await open_store(url) as store,
        ThingClient(Client(store)) as things,
        contextlib.AsyncExitStack() as stack,
    ):

        async def watch() -> None:
            for index in watcher.stamps:
                sub = await stack.enter_async_context(
                    things.subscribe(generator.links[index].device_id, attribute="moisture")
                )
                await stack.enter_async_context(
                    background(watcher.follow(sub, index), f"bench-gateway:watch-{index}")
                )

        if sizes.pace is not None:  # the soak: one paced run, watched throughout
            await watch()
            load = await _phase(
                child,
                generator,
                per_device,
                sizes,
                seconds=sizes.load_s,
                pace=sizes.pace,
                watcher=watcher,
            )
            paced, pace = load, sizes.pace
        else:
            load = await _phase(
                child, generator, per_device, sizes, seconds=sizes.load_s, pace=None
            )
            await watch()
            pace = min(SUSTAINED_TARGET_PER_S, 0.8 * load.sent / load.seconds)
            paced = await _phase(
                child,
                generator,
                per_device,
                sizes,
                seconds=sizes.load_s / 2,
                pace=pace,
                watcher=watcher,
            )
        await watcher.drained(DELIVERY_TIMEOUT_S)
    return births_s, load, per_device, after_births, paced, watcher, pace


async def _stored(url: str, links: Sequence[DeviceLink]) -> list[int]:
    """Each device's readings in the store: the last sequence number of its ``moisture``."""
    counts = []
    async with await open_store(url) as store, ThingClient(Client(store)) as things:
        for link in links:
            try:
                counts.append((await things.read(link.device_id, "moisture")).seq)
            except NoSuchDataError:
                counts.append(0)
    return counts


async def _sustained(
    ctx: BenchContext, sizes: _GatewaySizes
) -> tuple[_LoadRun, _GatewayChild, list[int], str]:
    """The raw relay, then births and readings against a gateway child, then a restart."""
    url = sqlite_url(ctx.workdir / "load.db")
    links = _provision(ctx.workdir / "registry.db", sizes.devices)
    Identity.generate("bench-owner").save(ctx.workdir / "owner.identity")
    with mosquitto() as broker:
        args = _child_args(ctx.workdir, url, broker.port, sizes)
        # a clean stop writes "offline" into every thing running: 10,000 after the births
        child = _GatewayChild(
            args, ctx.workdir / "gateway-child.log", stop_timeout=60 + 0.05 * sizes.devices
        )
        async with child.running(startup_timeout=120) as running:
            generator = _LoadGenerator(broker.port, links, sizes.connections)
            await generator.start()
            try:
                relay = await _raw_relay(broker.port, generator, sizes)
                relayed = generator.published
                births_s, load, per_device, after_births, paced, watcher, pace = await _load_run(
                    running, generator, sizes, url
                )
                await _until(
                    lambda: generator.acked + generator.refused >= generator.published,
                    "the broker's acknowledgements",
                    DELIVERY_TIMEOUT_S,
                )
            finally:
                await generator.close()
        first = load.drained["t"] - load.seconds
        drained = paced.drained
        run = _LoadRun(
            births_s=births_s,
            load_s=load.seconds,
            sent=load.sent,
            handled=_handled(load.drained) - _handled(after_births),
            rejected=int(drained["rejected"]),
            per_device=per_device,
            per_second=_per_second(child.reports, first, _handled(after_births)),
            ready=child.ready,
            after_births=after_births,
            drained=load.drained,
            closed=child.closed,
            broker_acks=generator.acked - relayed,
            latency_ms=watcher.latencies_ms(),
            watched=watcher.watched,
            pace=pace,
            paced=paced,
            relay=relay,
            rss_kb=[
                (r["t"] - first, int(r["rss_kb"]))
                for r in child.reports
                if r["event"] == "report" and first <= r["t"] <= drained["t"]
            ],
        )
        restart = _GatewayChild(args, ctx.workdir / "gateway-restart.log")
        async with restart.running(startup_timeout=60 + 0.5 * sizes.devices):
            pass
    stored = await _stored(url, links)
    return run, restart, stored, url


async def load_group(ctx: BenchContext) -> list[Metric]:
    """1,000 devices over MQTT against a gateway in its own process: rate, memory, start-up,
    latency under load, next to Mosquitto's raw relay rate."""
    sizes = _sizes(ctx)
    crypto = sign_verify_rate(ctx, "gateway_ed25519_sign_verify_rate")  # before the load
    run, restart, stored, _ = await _sustained(ctx, sizes)
    m = _load_report(run, restart, stored, sizes)
    rate = with_target(m.rate, ">=", SUSTAINED_TARGET_PER_S)
    crypto_ratio = ratio_metric("gateway_sustained_vs_crypto_limit_ratio", rate, crypto)
    return [rate, m.peak, *m.latency, m.relay, m.ratio, crypto, crypto_ratio]


async def load_10k_group(ctx: BenchContext) -> list[Metric]:
    """The same with 10,000 devices (300 with ``--quick``): rate and latency under load."""
    sizes = replace(_sizes(ctx), devices=ctx.size(10_000, 300))
    run, restart, stored, _ = await _sustained(ctx, sizes)
    m = _load_report(run, restart, stored, sizes, suffix="_10k")
    return [with_target(m.rate, ">=", SUSTAINED_10K_TARGET_PER_S), *m.latency, m.relay, m.ratio]


def _rss_at(samples: Sequence[tuple[float, int]], t: float) -> int:
    """The RSS sample taken nearest to ``t``."""
    return min(samples, key=lambda sample: abs(sample[0] - t))[1]


async def soak_group(ctx: BenchContext) -> list[Metric]:
    """Long: 5,000 readings/s for 10 minutes with 1,000 devices (``--quick``: 5 s at 300/s,
    100 devices); RSS over the run, nothing lost, p99 under load."""
    sizes = replace(
        _sizes(ctx),
        load_s=ctx.size(600, 5),
        pace=ctx.size(SOAK_PACE_PER_S, 300),
        backlog=ctx.size(2_000, 500),
    )
    run, restart, stored, _ = await _sustained(ctx, sizes)
    m = _load_report(run, restart, stored, sizes, suffix="_soak")
    settled = [kb for t, kb in run.rss_kb if t >= run.load_s / 10] or [run.rss_kb[-1][1]]
    growth = metric(
        "gateway_soak_rss_growth_mb",
        max(round((settled[-1] - settled[0]) / _MIB, 1), 0.1),
        "MB",
        params={
            "measure": "VmRSS of the gateway at the end of the soak minus VmRSS once a tenth "
            "of it had passed (start-up and births behind it); 0.1 is the floor reported",
            "rss_mb_by_tenth": [_mb(_rss_at(run.rss_kb, run.load_s * k / 10)) for k in range(11)],
            "rss_max_mb": _mb(max(kb for _, kb in run.rss_kb)),
            "load_s": round(run.load_s, 1),
        },
    )
    return [
        with_target(m.rate, ">=", SUSTAINED_TARGET_PER_S),
        *m.latency,
        with_target(growth, "<=", SOAK_RSS_GROWTH_MB),
        m.relay,
        m.ratio,
    ]


def _mb(kib: object) -> float:
    assert isinstance(kib, int)
    return round(kib / _MIB, 1)


class _LoadMetrics(NamedTuple):
    rate: Metric
    peak: Metric
    latency: list[Metric]
    relay: Metric
    ratio: Metric


def _load_report(
    run: _LoadRun,
    restart: _GatewayChild,
    stored: list[int],
    sizes: _GatewaySizes,
    *,
    suffix: str = "",
) -> _LoadMetrics:
    n = len(run.per_device)
    total = sum(stored)
    # the readings of the watched phase that followed the measured one (none in a soak)
    after = 0 if run.paced.drained is run.drained else run.paced.sent
    lost = sum(max(0, s - k) for s, k in zip(run.per_device, stored, strict=True))
    extra = sum(max(0, k - s) for s, k in zip(run.per_device, stored, strict=True))
    common = {
        "devices": n,
        "transport": "mqtt (QoS 1) through Mosquitto, "
        f"{sizes.connections} load-generator connections shared by the devices",
        "store": STORE_SETTINGS,
        "gateway": "own process (safething_gateway.bench._gateway_child): Gateway + MqttBridge",
    }
    rate = rate_metric(
        f"gateway_sustained_readings_per_s{suffix}",
        total - after,
        [run.load_s],
        "readings/s",
        params={
            **common,
            "load_s": sizes.load_s,
            "elapsed_s": round(run.load_s, 3),
            "elapsed": "first reading sent -> the gateway has handled the last one",
            "reading": "one attribute per reading ({'moisture': x}), devices in turn",
            "backlog": sizes.backlog,
            "backlog_means": "readings sent and not yet handled by the gateway, at most",
            "sent": run.sent,
            "handled": run.handled,
            "rejected": run.rejected,
            "stored": total,
            "stored_means": "sum over devices of the last sequence number of 'moisture', "
            "read back from the store after the gateway stopped (this run and the watched "
            "phase after it); the rate counts stored minus the watched phase's readings",
            "watched_phase_sent": after,
            "lost": lost,
            "unexpected": extra,
            "broker_acks": run.broker_acks,
            "per_second": run.per_second,
            "gateway_cpu": round(
                (run.drained["cpu_s"] - run.after_births["cpu_s"])
                / (run.drained["t"] - run.after_births["t"]),
                3,
            ),
            "gateway_cpu_means": "CPU seconds per second of the gateway process (all its "
            "threads) from the end of the births to the last reading handled; 1.0 = one core",
            "births_s": round(run.births_s, 3),
            "births_per_s": round(n / run.births_s, 1),
            "pace_per_s": sizes.pace,
            "pace_means": "readings a second the generator aimed at; null: as fast as the "
            "gateway takes them (within the backlog)",
            "raw_relay_per_s": round(run.relay[0] / run.relay[1], 1),
        },
    )
    relay = rate_metric(
        f"raw_mqtt_relay_per_s{suffix}",
        run.relay[0],
        [run.relay[1]],
        "messages/s",
        params={
            "path": "the load generator's connections publish (QoS 1) -> Mosquitto -> one "
            "paho subscriber (QoS 1, TCP_NODELAY); the same broker, connections and window "
            "as the gateway's load, measured just before it",
            "payload_bytes": len(_payload(0)),
            "backlog": sizes.backlog,
            "seconds": round(run.relay[1], 3),
        },
    )
    ratio = ratio_metric(f"gateway_sustained{suffix}_vs_raw_relay_ratio", rate, relay)
    missing = run.watched - len(run.latency_ms)
    latency = with_p_target(
        latency_metrics(
            f"gateway_mqtt_under_load_device_to_subscriber_latency{suffix}",
            run.latency_ms,
            params={
                **common,
                "watched_devices": sizes.watched,
                "pace_per_s": round(run.pace, 1),
                "pace_means": "readings a second to all devices while watched: the target "
                "rate, or 80 % of the rate just measured if that is lower (the soak: its pace)",
                "phase_sent": run.paced.sent,
                "phase_s": round(run.paced.seconds, 3),
                "readings_watched": run.watched,
                "missing": missing,
                "missing_means": "readings of the watched devices that the subscription did "
                "not yield (an attribute subscription may skip to the latest value)",
                "from": "just before the generator frames and publishes the reading",
                "to": "a ThingClient.subscribe(attribute='moisture') in the benchmark's "
                "process yields it (read from the store the gateway writes, verified)",
                "percentiles": PERCENTILES,
            },
            layer="gateway",
        ),
        "p99",
        "<=",
        LOAD_P99_TARGET_MS,
    )
    peak = with_target(
        metric(
            "gateway_peak_rss_mb",
            _mb(run.drained["hwm_kb"]),
            "MB",
            params={
                **common,
                "measure": "VmHWM of the gateway process at the end of the load run "
                "(peak over start, births and load); MB = 2^20 bytes",
                "rss_ready_mb": _mb(run.ready["rss_kb"]),
                "rss_after_births_mb": _mb(run.after_births["rss_kb"]),
                "rss_end_of_load_mb": _mb(run.drained["rss_kb"]),
                "rss_per_device_kb": round(
                    (run.after_births["rss_kb"] - run.ready["rss_kb"]) / n, 1
                ),
                "things": run.after_births["things"],
                "rss_after_restart_mb": _mb(restart.ready["rss_kb"]),
                "restart_peak_mb": _mb(restart.closed["hwm_kb"]),
                "restart_s": round(float(restart.ready["startup_s"]), 3),
                "restart_things": restart.ready["things"],
                "first_start_s": round(float(run.ready["startup_s"]), 3),
                "restart": "a new gateway process on the same registry and store, no load: "
                "restart_s is its Gateway.start() (gateway_startup_s, group gateway.scale, "
                "measures it with 10,000 devices), first_start_s the same with no device born",
            },
        ),
        "<",
        RSS_TARGET_MB,
    )
    return _LoadMetrics(rate, peak, latency, relay, ratio)


GROUPS: dict[str, GroupFunc] = {
    "gateway.latency": latency_group,
    "gateway.load": load_group,
    "gateway.sustained10k": load_10k_group,
    "gateway.soak": soak_group,
}
LONG_GROUPS = frozenset({"gateway.soak"})
"""Run only with ``safething bench --long`` or ``--only gateway.soak`` (10 minutes)."""
"""Metric groups of this module (registered in ``runner.GROUP_MODULES``)."""
