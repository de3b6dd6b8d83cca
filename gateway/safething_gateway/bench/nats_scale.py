"""Benchmark group ``gateway.nats``: two gateways on one NATS server, many devices,
readings at a fixed offered rate.

``safething bench --json --only gateway.nats``. Needs the ``gateway`` and ``nats``
extras and a ``mosquitto`` binary; without nats-server a ``gateway_nats_skipped``
metric says why.

1. One nats-server (:mod:`safething.store.nats_testing`) and two gateways, each a
   child process (:mod:`safething_gateway.bench._gateway_child`) with its own
   registry, owner and Mosquitto, both with the store
   ``nats://...?bucket=scale``. Half the devices (10,000 in all, 40 with
   ``--quick``) are provisioned on each.
2. Every device sends its ``birth`` (each creates, registers and publishes its
   custodial thing on NATS): ``gateway_nats_births_per_s``.
3. A subscriber on its own NATS connection follows the ``moisture`` of a sample of
   devices of both gateways (one consumer each), then readings go out open loop
   at ``rate`` per second (1,000; 20 with ``--quick``), device after device,
   alternating between the two gateways, for ``load_s`` seconds.
   ``gateway_nats_readings_per_s``: readings handled (verified and written to the
   store) by both gateways together, from the first sent to the last handled (at
   most ``DRAIN_S`` after the last sent), against the offered rate (target:
   keeping up with it);
   ``gateway_nats_device_to_subscriber_latency_*``: from sending a sampled
   device's reading to the subscriber having it, verified.
   ``params`` also hold the handled count per second (percentiles), and the number
   of consumers on the stream (the watches: two per gateway, shared by its things,
   for every inbox and every status entry; one per subscription).

``$SAFETHING_BENCH_NATS_DEVICES`` sets the number of devices (births on NATS are
slow: a full run's 10,000 took 14.5 minutes on a loaded 2-core host, docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safething.bench.common import PERCENTILES, with_target
from safething.bench.runner import (
    BenchContext,
    GroupFunc,
    Metric,
    latency_metrics,
    metric,
    percentile,
)
from safething.net import Client, Identity
from safething.store import open_store
from safething.things import ThingClient
from safething_gateway.bench.gateway import (
    _child_args,
    _GatewayChild,
    _GatewaySizes,
    _handled,
    _LoadGenerator,
    _per_second,
    _provision,
    _reading,
)
from safething_gateway.testing import mosquitto

__all__ = ["GROUPS", "nats_scale_group"]

DRAIN_S = 60.0
"""After the last reading is sent, how long the gateways get to handle what is left."""
STOP_S = 60.0
"""How long a gateway child may take to stop cleanly before it is killed; the figures
are taken before the stop, which only ``params.clean_stop`` reports."""
KEEP_UP = 0.95
"""Target: the gateways handle at least this share of the offered rate (1,000/s in a full
run, the issue's figure), counted to the last reading handled."""


@dataclass(frozen=True, slots=True)
class _Sizes:
    devices: int
    rate: float
    load_s: float
    sampled: int
    """Devices whose readings the subscriber follows (half on each gateway)."""


DEVICES_ENV = "SAFETHING_BENCH_NATS_DEVICES"
"""Overrides the number of devices (a run between ``--quick`` and the full 10,000)."""


def _sizes(ctx: BenchContext) -> _Sizes:
    devices = os.environ.get(DEVICES_ENV, "").strip()
    return _Sizes(
        devices=int(devices) if devices else ctx.size(10_000, 40),
        rate=float(ctx.size(1_000, 20)),
        load_s=float(ctx.size(30, 3)),
        sampled=ctx.size(40, 4),
    )


@dataclass
class _Site:
    name: str
    directory: Path
    links: list[Any]
    generator: _LoadGenerator | None = None
    child: _GatewayChild | None = None


@contextlib.asynccontextmanager
async def _running(site: _Site, url: str, port: int, n: int) -> AsyncIterator[_GatewayChild]:
    sizes = _GatewaySizes(
        samples=1,
        warmup=0,
        gap_s=0.0,
        devices=n,
        load_s=0.0,
        backlog=0,
        connections=4,
        report_s=0.1,
    )
    child = _GatewayChild(
        _child_args(site.directory, url, port, sizes),
        site.directory / "gateway-child.log",
        stop_timeout=STOP_S,
    )
    async with child.running(startup_timeout=120) as running:
        yield running


async def _consumers(url: str, stream: str) -> int:
    import nats

    client = await nats.connect(url)
    try:
        reply = await client.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=10)
        return int(json.loads(reply.data)["state"]["consumer_count"])
    finally:
        await client.close()


