"""Benchmark group ``gateway.scale``: a gateway with 10,000 devices, born and idle.

``safething bench --json --only gateway.scale``. Needs the ``gateway`` extra and
a ``mosquitto`` binary, like :mod:`safething_gateway.bench.gateway`, whose
child process (:mod:`safething_gateway.bench._gateway_child`) and MQTT load
generator it uses.

1. 10,000 devices (200 with ``--quick``) are provisioned in a new registry.
2. A gateway starts in its own process on a new store; every device sends its
   ``birth`` over MQTT (QoS 1, 4 shared connections). ``gateway_births_per_s``:
   devices / the time from the first birth sent to the gateway's report that
   shows the last one handled (each birth creates, registers and publishes the
   device's custodial thing). The gateway runs with ``max_things`` (the
   gateway's default, 2,000; 50 with ``--quick``), ``close_after`` (its
   default, 60 s) and ``close_births``: things running since their birth are
   closed over the bound (a setting off by default: see ``Gateway``).
   Then the gateway idles for ``settle_s`` + ``idle_s`` (its CPU and resident
   set go into ``params``, the state after births) and stops.
3. A new gateway process starts on the same registry and store.
   ``gateway_startup_s``: its ``Gateway.start()``, until the bridge is up and
   messages are handled.
4. That gateway idles: ``settle_s`` first, then ``idle_s`` measured.
   ``gateway_idle_cpu_pct``: the CPU time of the process (all its threads)
   over that time, in percent of one core; ``gateway_idle_rss_mb``: its
   ``VmRSS`` at the end.
5. Then one reading each from ``first_readings`` devices, all sent at once:
   the time until the gateway has handled them all, in ``params`` of
   ``gateway_startup_s`` (what the first message of a device costs after a
   restart).
6. Births once more (``unbounded``), on a copy of the registry as provisioned and
   a new store, with ``max_things`` = the devices: births per second, things
   running and resident set after them, in ``params.unbounded`` of
   ``gateway_births_per_s`` (what the bound costs the births and saves in memory).

The children report only when asked (a ``report`` line on their stdin), so
the idle figures contain no periodic reporting.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safething.bench.common import STORE_SETTINGS, sqlite_url, with_target
from safething.bench.runner import BenchContext, GroupFunc, Metric, metric
from safething.net import Identity
from safething_gateway.bench.gateway import (
    _child_args,
    _GatewayChild,
    _GatewaySizes,
    _handled,
    _LoadGenerator,
    _provision,
    _reading,
)
from safething_gateway.core import DEFAULT_CLOSE_AFTER_S, DEFAULT_MAX_THINGS
from safething_gateway.testing import mosquitto

__all__ = ["GROUPS", "scale_group"]

STARTUP_TARGET_S = 2.0
"""Issue target: ``Gateway.start()`` with 10,000 devices."""
BIRTHS_TARGET_PER_S = 1_000.0
"""Issue target: births handled per second."""
IDLE_RSS_TARGET_MB = 150.0
"""Issue target: the resident set of an idle gateway with 10,000 devices."""
IDLE_CPU_TARGET_PCT = 2.0
"""Issue target: the CPU of an idle gateway with 10,000 devices, in % of one core."""

_ASK_EVERY_S = 0.05
_MIB = 1024


@dataclass(frozen=True, slots=True)
class _ScaleSizes:
    devices: int
    settle_s: float
    idle_s: float
    first_readings: int
    connections: int
    max_things: int = DEFAULT_MAX_THINGS
    """``Gateway(max_things=...)`` of the births' gateway and of the restarted one."""
    close_after: float = DEFAULT_CLOSE_AFTER_S
    """``Gateway(close_after=...)`` of both."""
    close_births: bool = True
    """``Gateway(close_births=...)`` of both: the bound holds through the births."""
    unbounded: bool = True
    """Births once more, on a copy of the new registry and a new store, with
    ``max_things`` = the devices (nothing is ever closed): what the bound costs and saves."""


def _sizes(ctx: BenchContext) -> _ScaleSizes:
    return _ScaleSizes(
        devices=ctx.size(10_000, 200),
        settle_s=ctx.size(5, 1),
        idle_s=ctx.size(20, 2),
        first_readings=ctx.size(500, 20),
        connections=4,
        max_things=ctx.size(DEFAULT_MAX_THINGS, 50),  # --quick: 200 devices over it too
    )


def _bound_args(max_things: int, close_after: float, close_births: bool) -> list[str]:
    bound = ["--max-things", str(max_things), "--close-after", repr(close_after)]
    return [*bound, "--close-births"] if close_births else bound


