"""What the CLI subcommands share: options, identity, password, store."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

import platformdirs

from safething.errors import IdentityError, StoreError, WrongPasswordError
from safething.net import Identity, PublicSignKey, SecretKey
from safething.store import ENV_VAR as ENV_STORE
from safething.store import Store, default_store_url, open_store
from safething.store.registry import sqlite_path_from_url

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

ENV_IDENTITY = "SAFETHING_IDENTITY"
ENV_PASSWORD = "SAFETHING_PASSWORD"


def default_identity_path() -> Path:
    """``$SAFETHING_IDENTITY``, else ``identity.json`` in the user's config dir."""
    env = os.environ.get(ENV_IDENTITY, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("safething", appauthor=False)) / "identity.json"


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


def read_password(*, confirm: bool = False, prompt: str = "Password: ") -> str | None:
    """``$SAFETHING_PASSWORD``, else ask on the terminal; None when there is no terminal."""
    env = os.environ.get(ENV_PASSWORD)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        return None
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat password: ") != first:
        raise IdentityError("the two passwords differ")
    return first


def load_identity(path: Path | None) -> Identity:
    """Load the identity, asking for its password only if the file needs one."""
    target = path or default_identity_path()
    if Identity.read_public(target)["encrypted"]:
        password = read_password(prompt=f"Password for {target}: ")
        if password is None:
            raise WrongPasswordError(
                f"{target} is password-protected: set ${ENV_PASSWORD} or run in a terminal"
            )
        return Identity.load(target, password=password)
    return Identity.load(target)


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