async def nats_scale_group(ctx: BenchContext) -> list[Metric]:
    """Two gateways on one NATS server: births, then readings at the offered rate."""
    try:
        from safething.store.nats_testing import nats_server, server_binary

        server_binary()
    except (ImportError, FileNotFoundError, RuntimeError) as e:
        return [metric("gateway_nats_skipped", 1.0, "flag", reason=str(e))]
    sizes = _sizes(ctx)
    half = sizes.devices // 2
    sites = []
    for name in ("a", "b"):
        directory = ctx.workdir / name
        directory.mkdir()
        Identity.generate(f"bench-owner-{name}").save(directory / "owner.identity")
        links = _provision(directory / "registry.db", half, prefix=f"bench-{name}")
        sites.append(_Site(name, directory, links))
    result: dict[str, Any] | None = None
    async with nats_server(ctx.workdir / "nats") as server:
        url = f"{server.url}?bucket=scale"
        with mosquitto() as broker_a, mosquitto() as broker_b:
            ports = (broker_a.port, broker_b.port)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    for site, port in zip(sites, ports, strict=True):
                        site.child = await stack.enter_async_context(
                            _running(site, url, port, half)
                        )
                        site.generator = _LoadGenerator(port, site.links, 4)
                        await site.generator.start()
                        stack.push_async_callback(site.generator.close)
                    result = await _run(sites, url, sizes)
                    result["consumers"] = await _consumers(server.url, "KV_scale")
                    stopping = time.monotonic()
                result["clean_stop"] = f"{time.monotonic() - stopping:.0f} s"
            except RuntimeError as e:
                if result is None:
                    raise
                # the figures are in; a gateway that takes long to stop (it marks every
                # device offline, one signed write each) is reported, then killed
                result["clean_stop"] = f"not within {STOP_S:.0f} s: {e}"[:300]
    return _report(result, sizes)


