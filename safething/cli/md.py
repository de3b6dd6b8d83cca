"""``safething md ls|create|get|put|rm``: inspect and edit MutableData by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

from safething.cli.common import (
    add_identity_option,
    add_store_option,
    load_identity,
    open_cli_store,
    out,
    parse_owner,
    parse_secret,
)
from safething.errors import TamperedDataError
from safething.net import ANYONE, Action, Client, Entry, MDAddress, MDHeader, XorName

__all__ = ["parse_address", "register"]


def parse_address(text: str) -> MDAddress:
    """``NAME:TAG`` where NAME is 64 hex characters or any text (hashed to a XorName)."""
    name, sep, tag = text.rpartition(":")
    if not sep or not name or not tag.isdigit():
        raise ValueError(f"bad MD address {text!r}: write NAME:TAG, e.g. thing-0001:27417")
    xor = XorName.from_hex(name) if len(name) == 64 and _is_hex(name) else XorName.of(name)
    return MDAddress(xor, int(tag))


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _show(value: bytes | None) -> str:
    if value is None:
        return "<deleted>"
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return text if text.isprintable() else "0x" + value.hex()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("md", help="inspect and edit MutableData (verified on every read)")
    msub = p.add_subparsers(dest="md_command", required=True, metavar="COMMAND")

    ls = msub.add_parser("ls", help="list the MDs in the store")
    add_store_option(ls)
    ls.add_argument("--tag", type=int, default=None, help="only this type tag")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    ls.set_defaults(func=cmd_ls, is_async=True)

    cr = msub.add_parser("create", help="create an MD owned by your identity")
    cr.add_argument("address", help="NAME:TAG (NAME: 64 hex chars, or text that is hashed)")
    cr.add_argument("--private", action="store_true", help="encrypt keys and values")
    cr.add_argument("--public-read", action="store_true", help="grant read to anyone")
    cr.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="KEY=PERMS",
        help="grant a public sign key (hex, or 'anyone') e.g. anyone=read,insert; repeatable",
    )
    add_store_option(cr)
    add_identity_option(cr)
    cr.set_defaults(func=cmd_create, is_async=True)

    get = msub.add_parser("get", help="show an MD, or one entry of it, after verifying it")
    get.add_argument("address", help="NAME:TAG")
    get.add_argument("key", nargs="?", help="only this entry")
    get.add_argument("--secret", help="hex key of a private MD")
    get.add_argument("--owner", help="expected owner's public sign key (hex)")
    get.add_argument("--deleted", action="store_true", help="show deleted entries too")
    get.add_argument("--json", action="store_true", help="print JSON")
    add_store_option(get)
    get.set_defaults(func=cmd_get, is_async=True)

    put = msub.add_parser("put", help="insert or update an entry, signed by your identity")
    put.add_argument("address", help="NAME:TAG")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--secret", help="hex key of a private MD")
    add_store_option(put)
    add_identity_option(put)
    put.set_defaults(func=cmd_put, is_async=True)

    rm = msub.add_parser("rm", help="delete an entry (a signed tombstone)")
    rm.add_argument("address", help="NAME:TAG")
    rm.add_argument("key")
    rm.add_argument("--secret", help="hex key of a private MD")
    add_store_option(rm)
    add_identity_option(rm)
    rm.set_defaults(func=cmd_rm, is_async=True)


def _grants(args: argparse.Namespace) -> dict[Any, Action]:
    from safething.net import PublicSignKey

    grants: dict[Any, Action] = {}
    if args.public_read:
        grants[ANYONE] = Action.READ
    for item in args.grant:
        who, sep, perms = item.partition("=")
        if not sep:
            raise ValueError(f"bad --grant {item!r}: write KEY=PERMS, e.g. anyone=read")
        grantee = ANYONE if who == ANYONE else PublicSignKey.from_hex(who)
        grants[grantee] = grants.get(grantee, Action.NONE) | Action.parse(perms)
    return grants


async def cmd_ls(args: argparse.Namespace) -> int:
    async with await open_cli_store(args.store) as store:
        client = Client(store)
        addresses = await client.list_mds(args.tag)
        for address in addresses:
            count, size = await client.md(address.name, address.tag).usage()
            if args.json:
                row = {"address": str(address), "tag": address.tag, "entries": count, "bytes": size}
                out(json.dumps(row))
            else:
                out(f"{address}  {count:5d} entries  {size:8d} bytes")
        if not args.json:
            out(f"{len(addresses)} MutableData in {store.url}")
    return 0


async def cmd_create(args: argparse.Namespace) -> int:
    address = parse_address(args.address)
    identity = load_identity(args.identity)
    async with await open_cli_store(args.store, create=True) as store:
        md = await Client(store, identity).create_md(
            address.name, address.tag, private=args.private, permissions=_grants(args)
        )
    out(f"created MD {address}")
    if md.secret is not None:
        out(f"secret key (keep it; needed to read this private MD): {md.secret.hex()}")
    return 0


def _header_dict(header: MDHeader) -> dict[str, Any]:
    return {
        "address": str(header.address),
        "owners": [o.hex() for o in header.owners],
        "permissions": header.permissions.describe(),
        "permission_version": header.version,
        "private": header.private,
    }


def _entry_dict(entry: Entry) -> dict[str, Any]:
    return {
        "key": _show(entry.key),
        "value": _show(entry.value),
        "version": entry.version,
        "signer": entry.signer.hex(),
    }


async def cmd_get(args: argparse.Namespace) -> int:
    address = parse_address(args.address)
    rejected: list[TamperedDataError] = []
    async with await open_cli_store(args.store) as store:
        client = Client(store, on_tampered=rejected.append)
        md = client.md(
            address.name,
            address.tag,
            secret=parse_secret(args.secret),
            owner=parse_owner(args.owner),
        )
        header = await md.header()
        if args.key is not None:
            entries = {args.key.encode(): await md.get(args.key, include_deleted=args.deleted)}
        else:
            entries = await md.entries(include_deleted=args.deleted, skip_tampered=True)
    if args.json:
        doc = _header_dict(header)
        doc["entries"] = [_entry_dict(e) for _, e in sorted(entries.items())]
        doc["rejected"] = [str(e) for e in rejected]
        out(json.dumps(doc))
    else:
        h = _header_dict(header)
        out(f"MD {h['address']}  ({'private' if header.private else 'public'})")
        out(f"  owners:      {', '.join(h['owners'])}")
        out(f"  permissions: v{header.version} {json.dumps(h['permissions'])}")
        for _, entry in sorted(entries.items()):
            out(
                f"  {_show(entry.key)} = {_show(entry.value)}  (v{entry.version}, "
                f"signed {entry.signer.hex()[:16]}...)"
            )
        for error in rejected:
            out(f"  REJECTED: {error}")
    return 3 if rejected else 0


async def cmd_put(args: argparse.Namespace) -> int:
    address = parse_address(args.address)
    identity = load_identity(args.identity)
    async with await open_cli_store(args.store) as store:
        md = Client(store, identity).md(address.name, address.tag, secret=parse_secret(args.secret))
        entry = await md.put(args.key, args.value)
    out(f"{args.key} = {_show(entry.value)}  (version {entry.version})")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    address = parse_address(args.address)
    identity = load_identity(args.identity)
    async with await open_cli_store(args.store) as store:
        md = Client(store, identity).md(address.name, address.tag, secret=parse_secret(args.secret))
        entry = await md.delete(args.key)
    out(f"deleted {args.key} (version {entry.version})")
    return 0
