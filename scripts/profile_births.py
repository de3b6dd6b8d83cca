"""What one birth costs the gateway in CPU, thread by thread: ``Gateway.handle`` in
this process, no broker, no bridge, readings left out.

    .venv/bin/python scripts/profile_births.py [--devices 300] [--profile DIR] [--top 25]

Provisions ``--devices`` devices in a new registry beside a new SQLite store and sends
each one's ``birth`` through ``Gateway.handle`` (64 at a time, as
``scripts/profile_gateway_handle.py`` does). Prints one JSON object: births per
second, CPU microseconds per birth of the process and of each thread (read from
``/proc/self/task/<tid>/stat``, so it counts CPU, not time spent waiting for a core
on a loaded machine), and the load average.

With ``--profile DIR`` every thread runs under its own ``cProfile`` with a CPU clock
(``time.thread_time``): the event loop's thread from just before the births to just
after, every other thread for its whole life (the store's writer, the registry's
and the store's worker threads), so a wall-clock profile's time waiting for a core or
for another thread is not counted. The statistics go to DIR/<thread>.prof and the
JSON lists, per thread, the ``--top`` functions by own and by cumulative CPU in
microseconds per birth. Run it from the checkout to measure, with that checkout first
on ``PYTHONPATH``; alternate two checkouts on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _thread_profiles import PROFILES, profile_threads, thread_cpu, top_items

from safething.net import Identity
from safething.store import open_store
from safething_gateway.bench.gateway import sensor_description
from safething_gateway.core import Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.registry import Registry


def _label(name: str, tid: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    return f"{name}-{tid}"


async def _run(
    devices: int, profile: Path | None
) -> tuple[dict[str, Any], cProfile.Profile | None]:
    with tempfile.TemporaryDirectory(prefix="safething-births-") as tmp:
        root = Path(tmp)
        os.environ["SAFETHING_TRUST_DIR"] = str(root / "trust")
        registry = Registry(root / "registry.db")
        try:
            links = []
            for i in range(devices):
                record = registry.add(f"births-{i:05d}", "mqtt")
                links.append(
                    DeviceLink(
                        record.device_id, record.secret, sensor_description(record.device_id)
                    )
                )
            async with await open_store(f"sqlite:///{root}/vault.db") as store:
                gateway = Gateway(store=store, registry=registry, owner=Identity.generate("owner"))
                async with gateway:
                    await gateway.start()
                    births = asyncio.Semaphore(64)

                    async def birth(link: DeviceLink) -> None:
                        async with births:
                            await gateway.handle(link.device_id, "birth", link.birth())

                    names = {t.native_id: t.name for t in threading.enumerate()}
                    loop_tid = threading.get_native_id()
                    loop_profiler = None
                    if profile is not None:
                        loop_profiler = cProfile.Profile(timer=time.thread_time)
                    before = thread_cpu()
                    wall, cpu = time.perf_counter(), time.process_time()
                    if loop_profiler is not None:
                        loop_profiler.enable()
                    await asyncio.gather(*(birth(link) for link in links))
                    if loop_profiler is not None:
                        loop_profiler.disable()
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    after = thread_cpu()
                    names.update({t.native_id: t.name for t in threading.enumerate()})
        finally:
            registry.close()
    per_thread: dict[str, float] = {}
    for tid, seconds in after.items():
        spent = seconds - before.get(tid, 0.0)
        if spent <= 0:
            continue
        name = "event-loop" if tid == loop_tid else names.get(tid, "?")
        name = re.sub(r"_\d+$|:.*$|-\d+.*$", "", name)  # pool workers under one name
        per_thread[name] = per_thread.get(name, 0.0) + spent
    out: dict[str, Any] = {
        "births": devices,
        "births_per_s": round(devices / wall, 1),
        "cpu_us_per_birth": round(cpu / devices * 1e6),
        "thread_cpu_us_per_birth": {
            k: round(v / devices * 1e6) for k, v in sorted(per_thread.items(), key=lambda i: -i[1])
        },
        "load": round(os.getloadavg()[0], 2),
    }
    return out, loop_profiler


def _profiles(
    out: dict[str, Any], loop_profiler: cProfile.Profile, profile: Path, devices: int, top: int
) -> None:
    """Write every thread's statistics to ``profile`` and their tops into ``out``."""
    profile.mkdir(parents=True, exist_ok=True)
    tops = {}
    for label, profiler in [("event-loop", loop_profiler), *sorted(PROFILES.items())]:
        path = profile / f"{label}.prof"
        profiler.dump_stats(path)
        stats = pstats.Stats(str(path))
        if stats.total_tt * 1e6 / devices >= 1:  # type: ignore[attr-defined]
            tops[label] = {
                "cpu_us_per_birth": round(stats.total_tt / devices * 1e6),  # type: ignore[attr-defined]
                **top_items(stats, devices, top),
            }
    out["profile"] = tops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--profile", type=Path, help="directory for per-thread statistics")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.profile is not None:
        profile_threads(_label)
    out, loop_profiler = asyncio.run(_run(args.devices, args.profile))
    if loop_profiler is not None and args.profile is not None:
        _profiles(out, loop_profiler, args.profile, args.devices, args.top)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
