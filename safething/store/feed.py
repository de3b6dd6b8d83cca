"""A watch that pulls changes from its store when woken: shared by the backends.

The backend supplies how to read the changes after a revision
(:meth:`FeedWatch._fetch`), how long to wait before a safety-net re-check
(``interval``) and what to release on close (:meth:`FeedWatch._release`);
its commit path calls :meth:`FeedWatch.wake`.

A watch reads only when something may be unread: at first, after a wake-up
(a commit, a doorbell, the safety net, its timer), and after a batch that the
backend did not mark as reaching the end of its log (``_caught_up``). A
consumer that takes a batch of changes nobody wants (a thing's status follower
sees its own readings go by) thus costs one read per commit, not two.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

from safething.store.base import Change, Watch

__all__ = ["FeedWatch", "WatchSet", "resolve"]


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class FeedWatch(Watch):
    """Delivers changes under ``prefix`` after revision ``after``, in order."""

    def _interval_s(self) -> float | None:
        """Seconds to wait for a wake-up before re-reading anyway; None: no timer of its
        own (the backend runs one safety net for all its watches)."""
        return self._interval

    def __init__(
        self,
        prefix: str,
        after: int,
        *,
        interval: float,
        match: Callable[[str], object] | None = None,
    ) -> None:
        self._prefix = prefix
        self._match = match
        """The keys under ``prefix`` whose commits wake this watch (None: all of them);
        what it reads is the backend's to filter."""
        self._after = after
        self._interval = interval
        self._pending: list[Change] = []
        self._next = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._unread = True
        """Something may have been committed after the last read (or nothing was read)."""
        self._caught_up = False
        """Set by :meth:`_fetch`: its batch reached the last change in the log, so the
        next read can wait for a wake-up. Left False, the watch reads again at once."""

    @abstractmethod
    def _fetch(self, prefix: str, after: int) -> tuple[list[Change], int]:
        """Changes under ``prefix`` after ``after`` and the new position."""

    def _release(self) -> None:
        """Backend hook: forget this watch (called once, on close)."""

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def __anext__(self) -> Change:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._next < len(self._pending):
                change = self._pending[self._next]
                self._next += 1
                return change
            if not self._unread:
                await self._wait()
                continue
            self._unread = self._caught_up = False
            seen = self._after
            self._pending, self._after = self._fetch(self._prefix, self._after)
            self._next = 0
            if (self._pending or self._after != seen) and not self._caught_up:
                self._unread = True  # a bounded batch: there may be more

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        interval = self._interval_s()
        timer = None if interval is None else loop.call_later(interval, resolve, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
            self._unread = True  # woken, or its timer ran out: read

    def wake(self) -> None:
        """Something was committed: re-read on the next iteration."""
        self._unread = True
        if self._waiter is not None:
            resolve(self._waiter)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending = []
        self._release()
        self.wake()


class WatchSet:
    """A store's open watches, indexed by prefix, so that a commit wakes only the
    watches whose prefix covers a written key (a gateway holds thousands)."""

    def __init__(self) -> None:
        self._by_prefix: dict[str, set[FeedWatch]] = {}
        self._filtered: dict[str, set[FeedWatch]] = {}
        """Watches woken only by the keys their ``_match`` takes (a key pattern), by
        prefix as well: a commit tests only those whose prefix covers a key it wrote
        (each was tested against every written key, a regular expression per watch and
        key: a thing's status follower, and every other thing's, on each reading)."""
        self._lengths: dict[int, int] = {}
        """The lengths of the watches' prefixes -> how many watches have one that long:
        a commit looks up a written key's prefixes of those lengths only (a gateway's
        watches have a few: every MD address is as long as the others)."""

    def add(self, watch: FeedWatch) -> None:
        index = self._by_prefix if watch._match is None else self._filtered
        group = index.setdefault(watch._prefix, set())
        if watch not in group:
            group.add(watch)
            size = len(watch._prefix)
            self._lengths[size] = self._lengths.get(size, 0) + 1

    def discard(self, watch: FeedWatch) -> None:
        for index in (self._by_prefix, self._filtered):
            group = index.get(watch._prefix)
            if group is not None and watch in group:
                group.discard(watch)
                if not group:
                    del index[watch._prefix]
                size = len(watch._prefix)
                left = self._lengths[size] - 1
                if left:
                    self._lengths[size] = left
                else:
                    del self._lengths[size]

    def __iter__(self) -> Iterator[FeedWatch]:
        for index in (self._by_prefix, self._filtered):
            for group in list(index.values()):
                yield from list(group)

    def __len__(self) -> int:
        return sum(len(g) for g in self._by_prefix.values()) + sum(
            len(g) for g in self._filtered.values()
        )

    def __bool__(self) -> bool:
        return bool(self._by_prefix) or bool(self._filtered)

    def wake_all(self) -> None:
        for watch in self:
            watch.wake()

    def wake_for(self, keys: Iterable[str]) -> None:
        """Wake the watches whose prefix is ``""`` or a ``.``-prefix of one of ``keys``
        (a filtered watch: of one of ``keys`` it takes)."""
        by_prefix, filtered = self._by_prefix, self._filtered
        # A key's prefixes only as long as a watch's: not each of its ``.``-prefixes
        # (six in a thing's entry key, most of them nobody watches).
        lengths = sorted(self._lengths)
        woken: set[str] = set()
        for key in keys:
            for end in lengths:
                if end and key[end - 1 : end] != ".":
                    continue  # (also: the key is shorter)
                prefix = key[:end]
                if prefix not in woken and prefix in by_prefix:
                    woken.add(prefix)
                    for watch in by_prefix[prefix]:
                        watch.wake()
                matching = filtered.get(prefix)
                if matching is not None:
                    for watch in matching:
                        match = watch._match
                        assert match is not None
                        if match(key):
                            watch.wake()
