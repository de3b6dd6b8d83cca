"""What one ``Thing.set()`` costs in CPU, thread by thread, with a subscriber in the
same process verifying every update: the ``things_attribute_update_rate`` workload.

    .venv/bin/python scripts/profile_thing_updates.py [--updates 1000] [--rounds 3]
        [--profile DIR] [--spy FILE] [--top 25]

Runs ``safething.bench.things._update_rounds`` (a new thing of the bench's gardening
description on a new SQLite store, ``set("moisture", ...)`` awaited one after the
other, a ``ThingClient`` attribute subscription consuming) and, just before it, the
crypto limit's sign + verify loop of ``safething.bench.crypto``. Prints one JSON
object: updates per second and per CPU second of the process, CPU microseconds per
``set()`` of each thread (from ``/proc/self/task/<tid>/stat``: CPU, not time spent
waiting for a core on a loaded machine), ed25519 pairs per second and per CPU second
of the measuring thread, both ratios, and the load average.

With ``--profile DIR`` every thread runs under its own ``cProfile`` timed by
``time.thread_time`` (the event loop's thread around the rounds, every other thread
for its whole life): exact call counts, but the clock's system call per event
inflates Python-heavy threads several times. With ``--spy FILE`` py-spy (from the
venv) samples every thread during the rounds; each function's share of a thread's
samples is scaled by that thread's CPU per ``set()``: sizes without the inflation.
Run it from the checkout to measure, with that checkout first on ``PYTHONPATH``;
alternate two checkouts on a shared machine.
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
from pathlib import Path
from typing import Any

from _thread_profiles import PROFILES, profile_threads, thread_cpu, top_items

from safething.bench import crypto
from safething.bench import things as bench_things
from safething.net import Identity, SigningKey
from safething.store import open_store


def _thread_name(name: str) -> str:
    return re.sub(r"_\d+$|:.*$|-\d+.*$", "", name)


def _crypto_limit(pairs: int = 5_000) -> dict[str, float]:
    """ed25519 sign + verify pairs per wall and per CPU second (best of three rounds)."""
    key = SigningKey.generate()
    messages = [os.urandom(crypto.MESSAGE_BYTES) for _ in range(pairs)]
    crypto._round(key, messages[:200])
    rounds = [crypto._round(key, messages) for _ in range(3)]
    wall = sorted(r.wall_s for r in rounds)[1]
    cpu = sorted(r.cpu_s for r in rounds)[1]
    return {"pairs_per_s": round(pairs / wall), "pairs_per_cpu_s": round(pairs / cpu)}


def _start_spy(path: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling this process (every thread, idle ones left out) until SIGINT."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    command = [spy, "record", "--pid", str(os.getpid()), "--threads", "--nonblocking"]
    command += ["--rate", "250", "--format", "raw", "--output", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return process


def _spy_top(path: Path, thread_cpu: dict[str, float], n: int) -> dict[str, Any]:
    """py-spy's samples as CPU microseconds per ``set()``: a function's share of its
    thread's samples times the thread's CPU per ``set()``. Own: innermost frame;
    cumulative: anywhere in the stack."""
    own: dict[str, dict[str, int]] = {}
    cumulative: dict[str, dict[str, int]] = {}
    samples: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):? ?|(:.*|_\d+)$", "", frames[0]) or "MainThread"
        thread = _thread_name(thread)
        functions = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
        if not functions:
            continue
        samples[thread] = samples.get(thread, 0) + int(count)
        mine = own.setdefault(thread, {})
        mine[functions[-1]] = mine.get(functions[-1], 0) + int(count)
        total = cumulative.setdefault(thread, {})
        for function in set(functions):
            total[function] = total.get(function, 0) + int(count)
    out: dict[str, Any] = {}
    for thread, seen in samples.items():
        cpu = thread_cpu.get("event-loop" if thread == "MainThread" else thread, 0.0)
        scale = cpu / seen
        out[thread] = {"samples": seen}
        for name, table in (("own", own[thread]), ("cumulative", cumulative[thread])):
            best = sorted(table.items(), key=lambda kv: kv[1], reverse=True)[:n]
            out[thread][name] = [[f, round(c * scale, 1)] for f, c in best]
    return out


async def _run(
    updates: int, rounds: int, profile: bool, spy_file: Path | None
) -> tuple[dict[str, Any], cProfile.Profile | None, dict[str, float]]:
    limit = _crypto_limit()
    sizes = bench_things._Sizes(
        samples=1,
        warmup=0,
        gap_s=0.0,
        xproc_gap_s=0.0,
        updates=updates,
        rounds=rounds,
        poll_period_s=1.0,
        poll_events=1,
    )
    n = updates * rounds
    with tempfile.TemporaryDirectory(prefix="safething-updates-") as tmp:
        root = Path(tmp)
        os.environ["SAFETHING_TRUST_DIR"] = str(root / "trust")
        async with await open_store(f"sqlite:///{root}/things.db") as store:
            owner = Identity.generate("bench-owner")
            spy = _start_spy(spy_file) if spy_file is not None else None
            loop_profiler = cProfile.Profile(timer=time.thread_time) if profile else None
            loop_tid = threading.get_native_id()
            before = thread_cpu()
            wall, cpu = time.perf_counter(), time.process_time()
            if loop_profiler is not None:
                loop_profiler.enable()
            seconds, received, _drain, lost = await bench_things._update_rounds(store, owner, sizes)
            if loop_profiler is not None:
                loop_profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            after = thread_cpu()
            names = {t.native_id: t.name for t in threading.enumerate()}
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait()
    per_thread: dict[str, float] = {}
    for tid, spent_after in after.items():
        spent = spent_after - before.get(tid, 0.0)
        if spent <= 0:
            continue
        name = "event-loop" if tid == loop_tid else _thread_name(names.get(tid, "?"))
        per_thread[name] = per_thread.get(name, 0.0) + spent
    rate = statistics_median([updates / s for s in seconds])
    out: dict[str, Any] = {
        "updates": n,
        "updates_per_s": round(rate, 1),
        "updates_per_cpu_s": round(n / cpu, 1),
        "received": received,
        "lost": lost,
        "cpu_us_per_set": round(cpu / n * 1e6),
        "thread_cpu_us_per_set": {
            k: round(v / n * 1e6) for k, v in sorted(per_thread.items(), key=lambda i: -i[1])
        },
        **limit,
        "ratio": round(rate / limit["pairs_per_s"], 3),
        "cpu_ratio": round(n / cpu / limit["pairs_per_cpu_s"], 3),
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    thread_cpu_per_set = {k: v / n * 1e6 for k, v in per_thread.items()}
    return out, loop_profiler, thread_cpu_per_set


def statistics_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="directory for per-thread statistics")
    parser.add_argument("--spy", type=Path, help="py-spy's raw samples (py-spy in the venv)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if args.profile is not None:
        profile_threads(lambda name, tid: f"{_thread_name(name)}-{tid}")
    out, loop_profiler, thread_cpu = asyncio.run(
        _run(args.updates, args.rounds, args.profile is not None, args.spy)
    )
    n = args.updates * args.rounds
    if args.spy is not None:
        out["spy"] = _spy_top(args.spy, thread_cpu, args.top)
    if loop_profiler is not None and args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        tops = {}
        for label, profiler in [("event-loop", loop_profiler), *sorted(PROFILES.items())]:
            path = args.profile / f"{label}.prof"
            profiler.dump_stats(path)
            stats = pstats.Stats(str(path))
            if stats.total_tt * 1e6 / n >= 1:  # type: ignore[attr-defined]
                tops[label] = {
                    "cpu_us_per_set": round(stats.total_tt / n * 1e6),  # type: ignore[attr-defined]
                    **top_items(stats, n, args.top),
                }
        out["profile"] = tops
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
