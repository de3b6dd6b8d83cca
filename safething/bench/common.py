"""What the benchmark modules share beyond the harness (:mod:`safething.bench.runner`).

Store URLs and settings, the delivery timeout, targets next to metrics.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from pathlib import Path

from safething.bench.runner import Metric

__all__ = [
    "DELIVERY_TIMEOUT_S",
    "PERCENTILES",
    "STORE_SETTINGS",
    "by_name",
    "sqlite_url",
    "with_p_target",
    "with_target",
]

STORE_SETTINGS = "sqlite WAL, synchronous=NORMAL"
"""The store's settings as ``params`` name them (the defaults of ``open_store``)."""
PERCENTILES = "nearest rank over every sample"
"""How :func:`~safething.bench.runner.latency_metrics` takes percentiles, for ``params``."""
DELIVERY_TIMEOUT_S = 10.0
"""A delivery (a change, a notification, a reading, an action result, a child's
report) that takes longer than this fails the run."""


def sqlite_url(path: Path) -> str:
    """The store URL of a SQLite file (``sqlite:///abs/path``)."""
    return f"sqlite://{path.resolve()}"


_TARGET_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
}


def with_target(m: Metric, op: str, value: float) -> Metric:
    """``m`` with the issue's target next to it (reported, never asserted):
    ``target: {op, value}`` and ``meets_target``, ``op`` one of ``<``, ``<=``, ``>=``."""
    measured = m["value"]
    assert isinstance(measured, float)
    if op not in _TARGET_OPS:
        raise ValueError(f"unknown target operator {op!r}")
    return {
        **m,
        "target": {"op": op, "value": value},
        "meets_target": _TARGET_OPS[op](measured, value),
    }


def with_p_target(metrics: list[Metric], p: str, op: str, value: float) -> list[Metric]:
    """:func:`with_target` on the ``<base>_<p>_ms`` metric of ``metrics``; the others as given."""
    suffix = f"_{p}_ms"
    return [with_target(m, op, value) if str(m["name"]).endswith(suffix) else m for m in metrics]


def by_name(metrics: Sequence[Metric], name: str) -> Metric:
    """The one metric called ``name``."""
    (found,) = (m for m in metrics if m["name"] == name)
    return found
