"""The only NATS server dies (SIGKILL) and comes back on the same port and storage:
writes waiting for it are acknowledged once it is back and none is lost, and a watch
resumes where it was, missing and repeating nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from safething.store import open_store
from safething.store.nats_testing import NatsServer

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
