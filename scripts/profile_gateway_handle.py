"""What one reading costs the gateway, births left out: ``Gateway.handle`` in this
process, no broker, no bridge.

    .venv/bin/python scripts/profile_gateway_handle.py [--devices 200] [--readings 4000]
        [--inflight N] [--profile FILE] [--top 15]

Provisions ``--devices`` devices in a new registry beside a new SQLite store, sends
each one's ``birth`` through ``Gateway.handle``, then ``--readings`` readings (every
device in order, the devices concurrently, as the MQTT bridge hands them over; with
``--inflight N`` the readings go out as the ``gateway.load`` benchmark sends them:
device 0, 1, ..., 0, ..., at most N in hand at once) and prints one JSON object:
readings per second, CPU microseconds per reading of the process (every thread) and
of the event loop's thread, the same for the births
(``births_per_s``, ``cpu_us_per_birth``), the CPU per reading of each thread
(``thread_cpu_us_per_reading``: the event loop, the store's writer, the registry's
worker, read from each thread's own CPU clock), the load average, and the sizes of
the group commits made during the readings (``group_commits``: for the store's writer
and the registry's worker, transactions, jobs, jobs per transaction, the group a job
was in on average, and the jobs by the size of their group).

With ``--profile`` the readings (not the births) run under cProfile timed by each
thread's CPU clock (``time.thread_time``), not the wall clock: on a loaded machine a
wall-clock profile counts the time a thread waits for a core as the own time of
whatever call it was in. Three profiles are written: the event loop's to FILE, the
store writer thread's commits to ``FILE.writer`` and the registry worker's to
``FILE.registry``. The JSON then also holds, per thread, the ``--top`` items by own
and by cumulative CPU in microseconds per reading (the profiler's own cost included:
it inflates Python calls more than C calls), and counts, per reading, the calls that
cost the event loop most (SQLite statements, store reads, change-feed reads,
trust-state writes, registry look-ups, hand-overs to other threads). Run it from the
checkout to measure, with that checkout first on ``PYTHONPATH``; alternate two
checkouts on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safething.net import Identity
from safething.store import open_store
from safething.store import sqlite as sqlite_store
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


def _label(key: tuple[str, int, str]) -> str:
    file, line, name = key
    if not line:
        return name
    parts = Path(file).parts
    return f"{'/'.join(parts[-2:])}:{line}({name})"


def _top(stats: pstats.Stats, readings: int, n: int) -> dict[str, list[list[Any]]]:
    """The ``n`` largest items by own and by cumulative time, us per reading."""
    rows = stats.stats.items()  # type: ignore[attr-defined]
    total = sum(row[2] for _, row in rows)
    out: dict[str, list[list[Any]]] = {"total_us": [[round(total / readings * 1e6, 1)]]}
    for name, index in (("own", 2), ("cumulative", 3)):
        best = sorted(rows, key=lambda kv: kv[1][index], reverse=True)[:n]
        out[name] = [
            [_label(key), round(row[index] / readings * 1e6, 1), round(row[1] / readings, 2)]
            for key, row in best
        ]
    return out


class _GroupSizes:
    """The size of each group commit made while :attr:`on` is set: the store writer's
    (jobs per transaction) and the registry worker's (calls per transaction)."""

    def __init__(self) -> None:
        self.on = False
        self.sizes: dict[str, list[int]] = {"writer": [], "registry": []}

    def install(self) -> None:
        writer_run = sqlite_store._Writer._run_group
        registry_commit = Registry._commit_batch

        def run_group(writer: Any, group: list[Any]) -> None:
            if self.on:
                self.sizes["writer"].append(len(group))
            writer_run(writer, group)

        def commit_batch(registry: Registry, calls: list[Any]) -> Any:
            if self.on:
                self.sizes["registry"].append(len(calls))
            return registry_commit(registry, calls)

        sqlite_store._Writer._run_group = run_group  # type: ignore[method-assign]
        Registry._commit_batch = commit_batch  # type: ignore[method-assign]

    def summary(self) -> dict[str, Any]:
        """Per thread: transactions, jobs, the mean group, the mean group a job was in,
        and how many jobs were in groups of 1, 2, 3-4, 5-8, ... (by the group's upper
        bound)."""
        out: dict[str, Any] = {}
        for name, sizes in self.sizes.items():
            jobs = sum(sizes)
            bins: dict[str, int] = {}
            for size in sizes:
                upper = 1 << (size - 1).bit_length()
                label = str(upper) if upper <= 2 else f"{upper // 2 + 1}-{upper}"
                bins[label] = bins.get(label, 0) + size
            out[name] = {
                "transactions": len(sizes),
                "jobs": jobs,
                "mean": round(jobs / len(sizes), 2) if sizes else 0,
                "mean_seen_by_a_job": round(sum(s * s for s in sizes) / jobs, 1) if jobs else 0,
                "jobs_by_group_size": dict(
                    sorted(bins.items(), key=lambda kv: int(kv[0].split("-")[-1]))
                ),
            }
        return out


