"""Store watches shared by the things one process runs (a gateway's custodial things).

A running thing follows two things in the store: its inbox (requests, desired values)
and its status entry (the owner may publish or disable it). On its own it opens a
store watch for each; on NATS each is a consumer kept by the server. Things given one
:class:`SharedWatches` (``Thing(..., shared=...)``) instead take a branch of one of
two store-wide watches (:class:`~safething.store.fanout.WatchFanout`): every inbox,
and every thing's status entry. A process then holds two watches however many things
it runs. What a thing does with the changes is unchanged: it verifies each entry as
it would from a watch of its own.
"""

from __future__ import annotations

import asyncio
from typing import Self

from safething.resource import AsyncResource
from safething.store import Store, Watch, WatchFanout
from safething.things import layout
from safething.things.layout import ThingAddresses

__all__ = ["INBOX_PREFIX", "STATUS_PATTERN", "SharedWatches"]

INBOX_PREFIX = f"md.{layout.TAG_INBOX}."
"""Store-key prefix of every thing's inbox MD."""
STATUS_PATTERN = f"md.{layout.TAG_THING}.*.e.{layout.STATUS.hex()}"
"""Store keys of every thing's status entry (the thing MD is public: its entry keys
are stored in hex)."""


class SharedWatches(AsyncResource):
    """Two store watches (every inbox, every status entry) for all the things given it.

    ``async with SharedWatches(store) as shared:`` (or :meth:`start` and
    :meth:`close`), then ``Thing(..., store=store, shared=shared)``: the same store
    object for all of them.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.inboxes = WatchFanout(store, prefix=INBOX_PREFIX, depth=3, name="inboxes")
        """Every inbox; :meth:`WatchFanout.unclaimed` has the writes into inboxes of
        things not running here."""
        self.statuses = WatchFanout(store, pattern=STATUS_PATTERN, depth=3, name="statuses")
        """Every thing's status entry."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Open both watches; they are live when this returns. Both start at once: with
        the store unreachable each waits up to the store's own timeout (a NATS URL's
        ``timeout``), and one after the other a gateway would wait twice that."""
        started = await asyncio.gather(
            self.inboxes.start(), self.statuses.start(), return_exceptions=True
        )
        failed = next((r for r in started if isinstance(r, BaseException)), None)
        if failed is not None:
            await self.statuses.close()
            await self.inboxes.close()
            raise failed

    def inbox(self, addresses: ThingAddresses) -> Watch:
        """Changes of the thing's inbox MD from now on."""
        return self.inboxes.watch(addresses.inbox.prefix)

    def status(self, addresses: ThingAddresses) -> Watch:
        """Changes of the thing's status entry from now on (nothing else of its MD)."""
        return self.statuses.watch(addresses.thing.prefix)

    async def close(self) -> None:
        await self.statuses.close()
        await self.inboxes.close()
