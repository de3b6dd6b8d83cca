"""What one reading costs the gateway, births left out: ``Gateway.handle`` in this
process, no broker, no bridge.

    .venv/bin/python scripts/profile_gateway_handle.py [--devices 200] [--readings 4000]
        [--profile FILE]

Provisions ``--devices`` devices in a new registry beside a new SQLite store, sends
each one's ``birth`` through ``Gateway.handle``, then ``--readings`` readings (every
device in order, the devices concurrently, as the MQTT bridge hands them over) and
prints one JSON object: readings per second, CPU microseconds per reading of the
process (every thread) and of the event loop's thread, the same for the births
(``births_per_s``, ``cpu_us_per_birth``), and the load average. With
``--profile`` the readings (not the births) run under cProfile, the statistics go to
FILE and the JSON also counts, per reading, the calls that cost the event loop most
(SQLite statements, store reads, change-feed reads, trust-state writes, registry
look-ups, hand-overs to other threads). Run it from the checkout to measure, with
that checkout first on ``PYTHONPATH``; alternate two checkouts on a shared machine.
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
import time
from pathlib import Path
from typing import Any

from safething.net import Identity
from safething.store import open_store
from safething_gateway.bench.gateway import sensor_description
from safething_gateway.core import Gateway
from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.registry import Registry

COUNTED = {
    "sqlite_execute": r"method 'execute' of 'sqlite3\.Connection' objects",
    "sqlite_executemany": r"method 'executemany' of 'sqlite3\.Connection' objects",
    "store_get": r"safething/store/sqlite\.py:\d+\(get\)$",
    "store_feed": r"safething/store/sqlite\.py:\d+\(_feed\)$",
    "trust_sync": r"safething/net/trust\.py:\d+\((sync|flush_waiting)\)$",
    "registry_find": r"safething_gateway/registry\.py:\d+\(find\)$",
    "thread_handover": r"method 'put' of '_queue\.SimpleQueue' objects",
    "ed25519_sign": r"built-in method _sodium\.crypto_sign>",
}


def _counts(stats: pstats.Stats, readings: int) -> dict[str, float]:
    found = dict.fromkeys(COUNTED, 0)
    for (file, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        label = f"{file}:{line}({name})" if line else name
        for key, pattern in COUNTED.items():
            if re.search(pattern, label):
                found[key] += row[1]
    return {key: round(n / readings, 2) for key, n in found.items()}


async def _run(devices: int, readings: int, profile: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="safething-profile-") as tmp:
        root = Path(tmp)
        os.environ["SAFETHING_TRUST_DIR"] = str(root / "trust")
        registry = Registry(root / "registry.db")
        try:
            links = []
            for i in range(devices):
                record = registry.add(f"profile-{i:05d}", "mqtt")
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

                    born_wall, born_cpu = time.perf_counter(), time.process_time()
                    await asyncio.gather(*(birth(link) for link in links))
                    born_wall = time.perf_counter() - born_wall
                    born_cpu = time.process_time() - born_cpu
                    each = readings // devices

                    async def send(link: DeviceLink) -> None:
                        for j in range(each):
                            data = link.up("reading", {"moisture": j % 100})
                            await gateway.handle(link.device_id, "reading", data)

                    profiler = cProfile.Profile() if profile is not None else None
                    wall, cpu = time.perf_counter(), time.process_time()
                    loop_cpu = time.thread_time()
                    if profiler is not None:
                        profiler.enable()
                    await asyncio.gather(*(send(link) for link in links))
                    if profiler is not None:
                        profiler.disable()
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    loop_cpu = time.thread_time() - loop_cpu
        finally:
            registry.close()
    n = each * devices
    out: dict[str, Any] = {
        "readings": n,
        "per_s": round(n / wall, 1),
        "cpu_us_per_reading": round(cpu / n * 1e6),
        "loop_cpu_us_per_reading": round(loop_cpu / n * 1e6),
        "births_per_s": round(devices / born_wall, 1),
        "cpu_us_per_birth": round(born_cpu / devices * 1e6),
        "load": round(os.getloadavg()[0], 2),
    }
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
        out["per_reading"] = _counts(pstats.Stats(str(profile)), n)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--readings", type=int, default=4000)
    parser.add_argument("--profile", type=Path, help="cProfile statistics of the readings")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.devices, args.readings, args.profile))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
