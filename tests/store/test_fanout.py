"""One store watch split among many branches (``safething.store.fanout``), on every
backend, and across a NATS server's SIGKILL and restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from safething.errors import StoreError
from safething.store import Change, Store, open_store
from safething.store.fanout import WatchFanout
from safething.store.nats_testing import NatsServer

from .test_conformance import take, take_until


async def test_each_branch_gets_its_prefix_and_the_rest_is_unclaimed(store: Store) -> None:
    async with WatchFanout(store, prefix="f.", depth=2) as fanout:
        a, b, rest = fanout.watch("f.a."), fanout.watch("f.b."), fanout.unclaimed()
        also_a = fanout.watch("f.a.")
        assert fanout.branches == 4
        ra = await store.put("f.a.1", b"1")
        rb = await store.put("f.b.x.y", b"2")
        rc = await store.put("f.c.1", b"3")
        await store.put("g.a.1", b"outside the fanout")
        rab = await store.put("f.ab", b"5")  # not under f.a.
        assert await take(a, 1) == [Change("f.a.1", b"1", ra)]
        assert await take(also_a, 1) == [Change("f.a.1", b"1", ra)]
        assert await take(b, 1) == [Change("f.b.x.y", b"2", rb)]
        assert await take(rest, 2) == [Change("f.c.1", b"3", rc), Change("f.ab", b"5", rab)]
        await a.close()
        await also_a.close()
        rd = await store.put("f.a.2", b"4")  # nobody claims f.a. any more
        assert await take(rest, 1) == [Change("f.a.2", b"4", rd)]
        assert fanout.branches == 2


async def test_a_pattern_fanout_sends_only_matching_keys(store: Store) -> None:
    async with WatchFanout(store, pattern="s.*.st", depth=2) as fanout:
        branch = fanout.watch("s.a.")
        await store.put("s.a.other", b"not the status")
        revision = await store.put("s.a.st", b"published")
        assert await take(branch, 1) == [Change("s.a.st", b"published", revision)]
        await branch.close()


async def test_a_lagging_branch_keeps_each_keys_latest_change_in_order(store: Store) -> None:
    async with WatchFanout(store, prefix="l.", depth=2) as fanout:
        branch = fanout.watch("l.a.")
        await store.put("l.a.k1", b"old")
        r2 = await store.put("l.a.k2", b"2")
        r3 = await store.put("l.a.k1", b"new")
        end = await store.put("l.a.end", b"")
        other = fanout.watch("l.b.")  # the fanout has dispatched everything up to now
        rb = await store.put("l.b.x", b"")
        assert await take(other, 1) == [Change("l.b.x", b"", rb)]
        changes = await take_until(branch, lambda c: c.key == "l.a.end")
    assert changes == [
        Change("l.a.k2", b"2", r2),
        Change("l.a.k1", b"new", r3),
        Change("l.a.end", b"", end),
    ]


async def test_closing_the_fanout_ends_its_branches(store: Store) -> None:
    fanout = WatchFanout(store, prefix="c.", depth=2)
    with pytest.raises(StoreError, match="not started"):
        fanout.watch("c.a.")
    await fanout.start()
    with pytest.raises(ValueError, match="2 tokens"):
        fanout.watch("c.")
    branch = fanout.watch("c.a.")
    waiting = asyncio.create_task(take(branch, 1), name="waiting-branch")
    await asyncio.sleep(0.01)
    await fanout.close()
    assert await asyncio.wait_for(waiting, 10) == []
    with pytest.raises(StopAsyncIteration):
        await fanout.watch("c.b.").__anext__()  # a branch of a closed fanout has ended


async def test_branches_miss_nothing_across_a_nats_server_restart(tmp_path: Path) -> None:
    async with asyncio.timeout(300):  # fail with a traceback, never hang the suite
        await _branches_across_a_restart(tmp_path)


async def _branches_across_a_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    await server.start()
    url = f"{server.url}?bucket=fanout&timeout=60"
    writer, reader = await open_store(url), await open_store(url)
    acked: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
    down_at = 0
    seen: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
    try:
        async with WatchFanout(reader, prefix="r.", depth=2) as fanout:
            branches = {name: fanout.watch(f"r.{name}.") for name in seen}

            async def follow(name: str) -> None:
                async for change in branches[name]:
                    seen[name].append((change.key, change.revision))

            stop = asyncio.Event()

            async def write() -> None:
                i = 0
                while not stop.is_set():  # stopped, not cancelled: a cancelled put may land
                    name = "ab"[i % 2]
                    key = f"r.{name}.{i:05d}"
                    acked[name].append((key, await writer.put(key, b"v")))
                    i += 1
                    await asyncio.sleep(0.002)

            tasks = [asyncio.create_task(follow(n), name=f"follow-{n}") for n in seen]
            writing = asyncio.create_task(write(), name="writer")
            try:
                async with asyncio.timeout(60):
                    while len(seen["a"]) < 25:
                        await asyncio.sleep(0.01)
                await server.kill()
                down_at = len(acked["a"]) + len(acked["b"])
                await asyncio.sleep(1.0)  # the shared watch now waits for the server
                await server.start()
                async with asyncio.timeout(60):
                    while len(acked["a"]) + len(acked["b"]) < down_at + 50:
                        assert not writing.done(), writing
                        await asyncio.sleep(0.02)
                stop.set()
                await asyncio.wait_for(writing, 60)
                async with asyncio.timeout(60):
                    while any(len(seen[n]) < len(acked[n]) for n in seen):
                        await asyncio.sleep(0.02)
            finally:
                writing.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(writing, *tasks, return_exceptions=True)
        for name in seen:  # what differs, if anything (the lists run to hundreds)
            missed = [w for w in acked[name] if w not in seen[name]]
            extra = [w for w in seen[name] if w not in acked[name]]
            assert (missed, extra) == ([], []), (name, down_at, len(acked[name]))
        assert seen == acked  # every acknowledged write, once, in order, on its branch
    finally:
        await writer.close()
        await reader.close()
        await server.stop()
