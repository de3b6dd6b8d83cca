"""A stream of writes and a watch on it, running while a test breaks the store's servers."""

from __future__ import annotations

import asyncio
from types import TracebackType

from safething.store import Change, Store


class WritesAndWatch:
    """``async with WritesAndWatch(writer, reader, "w.") as run:`` puts ``w.00000``,
    ``w.00001``... one after another (``gap`` seconds apart) and follows ``w.`` with a
    watch from the start, in background tasks stopped and awaited on exit."""

    def __init__(self, writer: Store, reader: Store, prefix: str, *, gap: float = 0.0) -> None:
        self.writer = writer
        self.reader = reader
        self.prefix = prefix
        self.gap = gap
        self.acked: list[tuple[str, int]] = []
        """(key, revision) of every write the store acknowledged, in order."""
        self.seen: list[Change] = []
        """What the watch delivered, in order."""
        self.slowest = 0.0
        """The longest one write waited for its acknowledgement (seconds)."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> WritesAndWatch:
        self._tasks = [
            asyncio.create_task(self._write(), name="writer"),
            asyncio.create_task(self._watch(), name="subscriber"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        while not self._stop.is_set():
            key = f"{self.prefix}{i:05d}"
            began = loop.time()
            self.acked.append((key, await self.writer.put(key, f"reading {i}".encode())))
            self.slowest = max(self.slowest, loop.time() - began)
            i += 1
            if self.gap:
                await asyncio.sleep(self.gap)

    async def _watch(self) -> None:
        async with self.reader.watch(self.prefix, since=0) as feed:
            async for change in feed:
                self.seen.append(change)

    async def wait_acked(self, count: int, timeout: float) -> None:
        """Until ``count`` writes are acknowledged; the writer must not have failed."""
        async with asyncio.timeout(timeout):
            while len(self.acked) < count:
                assert not self._tasks[0].done(), self._tasks[0]
                await asyncio.sleep(0.02)

    async def stop_writing(self, timeout: float) -> None:
        self._stop.set()
        await asyncio.wait_for(self._tasks[0], timeout)

    async def check_nothing_lost(self, timeout: float) -> None:
        """Every acknowledged write is readable with its revision, and the watch saw each
        once, in order."""
        for key, revision in self.acked:
            record = await self.reader.get(key)
            assert record is not None, key
            assert record.revision == revision, key
        async with asyncio.timeout(timeout):
            while len(self.seen) < len(self.acked):
                await asyncio.sleep(0.05)
        assert [(c.key, c.revision) for c in self.seen] == self.acked
