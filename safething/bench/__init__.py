"""``safething bench``: measured figures of the data network, the store and, later, the rest.

``run_benchmarks(quick=..., only=[...])`` returns one dict per metric;
``print_json(metrics, sys.stdout)`` writes them as JSON Lines. See
``docs/benchmarks.md`` for what each metric means.
"""

from safething.bench.runner import (
    BenchContext,
    GroupFunc,
    Metric,
    group_names,
    print_json,
    run_benchmarks,
)

__all__ = [
    "BenchContext",
    "GroupFunc",
    "Metric",
    "group_names",
    "print_json",
    "run_benchmarks",
]
