"""Owned tasks (safething/resource.py): a cleanup that waits for the tasks it cancelled
goes on to its end when its caller is cancelled meanwhile, then passes the cancellation
on. Swallowed, it made a gateway hang at stop: its sweep, closing a quiet thing when
Gateway.close cancelled it, carried on sweeping and the close waited for it forever."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

from safething.resource import Tasks, cancel_and_wait, wait_ended


async def _slow_to_end(ended: list[str], name: str) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(0.05)  # its own cleanup takes a moment
        ended.append(name)


async def test_cancel_all_waits_for_every_task_then_passes_the_callers_cancellation_on() -> None:
    ended: list[str] = []
    tasks = Tasks("t-")
    for name in ("a", "b"):
        tasks.spawn(_slow_to_end(ended, name), name)
    await asyncio.sleep(0)
    closing = asyncio.create_task(tasks.cancel_all())
    await asyncio.sleep(0.01)  # inside cancel_all, the tasks still ending
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert sorted(ended) == ["a", "b"]  # not cut short: both ended first
    assert len(tasks) == 0


async def test_a_loop_whose_cleanup_is_cancelled_stops() -> None:
    """The shape of the gateway's sweep: a loop that closes something now and then. Its
    owner cancels it during a close and waits for it: it must end, not sweep on."""
    ended: list[str] = []
    failed = False  # ends the loop after a failed assertion, so that the test ends too

    async def sweep() -> None:
        while not failed:
            tasks = Tasks()
            tasks.spawn(_slow_to_end(ended, "x"), "x")
            await asyncio.sleep(0)
            await tasks.cancel_all()

    sweeping = asyncio.create_task(sweep())
    await asyncio.sleep(0.01)
    sweeping.cancel()
    done, _ = await asyncio.wait({sweeping}, timeout=5)
    if not done:
        failed = True
        await asyncio.wait({sweeping}, timeout=5)
    assert done == {sweeping}, "the sweep swallowed its cancellation and swept on"
    assert sweeping.cancelled() and ended == ["x"]


async def test_wait_ended_reports_the_callers_cancellation_and_still_waits() -> None:
    ended: list[str] = []
    task = asyncio.create_task(_slow_to_end(ended, "t"))
    await asyncio.sleep(0)
    task.cancel()
    waiting = asyncio.create_task(wait_ended([task]))
    await asyncio.sleep(0.01)
    waiting.cancel()  # taken by wait_ended: it says so
    assert await waiting is True
    assert ended == ["t"] and task.cancelled()
    assert await wait_ended([task]) is False  # nothing left to wait for, not cancelled


async def test_tasks_ended_by_cancel_all_are_freed_without_a_collection() -> None:
    """A cancelled task keeps its CancelledError until its outcome is taken, and that
    error's traceback holds the task: a cycle, never collected once frozen (the gateway
    freezes its things), which kept a closed thing alive."""

    async def refers_to_its_task() -> None:
        me = asyncio.current_task()  # as a thing's tasks refer to the thing that holds them
        assert me is not None
        await asyncio.sleep(3600)

    tasks = Tasks()
    task = weakref.ref(tasks.spawn(refers_to_its_task(), "sleeper"))
    await asyncio.sleep(0)
    gc.disable()  # freed by reference counts alone, or not at all
    try:
        await tasks.cancel_all()
        assert task() is None
    finally:
        gc.enable()


async def test_cancel_and_wait_logs_a_task_that_had_failed_and_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    failed = asyncio.create_task(fails(), name="failing")
    ended: list[str] = []
    slow = asyncio.create_task(_slow_to_end(ended, "slow"))
    await asyncio.sleep(0)
    log = logging.getLogger("test.resource")
    with caplog.at_level(logging.ERROR, logger="test.resource"):
        assert await cancel_and_wait(failed, None, slow, log=log) is False
    assert ended == ["slow"] and slow.cancelled()
    assert [r.getMessage() for r in caplog.records] == ["task failing failed"]
