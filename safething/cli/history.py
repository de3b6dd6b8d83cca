"""``safething thing history ID NAME --since 24h [--every 5m]``: archived history.

``NAME`` is a dynamic attribute or a topic. Every value printed was verified
(the index signed by the thing or its owner, each segment signed by the
thing); Owner and Group history needs an identity holding the key.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from safething.cli.common import add_identity_option, add_store_option, open_cli_store, out
from safething.net import Client
from safething.things import ThingClient
from safething.things.history import Bucket

__all__ = ["add_parser", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``24h``, ``30d``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number with s, m, h, d or w (e.g. 24h)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def add_parser(tsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    h = tsub.add_parser("history", help="archived values of an attribute or events of a topic")
    h.add_argument("id", help="thing id")
    h.add_argument("name", help="dynamic attribute or topic")
    h.add_argument(
        "--since", type=parse_duration, default=86_400.0, metavar="AGO", help="default 24h"
    )
    h.add_argument("--until", type=parse_duration, metavar="AGO", help="default now")
    h.add_argument(
        "--every", type=parse_duration, metavar="STEP", help="summarise per STEP (min/max/mean)"
    )
    h.add_argument("--json", action="store_true", help="print JSON lines")
    add_store_option(h)
    add_identity_option(h)
    h.set_defaults(func=cmd_history, is_async=True)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


async def cmd_history(args: argparse.Namespace) -> int:
    from safething.cli.thing import _reader

    now = time.time()
    since = now - args.since
    until = now - args.until if args.until is not None else None
    async with (
        await open_cli_store(args.store) as store,
        ThingClient(Client(store, _reader(args.identity))) as things,
    ):
        description = await things.describe(args.id)
        if args.name in {t.name for t in description.topics}:
            if args.every is not None:
                raise ValueError("--every summarises attribute values, not events")
            events = await things.event_history(args.id, args.name, since=since, until=until)
            rows = [(n.seq, n.timestamp, n.value) for n in events]
        else:
            description.attribute(args.name)
            if args.every is not None:
                buckets = await things.history(
                    args.id, args.name, since=since, until=until, every=args.every
                )
                _print_buckets(buckets, args.json)
                return 0
            readings = await things.history(args.id, args.name, since=since, until=until)
            rows = [(r.seq, r.timestamp, r.value) for r in readings]
    for seq, t, value in rows:
        if args.json:
            out(json.dumps({"seq": seq, "t": t, "value": value}, ensure_ascii=False, default=str))
        else:
            out(f"{_stamp(t)}  #{seq}  {_text(value)}")
    if not rows and not args.json:
        out(f"no values of {args.name} in that time")
    return 0


def _print_buckets(buckets: list[Bucket], as_json: bool) -> None:
    for b in buckets:
        if as_json:
            out(json.dumps(b.to_dict(), ensure_ascii=False, default=str))
        else:
            mean = "-" if b.mean is None else f"{b.mean:.6g}"
            out(f"{_stamp(b.start)}  n={b.count}  min={b.min}  max={b.max}  mean={mean}")
    if not buckets and not as_json:
        out("no values in that time")
