"""Child process of the gateway load benchmark: one gateway, its MQTT bridge, nothing else.

Started by :mod:`safething_gateway.bench.gateway` as::

    python -m safething_gateway.bench._gateway_child --store sqlite:///.../load.db \\
        --registry .../registry.db --owner .../owner.identity --mqtt-port 41883

It runs the gateway in a process of its own, so that the memory this
process reports is the gateway's alone (not the load generator's, not the
benchmark's). It starts :class:`~safething_gateway.core.Gateway` with an
:class:`~safething_gateway.bridges.mqtt.MqttBridge` on ``127.0.0.1`` and
writes one JSON object per line to stdout:

``{"event": "ready", ...}``
    once the gateway has started (it restores the custodial thing of every
    device that was born before): ``startup_s``, ``things``.
``{"event": "report", ...}``
    every ``--report-ms`` milliseconds while it runs.
``{"event": "report", "asked": true, ...}``
    at once when stdin says ``report`` (a parent that measures an idle
    gateway gives a long ``--report-ms`` and asks instead).
``{"event": "closed", ...}``
    after the gateway has closed (``things`` is then 0), when stdin says
    ``stop`` or is closed.

Every line carries ``t`` (``time.monotonic()``: one clock for every process
of a Linux host), ``in`` (device messages the gateway accepted, i.e. that it
verified and acted on: a reading is in the store when it counts),
``rejected`` (messages it refused, every reason; ``rate_limited`` those refused
by the rate limit), ``things`` (custodial
things running), ``rss_kb`` / ``hwm_kb``: this process's resident set now
and at its peak (``VmRSS`` / ``VmHWM`` of ``/proc/self/status``), and
``cpu_s``: the CPU time of all its threads so far (``time.process_time()``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safething.bench.common import background
from safething.net import Identity
from safething.store import open_store
from safething_gateway.bridges.mqtt import MqttBridge
from safething_gateway.core import Gateway
from safething_gateway.registry import Registry

__all__ = ["main", "memory_kb"]

_ACCEPTED = "safething_gateway_messages_in_total"
_REJECTED = "safething_gateway_rejected_total"


def memory_kb(pid: int | str = "self") -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of a process in KiB, from ``/proc/<pid>/status``.

    Without ``/proc`` (not Linux): this process's peak from ``getrusage`` for both.
    """
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
    except OSError:
        if pid != "self":
            raise
    if len(found) < 2:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return peak, peak
    return found["VmRSS"], found["VmHWM"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m safething_gateway.bench._gateway_child",
        description="Run a gateway with an MQTT bridge for the gateway load benchmark.",
    )
    parser.add_argument("--store", required=True, help="store URL, sqlite:///path/file.db")
    parser.add_argument("--registry", required=True, help="the gateway's registry file")
    parser.add_argument("--owner", required=True, help="identity file of the owner")
    parser.add_argument("--mqtt-port", type=int, required=True, help="broker port on 127.0.0.1")
    parser.add_argument("--client-id", default="safething-bench-gateway", help="MQTT client id")
    parser.add_argument("--report-ms", type=float, default=50.0, help="period of the reports")
    parser.add_argument("--profile", help="write cProfile statistics of the run to this file")
    parser.add_argument(
        "--max-things", type=int, help="Gateway(max_things=...); default: the gateway's"
    )
    parser.add_argument(
        "--close-after",
        type=float,
        help="Gateway(close_after=...) in seconds; default: the gateway's",
    )
    parser.add_argument(
        "--close-births",
        action="store_true",
        help="Gateway(close_births=True): things quiet since their birth close over the bound",
    )
    return parser


def _state(gateway: Gateway, event: str, **extra: Any) -> dict[str, Any]:
    rss, hwm = memory_kb()
    counters = gateway.metrics.counters
    return {
        "event": event,
        "t": time.monotonic(),
        "in": int(sum(v for (name, _), v in counters.items() if name == _ACCEPTED)),
        "rejected": int(sum(v for (name, _), v in counters.items() if name == _REJECTED)),
        "rate_limited": int(
            sum(
                v
                for (name, labels), v in counters.items()
                if name == _REJECTED and ("reason", "rate_limited") in labels
            )
        ),
        "replayed": int(
            sum(
                v
                for (name, labels), v in counters.items()
                if name == _REJECTED and ("reason", "replay") in labels
            )
        ),
        "things": len(gateway.things),
        "rss_kb": rss,
        "hwm_kb": hwm,
        "cpu_s": time.process_time(),
        **extra,
    }


def _say(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def _report(gateway: Gateway, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        _say(_state(gateway, "report"))


async def _until_stop(gateway: Gateway) -> None:
    """Until stdin says ``stop`` or is closed (the parent went away); a line ``report``
    is answered with a report at once."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while True:
            line = await reader.readline()
            if not line or line.strip() == b"stop":
                return
            if line.strip() == b"report":
                _say(_state(gateway, "report", asked=True))
    finally:
        transport.close()


async def _run(args: argparse.Namespace) -> None:
    registry = Registry(Path(args.registry))
    try:
        async with await open_store(args.store) as store:
            bridge = MqttBridge("127.0.0.1", args.mqtt_port, client_id=args.client_id)
            bound: dict[str, Any] = {}
            if args.max_things is not None:
                bound["max_things"] = args.max_things
            if args.close_after is not None:
                bound["close_after"] = args.close_after
            if args.close_births:
                bound["close_births"] = True
            gateway = Gateway(
                store=store,
                registry=registry,
                owner=Identity.load(args.owner),
                bridges=[bridge],
                **bound,
            )
            async with gateway:
                started = time.perf_counter()
                await gateway.start()
                startup_s = time.perf_counter() - started
                if not bridge.connection.connected:
                    raise RuntimeError(f"no MQTT broker on 127.0.0.1:{args.mqtt_port}")
                _say(_state(gateway, "ready", pid=os.getpid(), startup_s=startup_s))
                async with background(
                    _report(gateway, args.report_ms / 1000), "bench-gateway:report"
                ):
                    await _until_stop(gateway)
            _say(_state(gateway, "closed"))
    finally:
        registry.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the gateway until told to stop, return the exit status."""
    args = _parser().parse_args(argv)
    if args.report_ms <= 0:
        _parser().error("--report-ms must be positive")
    if args.max_things is not None and args.max_things < 1:
        _parser().error("--max-things must be at least 1")
    if args.close_after is not None and not 0 < args.close_after < float("inf"):
        _parser().error("--close-after must be a number of seconds > 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    try:
        asyncio.run(_run(args))
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
