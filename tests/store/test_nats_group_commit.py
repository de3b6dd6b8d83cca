"""Group commit on NATS: atomic commits planned while a store object has its batches in
flight go out together, in one atomic batch, each with its own expectations.

A group the server refuses stored nothing; each of its commits is then sent alone, for
its own outcome (a commit whose expectation no longer holds is planned again, and a
compare-and-set on a key another connection changed ends in ``ConflictError``). The
server here is the project's nats-server; commits are grouped on it because the tests
say so (``group_commit = True``): 2.12.8 checks several prefix expectations in one
batch right only for short subjects, which these tests use, except the last, which
uses the long subjects of thing MDs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import ServerVersion

from safething.errors import ConflictError, GuardFailedError, LimitExceededError, StoreError
from safething.store import Guard, Quota, Store, Write, open_store
from safething.store import nats as nats_store
from safething.store.nats import NatsStore, checks_batch_prefixes
from safething.store.nats_testing import NatsServer, unique_bucket

QUOTA = dict(max_count=10, max_bytes=1_000)


@pytest.fixture
async def pair(nats_single: NatsServer) -> AsyncIterator[tuple[NatsStore, Store]]:
    """The store under test, grouping its commits, and another connection."""
    url = f"{nats_single.url}?bucket={unique_bucket()}"
    store, other = await open_store(url), await open_store(url)
    assert isinstance(store, NatsStore)
    store.group_commit = True
    try:
        yield store, other
    finally:
        await store.close()
        await other.close()


def _batches(store: NatsStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Every atomic batch the store sends from now on: (messages, stored)."""
    sent: list[tuple[int, bool]] = []
    send = store._send_atomic

    async def counted(messages: list[Any]) -> int:
        try:
            first = await send(messages)
        except nats_store._APIError:
            sent.append((len(messages), False))
            raise
        sent.append((len(messages), True))
        return first

    monkeypatch.setattr(store, "_send_atomic", counted)
    return sent


def _reading(prefix: str, n: int, *, expect: int | None = None) -> list[Write]:
    """A thing's reading in miniature: a pointer and a new history slot, one quota."""
    quota = Quota(prefix, **QUOTA)
    return [
        Write(f"{prefix}p", f"{n}".encode(), expect, quota),
        Write(f"{prefix}s{n}", f"{n}".encode(), None, quota),
    ]


async def _primed(store: NatsStore, prefixes: list[str]) -> dict[str, int]:
    """One reading under each prefix, one after the other: the store remembers them."""
    pointers = {}
    for prefix in prefixes:
        revisions = await store.commit(_reading(prefix, 0), atomic=True)
        assert all(isinstance(r, int) and r > 0 for r in revisions)
        pointers[prefix] = int(revisions[0])
    return pointers


