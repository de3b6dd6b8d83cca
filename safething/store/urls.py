"""Choose a store backend by URL: ``memory://``, ``sqlite:///path``, ``nats://host:port``
(``tls://host:port`` for NATS over TLS; options in :mod:`safething.store.nats`).

The URL comes from the caller, else ``$SAFETHING_STORE``, else the embedded
SQLite file under the user's data directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import platformdirs

from safething.errors import StoreURLError
from safething.store.base import Store

__all__ = ["ENV_VAR", "default_store_url", "open_store", "sqlite_path_from_url"]

ENV_VAR = "SAFETHING_STORE"


def default_store_url() -> str:
    """``$SAFETHING_STORE`` if set, else ``sqlite:///<user data dir>/vault.db``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    data_dir = Path(platformdirs.user_data_dir("safething", appauthor=False))
    return f"sqlite://{data_dir / 'vault.db'}"


def sqlite_path_from_url(url: str) -> tuple[Path, dict[str, str]]:
    """Split ``sqlite:///abs/path.db?synchronous=full`` into a path and options.

    ``~`` and ``$VARIABLES`` in the path are expanded, so the default written
    out (``sqlite:///~/.local/share/safething/vault.db``) and
    ``sqlite:///$HOME/vault.db`` name the file in the home directory.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise StoreURLError(f"not a sqlite URL: {url!r}")
    netloc, path = parts.netloc, parts.path
    if netloc.startswith(("~", "$")):  # sqlite://~/vault.db: the user's path, not a host
        netloc, path = "", netloc + path
    if netloc not in ("", "localhost"):
        raise StoreURLError(
            f"sqlite URL {url!r} reads as host {netloc!r}: write an absolute path after "
            f"three slashes, e.g. sqlite:///{netloc}{path}"
        )
    if path.startswith(("/~", "/$")):  # sqlite:///~/x.db, sqlite:///$HOME/x.db
        path = path[1:]
    path = os.path.expanduser(os.path.expandvars(path))
    if not path or path == "/" or path.endswith("/"):
        raise StoreURLError(f"sqlite URL {url!r} has no file name (sqlite:///path/vault.db)")
    if "$" in path:
        raise StoreURLError(f"sqlite URL {url!r}: an environment variable in it is not set")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return Path(path), options


async def open_store(url: str | None = None) -> Store:
    """Open the store named by ``url`` (see module docstring). Close it when done
    (``async with await open_store(...) as store``)."""
    url = url or default_store_url()
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from safething.store.memory import MemoryStore

        return MemoryStore(url)
    if scheme == "sqlite":
        from safething.store.sqlite import SQLiteStore

        path, options = sqlite_path_from_url(url)
        return await SQLiteStore.open(url, path, **options)
    if scheme in ("nats", "tls"):
        from safething.store.nats import NatsStore

        return await NatsStore.open(url)
    raise StoreURLError(
        f"unknown store URL {url!r}: use memory://, sqlite:///path/vault.db or nats://host:4222"
    )