@dataclass(frozen=True, slots=True)
class _Births:
    """One gateway process's births and its idle time after them."""

    max_things: int
    close_after: float
    close_births: bool
    seconds: float
    """First birth sent -> the report that shows the last one handled."""
    things: int
    """Things running at that report."""
    after: dict[str, float]
    """:meth:`_AskedChild.idle` after the births."""
    start_s: float
    """That gateway's ``Gateway.start()`` (nothing born yet)."""

    def params(self, devices: int) -> dict[str, Any]:
        return {
            "max_things": self.max_things,
            "close_after_s": self.close_after,
            "close_births": self.close_births,
            "births_per_s": round(devices / self.seconds, 1),
            "births_s": round(self.seconds, 3),
            "things_at_last_birth": self.things,
            "things_after": self.after["things"],
            "rss_mb_after": self.after["rss_mb"],
            "hwm_mb": self.after["hwm_mb"],
        }


class _AskedChild(_GatewayChild):
    """A gateway child that reports when asked (its periodic reports are hours apart)."""

    async def ask(self) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        count = len(self.reports)
        proc.stdin.write(b"report\n")
        await proc.stdin.drain()
        await self.wait(lambda _: len(self.reports) > count, "a report", 30)
        return self.latest

    async def until(
        self, done: Callable[[dict[str, Any]], bool], what: str, timeout: float
    ) -> None:
        """Ask every 50 ms until a report satisfies ``done``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if done(await self.ask()):
                        return
                    await asyncio.sleep(_ASK_EVERY_S)
        except TimeoutError:
            raise self.failed(f"{what}: not within {timeout:g} s") from None

    async def idle(self, sizes: _ScaleSizes) -> dict[str, float]:
        """Settle, then CPU and memory over ``idle_s`` with nothing sent."""
        await asyncio.sleep(sizes.settle_s)
        first = await self.ask()
        await asyncio.sleep(sizes.idle_s)
        last = await self.ask()
        return {
            "cpu_pct": round(100 * (last["cpu_s"] - first["cpu_s"]) / (last["t"] - first["t"]), 3),
            "rss_mb": round(last["rss_kb"] / _MIB, 1),
            "hwm_mb": round(last["hwm_kb"] / _MIB, 1),
            "things": last["things"],
            "seconds": round(last["t"] - first["t"], 3),
        }


async def _births(
    child: _AskedChild,
    generator: _LoadGenerator,
    sizes: _ScaleSizes,
    max_things: int,
    close_after: float,
    close_births: bool,
) -> _Births:
    """Every device's birth at once, then the idle time after them (``child`` running)."""
    n = sizes.devices
    started = time.monotonic()
    for index in range(n):
        generator.send(index, "birth", None)
    await child.until(lambda r: _handled(r) >= n, f"{n} births", 60 + 0.5 * n)
    born = child.latest
    if born["rejected"]:
        raise child.failed(f"{born['rejected']} of {n} births were refused")
    return _Births(
        max_things=max_things,
        close_after=close_after,
        close_births=close_births,
        seconds=born["t"] - started,
        things=born["things"],
        after=await child.idle(sizes),
        start_s=float(child.ready["startup_s"]),
    )


