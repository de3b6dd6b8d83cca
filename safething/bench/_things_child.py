"""Child process of the cross-process notify benchmark, and the benchmark thing's description.

Started by :mod:`safething.bench.things` as::

    python -m safething.bench._things_child --url sqlite:///.../things.db \\
        --identity <file> --owner '<public identity JSON>' --thing-id bench-xproc \\
        --count 305 --gap-ms 5

The parent has registered the thing (same identity, same SQLite file) and
subscribed to its ``Tick`` topic. This process opens **its own store** on
that file, starts the thing with :class:`~safething.things.Thing`,
registers it again (a no-op for a registered thing: it reads its keys,
description and sequence pointers back) and calls ``thing.notify("Tick",
stamp)`` ``count`` times, ``gap-ms`` apart. ``stamp`` is
``time.monotonic_ns()`` read just before each ``notify()`` call;
``CLOCK_MONOTONIC`` is one clock for every process on a Linux host, so the
parent subtracts it from its own ``time.monotonic_ns()`` when the
notification arrives.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from safething.bench.common import send_paced, stamping_main, stamping_parser
from safething.net import Identity, PublicIdentity
from safething.things import Action, Attribute, Param, Thing, ThingDescription, Topic

__all__ = ["EXTRA_SENSORS", "TICK", "bench_description", "main"]

TICK = "Tick"
"""The topic whose payload is a ``monotonic_ns``/``perf_counter_ns`` stamp (an integer)."""

EXTRA_SENSORS = 16
"""Number attributes added to the gardening device's four: 20 attributes in all."""


def bench_description(thing_id: str) -> ThingDescription:
    """The gardening device of ``tests/things/conftest.py`` with 20 attributes and a ``Tick`` topic.

    20 attributes so that the emulated 2017 JSON blob (one per thing, every
    attribute in it) has the size of a real device's, and our thing is the
    same device.
    """
    sensors = [
        Attribute(f"sensor_{i:02d}", "number", dynamic=True, history=4)
        for i in range(1, EXTRA_SENSORS + 1)
    ]
    return ThingDescription(
        thing_id,
        title="Gardening device",
        attributes=[
            Attribute(
                "moisture", "number", unit="%", minimum=0, maximum=100, dynamic=True, history=8
            ),
            Attribute("valve", "enum", choices=["open", "closed"], dynamic=True, history=8),
            Attribute(
                "target", "number", minimum=0, maximum=100, dynamic=True, writable=True, history=8
            ),
            Attribute("model", "string", value="GD-1"),
            *sensors,
        ],
        topics=[
            Topic("VeryDryAlarm", "number", history=8),
            Topic("VeryWetAlarm", history=8),
            Topic(TICK, "integer", minimum=0, description="benchmark: a clock stamp in ns"),
        ],
        actions=[
            Action(
                "OpenValve",
                params=[Param("psi", "number", minimum=0, maximum=100, default=30)],
                output="object",
            ),
            Action("CloseValve"),
        ],
    )


def _parser() -> argparse.ArgumentParser:
    parser = stamping_parser(
        "safething.bench._things_child",
        "Notify time-stamped Tick events for the cross-process things benchmark.",
        count_help="events to notify",
        gap_help="pause between events",
    )
    parser.add_argument("--identity", required=True, help="identity file of the thing")
    parser.add_argument("--owner", required=True, help="the owner's public identity as JSON")
    parser.add_argument("--thing-id", required=True, help="id of the registered thing")
    return parser


async def _notify_all(args: argparse.Namespace) -> None:
    owner = PublicIdentity.from_dict(json.loads(args.owner))
    identity = Identity.load(args.identity)
    async with Thing(
        bench_description(args.thing_id), identity=identity, owner=owner, store=args.url
    ) as thing:
        await thing.register()
        await send_paced(args.count, args.gap_ms, lambda _: thing.notify(TICK, time.monotonic_ns()))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, notify the events, return the exit status."""
    return stamping_main(_parser(), argv, _notify_all)


if __name__ == "__main__":
    raise SystemExit(main())