class _ThreadProfiles:
    """cProfile on other threads, timed by their own CPU clocks: a wrapped method runs
    under its thread's profiler while :attr:`on` is set."""

    def __init__(self) -> None:
        self.on = False
        self.profiles: dict[str, cProfile.Profile] = {}
        self._lock = threading.Lock()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            with self._lock:
                profile = self.profiles.setdefault(name, cProfile.Profile(time.thread_time))
            return profile.runcall(fn, *args, **kwargs)

        return run


def _thread_clocks() -> dict[str, tuple[int, float]]:
    """Each live thread's CPU time so far, by a name without its numbering and path."""
    out: dict[str, tuple[int, float]] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        name = re.sub(r"(:.*|_\d+)$", "", thread.name)
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except OSError:  # it ended meanwhile
            continue
        out[f"{name}#{thread.ident}"] = (thread.ident, cpu)
    return out


def _thread_cpu(before: dict[str, tuple[int, float]], readings: int) -> dict[str, int]:
    spent: dict[str, float] = {}
    for key, (_, cpu) in _thread_clocks().items():
        name = key.split("#")[0]
        spent[name] = spent.get(name, 0.0) + cpu - before.get(key, (0, 0.0))[1]
    return {name: round(cpu / readings * 1e6) for name, cpu in sorted(spent.items())}


def _start_spy(path: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling this process (every thread, idle ones left out) until SIGINT."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    command = [spy, "record", "--pid", str(os.getpid()), "--threads", "--nonblocking"]
    command += ["--rate", "250", "--format", "raw", "--output", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached well within a second here
    return process


WAITS = {
    "EpollSelector.select (selectors.py)",
    "_Writer._run (safething/store/sqlite.py)",
    "_worker (concurrent/futures/thread.py)",
    "Condition.wait (threading.py)",
}
"""Innermost frames of a thread waiting (the loop's epoll, the store writer's queue, the
registry pool's idle worker): py-spy cannot tell idle threads here, so these samples are
dropped."""


def _spy_top(path: Path, thread_cpu: dict[str, int], n: int) -> dict[str, Any]:
    """py-spy's samples of each thread as microseconds of CPU per reading: each
    function's share of the thread's samples (waits dropped) times the thread's CPU per
    reading (the thread's own clock). Own: the function was the innermost frame;
    cumulative: it was anywhere in the stack."""
    own: dict[str, dict[str, int]] = {}
    cumulative: dict[str, dict[str, int]] = {}
    samples: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):? ?|(:.*|_\d+)$", "", frames[0]) or "MainThread"
        functions = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
        if not functions or functions[-1] in WAITS:
            continue
        samples[thread] = samples.get(thread, 0) + int(count)
        mine = own.setdefault(thread, {})
        mine[functions[-1]] = mine.get(functions[-1], 0) + int(count)
        total = cumulative.setdefault(thread, {})
        for function in set(functions):
            total[function] = total.get(function, 0) + int(count)
    out: dict[str, Any] = {}
    for thread, seen in samples.items():
        scale = thread_cpu.get(thread, 0) / seen
        out[thread] = {"samples": seen}
        for name, table in (("own", own[thread]), ("cumulative", cumulative[thread])):
            best = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:n]
            out[thread][name] = [[f, round(c * scale, 1)] for f, c in best]
    return out


