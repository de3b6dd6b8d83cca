"""Deprecated: choosing a store by URL is :mod:`safething.store.urls` (the gateway's
device registry is ``safething_gateway.registry``; one name, one idea)."""

import warnings

from safething.store.urls import ENV_VAR, default_store_url, open_store, sqlite_path_from_url

warnings.warn(
    "safething.store.registry is now safething.store.urls", DeprecationWarning, stacklevel=2
)

__all__ = ["ENV_VAR", "default_store_url", "open_store", "sqlite_path_from_url"]
