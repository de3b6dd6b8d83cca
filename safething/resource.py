"""Ownership helpers: ``async with`` for what must be closed, and owned background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Coroutine
from types import TracebackType
from typing import Any, Self

__all__ = ["AsyncResource", "Tasks", "cancel_and_wait", "wait_ended"]


async def wait_ended(tasks: Collection[asyncio.Future[Any]]) -> bool:
    """Wait until every one of ``tasks`` has ended, even when the caller is cancelled
    meanwhile; True if it was. A cleanup that waits for tasks it cancelled goes on to
    its end and then raises :class:`asyncio.CancelledError` itself: swallowed (as
    ``with suppress(CancelledError): await task`` does when the caller is the one
    cancelled), the caller's owner would wait for it forever; raised at once, the
    cleanup would stop halfway."""
    pending = {task for task in tasks if not task.done()}
    cancelled = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True
    for task in tasks:
        # Each outcome taken, as ``await task`` takes it: a cancelled task keeps its
        # CancelledError until then, whose traceback holds the task's own step frame,
        # a cycle that keeps the task and all its coroutine referred to (a thing) alive
        # until a collection; never, once frozen (the gateway's gc.freeze()).
        with contextlib.suppress(BaseException):
            task.result()
    return cancelled


async def cancel_and_wait(
    *tasks: asyncio.Future[Any] | None, log: logging.Logger | None = None
) -> bool:
    """Cancel each of ``tasks`` (``None`` passed over) and wait until each has ended;
    True if the caller was cancelled meanwhile, which then raises
    :class:`asyncio.CancelledError` itself once the rest of its cleanup is done
    (:func:`wait_ended`). With ``log``, a task that had failed is logged there (its
    exception is not raised: the cleanup goes on)."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    cancelled = await wait_ended(live)
    if log is not None:
        for task in live:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
                log.error("task %s failed", name, exc_info=error)
    return cancelled


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
        """Cancel every task still running and wait until each has ended; a cancellation
        of the caller meanwhile is raised once they all have (:func:`wait_ended`)."""
        cancelled = await cancel_and_wait(*self._tasks)  # (a failure: logged by _report)
        self._tasks.clear()
        if cancelled:  # the caller was cancelled meanwhile: passed on, now that all ended
            raise asyncio.CancelledError

    def __len__(self) -> int:
        return len(self._tasks)
