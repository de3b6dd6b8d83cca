"""``safething identity create|show``."""

from __future__ import annotations

import argparse
import json

from safething.cli.common import (
    add_identity_option,
    default_identity_path,
    out,
    read_password,
)
from safething.net import Identity

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("identity", help="create or show the identity this machine signs with")
    isub = p.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")

    c = isub.add_parser("create", help="create a new identity file (mode 0600)")
    add_identity_option(c)
    c.add_argument("--name", default="", help="a label for people, e.g. the host name")
    c.add_argument(
        "--password",
        action="store_true",
        help="encrypt the keys with a password (argon2id); asked on the terminal "
        "or taken from $SAFETHING_PASSWORD",
    )
    c.add_argument("--force", action="store_true", help="replace an existing identity file")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=create)

    s = isub.add_parser("show", help="print the public keys of the identity (no password needed)")
    add_identity_option(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=show)


def create(args: argparse.Namespace) -> int:
    path = args.identity or default_identity_path()
    password = None
    if args.password:
        password = read_password(confirm=True)
        if not password:
            raise ValueError(
                "--password needs a password: set $SAFETHING_PASSWORD or use a terminal"
            )
    identity = Identity.generate(args.name)
    saved = identity.save(path, password=password, overwrite=args.force)
    return _print(saved, args.json, created=True)


def show(args: argparse.Namespace) -> int:
    return _print(args.identity or default_identity_path(), args.json, created=False)


def _print(path: object, as_json: bool, *, created: bool) -> int:
    info = Identity.read_public(str(path))
    info["path"] = str(path)
    if as_json:
        out(json.dumps(info))
        return 0
    if created:
        out(f"created identity {path}")
    out(f"name:                  {info['name'] or '-'}")
    out(f"public sign key:       {info['public_sign_key']}")
    out(f"public encryption key: {info['public_encryption_key']}")
    out(f"password-protected:    {'yes' if info['encrypted'] else 'no'}")
    out(f"file:                  {path}")
    return 0
