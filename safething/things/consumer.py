"""Deprecated: :class:`ThingClient` and its companions live in :mod:`safething.things.client`
(``from safething.things import ThingClient`` is the public way)."""

import warnings

from safething.things.client import (
    FINAL_STATES,
    ActionHandle,
    ActionStatus,
    Subscription,
    ThingClient,
    ThingView,
    level_of,
)

warnings.warn(
    "safething.things.consumer is now safething.things.client", DeprecationWarning, stacklevel=2
)

__all__ = [
    "FINAL_STATES",
    "ActionHandle",
    "ActionStatus",
    "Subscription",
    "ThingClient",
    "ThingView",
    "level_of",
]
