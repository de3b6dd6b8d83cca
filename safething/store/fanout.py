"""One store watch handed out as many narrow ones: a gateway's things on two watches.

A gateway runs a thing per device; each thing follows its inbox (requests) and its
status entry. On NATS every watch is a JetStream consumer kept by the server, which
matches every stored message against the consumers of its stream: 10,000 things
would keep 20,000. A :class:`WatchFanout` opens **one** watch over what all of them
follow (every inbox: the prefix ``md.27418.``; every thing's status entry: the
pattern ``md.27417.*.e.<hex of "status">``) and hands each thing a
:class:`~safething.store.base.Watch` of its own part (:meth:`WatchFanout.watch`, by
prefix), fed from that one watch. Changes no branch claims go to the
:meth:`WatchFanout.unclaimed` branches (the gateway wakes a dormant thing with them).

Guarantees, as a watch of its own would give them:

* A branch delivers, in revision order, every change under its prefix that the
  shared watch delivers after the branch was opened. Since the shared watch is live
  before any branch is opened (:meth:`WatchFanout.start` waits for that), nothing
  committed after :meth:`WatchFanout.watch` returns is missed. A change committed
  shortly *before* may still come (the shared watch had not delivered it yet): the
  MD layer drops an entry older than one it has seen, and a thing reads its inbox
  after opening the watch anyway.
* A branch that falls behind keeps only the latest change of each key (as the store
  contract allows), so its memory is bounded by the keys under its prefix, and a slow
  branch never holds up the others.
* When the shared watch fails (a store outage, a lost connection the backend did not
  recover), it is opened again with ``since`` at the last revision it delivered, so
  the branches miss nothing and see nothing twice; the branches themselves do not
  notice. If it failed before delivering anything it is replayed from the start of
  what the store remembers (``since=0``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Self

from safething.errors import StoreError
from safething.resource import AsyncResource, cancel_and_wait
from safething.store.base import Change, Store, Watch, check_pattern, check_prefix
from safething.store.feed import resolve

__all__ = ["WatchFanout"]

log = logging.getLogger(__name__)

_RETRY_MAX_S = 2.0
"""Longest wait before the shared watch is opened again after a failure."""


class WatchFanout(AsyncResource):
    """One watch on ``prefix`` (or on keys matching ``pattern``), split by the first
    ``depth`` tokens of each key among branches opened with :meth:`watch`.

    ``depth`` is the number of tokens of a branch's prefix: 3 for an MD
    (``md.<tag>.<name>.``). :meth:`start` (or ``async with``) before opening branches.
    """

    def __init__(
        self,
        store: Store,
        *,
        prefix: str | None = None,
        pattern: str | None = None,
        depth: int,
        name: str = "fanout",
    ) -> None:
        if (prefix is None) == (pattern is None):
            raise ValueError("give exactly one of prefix= or pattern=")
        if prefix is not None:
            check_prefix(prefix)
        if pattern is not None:
            check_pattern(pattern)
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._store = store
        self._prefix = prefix
        self._pattern = pattern
        self._depth = depth
        self._name = name
        self._branches: dict[str, set[_Branch]] = {}
        self._unclaimed: set[_Branch] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: int | None = None
        """Revision of the last change the shared watch delivered."""
        self._closed = False
        self.reopened = 0
        """How many times the shared watch was opened again after a failure."""

    def _open(self, since: int | None) -> Watch:
        if self._pattern is not None:
            return self._store.watch_pattern(self._pattern, since=since)
        assert self._prefix is not None
        return self._store.watch(self._prefix, since=since)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Open the shared watch and wait until it is live (idempotent)."""
        if self._task is not None or self._closed:
            return
        watch = self._open(None)
        try:
            await watch.__aenter__()
        except BaseException:
            await watch.close()
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._run(watch), name=f"watch-fanout:{self._name}"
        )

    def watch(self, prefix: str) -> Watch:
        """The changes under ``prefix`` (``depth`` tokens) from now on, as a watch."""
        check_prefix(prefix)
        if prefix.count(".") != self._depth:
            raise ValueError(f"a branch of this fanout has a prefix of {self._depth} tokens")
        self._need_started()
        branch = _Branch(self, prefix)
        if self._task is None or self._task.done():
            branch._end()
        else:
            self._branches.setdefault(prefix, set()).add(branch)
        return branch

    def unclaimed(self) -> Watch:
        """The changes that no branch opened with :meth:`watch` claims, as a watch."""
        self._need_started()
        branch = _Branch(self, None)
        if self._task is None or self._task.done():
            branch._end()
        else:
            self._unclaimed.add(branch)
        return branch

    @property
    def branches(self) -> int:
        """Branches open now (:meth:`watch` and :meth:`unclaimed`)."""
        return sum(len(s) for s in self._branches.values()) + len(self._unclaimed)

    def _need_started(self) -> None:
        if self._task is None and not self._closed:
            raise StoreError(f"watch fanout {self._name!r} is not started")

    def _forget(self, branch: _Branch) -> None:
        if branch.prefix is None:
            self._unclaimed.discard(branch)
            return
        group = self._branches.get(branch.prefix)
        if group is not None:
            group.discard(branch)
            if not group:
                del self._branches[branch.prefix]

    def _dispatch(self, change: Change) -> None:
        self._last = change.revision
        key = change.key
        cut = -1
        for _ in range(self._depth):
            cut = key.find(".", cut + 1)
            if cut < 0:
                break
        group = self._branches.get(key[: cut + 1]) if cut >= 0 else None
        for branch in group or self._unclaimed:
            branch._put(change)

    async def _run(self, first: Watch) -> None:
        watch: Watch | None = first
        failures = 0
        delay = 0.0
        try:
            while True:
                try:
                    if watch is None:
                        watch = self._open(0 if self._last is None else self._last)
                    async with watch:  # entered again: a no-op for the first one
                        async for change in watch:
                            failures = 0
                            self._dispatch(change)
                    return  # the store was closed
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    failures += 1
                    delay = min(0.1 * 2 ** min(failures, 5), _RETRY_MAX_S)
                    log.warning(
                        "the shared watch %s failed (%s); opened again in %.1f s",
                        self._name,
                        e,
                        delay,
                    )
                watch = None
                self.reopened += 1
                await asyncio.sleep(delay)
        finally:
            for branch in self._all():
                branch._end()

    def _all(self) -> list[_Branch]:
        return [b for group in self._branches.values() for b in group] + list(self._unclaimed)

    async def close(self) -> None:
        """Stop the shared watch; every branch ends (after what it holds)."""
        if self._closed:
            return
        self._closed = True
        cancelled = await cancel_and_wait(self._task, log=log)
        for branch in self._all():
            branch._end()
        if cancelled:  # the caller's cancellation, passed on now that all has ended
            raise asyncio.CancelledError


class _Branch(Watch):
    """One consumer's share of a :class:`WatchFanout`: the latest change of each key,
    in revision order."""

    def __init__(self, fanout: WatchFanout, prefix: str | None) -> None:
        self._fanout = fanout
        self.prefix = prefix
        self._pending: OrderedDict[str, Change] = OrderedDict()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._closed = False

    def _put(self, change: Change) -> None:
        self._pending.pop(change.key, None)  # a newer change of the key replaces it
        self._pending[change.key] = change
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            resolve(self._waiter)

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                return self._pending.popitem(last=False)[1]
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._fanout._forget(self)
        self._wake()
