"""The only NATS server dies (SIGKILL) and comes back on the same port and storage:
writes waiting for it are acknowledged once it is back and none is lost, and a watch
resumes where it was, missing and repeating nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from safething.errors import StoreError
from safething.store import open_store
from safething.store.nats_testing import NatsServer, nats_server

from .streaming import WritesAndWatch


async def test_a_server_restart_loses_no_write_and_no_change(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    await server.start()
    url = f"{server.url}?bucket=restart&timeout=60"
    writer = await open_store(url)
    reader = await open_store(url)
    try:
        async with WritesAndWatch(writer, reader, "r.", gap=0.002) as run:
            async with asyncio.timeout(60):
                while len(run.seen) < 50:
                    await asyncio.sleep(0.01)
            await server.kill()
            down_at = len(run.acked)
            await asyncio.sleep(1.0)  # writes and the watch now wait for the server
            assert len(run.acked) <= down_at + 1  # nothing acknowledged while it is down
            await server.start()
            await run.wait_acked(down_at + 50, timeout=60)
            await run.stop_writing(timeout=60)
            await run.check_nothing_lost(timeout=60)
    finally:
        await writer.close()
        await reader.close()
        await server.stop()


async def test_a_cancellation_landing_with_the_answer_is_not_lost(tmp_path: Path) -> None:
    """nats-py waits for an answer with ``asyncio.wait_for``, which on Python 3.11 returns
    the answer and drops a cancellation that lands in the same turn of the event loop. A
    task stopped then (a watch closing, a writer loop told to stop) ran on for ever: the
    fanout's NATS-restart test hung about 1 run in 5 under load. Here the cancellation is
    made to land exactly then: from a callback on nats-py's own answer future."""
    async with nats_server(tmp_path) as server:
        store = await open_store(f"{server.url}?bucket=cancel")
        try:
            for _ in range(3):
                await store.put("c.k", b"v")
                nc = store._nc  # type: ignore[attr-defined]
                reading = asyncio.create_task(store.get("c.k"), name="reading")
                async with asyncio.timeout(10):
                    while not nc._resp_map:  # the request is out, its answer awaited
                        await asyncio.sleep(0)
                (answer,) = nc._resp_map.values()
                answer.add_done_callback(lambda _f, task=reading: task.cancel())
                with pytest.raises(asyncio.CancelledError):
                    await reading
        finally:
            await store.close()


async def test_a_watch_made_while_the_server_is_down_misses_nothing_after(
    tmp_path: Path,
) -> None:
    """A watch made (without ``since``) while its store's server is down cannot learn
    where "now" is; once the server is back, a write by another client landing before
    the watch is next read is still delivered: it came after the watch was made."""
    server = NatsServer(tmp_path)
    await server.start()
    url = f"{server.url}?bucket=startdown&timeout=2"
    other = await open_store(url)
    before = await other.put("p.before", b"committed before the watch")
    watcher = await open_store(url)  # it has seen the store up to p.before
    try:
        await server.kill()
        async with watcher.watch("p.") as feed:  # waits the URL's timeout, then goes on
            await server.start()
            async with asyncio.timeout(60):  # the other client's connection is back
                while True:
                    try:
                        after = await other.put("p.after", b"committed after the watch")
                        break
                    except StoreError:
                        await asyncio.sleep(0.1)
            async with asyncio.timeout(60):
                change = await anext(aiter(feed))
        assert (change.key, change.revision) == ("p.after", after)
        assert after > before
    finally:
        await watcher.close()
        await other.close()
        await server.stop()
