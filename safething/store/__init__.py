"""Where bytes live: one small async interface, backends chosen by URL."""

from safething.store.base import Change, Guard, Quota, Record, Store, StoreInfo, Watch, Write
from safething.store.fanout import WatchFanout
from safething.store.urls import ENV_VAR, default_store_url, open_store

__all__ = [
    "ENV_VAR",
    "Change",
    "Guard",
    "Quota",
    "Record",
    "Store",
    "StoreInfo",
    "Watch",
    "WatchFanout",
    "Write",
    "default_store_url",
    "open_store",
]
