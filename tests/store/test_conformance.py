"""The store contract (safething/store/base.py), run against every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from safething.errors import ConflictError, LimitExceededError, StoreError
from safething.store import Change, Quota, Record, Store, Watch, Write, open_store
from safething.store.memory import MemoryStore
from safething.store.sqlite import SQLiteStore

OpenPeer = Callable[[], Awaitable[Store]]

# An upper bound for what must happen, never a performance limit: 300 puts on NATS R3
# took over 5 s at load 20.
TIMEOUT = 30.0


async def take(watch: Watch, count: int) -> list[Change]:
    """The next ``count`` changes of ``watch`` (fails after TIMEOUT seconds)."""
    changes: list[Change] = []
    async with asyncio.timeout(TIMEOUT):
        async for change in watch:
            changes.append(change)
            if len(changes) == count:
                break
    return changes


async def take_until(watch: Watch, done: Callable[[Change], bool]) -> list[Change]:
    changes: list[Change] = []
    async with asyncio.timeout(TIMEOUT):
        async for change in watch:
            changes.append(change)
            if done(change):
                break
    return changes


# --- records ----------------------------------------------------------------------


async def test_get_missing(store: Store) -> None:
    assert await store.get("no.such.key") is None


async def test_create_get(store: Store) -> None:
    revision = await store.create("a.b", b"hello")
    assert revision > 0
    assert await store.get("a.b") == Record("a.b", b"hello", revision)


async def test_create_existing_conflicts(store: Store) -> None:
    revision = await store.create("a.b", b"1")
    with pytest.raises(ConflictError) as info:
        await store.create("a.b", b"2")
    assert (info.value.key, info.value.expected, info.value.current) == ("a.b", 0, revision)
    assert (await store.get("a.b")) == Record("a.b", b"1", revision)


async def test_update(store: Store) -> None:
    first = await store.create("k", b"1")
    second = await store.update("k", b"2", first)
    assert second > first
    assert await store.get("k") == Record("k", b"2", second)
    with pytest.raises(ConflictError) as info:
        await store.update("k", b"3", first)
    assert info.value.current == second
    assert info.value.expected == first
    with pytest.raises(ConflictError) as info:
        await store.update("missing", b"x", 5)
    assert info.value.current == 0
    with pytest.raises(ValueError, match="revision"):
        await store.update("k", b"x", 0)
    assert (await store.get("k")) == Record("k", b"2", second)


async def test_put_is_unconditional(store: Store) -> None:
    first = await store.put("p.q", b"1")
    second = await store.put("p.q", b"2")
    assert second > first
    assert await store.get("p.q") == Record("p.q", b"2", second)


async def test_empty_value(store: Store) -> None:
    revision = await store.create("e", b"")
    assert await store.get("e") == Record("e", b"", revision)
    assert await store.usage("") == (1, 0)


async def test_delete(store: Store) -> None:
    assert await store.delete("d.x") == 0
    with pytest.raises(ConflictError) as info:
        await store.delete("d.x", 3)
    assert info.value.current == 0

    created = await store.create("d.x", b"v")
    with pytest.raises(ConflictError):
        await store.delete("d.x", created + 100)
    assert await store.get("d.x") is not None
    deleted = await store.delete("d.x", created)
    assert deleted > created
    assert await store.get("d.x") is None

    again = await store.create("d.x", b"w")
    assert again > deleted
    assert await store.delete("d.x") > again
    assert await store.get("d.x") is None


async def test_revisions_strictly_increase(store: Store) -> None:
    revisions = [
        await store.create("r.a", b"1"),
        await store.put("r.b", b"2"),
        await store.put("r.a", b"3"),
        await store.delete("r.b"),
        await store.create("s.c", b"4"),
    ]
    assert revisions == sorted(set(revisions))
    assert revisions[0] > 0
    assert (await store.info()).revision == revisions[-1]


async def test_invalid_keys(store: Store) -> None:
    for bad in ["", "a..b", ".a", "a.", "has space", "slash/no", "ü", "x" * 1025]:
        with pytest.raises(ValueError, match="invalid store key"):
            await store.get(bad)
        with pytest.raises(ValueError, match="invalid store key"):
            await store.put(bad, b"v")
    for bad_prefix in ["a", ".", "a..", "a b."]:
        with pytest.raises(ValueError, match="invalid"):
            await store.scan(bad_prefix)
        with pytest.raises(ValueError, match="invalid"):
            await store.usage(bad_prefix)
        with pytest.raises(ValueError, match="invalid"):
            store.watch(bad_prefix)
    with pytest.raises(TypeError):
        await store.put("a", "text")  # type: ignore[arg-type]
    assert await store.keys("") == []


# --- batches ----------------------------------------------------------------------


async def test_commit_mixed_batch(store: Store) -> None:
    existing = await store.create("m.old", b"old")
    doomed = await store.create("m.doomed", b"bye")
    await store.create("q.full", b"x")
    results = await store.commit(
        [
            Write("m.new", b"new"),  # accepted
            Write("m.old", b"again"),  # refused: exists
            Write("m.old", b"stale", expect=existing + 1000),  # refused: wrong revision
            Write("m.old", b"updated", expect=existing),  # accepted
            Write("m.put", b"any", expect=None),  # accepted
            Write("m.doomed", None, expect=doomed),  # accepted delete
            Write("m.nothing", None, expect=None),  # nothing to delete: 0
            Write("q.more", b"y", quota=Quota("q.", max_count=1, max_bytes=100)),  # refused
        ]
    )
    assert isinstance(results[1], ConflictError)
    assert results[1].current == existing
    assert isinstance(results[2], ConflictError)
    assert isinstance(results[7], LimitExceededError)
    assert results[6] == 0
    accepted = [results[i] for i in (0, 3, 4, 5)]
    assert all(isinstance(r, int) for r in accepted)
    assert accepted == sorted(set(accepted))  # type: ignore[type-var]
    assert accepted[0] > doomed  # type: ignore[operator]

    assert await store.get("m.new") == Record("m.new", b"new", results[0])  # type: ignore[arg-type]
    assert await store.get("m.old") == Record("m.old", b"updated", results[3])  # type: ignore[arg-type]
    assert await store.get("m.doomed") is None
    assert await store.get("q.more") is None
    assert await store.keys("m.") == ["m.new", "m.old", "m.put"]


async def test_commit_sees_earlier_writes_of_the_batch(store: Store) -> None:
    results = await store.commit(
        [Write("b.k", b"1"), Write("b.k", b"2"), Write("b.k", b"3", expect=None)]
    )
    first, second, third = results
    assert isinstance(first, int)
    assert isinstance(second, ConflictError)
    assert second.current == first
    assert isinstance(third, int)
    assert third > first
    assert await store.get("b.k") == Record("b.k", b"3", third)
    assert await store.commit([]) == []


# --- quotas -----------------------------------------------------------------------


async def test_quota_count(store: Store) -> None:
    quota = Quota("q.", max_count=2, max_bytes=1000)
    await store.create("q.a", b"1", quota=quota)
    await store.create("q.b", b"2", quota=quota)
    with pytest.raises(LimitExceededError) as info:
        await store.create("q.c", b"3", quota=quota)
    assert (info.value.limit, info.value.actual) == (2, 3)
    assert await store.keys("q.") == ["q.a", "q.b"]
    # Replacing a record does not add one; a key outside the prefix does not count.
    await store.put("q.a", b"11", quota=quota)
    await store.create("qq.x", b"1", quota=quota)
    await store.create("other", b"1", quota=quota)
    # After a delete there is room again.
    await store.delete("q.b")
    await store.create("q.c", b"3", quota=quota)
    assert await store.usage("q.") == (2, 3)


async def test_quota_counts_records_written_under_it_without_it(store: Store) -> None:
    """Records written under a prefix by commits that named no quota (or another one)
    count when a later commit names it (the SQLite writer keeps counts between its
    transactions: they must follow every write)."""
    quota = Quota("w.", max_count=3, max_bytes=1000)
    await store.create("w.a", b"1", quota=quota)
    await store.create("w.b", b"2")  # no quota
    await store.create("w.r.c", b"3", quota=Quota("w.r.", max_count=5, max_bytes=1000))
    with pytest.raises(LimitExceededError) as info:
        await store.create("w.d", b"4", quota=quota)
    assert (info.value.limit, info.value.actual) == (3, 4)
    await store.delete("w.b")  # no quota: there is room again
    await store.create("w.d", b"4", quota=quota)
    assert await store.usage("w.") == (3, 3)


async def test_quota_bytes(store: Store) -> None:
    quota = Quota("b.", max_count=100, max_bytes=10)
    revision = await store.create("b.a", b"1234", quota=quota)
    await store.create("b.b", b"1234", quota=quota)
    revision = await store.update("b.a", b"123456", revision, quota=quota)  # exactly 10
    with pytest.raises(LimitExceededError) as info:
        await store.update("b.a", b"1234567", revision, quota=quota)
    assert (info.value.limit, info.value.actual) == (10, 11)
    with pytest.raises(LimitExceededError):
        await store.create("b.c", b"1", quota=quota)
    await store.create("b.c", b"", quota=quota)  # an empty value costs no bytes
    assert await store.usage("b.") == (3, 10)


async def test_quota_counts_the_batch_itself(store: Store) -> None:
    quota = Quota("n.", max_count=2, max_bytes=1000)
    results = await store.commit([Write(f"n.{i}", b"v", quota=quota) for i in range(4)])
    assert [type(r) for r in results] == [int, int, LimitExceededError, LimitExceededError]
    # A batch that deletes first makes room for its own later write.
    results = await store.commit([Write("n.0", None, expect=None), Write("n.9", b"v", quota=quota)])
    assert all(isinstance(r, int) for r in results)
    assert await store.keys("n.") == ["n.1", "n.9"]


async def test_quota_does_not_refuse_a_shrinking_write(store: Store) -> None:
    for i in range(3):
        await store.create(f"s.{i}", b"0123456789")
    tight = Quota("s.", max_count=1, max_bytes=5)
    revision = (await store.get("s.0")).revision  # type: ignore[union-attr]
    await store.update("s.0", b"01", revision, quota=tight)  # over both limits, but shrinks
    assert await store.usage("s.") == (3, 22)


async def test_quota_race_for_the_last_slot(store: Store, open_peer: OpenPeer) -> None:
    peer = await open_peer()
    for round_ in range(5):
        quota = Quota(f"race{round_}.", max_count=3, max_bytes=10_000)
        for i in range(2):
            await store.create(f"race{round_}.pre{i}", b"x", quota=quota)
        contenders = [store, peer] * 4
        results = await asyncio.gather(
            *(s.create(f"race{round_}.c{i}", b"y", quota=quota) for i, s in enumerate(contenders)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, int)]
        losers = [r for r in results if isinstance(r, LimitExceededError)]
        assert (len(winners), len(losers)) == (1, len(contenders) - 1), results
        assert (await store.usage(f"race{round_}."))[0] == 3


# --- scans ------------------------------------------------------------------------


async def test_scan_keys_usage_prefixes(store: Store) -> None:
    values = {
        "a.x": b"1",
        "a.y.z": b"22",
        "a.y-w": b"333",
        "ab.x": b"4444",
        "a": b"5",
        "a-.q": b"6",
        "a0.q": b"7",
        "b.x": b"88",
    }
    revisions = {k: await store.put(k, v) for k, v in values.items()}
    scanned = await store.scan("a.")
    assert scanned == [Record(k, values[k], revisions[k]) for k in ["a.x", "a.y-w", "a.y.z"]]
    assert await store.keys("a.y.") == ["a.y.z"]
    assert await store.keys("ab.") == ["ab.x"]
    assert await store.keys("") == sorted(values)
    assert await store.keys("zz.") == []
    assert await store.usage("a.") == (3, 6)
    assert await store.usage("") == (len(values), sum(len(v) for v in values.values()))
    assert await store.usage("nothing.") == (0, 0)


async def test_scan_of_a_large_prefix(store: Store) -> None:
    count = 5000
    for start in range(0, count, 1000):
        await store.commit(
            [Write(f"big.{i:05d}", b"v" * 3, expect=None) for i in range(start, start + 1000)]
        )
    await store.put("bigger.x", b"no")
    keys = await store.keys("big.")
    assert keys == [f"big.{i:05d}" for i in range(count)]
    assert await store.usage("big.") == (count, 3 * count)


# --- compare-and-set under concurrency ----------------------------------------------


async def _increment(store: Store, key: str, times: int) -> int:
    """Add 1 to the counter ``times`` times; returns how many conflicts it met."""
    conflicts = 0
    done = 0
    while done < times:
        record = await store.get(key)
        try:
            if record is None:
                await store.create(key, b"1")
            else:
                await store.update(key, str(int(record.value) + 1).encode(), record.revision)
        except ConflictError:
            conflicts += 1
            continue
        done += 1
    return conflicts


async def test_racing_incrementers_lose_no_update(store: Store, open_peer: OpenPeer) -> None:
    peer = await open_peer()
    workers, times = 8, 25
    stores = [store if i % 2 else peer for i in range(workers)]
    await asyncio.gather(*(_increment(s, "counter", times) for s in stores))
    record = await store.get("counter")
    assert record is not None
    assert int(record.value) == workers * times


async def test_racing_cas_on_one_revision_has_one_winner(store: Store, open_peer: OpenPeer) -> None:
    peer = await open_peer()
    for round_ in range(10):
        base = await store.put("cas", f"base{round_}".encode())
        contenders = [store, peer] * 3
        results = await asyncio.gather(
            *(s.update("cas", f"w{i}".encode(), base) for i, s in enumerate(contenders)),
            return_exceptions=True,
        )
        winners = [i for i, r in enumerate(results) if isinstance(r, int)]
        assert len(winners) == 1, results
        assert all(
            isinstance(r, ConflictError) and r.current == results[winners[0]]
            for i, r in enumerate(results)
            if i != winners[0]
        )
        assert (await peer.get("cas")) == Record(
            "cas",
            f"w{winners[0]}".encode(),
            results[winners[0]],  # type: ignore[arg-type]
        )


# --- change feed ------------------------------------------------------------------


async def test_watch_order_prefix_and_deletes(store: Store) -> None:
    # Consumed as it goes: a watcher that lags may see only a key's latest value.
    async with store.watch("w.") as watch:
        r1 = await store.put("w.a", b"1")
        assert await take(watch, 1) == [Change("w.a", b"1", r1)]
        await store.put("other.a", b"x")
        await store.put("wx.a", b"x")
        r2 = await store.put("w.b.c", b"2")
        r3 = await store.delete("w.a")
        r4 = await store.create("w.d", b"4")
        changes = await take(watch, 3)
    assert changes == [
        Change("w.b.c", b"2", r2),
        Change("w.a", None, r3),
        Change("w.d", b"4", r4),
    ]
    assert changes[1].deleted
    assert not changes[0].deleted


async def test_watch_starts_after_the_call(store: Store) -> None:
    await store.put("n.before", b"0")
    watch = store.watch("n.")
    revision = await store.put("n.after", b"1")
    assert await take(watch, 1) == [Change("n.after", b"1", revision)]
    await watch.close()


async def test_watch_everything(store: Store) -> None:
    async with store.watch("") as watch:
        r1 = await store.put("x", b"1")
        r2 = await store.put("y.z", b"2")
        assert await take(watch, 2) == [Change("x", b"1", r1), Change("y.z", b"2", r2)]


async def test_watch_is_woken_by_a_later_write(store: Store) -> None:
    async with store.watch("late.") as watch:
        waiting = asyncio.create_task(take(watch, 1), name="waiting-watcher")
        await asyncio.sleep(0.01)  # let it block on an empty feed
        assert not waiting.done()
        revision = await store.put("late.x", b"1")
        assert await waiting == [Change("late.x", b"1", revision)]


async def test_watch_since_replays_then_goes_live(store: Store) -> None:
    first = await store.put("s.1", b"1")
    r2 = await store.put("s.2", b"2")
    await store.put("t.x", b"other prefix")
    r3 = await store.delete("s.1")
    async with store.watch("s.", since=first) as watch:
        r4 = await store.put("s.4", b"4")
        replayed = await take(watch, 3)
        r5 = await store.put("s.5", b"5")
        live = await take(watch, 1)
    assert replayed == [Change("s.2", b"2", r2), Change("s.1", None, r3), Change("s.4", b"4", r4)]
    assert live == [Change("s.5", b"5", r5)]


async def test_watch_since_zero_replays_everything(store: Store) -> None:
    revisions = [await store.put(f"z.{i}", str(i).encode()) for i in range(5)]
    async with store.watch("z.", since=0) as watch:
        changes = await take(watch, 5)
    assert [c.revision for c in changes] == revisions
    assert [c.key for c in changes] == [f"z.{i}" for i in range(5)]


async def test_watch_with_concurrent_writer_has_no_gap_or_duplicate(store: Store) -> None:
    count = 300
    start = await store.put("g.start", b"")
    watch = store.watch("g.", since=start)

    async def writer() -> list[int]:
        revisions = []
        for i in range(count):
            revisions.append(await store.put(f"g.{i}", b"v"))
            if i % 50 == 0:
                await asyncio.sleep(0)
        return revisions

    writing = asyncio.create_task(writer(), name="writer")
    changes = await take(watch, count)
    revisions = await writing
    await watch.close()
    assert [c.revision for c in changes] == revisions
    assert [c.key for c in changes] == [f"g.{i}" for i in range(count)]


async def test_a_slow_watcher_never_goes_back_in_time(store: Store) -> None:
    async with store.watch("hot.") as watch:
        last = 0
        for i in range(1, 101):
            last = await store.put("hot.key", str(i).encode())
        await store.put("hot.end", b"")
        changes = await take_until(watch, lambda c: c.key == "hot.end")
    counters = [int(c.value) for c in changes if c.key == "hot.key"]  # type: ignore[arg-type]
    assert counters == sorted(counters)
    assert counters[-1] == 100
    hot = [c for c in changes if c.key == "hot.key"]
    assert hot[-1].revision == last
    assert [c.revision for c in changes] == sorted({c.revision for c in changes})


async def test_watch_sees_writes_of_another_store_object(store: Store, open_peer: OpenPeer) -> None:
    peer = await open_peer()
    async with store.watch("peer.") as watch:
        revision = await peer.put("peer.x", b"from the peer")
        assert await take(watch, 1) == [Change("peer.x", b"from the peer", revision)]


async def test_watch_close_ends_a_pending_iteration(store: Store) -> None:
    watch = store.watch("c.")
    iterating = asyncio.create_task(take(watch, 1), name="pending-watcher")
    await asyncio.sleep(0.01)
    await watch.close()
    assert await asyncio.wait_for(iterating, TIMEOUT) == []
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()
    await watch.close()  # idempotent


async def test_watch_closed_while_it_is_still_starting_ends_its_iteration(store: Store) -> None:
    """The iteration has begun and waits for the watch's start (on NATS, a request to the
    server) when the watch closes: it ends, no CancelledError escapes it (seen under load
    with the 10 ms head start of the test above). The close comes after 0 to 7 turns of
    the loop, five times each, so that it falls into each step of the iteration's start
    (on NATS, 5 to 7 turns found it nearly every time)."""
    for attempt in range(40):
        turns = attempt % 8
        watch = store.watch("c.")
        iterating = asyncio.create_task(take(watch, 1), name=f"starting-watcher-{turns}")
        for _ in range(turns):
            await asyncio.sleep(0)
        await watch.close()
        assert await asyncio.wait_for(iterating, TIMEOUT) == [], turns


async def test_watch_pattern_delivers_only_matching_keys(store: Store) -> None:
    # what a gateway's things share: one entry of every MD of a tag
    await store.put("p.old.s", b"before the call")
    async with store.watch_pattern("p.*.s") as watch:
        r1 = await store.put("p.a.s", b"1")
        await store.put("p.a.t", b"other entry")
        await store.put("p.a.s.x", b"deeper")
        await store.put("q.a.s", b"other tag")
        await store.put("p.s", b"shallower")
        r2 = await store.delete("p.old.s")
        r3 = await store.put("p.b.s", b"2")
        changes = await take(watch, 3)
        r4 = await store.put("p.c.s", b"3")
        live = await take(watch, 1)
    assert changes == [
        Change("p.a.s", b"1", r1),
        Change("p.old.s", None, r2),
        Change("p.b.s", b"2", r3),
    ]
    assert live == [Change("p.c.s", b"3", r4)]


async def test_watch_pattern_since_replays_then_goes_live(store: Store) -> None:
    first = await store.put("ps.a.v", b"1")
    r2 = await store.put("ps.b.v", b"2")
    await store.put("ps.b.w", b"not matching")
    async with store.watch_pattern("ps.*.v", since=first) as watch:
        replayed = await take(watch, 1)
        r3 = await store.put("ps.c.v", b"3")
        live = await take(watch, 1)
    assert replayed == [Change("ps.b.v", b"2", r2)]
    assert live == [Change("ps.c.v", b"3", r3)]


@pytest.mark.parametrize("pattern", ["", "p.>", "p..s", "p.*.", "p.a*.s", ".p"])
async def test_watch_pattern_refuses_a_malformed_pattern(store: Store, pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        store.watch_pattern(pattern)


async def test_store_close_ends_a_pending_watch(store_url: str) -> None:
    store = await open_store(store_url)
    watch = store.watch("c.")
    iterating = asyncio.create_task(take(watch, 1), name="pending-watcher")
    await asyncio.sleep(0.01)
    await store.close()
    assert await asyncio.wait_for(iterating, TIMEOUT) == []
    await store.close()  # idempotent
    with pytest.raises(StoreError):
        await store.get("a")
    with pytest.raises(StoreError):
        await store.put("a", b"1")
    with pytest.raises(StoreError):
        store.watch("a.")


async def test_watch_beyond_the_trimmed_log(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MemoryStore, "change_log_size", 10)
    monkeypatch.setattr(SQLiteStore, "change_log_size", 10)
    async with await open_store(store_url) as store:
        revisions = {f"t.{i:02d}": await store.put(f"t.{i:02d}", b"v") for i in range(40)}
        rewritten = await store.put("t.05", b"new")
        revisions["t.05"] = rewritten
        await store.delete("t.07")
        del revisions["t.07"]
        for i in range(40):
            await store.put(f"u.{i}", b"pad")  # pushes the t. changes out of the log
        async with store.watch("t.", since=0) as watch:
            live = await store.put("t.live", b"live")
            changes = await take_until(watch, lambda c: c.key == "t.live")
    # Every record still there is delivered once, in revision order, with its
    # latest value; the delete of t.07 fell out of the log and is not replayed
    # (NATS keeps one message per key, the delete's included, and replays it).
    if store_url.startswith("nats"):
        deleted = [c for c in changes if c.key == "t.07"]
        assert len(deleted) == 1 and deleted[0].deleted
        changes = [c for c in changes if c.key != "t.07"]
    expected = sorted(revisions.items(), key=lambda kv: kv[1])
    assert [(c.key, c.revision) for c in changes[:-1]] == expected
    assert changes[-1] == Change("t.live", b"live", live)
    assert [c for c in changes if c.key == "t.05"] == [Change("t.05", b"new", rewritten)]


# --- chunks and housekeeping ------------------------------------------------------


async def test_chunks(store: Store) -> None:
    assert await store.get_chunk("ab12") is None
    await store.put_chunk("ab12", b"chunk data")
    await store.put_chunk("ab12", b"chunk data")  # idempotent
    assert await store.get_chunk("ab12") == b"chunk data"
    big = bytes(range(256)) * 4096  # 1 MiB
    await store.put_chunk("big", big)
    assert await store.get_chunk("big") == big
    with pytest.raises(TypeError):
        await store.put_chunk("x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk address"):
        await store.get_chunk("")


async def test_info(store: Store, store_url: str) -> None:
    empty = await store.info()
    assert (empty.records, empty.record_bytes, empty.chunks, empty.chunk_bytes) == (0, 0, 0, 0)
    assert empty.revision == 0
    assert empty.url == store_url
    await store.put("i.a", b"123")
    await store.put("i.b", b"45")
    last = await store.delete("i.a")
    await store.put("i.c", b"6789")
    last = await store.put("i.c", b"67890")
    await store.put_chunk("c1", b"abc")
    await store.put_chunk("c2", b"defg")
    info = await store.info()
    assert (info.records, info.record_bytes) == (2, 7)
    assert (info.chunks, info.chunk_bytes) == (2, 7)
    assert info.revision == last
    if store_url.startswith("sqlite"):
        assert info.backend == "sqlite"
        assert info.file_bytes is not None
        assert info.file_bytes > 0
    elif store_url.startswith("nats"):
        assert info.backend == "nats"
        assert info.file_bytes is None
    else:
        assert info.backend == "memory"
        assert info.file_bytes is None


async def test_commit_rejects_non_writes(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.commit([("k", b"v")])  # type: ignore[list-item]


async def test_a_watcher_behind_many_rewrites_catches_up_at_once(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the safety-net timer, only a wake-up or the read itself can
    # bring the changes: a feed that stalls after a batch of skipped
    # rewrites would hang here.
    monkeypatch.setattr("safething.store.memory._SAFETY_NET_S", 3600.0)
    monkeypatch.setattr("safething.store.sqlite._SAFETY_NET_S", 3600.0)
    async with await open_store(store_url) as store:
        watch = store.watch("many.")
        for start in range(0, 1500, 500):
            await store.commit(
                [Write("many.key", str(i).encode(), None) for i in range(start, start + 500)]
            )
        end = await store.put("many.end", b"")
        changes = await take_until(watch, lambda c: c.key == "many.end")
        await watch.close()
    assert changes[-1] == Change("many.end", b"", end)
    assert changes[-2].value == b"1499"


async def test_a_commit_wakes_only_matching_watches(store: Store) -> None:
    """Thousands of unrelated watches must not all re-read on every commit."""
    from safething.store.feed import FeedWatch

    near = store.watch("a.b.")
    far = store.watch("z.")
    if not isinstance(near, FeedWatch):  # NATS: the server filters per consumer
        await near.close()
        await far.close()
        pytest.skip("a NATS watch is a server-side consumer, woken by the server")
    assert isinstance(near, FeedWatch)
    assert isinstance(far, FeedWatch)
    woken: list[str] = []
    near.wake = lambda: woken.append("near")  # type: ignore[method-assign]
    far.wake = lambda: woken.append("far")  # type: ignore[method-assign]
    await store.put("a.b.c", b"1")
    assert woken == ["near"]
    await near.close()
    await far.close()


async def test_atomic_commit_is_all_or_nothing(store: Store) -> None:
    from safething.errors import AbortedWriteError, ConflictError
    from safething.store import Write

    first = await store.put("t.a", b"1")
    before = await store.info()
    results = await store.commit(
        [Write("t.b", b"new", 0), Write("t.a", b"2", first + 999), Write("t.c", b"x", None)],
        atomic=True,
    )
    assert isinstance(results[0], AbortedWriteError)
    assert isinstance(results[1], ConflictError)
    assert not isinstance(results[1], AbortedWriteError)
    assert isinstance(results[2], AbortedWriteError)
    assert await store.get("t.b") is None
    assert await store.get("t.c") is None
    assert (await store.get("t.a")).value == b"1"  # type: ignore[union-attr]
    after = await store.info()
    assert after.revision == before.revision
    assert after.records == before.records
    async with store.watch("t.", since=first) as feed:  # nothing of the aborted batch
        ok = await store.commit([Write("t.b", b"ok", 0), Write("t.a", b"3", first)], atomic=True)
        assert all(isinstance(r, int) for r in ok)
        got = [await anext(aiter(feed)), await anext(aiter(feed))]
    assert [(c.key, c.value) for c in got] == [("t.b", b"ok"), ("t.a", b"3")]


async def test_atomic_commits_made_together_see_only_what_the_others_kept(
    store: Store,
) -> None:
    """Commits made at once (SQLite decides them in one transaction): one that fails
    after three of its writes leaves neither a record, nor a revision, nor a quota count
    behind for the commits after it (also under a prefix whose quota only a later
    commit names)."""
    from safething.errors import AbortedWriteError

    if not isinstance(store, SQLiteStore | MemoryStore):
        pytest.skip("NATS commits made at once in any order (the quota decides which wins)")
    quota = Quota("u.", max_count=3, max_bytes=1000)
    base = await store.put("u.a", b"1", quota=quota)
    kept, undone, after, full, other = await asyncio.gather(
        store.commit([Write("u.b", b"2", 0, quota)], atomic=True),
        store.commit(
            [
                Write("u.a", b"x", base, quota),
                Write("u.c", b"3", 0, quota),
                Write("v.x", b"3", 0),
                Write("u.z", b"z", base + 999, quota),  # refused: the whole commit is
            ],
            atomic=True,
        ),
        store.commit([Write("u.a", b"y", base, quota), Write("u.d", b"4", 0, quota)], atomic=True),
        store.commit([Write("u.e", b"5", 0, quota)], atomic=True),
        store.commit([Write("v.y", b"6", 0, Quota("v.", max_count=1, max_bytes=10))], atomic=True),
    )
    assert all(isinstance(r, int) for r in kept + after + other)
    assert [type(r) for r in undone] == [AbortedWriteError] * 3 + [ConflictError]
    assert [type(r) for r in full] == [LimitExceededError]
    assert await store.keys("u.") == ["u.a", "u.b", "u.d"]
    assert (await store.get("u.a")).value == b"y"  # type: ignore[union-attr]
    assert await store.usage("u.") == (3, 3)
    assert await store.keys("v.") == ["v.y"]


async def test_a_guard_writes_nothing_unless_its_record_is_unchanged(store: Store) -> None:
    from safething.errors import GuardFailedError
    from safething.store import Guard

    first = await store.put("g.h", b"header-1")
    ok = await store.commit([Write("g.e", b"1", 0)], guard=Guard("g.h", first))
    assert all(isinstance(r, int) for r in ok)
    second = await store.put("g.h", b"header-2")  # rewritten since the writer read it
    before = await store.info()
    for guard in (Guard("g.h", first), Guard("g.h", 0), Guard("g.none", second)):
        with pytest.raises(GuardFailedError) as info:
            await store.commit([Write("g.e", b"2", None), Write("g.f", b"3", 0)], guard=guard)
        assert info.value.key == guard.key
    assert (await store.get("g.e")).value == b"1"  # type: ignore[union-attr]
    assert await store.get("g.f") is None
    assert (await store.info()).revision == before.revision
    ok = await store.commit([Write("g.f", b"3", 0)], guard=Guard("g.none", 0), atomic=True)
    assert all(isinstance(r, int) for r in ok)
    ok = await store.commit([Write("g.f", b"4", None)], guard=Guard("g.h", second))
    assert all(isinstance(r, int) for r in ok)
    await store.delete("g.h")
    with pytest.raises(GuardFailedError):
        await store.commit([Write("g.f", b"5", None)], guard=Guard("g.h", second))
    assert (await store.get("g.f")).value == b"4"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="revision"):
        Guard("g.h", -1)
