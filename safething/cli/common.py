"""What the CLI subcommands share: options, identity, password, store."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

import platformdirs

from safething.errors import IdentityError, WrongPasswordError
from safething.net import Identity, PublicSignKey, SecretKey
from safething.store import Store, default_store_url, open_store

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


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="store URL: memory://, sqlite:///path/vault.db (default: $SAFETHING_STORE "
        f"or {default_store_url()})",
    )


def add_identity_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--identity",
        metavar="PATH",
        type=Path,
        default=None,
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


async def open_cli_store(url: str | None) -> Store:
    return await open_store(url)


def parse_owner(text: str | None) -> PublicSignKey | None:
    return None if not text else PublicSignKey.from_hex(text)


def parse_secret(text: str | None) -> SecretKey | None:
    return None if not text else SecretKey.from_hex(text)


def out(text: str = "") -> None:
    """Print to stdout (one place, so tests can capture it)."""
    print(text, flush=True)
