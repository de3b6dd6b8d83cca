"""The harness behind ``safething bench``: a registry of metric groups and the runner.

A *metric group* is an async function ``group(ctx) -> list[metric]``; it
runs on its own event loop in a fresh temporary directory
(:attr:`BenchContext.workdir`) that is removed afterwards. A *metric* is a
JSON-ready dict ``{"name": str, "value": float, "unit": str, ...}``; a ratio
also carries the two metrics it divides, measured in the same run
(``"numerator"``, ``"denominator"``). Build them with :func:`metric`,
:func:`rate_metric`, :func:`ratio_metric` and :func:`latency_metrics`; what the
modules of groups share besides (targets, store settings, child processes) is in
:mod:`safething.bench.common`.

Adding groups: write a module that defines ``GROUPS: dict[str, GroupFunc]``
(every group name starting with the module's prefix) and add one line to
:data:`GROUP_MODULES`. Modules are imported only when ``only`` can select
one of their groups, so a module may need optional dependencies.

*Long* groups (a soak of minutes) are named in the module's ``LONG_GROUPS``
(a set of names): they run only with ``long=True`` (``safething bench
--long``) or when ``only`` names them in full, never in a default run.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

__all__ = [
    "GROUP_MODULES",
    "BenchContext",
    "GroupFunc",
    "GroupModule",
    "Metric",
    "group_names",
    "latency_metrics",
    "metric",
    "percentile",
    "print_json",
    "rate_metric",
    "ratio_metric",
    "run_benchmarks",
]

log = logging.getLogger("safething.bench")

Metric = dict[str, object]
"""One measured figure: ``{"name", "value", "unit", ...}``, ready for ``json.dumps``."""


@dataclass(frozen=True, slots=True)
class BenchContext:
    """What a metric group gets from the runner."""

    workdir: Path
    """A fresh, empty directory for this group's files; removed after the group."""
    quick: bool
    """Smoke-test size: shrink every count so the whole run takes seconds."""

    def size(self, full: int, quick: int) -> int:
        """``quick`` in a quick run, else ``full``."""
        return quick if self.quick else full


GroupFunc = Callable[[BenchContext], Awaitable[list[Metric]]]
"""A metric group: measures, then returns its metrics."""


class GroupModule(NamedTuple):
    """A registry line: a module whose ``GROUPS`` names all start with ``prefix``."""

    prefix: str
    """Common prefix of the module's group names (``"net"`` for ``"net.write"``)."""
    module: str
    """Dotted module path, imported on demand."""


GROUP_MODULES: tuple[GroupModule, ...] = (
    GroupModule("net", "safething.bench.net"),
    GroupModule("things", "safething.bench.things"),
    GroupModule("history", "safething.bench.history"),
    GroupModule("stores", "safething.bench.stores"),
    GroupModule("gateway", "safething_gateway.bench.gateway"),
    GroupModule("gateway.scale", "safething_gateway.bench.scale"),
    GroupModule("gateway.nats", "safething_gateway.bench.nats_scale"),
    GroupModule("firmware", "safething_gateway.bench.firmware"),
    GroupModule("console", "safething_gateway.bench.console"),
)
"""Every module of metric groups, in run order. One line per module.

The core's own groups live in :mod:`safething.bench`; groups that need the
gateway live with it, in :mod:`safething_gateway.bench` (``pip install
safething[gateway]``). Modules are named, not imported, so the core never
imports the gateway: a module is imported only when a selected group needs it."""


# --- building metrics -------------------------------------------------------------


def metric(name: str, value: float, unit: str, **fields: object) -> Metric:
    """A metric dict; extra keyword fields (``params=...``) are kept as given."""
    result: Metric = {"name": name, "value": float(value), "unit": unit}
    result.update(fields)
    return result


def rate_metric(
    name: str, count: int, seconds: Sequence[float], unit: str, *, params: Mapping[str, object]
) -> Metric:
    """``count`` operations per round, timed once per round: the median rate.

    ``params`` gets ``count`` (per round) and ``round_rates`` (every round,
    in run order) added, so the median can be checked and the spread seen.
    """
    if count <= 0 or not seconds or min(seconds) <= 0:
        raise ValueError(f"{name}: cannot make a rate of {count} operations in {seconds} s")
    rates = [count / s for s in seconds]
    return metric(
        name,
        round(statistics.median(rates), 1),
        unit,
        params={
            **params,
            "count": count,
            "rounds": len(rates),
            "round_rates": [round(r, 1) for r in rates],
        },
    )


def _value(m: Metric) -> float:
    value = m["value"]
    if not isinstance(value, float):
        raise TypeError(f"metric {m.get('name')!r} has a non-float value {value!r}")
    return value


def ratio_metric(name: str, numerator: Metric, denominator: Metric) -> Metric:
    """``numerator["value"] / denominator["value"]``, carrying both sides."""
    return metric(
        name,
        float(f"{_value(numerator) / _value(denominator):.4g}"),  # 4 significant digits
        "ratio",
        numerator=numerator,
        denominator=denominator,
    )


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0 < p <= 100) by the nearest-rank method.

    The smallest sample such that at least ``p`` percent of the samples are
    less than or equal to it. Every sample counts: nothing is trimmed.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is outside (0, 100]")
    ordered = sorted(samples)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def latency_metrics(
    base: str, samples_ms: Sequence[float], *, params: Mapping[str, object], **fields: object
) -> list[Metric]:
    """``<base>_p50_ms``, ``<base>_p99_ms`` and ``<base>_max_ms`` over every sample."""
    if not samples_ms:
        raise ValueError(f"{base}: no latency samples")
    info = dict(params)
    return [
        metric(
            f"{base}_{label}_ms",
            round(value, 4),
            "ms",
            samples=len(samples_ms),
            params=info,
            **fields,
        )
        for label, value in (
            ("p50", percentile(samples_ms, 50)),
            ("p99", percentile(samples_ms, 99)),
            ("max", max(samples_ms)),
        )
    ]


