"""The only NATS server dies (SIGKILL) and comes back on the same port and storage:
writes waiting for it are acknowledged once it is back and none is lost, and a watch
resumes where it was, missing and repeating nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from safething.store import Change, open_store
from safething.store.nats_testing import NatsServer


async def test_a_server_restart_loses_no_write_and_no_change(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    await server.start()
    url = f"{server.url}?bucket=restart&timeout=60"
    writer = await open_store(url)
    reader = await open_store(url)
    acked: list[tuple[str, int]] = []
    seen: list[Change] = []
    stop = asyncio.Event()

    async def write() -> None:
        i = 0
        while not stop.is_set():
            key = f"r.{i:05d}"
            acked.append((key, await writer.put(key, b"v")))
            i += 1
            await asyncio.sleep(0.002)

    async def subscribe() -> None:
        async with reader.watch("r.", since=0) as feed:
            async for change in feed:
                seen.append(change)

    writing = asyncio.create_task(write(), name="writer")
    subscribing = asyncio.create_task(subscribe(), name="subscriber")
    try:
        async with asyncio.timeout(60):
            while len(seen) < 50:
                await asyncio.sleep(0.01)
        await server.kill()
        down_at = len(acked)
        await asyncio.sleep(1.0)  # writes and the watch now wait for the server
        assert len(acked) <= down_at + 1  # nothing acknowledged while it is down
        await server.start()
        async with asyncio.timeout(60):
            while len(acked) < down_at + 50:
                assert not writing.done(), writing
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(writing, 60)
        async with asyncio.timeout(60):
            while len(seen) < len(acked):
                await asyncio.sleep(0.02)
        assert [(c.key, c.revision) for c in seen] == acked
        for key, revision in acked:
            record = await reader.get(key)
            assert record is not None and record.revision == revision, key
    finally:
        stop.set()
        writing.cancel()
        subscribing.cancel()
        await asyncio.gather(writing, subscribing, return_exceptions=True)
        await writer.close()
        await reader.close()
        await server.stop()
