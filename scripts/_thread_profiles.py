"""What the CPU-clock profiling scripts share (``profile_births.py``,
``profile_thing_updates.py``): each thread's CPU from ``/proc``, a cProfile per thread
timed by that thread's own CPU clock, and the top items of a profile per operation.

Not part of the package: the scripts import it from their own folder.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")

PROFILES: dict[str, cProfile.Profile] = {}
"""The profiles of the threads started after :func:`profile_threads`, by label."""
_PROFILES_LOCK = threading.Lock()


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by native id."""
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def profile_threads(label: Callable[[str, int], str]) -> None:
    """Make every thread started from now on run under its own CPU-clock profile, kept
    in :data:`PROFILES` under ``label(thread name, native id)``."""
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        profiler = cProfile.Profile(timer=time.thread_time)
        with _PROFILES_LOCK:
            PROFILES[label(self.name, self.native_id or 0)] = profiler
        profiler.enable()
        try:
            run(self)
        finally:
            profiler.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]


def top_items(stats: pstats.Stats, n_ops: int, n: int) -> dict[str, list[list[Any]]]:
    """The ``n`` largest items by own and by cumulative time: calls and microseconds
    per operation."""
    rows = []
    for (file, line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else "~"
        rows.append((f"{where}({name})", row[1], row[2], row[3]))
    own = sorted(rows, key=lambda r: -r[2])[:n]
    cum = sorted(rows, key=lambda r: -r[3])[:n]
    return {
        "own": [[f, round(c / n_ops, 2), round(t / n_ops * 1e6, 1)] for f, c, t, _ in own],
        "cumulative": [[f, round(c / n_ops, 2), round(t / n_ops * 1e6, 1)] for f, c, _, t in cum],
    }
