"""Benchmarks of the device firmware (``firmware/``, MicroPython for ESP8266 boards).

Both groups need a source checkout: ``firmware/`` and ``tests/firmware/`` next to
the ``safething`` package (neither is in the wheel).

Groups:

``firmware.size``
    ``firmware_mpy_bytes``: the device library (``firmware/safething/*.py``) as
    ``mpy-cross -march=xtensa`` compiles it for the board, the total of
    ``firmware/build.py``'s ``firmware_sizes()``; each file's size in ``params``,
    the 12 KB budget (``build.BUDGET``) as the target.
``firmware.link``
    ``firmware_link_{seal,open}_st{2,1}_us``: microseconds per message of the device
    link under real MicroPython (the WebAssembly port from npm, as the firmware
    tests run it; ``tests/firmware/node/cost.py``), the library loaded as the
    ``.mpy`` files made for the board: a reading sealed, an action downlink the
    gateway sealed opened (tag check, counter saved to the file system, decrypt).
    That port has no ``cryptolib``: a pure-Python AES stands in, so ST2's figures
    carry its share, given apart in ``params`` (on an ESP8266 AES is C).
``firmware.latency``
    ``firmware_device_to_subscriber_latency_*``: the firmware on this host in a
    child process (``tests/firmware/e2e_device.py`` running
    ``firmware/examples/garden.py`` under CPython, only the board faked: the ADC
    is a ramp that reports each sample), over MQTT with micropython-lib's
    ``umqtt.simple`` through a private Mosquitto (a login and an ACL per
    device), the gateway's :class:`~safething_gateway.bridges.mqtt.MqttBridge`
    and a SQLite store, to a :class:`~safething.things.ThingClient`
    subscription. From the ADC sample in the child to the subscription yielding
    its moisture value here; both stamps are ``time.monotonic_ns()`` (one clock
    for every process of the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import safething
from safething.bench.common import (
    DELIVERY_TIMEOUT_S,
    PERCENTILES,
    STORE_SETTINGS,
    Sampling,
    logged_child_error,
    sqlite_url,
    start_logged,
    with_target,
)
from safething.bench.runner import BenchContext, GroupFunc, Metric, latency_metrics, metric
from safething.net import Client, Identity
from safething.store import open_store
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.protocol import frame
from safething_gateway.registry import Registry
from safething_gateway.testing import open_site

__all__ = ["GROUPS", "latency_group", "link_group", "size_group"]

ROOT = Path(safething.__file__).resolve().parent.parent
"""The source checkout this ``safething`` package lives in."""
FIRMWARE = ROOT / "firmware"
DEVICE = ROOT / "tests" / "firmware" / "e2e_device.py"
"""Runs a firmware app as a board would, in a process of its own."""

_START_TIMEOUT_S = 20.0
"""The device process's start, Wi-Fi, connection and birth."""


@dataclass(frozen=True, slots=True)
class _FirmwareSizes(Sampling):
    every_ms: int
    """The device's reading period (``Device.run(every=...)``)."""
    wait_ms: int
    """The device's poll period between readings (``Device.run(wait=...)``)."""


def _sizes(ctx: BenchContext) -> _FirmwareSizes:
    return _FirmwareSizes(samples=ctx.size(300, 20), warmup=ctx.size(5, 2), every_ms=50, wait_ms=20)


def _checkout(path: Path) -> Path:
    if not path.exists():
        raise RuntimeError(
            f"the firmware benchmarks need a source checkout: {path} is missing "
            f"(safething is loaded from {ROOT})"
        )
    return path


