"""Quotas on NATS count what is in the store, whoever wrote it.

A write with a quota expects the last message under the quota's prefix to be the one
it counted up to (``Nats-Expected-Last-Subject-Sequence-Subject``), so a record that
slips in under the prefix between the count and the write (even from a writer passing
no quota) refuses the write, which counts again. A store object remembers what its own
last write under a prefix left and writes on that without reading: the same
expectation refuses it if anything came after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from safething.errors import LimitExceededError
from safething.store import Quota, Store, Write, open_store
from safething.store.nats import NatsStore
from safething.store.nats_testing import NatsServer, unique_bucket


@pytest.fixture
async def pair(nats_single: NatsServer) -> AsyncIterator[tuple[NatsStore, Store]]:
    """Two connections to one fresh bucket: the store under test and another writer."""
    url = f"{nats_single.url}?bucket={unique_bucket()}"
    store, other = await open_store(url), await open_store(url)
    assert isinstance(store, NatsStore)
    try:
        yield store, other
    finally:
        await store.close()
        await other.close()


async def test_a_record_slipped_in_after_the_count_is_counted(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = pair
    scan = store._scan
    slipped: list[int] = []

    async def count_then_slip_in(prefix: str, **options: Any) -> Any:
        counted = await scan(prefix, **options)
        if not slipped:  # another writer, passing no quota, lands right after the count
            slipped.append(await other.put("q.sneaked", b"x"))
        return counted

    monkeypatch.setattr(store, "_scan", count_then_slip_in)
    with pytest.raises(LimitExceededError):
        await store.create("q.a", b"y", quota=Quota("q.", max_count=1, max_bytes=100))
    assert slipped
    assert await store.usage("q.") == (1, 1)


async def test_a_remembered_count_is_dropped_when_another_writer_came_after(
    pair: tuple[NatsStore, Store],
) -> None:
    store, other = pair
    quota = Quota("r.", max_count=2, max_bytes=100)
    await store.create("r.a", b"1", quota=quota)  # the store now remembers (1, 1)
    await other.put("r.b", b"2")  # no quota: the count is 2 now
    with pytest.raises(LimitExceededError):
        await store.create("r.c", b"3", quota=quota)
    assert await store.usage("r.") == (2, 2)
    await other.delete("r.b")
    await store.create("r.c", b"3", quota=quota)  # room again
    assert await store.usage("r.") == (2, 2)


async def test_a_refusal_is_never_decided_on_a_remembered_count(
    pair: tuple[NatsStore, Store],
) -> None:
    store, other = pair
    quota = Quota("f.", max_count=2, max_bytes=100)
    await store.create("f.a", b"1", quota=quota)
    await store.create("f.b", b"2", quota=quota)  # remembered: full
    await other.delete("f.b")  # room again, which only the store knows
    assert await store.create("f.c", b"3", quota=quota) > 0
    await other.put("f.d", b"4")  # remembered: f.d absent; it is there
    results = await store.commit([Write("f.d", None, None, quota)])
    assert isinstance(results[0], int) and results[0] > 0, results  # deleted, not a no-op
    assert await store.keys("f.") == ["f.a", "f.c"]


async def test_an_atomic_batch_recounts_when_another_writer_came_after(
    pair: tuple[NatsStore, Store],
) -> None:
    store, other = pair
    quota = Quota("h.", max_count=2, max_bytes=100)
    assert await store.commit([Write("h.a", b"1", 0, quota)], atomic=True)  # remembered: 1
    await other.put("h.b", b"2")  # passes no quota
    results: list[Any] = await store.commit(
        [Write("h.c", b"3", 0, quota), Write("h.d", b"4", 0, quota)], atomic=True
    )
    assert isinstance(results[0], LimitExceededError), results
    assert await store.usage("h.") == (2, 2)


async def test_racing_quota_writers_on_two_connections_keep_the_limit(
    pair: tuple[NatsStore, Store],
) -> None:
    store, other = pair
    quota = Quota("race.", max_count=5, max_bytes=10_000)
    writers = [store, other] * 5
    results = await asyncio.gather(
        *(w.create(f"race.{i}", b"v", quota=quota) for i, w in enumerate(writers)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, int) for r in results) == 5, results
    assert sum(isinstance(r, LimitExceededError) for r in results) == 5, results
    assert (await store.usage("race."))[0] == 5


async def test_a_watch_opened_after_chunk_writes_misses_no_record(
    pair: tuple[NatsStore, Store],
) -> None:
    """The chunk bucket has its own sequence: a chunk's must not move where a record
    watch starts (it did: the watch then skipped records below the chunks' sequence)."""
    store, _ = pair
    await store.create("w.first", b"1")
    for i in range(5):
        await store.put_chunk(f"chunk-{i}", b"c" * 10)
    async with store.watch("w.") as changes:
        await store.create("w.second", b"2")
        async with asyncio.timeout(10):
            change = await anext(aiter(changes))
    assert change.key == "w.second"
