"""``safething token add|list|revoke``: bearer tokens for the gateway's WoT HTTP binding.

Each token stands for an identity made for one HTTP consumer (see
:mod:`safething_gateway.tokens`); the owner decides what it may do by adding
that identity to things' groups (``--as-owner``: it acts as the owner).
"""

from __future__ import annotations

import argparse
import json

from safething.cli.common import (
    add_identity_option,
    add_store_option,
    load_identity,
    open_cli_store,
    out,
)
from safething.net import Client
from safething.things import ThingOwner

__all__ = ["register"]

CONFIG_HELP = "gateway config (default: $SAFETHING_GATEWAY_CONFIG or /etc/safething/gateway.toml)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("token", help="bearer tokens for the gateway's WoT HTTP binding")
    tsub = t.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    add = tsub.add_parser("add", help="make a token and its identity (printed once)")
    add.add_argument("name", help="a label: node-red, home-assistant...")
    add.add_argument(
        "--as-owner", action="store_true", help="the token acts as the owner (full access)"
    )
    add.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="THING",
        help="as the owner, add the token's identity to THING's group (repeatable)",
    )
    add.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    add_store_option(add)
    add_identity_option(add)
    add.set_defaults(func=cmd_add, is_async=True)
    ls = tsub.add_parser("list", help="the tokens' names and identities")
    ls.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    ls.set_defaults(func=cmd_list)
    rv = tsub.add_parser("revoke", help="stop a token at once")
    rv.add_argument("name")
    rv.add_argument("--config", metavar="TOML", default=None, help=CONFIG_HELP)
    rv.set_defaults(func=cmd_revoke)


def _store(config_path: str | None):  # type: ignore[no-untyped-def]
    from safething.cli.gateway import _need_gateway

    _need_gateway()
    from safething_gateway.config import load_config
    from safething_gateway.tokens import TokenStore

    return TokenStore(load_config(config_path).gateway.tokens_path)


async def cmd_add(args: argparse.Namespace) -> int:
    tokens = _store(args.config)
    owner = load_identity(args.identity) if args.group else None
    token, identity = tokens.add(args.name, as_owner=args.as_owner)
    if owner is not None:
        async with await open_cli_store(args.store) as store:
            for thing_id in args.group:
                await ThingOwner(Client(store, owner), thing_id).add_member(identity.public)
    out(f"token for {args.name} (shown once, keep it secret):")
    out(token)
    out(f"identity: {identity.public_sign_key.hex()}")
    for thing_id in args.group:
        out(f"in the group of {thing_id}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from safething.net import Identity

    tokens = _store(args.config)
    for name, path in tokens.names().items():
        doc = Identity.read_public(path)
        row = {
            "name": name,
            "as_owner": str(doc["name"]).startswith("owner:"),
            "identity": doc["public_sign_key"],
        }
        out(json.dumps(row) if args.json else f"{name:24s} {row['identity']}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _store(args.config).revoke(args.name)
    out(f"revoked token {args.name}: it stops working at once")
    return 0
