"""A 3-node JetStream cluster loses its stream leader to SIGKILL in the middle of a
stream of writes: nothing acknowledged is lost, writes resume, a subscriber misses
nothing, and the node comes back and catches up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from safething.store import open_store
from safething.store.nats_testing import NatsCluster, nats_cluster

from .streaming import WritesAndWatch


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
        try:
            async with WritesAndWatch(writer_store, reader_store, "w.") as run:
                await run.wait_acked(100, timeout=60)
                leader_name = str((await stream_cluster(cluster, "KV_killed"))["leader"])
                leader = cluster.node(leader_name)
                await leader.kill()  # SIGKILL, mid-stream
                killed_at = len(run.acked)
                await run.wait_acked(killed_at + 100, timeout=90)  # a Raft election: seconds
                new_leader = str((await stream_cluster(cluster, "KV_killed"))["leader"])
                assert new_leader != leader_name
                print(f"writes paused at most {run.slowest:.2f} s while {new_leader} took over")
                await run.stop_writing(timeout=90)
                # Every acknowledged write is readable, with the revision it was given, and
                # the subscriber misses nothing: every write once, in order.
                await run.check_nothing_lost(timeout=60)

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
            await writer_store.close()
            await reader_store.close()
