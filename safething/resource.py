"""Ownership helpers: ``async with`` for what must be closed, and owned background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self

__all__ = ["AsyncResource", "Tasks"]


class AsyncResource:
    """Mixin: ``async with x:`` closes ``x`` on the way out (``close`` is idempotent)."""

    async def close(self) -> None:
        """Release what this object holds."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Tasks:
    """Named background tasks owned by one object; :meth:`cancel_all` on its close.

    ``prefix`` is put before each task's name; with ``log``, a task that ends
    with an exception is logged there (nothing else would see it).
    """

    def __init__(self, prefix: str = "", *, log: logging.Logger | None = None) -> None:
        self.prefix = prefix
        self.log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.prefix}{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.log is not None:
            task.add_done_callback(self._report)
        return task

    def _report(self, task: asyncio.Task[Any]) -> None:
        if self.log is not None and not task.cancelled() and task.exception() is not None:
            self.log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def __len__(self) -> int:
        return len(self._tasks)