# --- the registry -----------------------------------------------------------------


def _may_select(prefix: str, only: Sequence[str] | None) -> bool:
    """Can a filter in ``only`` select a group whose name starts with ``prefix``?"""
    return only is None or any(f.startswith(prefix) or prefix.startswith(f) for f in only)


def _load_groups(only: Sequence[str] | None) -> dict[str, GroupFunc]:
    return _load_modules(only)[0]


def _load_modules(only: Sequence[str] | None) -> tuple[dict[str, GroupFunc], set[str]]:
    """The groups the modules ``only`` can select define, and which of them are long."""
    groups: dict[str, GroupFunc] = {}
    long_groups: set[str] = set()
    for entry in GROUP_MODULES:
        if not _may_select(entry.prefix, only):
            continue
        module = importlib.import_module(entry.module)
        found: object = getattr(module, "GROUPS", None)
        if not isinstance(found, Mapping):
            raise TypeError(f"{entry.module} defines no GROUPS mapping")
        for name, func in found.items():
            if not isinstance(name, str) or not name.startswith(entry.prefix):
                raise ValueError(
                    f"{entry.module}: group {name!r} does not start with {entry.prefix!r}"
                )
            if name in groups:
                raise ValueError(f"metric group {name!r} is registered twice")
            groups[name] = func
        long_groups.update(getattr(module, "LONG_GROUPS", ()))
    return groups, long_groups


def group_names(*, long: bool = False) -> list[str]:
    """Every registered group name, in run order (for ``--only`` help); the long ones
    only with ``long``."""
    groups, long_groups = _load_modules(None)
    return [name for name in groups if long or name not in long_groups]


# --- running ----------------------------------------------------------------------


def _check_metric(m: object, where: str) -> Metric:
    if not isinstance(m, dict):
        raise TypeError(f"{where}: a metric is a dict, got {type(m).__name__}")
    name, value, unit = m.get("name"), m.get("value"), m.get("unit")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: metric without a name: {m!r}")
    if not isinstance(value, float) or not math.isfinite(value):
        raise ValueError(f"{where}: metric {name!r} has no finite float value: {value!r}")
    if not isinstance(unit, str) or not unit:
        raise ValueError(f"{where}: metric {name!r} has no unit")
    if unit == "ratio":
        for side in ("numerator", "denominator"):
            _check_metric(m.get(side), f"{where}: {name}.{side}")
    return m


def _run_group(name: str, func: GroupFunc, *, quick: bool, workdir: Path | None) -> list[Metric]:
    with tempfile.TemporaryDirectory(prefix=f"safething-bench-{name}-", dir=workdir) as tmp:
        context = BenchContext(workdir=Path(tmp), quick=quick)

        async def run() -> list[Metric]:
            return await func(context)

        started = time.perf_counter()
        try:
            results = asyncio.run(run())
        except Exception as e:
            e.add_note(f"in benchmark group {name!r}")
            raise
        log.info(
            "bench group %s: %d metrics in %.1f s",
            name,
            len(results),
            time.perf_counter() - started,
        )
    checked = []
    for m in results:
        checked.append({**_check_metric(m, f"group {name!r}"), "group": name})
    return checked


def run_benchmarks(
    *,
    quick: bool = False,
    only: list[str] | None = None,
    workdir: Path | None = None,
    long: bool = False,
) -> list[dict[str, object]]:
    """Run the registered metric groups (those whose name starts with an entry
    of ``only``; every group when ``only`` is None or empty) and return their
    metrics, each tagged with ``"group"``.

    Each group runs on a new event loop in a new temporary directory under
    ``workdir`` (default: the system temporary directory), removed afterwards.
    ``quick`` shrinks every size for a smoke run. A long group (a module's
    ``LONG_GROUPS``) runs only with ``long`` or when ``only`` names it in full.
    Raises ``ValueError`` when ``only`` selects no group. Call it from
    synchronous code (no running loop).
    """
    if not only:
        only = None  # None or []: every group
    elif not all(isinstance(f, str) and f for f in only):
        raise ValueError(f"only lists group-name prefixes (non-empty strings), got {only!r}")
    groups, long_groups = _load_modules(only)
    selected = [
        (name, func)
        for name, func in groups.items()
        if (only is None or any(name.startswith(f) for f in only))
        and (long or name not in long_groups or name in (only or ()))
    ]
    if not selected:
        known = ", ".join(group_names())
        raise ValueError(
            f"--only {' '.join(only or [])} selects no benchmark group; known: {known}"
        )
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    metrics: list[Metric] = []
    seen: set[str] = set()
    for name, func in selected:
        for m in _run_group(name, func, quick=quick, workdir=workdir):
            metric_name = str(m["name"])
            if metric_name in seen:
                raise ValueError(f"metric {metric_name!r} is reported twice")
            seen.add(metric_name)
            metrics.append(m)
    return metrics


def print_json(metrics: Iterable[Mapping[str, object]], stream: TextIO) -> None:
    """Write each metric as one JSON object per line (JSON Lines)."""
    for m in metrics:
        stream.write(json.dumps(m, allow_nan=False) + "\n")
    stream.flush()
