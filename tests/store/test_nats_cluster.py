"""A 3-node JetStream cluster loses its stream leader to SIGKILL in the middle of a
stream of writes: nothing acknowledged is lost, writes resume, a subscriber misses
nothing, and the node comes back and catches up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from safething.store import Change, open_store
from safething.store.nats_testing import NatsCluster, nats_cluster


async def stream_cluster(cluster: NatsCluster, stream: str) -> dict[str, object]:
    client = await nats.connect(servers=[n.url for n in cluster.nodes if n.process])
    try:
        async with asyncio.timeout(30):
            while True:
                reply = await client.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
                info = json.loads(reply.data)
                if "cluster" in info and info["cluster"].get("leader"):
                    result: dict[str, object] = info["cluster"]
                    return result
                await asyncio.sleep(0.1)
    finally:
        await client.close()


async def test_killing_the_stream_leader_loses_no_acknowledged_write(tmp_path: Path) -> None:
    async with nats_cluster(tmp_path) as cluster:
        url = f"{cluster.url}?bucket=killed&replicas=3&timeout=60"
        writer_store = await open_store(url)
        reader_store = await open_store(url)
        acked: list[tuple[str, int]] = []
        seen: list[Change] = []
        stop = asyncio.Event()

        slowest = 0.0

        async def write() -> None:
            nonlocal slowest
            loop = asyncio.get_running_loop()
            i = 0
            while not stop.is_set():
                key = f"w.{i:05d}"
                began = loop.time()
                acked.append((key, await writer_store.put(key, f"reading {i}".encode())))
                slowest = max(slowest, loop.time() - began)
                i += 1

        async def subscribe() -> None:
            async with reader_store.watch("w.", since=0) as feed:
                async for change in feed:
                    seen.append(change)

        writing = asyncio.create_task(write(), name="writer")
        subscribing = asyncio.create_task(subscribe(), name="subscriber")
        try:
            async with asyncio.timeout(60):
                while len(acked) < 100:
                    await asyncio.sleep(0.01)
            leader_name = str((await stream_cluster(cluster, "KV_killed"))["leader"])
            leader = cluster.node(leader_name)
            await leader.kill()  # SIGKILL, mid-stream
            killed_at = len(acked)
            async with asyncio.timeout(90):  # a Raft election takes seconds
                while len(acked) < killed_at + 100:
                    assert not writing.done(), writing
                    await asyncio.sleep(0.05)
            new_leader = str((await stream_cluster(cluster, "KV_killed"))["leader"])
            assert new_leader != leader_name
            print(f"writes paused at most {slowest:.2f} s while {new_leader} took over")
            stop.set()
            await asyncio.wait_for(writing, 90)

            # Every acknowledged write is readable, with the revision it was given.
            for key, revision in acked:
                record = await reader_store.get(key)
                assert record is not None, key
                assert record.revision == revision
            # The subscriber misses nothing: every write once, in order.
            async with asyncio.timeout(60):
                while len({c.key for c in seen}) < len(acked):
                    await asyncio.sleep(0.05)
            assert [(c.key, c.revision) for c in seen] == acked

            # The node restarts and rejoins: the stream has three current replicas again.
            await leader.start()
            async with asyncio.timeout(60):
                while True:
                    info = await stream_cluster(cluster, "KV_killed")
                    replicas = info.get("replicas") or []
                    assert isinstance(replicas, list)
                    if any(r["name"] == leader_name and r.get("current") for r in replicas):
                        break
                    await asyncio.sleep(0.2)
            revision = await writer_store.put("w.after", b"back")
            assert (await reader_store.get("w.after")).revision == revision  # type: ignore[union-attr]
        finally:
            stop.set()
            subscribing.cancel()
            writing.cancel()
            await asyncio.gather(writing, subscribing, return_exceptions=True)
            await writer_store.close()
            await reader_store.close()