async def test_concurrent_commits_share_batches_and_each_gets_its_revisions(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = pair
    prefixes = [f"g{i}." for i in range(10)]
    await _primed(store, prefixes)
    sent = _batches(store, monkeypatch)
    results = await asyncio.gather(*(store.commit(_reading(p, 1), atomic=True) for p in prefixes))
    assert len(sent) < len(prefixes), sent  # some commits shared a batch
    assert sum(n for n, _ in sent) == 2 * len(prefixes)
    assert all(stored for _, stored in sent)
    for prefix, revisions in zip(prefixes, results, strict=True):
        for key, revision in zip((f"{prefix}p", f"{prefix}s1"), revisions, strict=True):
            record = await store.get(key)
            assert record is not None and record.value == b"1"
            assert record.revision == revision


async def test_a_refused_group_is_sent_again_commit_by_commit(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = pair
    prefixes = ["d.", "e.", "a.", "b.", "c.", "f."]
    pointers = await _primed(store, prefixes)
    # another connection writes under b.: what the store remembers of b. is stale, and
    # the b. commit's compare-and-set on b.p, decided on it, no longer holds
    await other.put("b.p", b"theirs")
    sent = _batches(store, monkeypatch)
    results = await asyncio.gather(
        *(
            store.commit(_reading(p, 1, expect=pointers[p]), atomic=True)
            for p in prefixes  # d. and e. go out at once; the rest wait and are grouped
        )
    )
    assert (8, False) in sent, sent  # the group of a., b., c., f.: refused, nothing stored
    by_prefix = dict(zip(prefixes, results, strict=True))
    refused = by_prefix.pop("b.")
    assert isinstance(refused[0], ConflictError)
    assert (await other.get("b.p")).value == b"theirs"  # type: ignore[union-attr]
    assert await other.get("b.s1") is None
    for prefix, revisions in by_prefix.items():  # the others landed, sent again alone
        assert all(isinstance(r, int) and r > 0 for r in revisions), (prefix, revisions)
        assert (await other.get(f"{prefix}s1")).revision == revisions[1]  # type: ignore[union-attr]


async def test_without_group_commit_each_commit_is_its_own_batch(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = pair
    store.group_commit = False
    prefixes = [f"n{i}." for i in range(6)]
    await _primed(store, prefixes)
    sent = _batches(store, monkeypatch)
    await asyncio.gather(*(store.commit(_reading(p, 1), atomic=True) for p in prefixes))
    assert sent == [(2, True)] * len(prefixes)


def test_commits_are_grouped_on_servers_that_check_several_prefixes_per_batch() -> None:
    fixed = ["2.12.14", "2.12.15", "2.14.4", "2.14.6", "2.15.0", "2.15.1", "2.16.2", "3.0.0"]
    broken = ["2.12.8", "2.12.13", "2.14.0", "2.14.3", "0.0.0-unknown"]
    assert all(checks_batch_prefixes(ServerVersion(v)) for v in fixed)
    assert not any(checks_batch_prefixes(ServerVersion(v)) for v in broken)


async def test_a_commit_expecting_an_empty_prefix_is_never_grouped(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a server without the fix (2.12.8 here) an expectation in a batch could be
    compared with an earlier one's cached answer: two commits each expecting an empty
    prefix (0) in one batch, the second prefix no longer empty, would both be stored
    and the second's quota overrun. Such commits go out alone."""
    store, other = pair
    long = "0123456789abcdef" * 4  # thing MD prefixes are this long
    first, second = f"md.x{long}.e.", f"md.y{long}.e."
    busy = [f"md.b{i}{long}.e." for i in range(2)]
    await _primed(store, busy)
    scan, send = store._scan, store._send_atomic
    release = asyncio.Event()

    async def count_then_slip_in(prefix: str, **options: Any) -> Any:
        counted = await scan(prefix, **options)
        if prefix == second:
            await other.put(f"{second}theirs", b"x")  # lands after the count
        return counted

    async def held(messages: list[Any]) -> int:
        if messages[0].subject.startswith(f"{store._prefix}md.b"):
            await release.wait()  # both batch slots stay taken
        return await send(messages)

    monkeypatch.setattr(store, "_scan", count_then_slip_in)
    monkeypatch.setattr(store, "_send_atomic", held)
    held_back = [asyncio.create_task(store.commit(_reading(p, 1), atomic=True)) for p in busy]
    async with asyncio.timeout(10):
        while store._in_flight < nats_store._BATCHES_IN_FLIGHT:
            await asyncio.sleep(0.01)
    full = Quota(second, max_count=2, max_bytes=100)
    empty = [
        asyncio.create_task(store.commit(_reading(first, 1), atomic=True)),
        asyncio.create_task(
            store.commit([Write(f"{second}{k}", b"y", None, full) for k in "ab"], atomic=True)
        ),
    ]
    await asyncio.wait(empty, timeout=2)  # grouped, they would wait for a slot here
    release.set()
    await asyncio.gather(*held_back)
    _, mine = await asyncio.gather(*empty)
    assert any(isinstance(r, LimitExceededError) for r in mine), mine
    assert not any(isinstance(r, int) for r in mine), mine
    assert await other.usage(second) == (1, 1)


async def test_commits_waiting_for_a_batch_end_when_the_store_closes(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = pair
    busy, waiting = ["w0.", "w1."], ["w2.", "w3.", "w4."]
    await _primed(store, busy + waiting)
    send = store._send_atomic
    release = asyncio.Event()

    async def held(messages: list[Any]) -> int:
        await release.wait()  # the first two take both batch slots and keep them
        return await send(messages)

    monkeypatch.setattr(store, "_send_atomic", held)
    held_back = [asyncio.create_task(store.commit(_reading(p, 1), atomic=True)) for p in busy]
    queued = [asyncio.create_task(store.commit(_reading(p, 1), atomic=True)) for p in waiting]
    async with asyncio.timeout(10):
        while len(store._queued) < len(waiting):
            await asyncio.sleep(0.01)
    closing = asyncio.create_task(store.close())
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    release.set()
    await asyncio.gather(*held_back, return_exceptions=True)
    await closing


async def test_a_guard_travels_with_the_batch_instead_of_being_read_first(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = pair
    header = await store.put("h.header", b"v1")
    reads: list[str] = []
    get = store.get

    async def counted_get(key: str) -> Any:
        reads.append(key)
        return await get(key)

    monkeypatch.setattr(store, "get", counted_get)
    sent = _batches(store, monkeypatch)
    revisions = await store.commit(
        _reading("h.e.", 1), atomic=True, guard=Guard("h.header", header)
    )
    assert all(isinstance(r, int) and r > 0 for r in revisions), revisions
    assert reads == [] and sent == [(2, True)]


async def test_a_guard_rewritten_meanwhile_refuses_the_batch(
    pair: tuple[NatsStore, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, other = pair
    header = await store.put("h.header", b"v1")
    await _primed(store, ["h.e."])
    await other.put("h.header", b"v2")  # the header the writer decided on is gone
    sent = _batches(store, monkeypatch)
    async with asyncio.timeout(10):
        with pytest.raises(GuardFailedError):
            await store.commit(_reading("h.e.", 1), atomic=True, guard=Guard("h.header", header))
    assert sent == [(2, False)]  # the guard went with the batch, which stored nothing
    assert await other.get("h.e.s1") is None
    assert (await other.get("h.e.p")).value == b"0"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["grouped with its guard", "alone", "a plain put"])
async def test_a_write_refused_while_the_server_is_down_is_not_stored_when_it_is_back(
    tmp_path: Path, kind: str
) -> None:
    """nats-py keeps what it is given while it reconnects and sends it once connected
    again. A write that raised ``StoreError`` in an outage was then stored after all,
    once the server was back: a caller writing it again (the gateway replaying the
    readings it buffered) stored it twice, and the thing's next reading one sequence
    number on (tests/gateway/test_nats_store_outage.py on nats-server 2.15.1, where a
    guarded batch no longer reads its guard first, the read that failed in the outage
    before anything was sent). The write is not sent, and the one written again is the
    only one stored."""
    server = NatsServer(tmp_path / "nats")
    await server.start()
    url = f"{server.url}?bucket={unique_bucket()}&timeout=1"
    store, other = await open_store(url), await open_store(url)
    assert isinstance(store, NatsStore)
    store.group_commit = kind != "alone"
    try:
        header = await store.put("h.header", b"v1")
        pointer = (await _primed(store, ["o."]))["o."]
        guard = Guard("h.header", header) if kind == "grouped with its guard" else None

        async def write(value: bytes) -> list[int | Exception]:
            if kind == "a plain put":
                return [await store.put("o.p", value)]
            quota = Quota("o.", **QUOTA)  # as a thing's writes: nothing read first
            return await store.commit(
                [Write("o.p", value, pointer, quota), Write("o.s1", value, None, quota)],
                atomic=True,
                guard=guard,
            )

        await server.kill()
        with pytest.raises(StoreError):
            await write(b"lost")
        await server.start()  # same port, same storage
        async with asyncio.timeout(30):
            while not store._nc.is_connected:
                await asyncio.sleep(0.05)
            # on the same connection, after whatever it kept: stored after it
            await store.put("o.marker", b"m")
        assert (await other.get("o.p")).value == b"0"  # type: ignore[union-attr]
        assert await other.get("o.s1") is None
        revisions = await write(b"again")  # the caller's second try
        assert all(isinstance(r, int) and r > 0 for r in revisions), revisions
        assert (await other.get("o.p")).value == b"again"  # type: ignore[union-attr]
    finally:
        await store.close()
        await other.close()
        await server.stop()