def _build_module() -> ModuleType:
    """``firmware/build.py`` (a script, not a package module)."""
    path = _checkout(FIRMWARE / "build.py")
    spec = importlib.util.spec_from_file_location("safething_firmware_build", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- firmware.size ------------------------------------------------------------------------


async def size_group(ctx: BenchContext) -> list[Metric]:
    """The compiled device library's size against its flash budget."""
    build = _build_module()
    sizes: dict[str, int] = dict(await asyncio.to_thread(build.firmware_sizes))
    total = sizes.pop("total")
    budget = int(build.BUDGET)
    m = metric(
        "firmware_mpy_bytes",
        float(total),
        "bytes",
        params={
            "files": sizes,
            "budget_bytes": budget,
            "compiler": f"{build.MPY_CROSS} -march={build.ARCH} (ESP8266)",
            "what": "firmware/safething/*.py as .mpy (boot.py, main.py, examples not counted)",
        },
    )
    return [with_target(m, "<", float(budget))]


# --- firmware.latency ---------------------------------------------------------------------


def _moisture(raw: int) -> float:
    """What ``firmware/examples/garden.py`` makes of an ADC value."""
    return round(raw * 100 / 1024, 1)


class _DeviceProcess:
    """``e2e_device.py`` running the garden example; its ADC samples as they are reported."""

    def __init__(self, config: Path, state: Path, log: Path, sizes: _FirmwareSizes) -> None:
        self.args = [
            str(_checkout(DEVICE)),
            str(config),
            str(state),
            "--app",
            "garden",
            "--every",
            str(sizes.every_ms),
            "--wait",
            str(sizes.wait_ms),
        ]
        self.log = log
        self.samples: list[tuple[float, int]] = []
        """``(moisture, monotonic ns of the ADC read)`` in the order the device read them."""
        self.proc: asyncio.subprocess.Process | None = None

    def failed(self, what: str) -> RuntimeError:
        return logged_child_error("firmware device", what, self.proc, self.log, "its stderr")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("hw") == "adc":
                    self.samples.append((_moisture(int(doc["raw"])), int(doc["t"])))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The process, started; at the end killed, and its output read to the end."""
        self.proc = await start_logged(self.args, self.log, stdin=asyncio.subprocess.DEVNULL)
        reader = asyncio.get_running_loop().create_task(self._read(), name="bench-fw:device")
        try:
            yield
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
            await reader


def _match(
    samples: list[tuple[float, int]], arrivals: list[tuple[float, int]]
) -> tuple[list[float], int]:
    """Pair each value the subscriber got with the ADC sample it came from (in order);
    ``(latencies in ms, samples read after the first arrival that never arrived)``."""
    latencies: list[float] = []
    lost = 0
    i = 0
    for value, arrived in arrivals:
        start = i
        while i < len(samples) and samples[i][0] != value:
            i += 1
        if i == len(samples):
            raise RuntimeError(f"the subscriber got {value!r}, which no ADC sample gave")
        if latencies:
            lost += i - start
        latencies.append((arrived - samples[i][1]) / 1e6)
        i += 1
    return latencies, lost


async def _wait_birth(things: ThingClient, device_id: str, device: _DeviceProcess) -> None:
    async def published() -> bool:
        try:
            return await things.status(device_id) == "published"
        except Exception:
            return False

    deadline = time.monotonic() + _START_TIMEOUT_S
    while not await published():
        if device.proc is not None and device.proc.returncode is not None:
            raise device.failed("ended before its birth reached the gateway")
        if time.monotonic() > deadline:
            raise device.failed(f"no birth within {_START_TIMEOUT_S:g} s")
        await asyncio.sleep(0.01)  # the store announces no status change: look every 10 ms


async def latency_group(ctx: BenchContext) -> list[Metric]:
    """The firmware's readings, device process -> Mosquitto -> gateway -> subscriber."""
    sizes = _sizes(ctx)
    total = sizes.total
    device_id = "bench-garden-01"
    registry = Registry(ctx.workdir / "registry.db")
    arrivals: list[tuple[float, int]] = []
    try:
        async with open_site(ctx.workdir / "site", registry=registry) as site:
            record, device_password = await site.provision("mqtt", device_id)
            broker = site.broker
            board = ctx.workdir / "board"  # the board's flash
            config = ctx.workdir / f"{device_id}.json"
            config.write_text(
                json.dumps(
                    {  # docs/protocol.md section 1, as `safething provision` writes it
                        "format": "safething-device",
                        "version": 1,
                        "device_id": device_id,
                        "secret": record.secret.hex(),
                        "link": f"ST{record.protocol}",
                        "transport": "mqtt",
                        "mqtt": {
                            "host": "127.0.0.1",
                            "port": broker.port,
                            "prefix": "st/v1",
                            "username": device_id,
                            "password": device_password,
                        },
                        "wifi": {"ssid": "bench", "password": "bench"},
                    }
                )
            )
            bridge = site.bridge("mqtt", client_id="safething-bench-firmware")
            async with (
                await open_store(sqlite_url(ctx.workdir / "firmware.db")) as store,
                Gateway(
                    store=store,
                    registry=registry,
                    owner=Identity.generate("bench-owner"),
                    bridges=[bridge],
                ) as gateway,
                ThingClient(Client(store)) as things,
            ):
                await gateway.start()
                device = _DeviceProcess(config, board, ctx.workdir / "device.log", sizes)
                async with device.running():
                    await _wait_birth(things, device_id, device)
                    async with things.subscribe(device_id, attribute="moisture") as sub:
                        timeout = total * (sizes.every_ms / 1000 + 0.1) + DELIVERY_TIMEOUT_S
                        try:
                            async with asyncio.timeout(timeout):
                                async for note in sub:
                                    arrivals.append((note.value, time.monotonic_ns()))
                                    if len(arrivals) >= total:
                                        break
                        except TimeoutError:
                            raise device.failed(
                                f"{len(arrivals)} of {total} readings arrived in {timeout:g} s"
                            ) from None
                # the device is stopped and its output read to the end: every sample is known
                samples = list(device.samples)
    finally:
        registry.close()
    latencies, lost = _match(samples, arrivals)
    if lost:
        raise RuntimeError(f"{lost} readings of the firmware never reached the subscriber")
    params = {
        "warmup": sizes.warmup,
        "every_ms": sizes.every_ms,
        "wait_ms": sizes.wait_ms,
        "device": "firmware/examples/garden.py on the firmware library under CPython "
        "(tests/firmware/e2e_device.py, a child process; only the board faked)",
        "mqtt_client": "micropython-lib umqtt.simple 1.3.4 (QoS 1, waits for PUBACK) on "
        "CPython TCP sockets with TCP_NODELAY",
        "path": "ADC read -> Device: ring, frame + HMAC, publish -> Mosquitto (login + ACL) "
        "-> MqttBridge -> Gateway.handle (MAC, counter, rate limit, type check) -> Thing.set "
        "(signed, one store commit) -> ThingClient.subscribe(attribute='moisture') yields it",
        "from": "the fake ADC's read() in the device process",
        "to": "the subscription yields the notification",
        "clock": "time.monotonic_ns in both processes",
        "store": STORE_SETTINGS,
        "percentiles": PERCENTILES,
    }
    return latency_metrics(
        "firmware_device_to_subscriber_latency",
        latencies[sizes.warmup :],
        params=params,
        layer="firmware",
    )


# --- firmware.link ----------------------------------------------------------------------

LINK_RUNNER = ROOT / "tests" / "firmware" / "node" / "run.mjs"
"""Runs a script under MicroPython's WebAssembly port (npm package in ``firmware/``)."""
LINK_SCRIPT = ROOT / "tests" / "firmware" / "node" / "cost.py"
"""Seals and opens messages with the library as the board runs it (.mpy)."""


def _node() -> str:
    """``node``, with the MicroPython WebAssembly package installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("firmware.link needs node and npm (MicroPython's WebAssembly port)")
    package = FIRMWARE / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    if not (package / "package.json").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=FIRMWARE,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return node


async def link_group(ctx: BenchContext) -> list[Metric]:
    """The device link's cost per message under real MicroPython (WebAssembly port)."""
    build = _build_module()
    node = await asyncio.to_thread(_node)
    lib = ctx.workdir / "mpy"
    await asyncio.to_thread(build.build, lib, include_app=False)
    secret = bytes(range(32))
    device_id = "bench-link-01"
    action = json.dumps(
        {"id": "r1", "action": "OpenValve", "args": {"psi": 30.5}, "deadline": 2e9}
    ).encode()
    n = ctx.size(200, 20)
    data = ctx.workdir / "link-input.json"
    data.write_text(
        json.dumps(
            {
                "device_id": device_id,
                "secret": secret.hex(),
                "n": n,
                "body": '{"moisture": 41.5, "temperature": 21.25}',
                "channel": "action/r1",
                "down_body_bytes": len(action),
                **{
                    f"down_st{v}": frame(
                        secret, device_id, "action/r1", 7, action, version=v, uplink=False
                    ).hex()
                    for v in (1, 2)
                },
            }
        )
    )
    run = await asyncio.to_thread(
        subprocess.run,
        [node, str(_checkout(LINK_RUNNER)), str(lib), str(_checkout(LINK_SCRIPT)), str(data)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SAFETHING_FIRMWARE": str(FIRMWARE)},
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"MicroPython failed: {run.stderr[-2000:]}")
    got = json.loads(lines[-1][len("RESULT ") :])
    params = {
        "port": "MicroPython 1.27 WebAssembly (npm @micropython/micropython-webassembly-pyscript)"
        ", the library as mpy-cross -march=xtensa .mpy",
        "messages": n,
        "reading_body_bytes": got["body_bytes"],
        "action_body_bytes": len(action),
        "aes": "the WebAssembly build has no cryptolib: a pure-Python AES stands in "
        "(ESP8266 builds have it in C); its share is given apart",
        "timer": "time.ticks_us (millisecond steps on this port: averaged over the messages)",
    }
    out = []
    for v in (2, 1):
        for op, what in (("seal", "a reading sealed"), ("open", "an action downlink opened")):
            extra = {}
            if v == 2:
                standin = float(got[f"aes_{op}_us"])
                extra = {
                    "aes_standin_us": standin,
                    "without_aes_standin_us": float(got[f"{op}_st2_us"]) - standin,
                }
            out.append(
                metric(
                    f"firmware_link_{op}_st{v}_us",
                    float(got[f"{op}_st{v}_us"]),
                    "us",
                    params={**params, "what": f"{what} (ST{v})", **extra},
                )
            )
    return out


GROUPS: dict[str, GroupFunc] = {
    "firmware.size": size_group,
    "firmware.link": link_group,
    "firmware.latency": latency_group,
}
"""Metric groups of this module, in run order (registered in ``runner.GROUP_MODULES``)."""
