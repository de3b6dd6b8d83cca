"""Before and after, side by side: the ``gateway.load`` benchmark with its gateway child
run from another checkout (run from this one, which measures).

    .venv/bin/python scripts/ab_gateway_load.py CHECKOUT [--devices 500] [--load-s 10]

``CHECKOUT`` is the root of a checkout of the code to measure (``git worktree add
--detach /tmp/base main`` makes one); the benchmark's own code (load generator, raw
relay, subscriber) is this checkout's, so two runs differ only in the gateway.
Alternate two checkouts a few times on a shared machine and compare the pairs.
Prints one JSON object: the group's metrics by name, and ``sent``, ``stored``,
``lost``, ``gateway_cpu`` and ``births_s`` of the sustained rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import safething_gateway.bench.gateway as bench
from safething.bench.runner import BenchContext


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="root of the checkout whose gateway runs")
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--load-s", type=float, default=10.0)
    args = parser.parse_args()
    root = args.checkout.resolve()
    if not (root / "safething").is_dir() or not (root / "gateway" / "safething_gateway").is_dir():
        parser.error(f"{root} is not a SAFEthing checkout")

    def child_env(*packages: ModuleType) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'gateway'}"}

    sizes = bench._sizes

    def resized(ctx: BenchContext) -> Any:
        return dataclasses.replace(sizes(ctx), devices=args.devices, load_s=args.load_s)

    # the child's environment and the sizes, swapped in the module that uses them
    bench.__dict__.update(child_env=child_env, _sizes=resized)
    with tempfile.TemporaryDirectory(prefix="safething-ab-") as tmp:
        metrics = asyncio.run(bench.load_group(BenchContext(Path(tmp), False)))
    out: dict[str, Any] = {"checkout": str(root)}
    out.update({str(m["name"]): m["value"] for m in metrics})
    params = metrics[0]["params"]
    assert isinstance(params, dict)
    out.update({k: params[k] for k in ("sent", "stored", "lost", "gateway_cpu", "births_s")})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
