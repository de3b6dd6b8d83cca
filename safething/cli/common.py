"""What the CLI subcommands share: options, identity, password, store."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from safething.errors import StoreError
from safething.local_identity import (
    ENV_IDENTITY,
    ENV_PASSWORD,
    default_identity_path,
    load_identity,
    read_password,
)
from safething.net import PublicSignKey, SecretKey
from safething.store import ENV_VAR as ENV_STORE
from safething.store import Store, default_store_url, open_store
from safething.store.urls import sqlite_path_from_url

__all__ = [
    "ENV_IDENTITY",
    "ENV_PASSWORD",
    "add_identity_option",
    "add_store_option",
    "default_identity_path",
    "load_identity",
    "open_cli_store",
    "out",
    "parse_owner",
    "parse_secret",
    "read_password",
]


def add_store_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--store URL``. Accepted before the subcommand too (``top``: the main parser, whose
    default None stands; a subcommand's copy only overrides it when given)."""
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None if top else argparse.SUPPRESS,
        help="store URL: memory://, sqlite:///path/vault.db (default: $SAFETHING_STORE "
        f"or {default_store_url()})",
    )


def add_identity_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    parser.add_argument(
        "--identity",
        metavar="PATH",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help=f"identity file (default: ${ENV_IDENTITY} or {default_identity_path()})",
    )


def _vault_file(url: str) -> Path | None:
    """The SQLite file a store URL names (``~`` and variables expanded), None for others."""
    if not url.startswith("sqlite:"):
        return None
    return sqlite_path_from_url(url)[0].absolute()


async def open_cli_store(url: str | None, *, create: bool = False) -> Store:
    """Open the store a command names. Reading (``create`` False) refuses a vault that does
    not exist, so a mistyped URL is an error rather than an empty vault; writing creates the
    file, but makes directories only for the default vault, never for a path given."""
    chosen = url or os.environ.get(ENV_STORE, "").strip() or None
    target = chosen or default_store_url()
    path = _vault_file(target)
    if path is not None and not path.exists():
        if not create:
            hint = f" (from ${ENV_STORE})" if url is None and chosen else ""
            raise StoreError(
                f"no vault at {path}{hint}; check the URL, or create one by writing to it, "
                "e.g. `safething demo` or `safething md create NAME`"
            )
        if chosen is not None and not path.parent.is_dir():
            raise StoreError(
                f"cannot create a vault at {path}: the directory {path.parent} does not exist "
                "(create it first, or check the URL)"
            )
    return await open_store(target)


def parse_owner(text: str | None) -> PublicSignKey | None:
    return None if not text else PublicSignKey.from_hex(text)


def parse_secret(text: str | None) -> SecretKey | None:
    return None if not text else SecretKey.from_hex(text)


def out(text: str = "") -> None:
    """Print to stdout (one place, so tests can capture it)."""
    print(text, flush=True)
