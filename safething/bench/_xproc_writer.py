"""Child process of the cross-process watch benchmark: writes time-stamped records.

Started by :mod:`safething.bench.net` as::

    python -m safething.bench._xproc_writer --url sqlite:///.../xproc.db --count 305 \\
        --gap-ms 5 store --prefix bench.xproc.
    python -m safething.bench._xproc_writer --url ... md --identity <file> --name <hex> --tag 27417

It opens its own store on the same SQLite file as the parent and writes
``count`` records, one at a time, ``gap-ms`` apart. Each value is
:func:`encode_stamp` of the record's index and ``time.monotonic_ns()`` read
just before the write call (``Store.create``, or ``MutableData.insert``,
which also reads the header and signs). ``CLOCK_MONOTONIC`` is one clock for
every process on a Linux host, so the parent subtracts the stamp from its own
``time.monotonic_ns()`` when its watcher returns the change.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Sequence

from safething.bench.common import send_paced, stamping_main, stamping_parser
from safething.net import Client, Identity, XorName
from safething.store import open_store

__all__ = ["decode_stamp", "encode_stamp", "main"]


def encode_stamp(index: int, stamp_ns: int) -> bytes:
    """The value of record ``index`` written at ``stamp_ns``: ``b"<index> <stamp_ns>"``."""
    return b"%d %d" % (index, stamp_ns)


def decode_stamp(value: bytes | None) -> tuple[int, int]:
    """``(index, stamp_ns)`` from a value made by :func:`encode_stamp`."""
    if value is None:
        raise ValueError("a stamped record was deleted")
    index, _, stamp = value.partition(b" ")
    return int(index), int(stamp)


def _parser() -> argparse.ArgumentParser:
    parser = stamping_parser(
        "safething.bench._xproc_writer",
        "Write time-stamped records for the cross-process watch benchmark.",
        count_help="records to write",
        gap_help="pause between writes",
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    store = modes.add_parser("store", help="plain store records (Store.create)")
    store.add_argument("--prefix", required=True, help="key prefix, ending in '.'")
    md = modes.add_parser("md", help="signed entries of an existing MD (MutableData.insert)")
    md.add_argument("--identity", required=True, help="identity file of an owner of the MD")
    md.add_argument("--name", required=True, help="the MD's name, 64 hex characters")
    md.add_argument("--tag", type=int, required=True, help="the MD's type tag")
    return parser


async def _write_all(args: argparse.Namespace) -> None:
    async with await open_store(args.url) as store:
        write: Callable[[int], Awaitable[object]]
        if args.mode == "store":
            prefix: str = args.prefix

            def write(i: int) -> Awaitable[object]:
                return store.create(f"{prefix}{i}", encode_stamp(i, time.monotonic_ns()))

        else:
            client = Client(store, Identity.load(args.identity))
            md = client.md(XorName.from_hex(args.name), args.tag)

            def write(i: int) -> Awaitable[object]:
                return md.insert(f"s{i}", encode_stamp(i, time.monotonic_ns()))

        await send_paced(args.count, args.gap_ms, write)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, write the records, return the exit status."""
    return stamping_main(_parser(), argv, _write_all)


if __name__ == "__main__":
    raise SystemExit(main())
