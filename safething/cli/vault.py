"""``safething vault info``: where the data lives and how much of it there is."""

from __future__ import annotations

import argparse
import dataclasses
import json

from safething.cli.common import add_store_option, open_cli_store, out

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("vault", help="the store (vault) this machine uses")
    vsub = p.add_subparsers(dest="vault_command", required=True, metavar="COMMAND")
    info = vsub.add_parser("info", help="store URL, size and record counts")
    add_store_option(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info, is_async=True)


async def cmd_info(args: argparse.Namespace) -> int:
    from safething.net import Client

    async with await open_cli_store(args.store) as store:
        info = await store.info()
        mds = len(await Client(store).list_mds())
    doc = dataclasses.asdict(info) | {"mutable_data": mds}
    if args.json:
        out(json.dumps(doc))
        return 0
    out(f"store:          {info.url} ({info.backend})")
    out(f"mutable data:   {mds}")
    out(f"records:        {info.records} ({info.record_bytes} bytes)")
    out(f"chunks:         {info.chunks} ({info.chunk_bytes} bytes)")
    out(f"revision:       {info.revision}")
    if info.file_bytes is not None:
        out(f"on disk:        {info.file_bytes} bytes")
    return 0