def _copy_registry(source: Path, target: Path) -> None:
    """A consistent copy of an SQLite registry file (SQLite's backup, not a file copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


async def scale_group(ctx: BenchContext) -> list[Metric]:
    """10,000 devices: births, start-up with all of them, the idle gateway."""
    sizes = _sizes(ctx)
    n = sizes.devices
    url = sqlite_url(ctx.workdir / "scale.db")
    links = _provision(ctx.workdir / "registry.db", n)
    Identity.generate("bench-owner").save(ctx.workdir / "owner.identity")
    spare = ctx.workdir / "unbounded"  # the same devices, none born, for the second births
    if sizes.unbounded:
        _copy_registry(ctx.workdir / "registry.db", spare / "registry.db")
        shutil.copy(ctx.workdir / "owner.identity", spare / "owner.identity")
    child_sizes = _GatewaySizes(
        samples=1,
        warmup=0,
        gap_s=0.0,
        devices=n,
        load_s=0.0,
        backlog=0,
        connections=sizes.connections,
        report_s=3600.0,
    )
    with mosquitto() as broker:
        bound = _bound_args(sizes.max_things, sizes.close_after, sizes.close_births)
        args = [*_child_args(ctx.workdir, url, broker.port, child_sizes), *bound]
        generator = _LoadGenerator(broker.port, links, sizes.connections)
        await generator.start()
        try:
            # A clean stop writes "offline" into every thing the gateway runs.
            stop_timeout = 60 + 0.05 * n
            first = _AskedChild(args, ctx.workdir / "gateway-births.log", stop_timeout=stop_timeout)
            async with first.running(startup_timeout=60) as child:
                assert isinstance(child, _AskedChild)
                births = await _births(
                    child, generator, sizes, sizes.max_things, sizes.close_after, sizes.close_births
                )
            restart = _AskedChild(
                args, ctx.workdir / "gateway-restart.log", stop_timeout=stop_timeout
            )
            async with restart.running(startup_timeout=60 + 0.5 * n) as child:
                assert isinstance(child, _AskedChild)
                idle = await child.idle(sizes)
                base = _handled(await child.ask())
                sent_at = time.monotonic()
                k = min(sizes.first_readings, n)
                for index in range(k):
                    generator.send(index * (n // k), "reading", _reading(index))
                await child.until(
                    lambda r: _handled(r) - base >= k, f"{k} first readings", 60 + 0.5 * k
                )
                first_readings = child.latest
                if first_readings["rejected"]:
                    raise child.failed(f"{first_readings['rejected']} readings were refused")
                first_readings_s = first_readings["t"] - sent_at
            unbounded = None
            if sizes.unbounded:
                # The same births on a copy of the registry as provisioned and a new
                # store, nothing ever closed (the devices' counters go on: accepted).
                spare_url = sqlite_url(spare / "scale.db")
                spare_args = [
                    *_child_args(spare, spare_url, broker.port, child_sizes),
                    *_bound_args(n, sizes.close_after, False),
                ]
                third = _AskedChild(
                    spare_args, ctx.workdir / "gateway-unbounded.log", stop_timeout=stop_timeout
                )
                async with third.running(startup_timeout=60) as child:
                    assert isinstance(child, _AskedChild)
                    unbounded = await _births(child, generator, sizes, n, sizes.close_after, False)
        finally:
            await generator.close()
    return _report(sizes, births, unbounded, restart, idle, k, first_readings_s, first_readings)


def _report(
    sizes: _ScaleSizes,
    births: _Births,
    unbounded: _Births | None,
    restart: _AskedChild,
    idle: dict[str, float],
    k: int,
    first_readings_s: float,
    first_readings: dict[str, Any],
) -> list[Metric]:
    n = sizes.devices
    common = {
        "devices": n,
        "transport": "mqtt (QoS 1) through Mosquitto, "
        f"{sizes.connections} load-generator connections shared by the devices",
        "store": STORE_SETTINGS,
        "gateway": "own process (safething_gateway.bench._gateway_child): Gateway + MqttBridge",
        "max_things": sizes.max_things,
        "close_after_s": sizes.close_after,
    }
    idle_params = {
        **common,
        "settle_s": sizes.settle_s,
        "idle_s": idle["seconds"],
        "what": "a new gateway process on the registry and store after every device's birth, "
        f"{sizes.settle_s:g} s after its start, nothing sent for the measured "
        f"{idle['seconds']:g} s",
        "things_running": idle["things"],
        "hwm_mb": idle["hwm_mb"],
        "after_births": births.after,
        "after_births_means": "the same measured in the gateway that handled the births "
        f"(every custodial thing created in that process, at most max_things "
        f"{sizes.max_things} kept running), before it stopped",
    }
    births_params: dict[str, Any] = {
        **common,
        "births_s": round(births.seconds, 3),
        "elapsed": "first birth sent -> the gateway's report that shows the last one "
        "handled (each creates, registers and publishes a custodial thing)",
        "things": births.things,
        "first_start_s": round(births.start_s, 3),
        "after_births": {
            **births.params(n),
            "means": f"the births' gateway {sizes.settle_s:g} + {sizes.idle_s:g} s after the "
            "last birth: things running, VmRSS and VmHWM (its peak) in MiB",
        },
    }
    if unbounded is not None:
        births_params["unbounded"] = {
            **unbounded.params(n),
            "means": "the same births once more, on a copy of the registry as provisioned "
            "and a new store, with max_things = the devices: every thing born keeps running",
        }
    births_metric = with_target(
        metric(
            "gateway_births_per_s",
            round(n / births.seconds, 1),
            "births/s",
            params=births_params,
        ),
        ">=",
        BIRTHS_TARGET_PER_S,
    )
    startup = with_target(
        metric(
            "gateway_startup_s",
            round(float(restart.ready["startup_s"]), 3),
            "s",
            params={
                **common,
                "what": "Gateway.start() in a new process on the registry and store after "
                "every device's birth, until its MQTT bridge is up",
                "things_at_ready": restart.ready["things"],
                "rss_at_ready_mb": round(restart.ready["rss_kb"] / _MIB, 1),
                "first_readings": k,
                "first_readings_s": round(first_readings_s, 3),
                "first_readings_means": f"after the idle time, one reading from each of {k} "
                "devices spread over the registry, sent at once: the time until the gateway "
                "has handled them all (each device's first message since the restart)",
                "things_after_first_readings": first_readings["things"],
            },
        ),
        "<=",
        STARTUP_TARGET_S,
    )
    cpu = with_target(
        metric("gateway_idle_cpu_pct", idle["cpu_pct"], "%", params=idle_params),
        "<=",
        IDLE_CPU_TARGET_PCT,
    )
    rss = with_target(
        metric("gateway_idle_rss_mb", idle["rss_mb"], "MB", params=idle_params),
        "<=",
        IDLE_RSS_TARGET_MB,
    )
    return [births_metric, startup, cpu, rss]


GROUPS: dict[str, GroupFunc] = {"gateway.scale": scale_group}
"""Metric groups of this module (registered in ``runner.GROUP_MODULES``)."""
