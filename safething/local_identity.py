"""The user's identity file on this machine: where it is, how its password is asked.

Shared by the command line and the gateway (which loads its owner identity
the same way), so neither imports the other.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import platformdirs

from safething.errors import IdentityError, WrongPasswordError
from safething.net import Identity

__all__ = [
    "ENV_IDENTITY",
    "ENV_PASSWORD",
    "default_identity_path",
    "load_identity",
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