async def _run(
    devices: int,
    readings: int,
    profile: Path | None,
    top: int,
    spy_file: Path | None,
    inflight: int | None = None,
) -> dict[str, Any]:
    threads = _ThreadProfiles()
    groups = _GroupSizes()
    groups.install()
    if profile is not None:
        writer = sqlite_store._Writer
        writer._run_group = threads.wrap("writer", writer._run_group)  # type: ignore[method-assign]
        Registry._drain = threads.wrap("registry", Registry._drain)  # type: ignore[method-assign]
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
                    # The devices' own work (encrypting and MACing each frame) is done
                    # first, outside the measured phase: it is not the gateway's.
                    device_cpu = time.process_time()
                    frames = {
                        link.device_id: [
                            link.up("reading", {"moisture": j % 100}) for j in range(each)
                        ]
                        for link in links
                    }
                    device_cpu = time.process_time() - device_cpu

                    async def send(link: DeviceLink) -> None:
                        for data in frames[link.device_id]:
                            await gateway.handle(link.device_id, "reading", data)

                    # the benchmark's order: every device's k-th reading, then the k+1-th
                    ordered = iter(
                        [
                            (link.device_id, frames[link.device_id][k])
                            for k in range(each)
                            for link in links
                        ]
                    )

                    async def worker() -> None:
                        for device_id, data in ordered:
                            await gateway.handle(device_id, "reading", data)

                    spy = _start_spy(spy_file) if spy_file is not None else None

                    profiler = cProfile.Profile(time.thread_time) if profile is not None else None
                    clocks = _thread_clocks()
                    wall, cpu = time.perf_counter(), time.process_time()
                    loop_cpu = time.thread_time()
                    groups.on = True
                    if profiler is not None:
                        threads.on = True
                        profiler.enable()
                    if inflight is None:
                        await asyncio.gather(*(send(link) for link in links))
                    else:  # fewer than the devices: a device's readings stay in order
                        await asyncio.gather(*(worker() for _ in range(min(inflight, devices))))
                    if profiler is not None:
                        profiler.disable()
                        threads.on = False
                    groups.on = False
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    loop_cpu = time.thread_time() - loop_cpu
                    thread_cpu = _thread_cpu(clocks, each * devices)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait()
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
        "thread_cpu_us_per_reading": thread_cpu,
        "device_cpu_us_per_reading": round(device_cpu / n * 1e6),
        "load": round(os.getloadavg()[0], 2),
        "group_commits": groups.summary(),
        "devices": devices,
        "inflight": inflight,
    }
    if spy_file is not None:
        out["spy"] = _spy_top(spy_file, thread_cpu, top)
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
        loop_stats = pstats.Stats(str(profile))
        out["per_reading"] = _counts(loop_stats, n)
        out["top"] = {"loop": _top(loop_stats, n, top)}
        for name, other in threads.profiles.items():
            path = f"{profile}.{name}"
            other.dump_stats(path)
            out["top"][name] = _top(pstats.Stats(path), n, top)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--readings", type=int, default=4000)
    parser.add_argument(
        "--inflight",
        type=int,
        help="readings in hand at most, sent in the benchmark's order (default: every "
        "device's readings in turn, all devices at once)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile statistics of the readings")
    parser.add_argument("--top", type=int, default=15, help="items per thread with --profile")
    parser.add_argument(
        "--spy", type=Path, help="py-spy's samples of the readings (py-spy in the venv)"
    )
    args = parser.parse_args()
    if args.inflight is not None and args.inflight < 1:
        parser.error("--inflight must be at least 1")
    result = _run(args.devices, args.readings, args.profile, args.top, args.spy, args.inflight)
    print(json.dumps(asyncio.run(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
