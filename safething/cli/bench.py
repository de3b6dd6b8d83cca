"""``safething bench``: the project's benchmarks, printed as JSON lines."""

from __future__ import annotations

import argparse
import sys

from safething.cli.common import out

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="run the benchmarks (one JSON object per metric)")
    p.add_argument("--json", action="store_true", help="JSON lines (the default output)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of seconds")
    p.add_argument(
        "--only", action="append", default=None, metavar="GROUP", help="run only these groups"
    )
    p.add_argument(
        "--long",
        action="store_true",
        help="also the long groups (the gateway soak: minutes); else only when --only names one",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from safething.bench import print_json, run_benchmarks

    metrics = run_benchmarks(quick=args.quick, only=args.only, long=args.long)
    if not metrics:
        out("no benchmark matched")
        return 1
    print_json(metrics, sys.stdout)
    return 0