async def _run(sites: list[_Site], url: str, sizes: _Sizes) -> dict[str, Any]:
    half = sizes.devices // 2
    started = time.monotonic()
    for site in sites:
        assert site.generator is not None
        for index in range(half):
            site.generator.send(index, "birth", None)
    for site in sites:
        assert site.child is not None
        await site.child.wait(lambda r: _handled(r) >= half, f"{half} births", 120 + 2.0 * half)
    births_s = time.monotonic() - started
    base = {site.name: _handled(site.child.latest) for site in sites if site.child}

    sent_at: dict[tuple[str, float], float] = {}
    arrived: list[float] = []
    per_sample = max(1, sizes.sampled // 2)
    sampled = {site.links[i].device_id for site in sites for i in range(per_sample)}
    async with await open_store(url) as store, ThingClient(Client(store)) as things:
        following = asyncio.Semaphore(0)

        async def follow(device_id: str) -> None:
            async with things.subscribe(device_id, attribute="moisture") as notes:
                following.release()
                async for note in notes:
                    sent = sent_at.pop((device_id, float(note.value)), None)
                    if sent is not None:
                        arrived.append((time.monotonic() - sent) * 1000)

        followers = [asyncio.create_task(follow(d), name=f"bench-nats:{d}") for d in sampled]
        try:
            async with asyncio.timeout(120):  # every subscription's consumer is in place
                for _ in followers:
                    await following.acquire()
            per_device = {site.name: [0] * half for site in sites}
            sent = {site.name: 0 for site in sites}
            started = time.monotonic()
            total = int(sizes.rate * sizes.load_s)
            behind = 0.0
            for k in range(total):
                due = started + k / sizes.rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    behind = max(behind, now - due)
                site = sites[k % 2]
                index = (k // 2) % half
                count = per_device[site.name][index]
                body = _reading(count)
                device_id = site.links[index].device_id
                if device_id in sampled:
                    sent_at[(device_id, body["moisture"])] = time.monotonic()
                assert site.generator is not None
                site.generator.send(index, "reading", body)
                per_device[site.name][index] = count + 1
                sent[site.name] += 1
                if k % 100 == 0:
                    await asyncio.sleep(0)
            finished: dict[str, float] = {}
            handled: dict[str, int] = {}
            for site in sites:
                assert site.child is not None
                target = base[site.name] + sent[site.name]

                def reached(report: dict[str, Any], target: int = target) -> bool:
                    return _handled(report) >= target

                # a gateway that did not keep up gets DRAIN_S more, then is counted as it is
                with contextlib.suppress(RuntimeError):
                    await site.child.wait(reached, "the last readings", DRAIN_S)
                finished[site.name] = site.child.latest["t"]
                handled[site.name] = _handled(site.child.latest) - base[site.name]
            await asyncio.sleep(1.0)  # the last sampled notifications
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
    per_second: list[int] = []
    for site in sites:
        assert site.child is not None
        counts = _per_second(site.child.reports, started, base[site.name])
        per_second = [a + b for a, b in zip(per_second, counts, strict=False)] or counts
    return {
        "births_s": births_s,
        "sent": sum(sent.values()),
        "handled": sum(handled.values()),
        "seconds": max(finished.values()) - started,
        "send_behind_s": behind,
        "per_second": per_second,
        "latencies": arrived,
        "lost_samples": len(sent_at),
        "rejected": sum(int(s.child.latest["rejected"]) for s in sites if s.child),
    }


def _report(result: dict[str, Any], sizes: _Sizes) -> list[Metric]:
    common = {
        "devices": sizes.devices,
        "gateways": 2,
        "store": "nats://, one nats-server on loopback, bucket scale (R1)",
        "transport": "mqtt (QoS 1), one Mosquitto and 4 load-generator connections per gateway",
        "offered_per_s": sizes.rate,
        "load_s": sizes.load_s,
    }
    per_second = result["per_second"]
    rate = metric(
        "gateway_nats_readings_per_s",
        round(result["handled"] / result["seconds"], 1),
        "readings/s",
        params={
            **common,
            "sent": result["sent"],
            "handled": result["handled"],
            "seconds_to_last_handled": round(result["seconds"], 2),
            "generator_behind_schedule_s": round(result["send_behind_s"], 3),
            "rejected": result["rejected"],
            "handled_per_second": {
                "p10": percentile(per_second, 10) if per_second else None,
                "p50": percentile(per_second, 50) if per_second else None,
                "p90": percentile(per_second, 90) if per_second else None,
                "seconds": len(per_second),
            },
            "stream_consumers": result["consumers"],
            "clean_stop": result.get("clean_stop"),
        },
    )
    births = metric(
        "gateway_nats_births_per_s",
        round(sizes.devices / result["births_s"], 1),
        "births/s",
        params=common,
    )
    metrics = [with_target(rate, ">=", KEEP_UP * sizes.rate), births]
    if result["latencies"]:
        metrics += latency_metrics(
            "gateway_nats_device_to_subscriber_latency",
            result["latencies"],
            params={
                **common,
                "sampled_devices": sizes.sampled,
                "not_delivered": result["lost_samples"],
                "percentiles": PERCENTILES,
                "clock": "monotonic",
            },
        )
    return metrics


GROUPS: dict[str, GroupFunc] = {"gateway.nats": nats_scale_group}
