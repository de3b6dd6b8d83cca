"""Archived history: values older than the ring, in signed segments found by a signed index."""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from safething.errors import AccessDeniedError, LimitExceededError, TamperedDataError
from safething.net import Action, Client, Identity, XorName
from safething.net.codec import encode_record
from safething.net.immutable import put_chunk
from safething.store import Store, open_store
from safething.things import Thing, ThingClient
from safething.things.history import (
    DAY_S,
    SegmentRow,
    append_row,
    decode_index,
    downsample,
    encode_index,
    encode_row,
    index_key,
    make_segment,
)

from .conftest import garden_description


async def test_history_outlasts_the_ring_and_a_restart(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db"
    owner, device = Identity.generate(), Identity.generate()
    async with Thing(garden_description(history=8), identity=device, owner=owner, store=url) as t:
        await t.register()
        for i in range(50):
            await t.set("moisture", float(i))
        for i in range(20):
            await t.notify("VeryDryAlarm", float(i))
    async with Thing(garden_description(history=8), identity=device, owner=owner, store=url) as t:
        await t.register()  # a restart: the ring's unarchived values are picked up again
        for i in range(50, 75):
            await t.set("moisture", float(i))
    async with await open_store(url) as store, ThingClient(Client(store)) as reader:
        ring = await reader.history("garden-01", "moisture")
        assert [r.value for r in ring] == [float(i) for i in range(67, 75)]
        everything = await reader.history("garden-01", "moisture", since=0)
        assert [r.value for r in everything] == [float(i) for i in range(75)]
        assert [r.seq for r in everything] == list(range(1, 76))
        times = [r.timestamp for r in everything]
        assert times == sorted(times)
        events = await reader.event_history("garden-01", "VeryDryAlarm", since=0)
        assert [n.value for n in events] == [float(i) for i in range(20)]
        # a time window: only the values stamped inside it
        window = await reader.history("garden-01", "moisture", since=times[10], until=times[19])
        assert [r.value for r in window] == [float(i) for i in range(10, 20)]
        # within the MD limits: one index entry per stream and day
        history_md = Client(store).md(*_history_address("garden-01"))
        assert len(await history_md.keys()) == 2


def _history_address(thing_id: str) -> tuple[object, int]:
    from safething.things.layout import ThingAddresses

    a = ThingAddresses.of(thing_id).history
    return a.name, a.tag


async def test_downsampled_to_buckets(garden: Thing, stranger: ThingClient) -> None:
    for i in range(30):
        await garden.set("moisture", float(i))
    [bucket] = await stranger.history("garden-01", "moisture", since=0, every=10 * DAY_S)
    assert (bucket.count, bucket.min, bucket.max, bucket.last) == (30, 0.0, 29.0, 29.0)
    assert bucket.mean == pytest.approx(14.5)


def test_downsample_buckets_min_max_mean() -> None:
    points = [(1, 100.0, 1.0), (2, 101.0, 3.0), (3, 110.0, 10.0), (4, 135.0, 7), (5, 136.0, "x")]
    buckets = downsample(points, every=10, origin=100)
    assert [(b.start, b.count, b.min, b.max, b.mean) for b in buckets] == [
        (100, 2, 1.0, 3.0, 2.0),
        (110, 1, 10.0, 10.0, 10.0),
        (130, 2, 7.0, 7.0, 7.0),
    ]
    assert buckets[-1].last == "x"
    with pytest.raises(ValueError, match="positive"):
        downsample(points, every=0, origin=0)


async def test_owner_history_is_encrypted(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db"
    owner, device = Identity.generate(), Identity.generate()
    async with Thing(garden_description(history=4), identity=device, owner=owner, store=url) as t:
        await t.register()
        for i in range(70):
            await t.set("secret_code", f"correct-horse-{i}")
    async with await open_store(url) as store:
        db = sqlite3.connect(f"{tmp_path}/vault.db")
        chunks = [bytes(d) for (d,) in db.execute("SELECT data FROM chunks")]
        db.close()
        assert len(chunks) == 2  # the archive is there (2 x 32 values) ...
        assert not any(b"correct-horse" in c for c in chunks)  # ... and sealed
        async with ThingClient(Client(store, Identity.generate())) as stranger:
            with pytest.raises(AccessDeniedError):
                await stranger.history("garden-01", "secret_code", since=0)
        async with ThingClient(Client(store, owner)) as me:
            values = [r.value for r in await me.history("garden-01", "secret_code", since=0)]
            assert values == [f"correct-horse-{i}" for i in range(70)]


async def test_a_tampered_segment_is_refused(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db"
    owner, device = Identity.generate(), Identity.generate()
    async with Thing(garden_description(history=4), identity=device, owner=owner, store=url) as t:
        await t.register()
        for i in range(9):
            await t.set("moisture", float(i))
    async with await open_store(url) as store, ThingClient(Client(store)) as reader:
        assert len(await reader.history("garden-01", "moisture", since=0)) == 9
        # the attacker holds the SQLite file: it rewrites a segment's bytes in place
        db = sqlite3.connect(f"{tmp_path}/vault.db")
        address, data = db.execute("SELECT address, data FROM chunks LIMIT 1").fetchone()
        forged = bytes(data).replace(b"\xf9", b"\xfa", 1) if b"\xf9" in data else data + b"\0"
        db.execute("UPDATE chunks SET data = ? WHERE address = ?", (forged, address))
        db.commit()
        db.close()
    async with await open_store(url) as store, ThingClient(Client(store)) as reader:
        with pytest.raises(TamperedDataError):
            await reader.history("garden-01", "moisture", since=0)


async def _write_index(
    client: Client, thing_id: str, day: int, chunk: bytes, row: object, *, store: Store
) -> None:
    name, tag = _history_address(thing_id)
    await put_chunk(store, chunk)
    md = client.md(name, tag)  # type: ignore[arg-type]
    key = index_key("a", "moisture", day)
    await md.put(key, encode_index([row]))  # type: ignore[list-item]


async def test_index_written_by_someone_else_is_refused(
    garden: Thing, store: Store, owner: Identity
) -> None:
    """Even with write permission on the history MD (granted by mistake), an identity
    that is neither the thing nor its owner cannot plant history."""
    for i in range(3):
        await garden.set("moisture", float(i))
    intruder = Identity.generate("intruder")
    name, tag = _history_address("garden-01")
    await (
        Client(store, owner)
        .md(name, tag)
        .set_permissions(intruder.public_sign_key, Action.INSERT | Action.UPDATE)
    )
    now = time.time()
    points = [(1000, now, 99.0)]
    from safething.things.access import KeyRing

    chunk, row = make_segment(
        signer=intruder.sign_key,
        thing_id="garden-01",
        kind="a",
        name="moisture",
        level=None,
        ring=KeyRing(intruder.encryption_key),
        points=points,
    )
    await _write_index(
        Client(store, intruder), "garden-01", int(now // DAY_S), chunk, row, store=store
    )
    async with ThingClient(Client(store)) as reader:
        with pytest.raises(TamperedDataError, match="neither the thing nor its owner"):
            await reader.history("garden-01", "moisture", since=0)


async def test_segment_not_signed_by_the_thing_is_refused(
    garden: Thing, store: Store, owner: Identity
) -> None:
    """The owner may write the index, but a segment must carry the thing's signature."""
    from safething.things.access import KeyRing

    now = time.time()
    chunk, row = make_segment(
        signer=owner.sign_key,
        thing_id="garden-01",
        kind="a",
        name="moisture",
        level=None,
        ring=KeyRing(owner.encryption_key),
        points=[(1, now, 42.0)],
    )
    await _write_index(
        Client(store, owner), "garden-01", int(now // DAY_S), chunk, row, store=store
    )
    async with ThingClient(Client(store)) as reader:
        with pytest.raises(TamperedDataError, match="not signed by the thing"):
            await reader.history("garden-01", "moisture", since=0)


async def test_a_segment_of_another_stream_is_refused(garden: Thing, store: Store) -> None:
    """A thing-signed segment of one attribute, listed under another, is refused."""
    for i in range(8):
        await garden.set("moisture", float(i))
    name, tag = _history_address("garden-01")
    md = garden.client.md(name, tag)
    [key] = [k for k in await md.keys() if k.startswith(b"a/moisture/")]
    rows = decode_index(await md.get_value(key), "test")
    await md.put(key.replace(b"moisture", b"target"), encode_index(rows))
    async with ThingClient(Client(store)) as reader:
        with pytest.raises(TamperedDataError, match="not the one its index row names"):
            await reader.history("garden-01", "target", since=0)


async def test_retention_purges_old_index_entries(store: Store, owner: Identity) -> None:
    async with Thing(
        garden_description(history=4), identity=Identity.generate(), owner=owner, store=store
    ) as t:
        await t.register()
        name, tag = _history_address("garden-01")
        md = t.client.md(name, tag)
        old_day = int(time.time() // DAY_S) - 40
        await md.put(index_key("a", "moisture", old_day), encode_index([]))
        for i in range(4):
            await t.set("moisture", float(i))
        keys = await md.keys()
        assert index_key("a", "moisture", old_day) not in keys
        assert any(k.startswith(b"a/moisture/") for k in keys)


async def test_retention_must_fit_the_md(store: Store, owner: Identity) -> None:
    with pytest.raises(ValueError, match="positive"):
        Thing(garden_description(), identity=Identity.generate(), retention_days=0)
    async with Thing(
        garden_description(), identity=Identity.generate(), store=store, retention_days=400
    ) as t:
        with pytest.raises(LimitExceededError, match="keep fewer days"):
            await t.register()


def test_segment_body_is_small() -> None:
    """Delta-coded columns: a minute's reading costs a few bytes."""
    from safething.things.access import KeyRing

    me = Identity.generate()
    points = [(n, 1_800_000_000 + 60.0 * n, 20.0 + (n % 7) * 0.5) for n in range(1, 501)]
    chunk, _ = make_segment(
        signer=me.sign_key,
        thing_id="x",
        kind="a",
        name="t",
        level=None,
        ring=KeyRing(me.encryption_key),
        points=points,
    )
    assert len(chunk) < 500 * 6
    assert cbor2.loads(chunk)["t"] == "hseg"
    assert encode_record("hseg", {}) != chunk


async def test_a_failing_archive_does_not_fail_the_write(store: Store, owner: Identity) -> None:
    """The history MD disappears from the store: values are still written and read;
    their archiving waits (in bounded memory) instead of failing set()."""
    async with Thing(
        garden_description(history=4), identity=Identity.generate(), owner=owner, store=store
    ) as t:
        await t.register()
        name, tag = _history_address("garden-01")
        md = t.client.md(name, tag)
        for key in await store.keys(md.address.prefix):
            await store.delete(key)
        for i in range(10):
            assert await t.set("moisture", float(i)) == i + 1
        assert (await ThingClient(Client(store)).read("garden-01", "moisture")).value == 9.0
        [stream] = [s for s in t._archive._streams.values() if s.name == "moisture"]
        assert [p[2] for p in stream.pending] == [float(i) for i in range(10)]


async def test_an_index_entry_changed_by_the_owner_is_read_back_not_overwritten(
    store: Store, owner: Identity
) -> None:
    """The archivist remembers the index entry it wrote and rewrites it with a
    compare-and-set: rows the owner added in between are kept."""
    async with Thing(
        garden_description(history=4), identity=Identity.generate(), owner=owner, store=store
    ) as t:
        await t.register()
        for i in range(4):
            await t.set("moisture", float(i))
        name, tag = _history_address("garden-01")
        as_owner = Client(store, owner).md(name, tag)
        [key] = [k for k in await as_owner.keys() if k.startswith(b"a/moisture/")]
        (first,) = decode_index(await as_owner.get_value(key), "test")
        added = SegmentRow(1000, 1001, first.t0, first.t0, 2, first.address)
        await as_owner.put(key, encode_index([first, added]))
        for i in range(4, 8):
            await t.set("moisture", float(i))
        rows = decode_index(await as_owner.get_value(key), "test")
        assert rows[:2] == [first, added] and len(rows) == 3
        assert (rows[2].first, rows[2].last) == (5, 8)


def _held(obj: Any, seen: set[int]) -> int:
    """Bytes of ``obj`` and of what it holds (containers, dataclasses; each object once)."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, tuple | list | set | frozenset):
        return size + sum(_held(o, seen) for o in obj)
    if isinstance(obj, dict):
        return size + sum(_held(k, seen) + _held(v, seen) for k, v in obj.items())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return size + sum(_held(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return size


async def test_the_archivist_holds_the_days_index_as_the_bytes_it_wrote(
    store: Store, owner: Identity
) -> None:
    """What the archivist keeps of the day's index entry between segments grows by what
    a segment adds to the stored entry, not by row objects as well: kept as rows, the
    gateway soak's memory grew about 18 bytes a reading all day (issue 14)."""
    async with Thing(
        garden_description(history=4), identity=Identity.generate(), owner=owner, store=store
    ) as t:
        await t.register()
        name, tag = _history_address("garden-01")
        md = t.client.md(name, tag)
        held, stored = [], []
        for _ in range(2):
            for i in range(400):  # a segment every 4 readings: 100 segments
                await t.set("moisture", float(i % 100))
            [key] = [k for k in await md.keys() if k.startswith(b"a/moisture/")]
            stored.append(len(await md.get_value(key)))
            held.append(_held(t._archive._streams, set()))
        assert len(decode_index(await md.get_value(key), "test")) == 200
    # 100 segments more: the entry grew by their rows' CBOR; what is held, by as much
    # (and a few bytes of slack), not by a row object, its address and its CBOR besides
    assert held[1] - held[0] <= stored[1] - stored[0] + 512


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 300])
def test_an_index_entry_built_from_kept_rows_is_the_record_encoded_whole(n: int) -> None:
    """The archivist appends one row's CBOR to the ones it kept: the very bytes
    ``encode_record`` makes of the whole list (readers and signatures see no change)."""
    rows = [
        SegmentRow(8 * i + 1, 8 * i + 8, 1.7e9 + i, 1.7e9 + i + 0.25, 8, XorName.of(str(i)))
        for i in range(n)
    ]
    whole = encode_record("hindex", {"rows": [r.to_list() for r in rows]})
    assert encode_index(rows) == whole
    assert encode_index(rows, tuple(encode_row(r) for r in rows)) == whole
    assert decode_index(whole, "index") == rows
    if rows:  # and one row appended to the bytes of the others
        assert append_row(encode_index(rows[:-1]), n - 1, rows[-1]) == whole


@pytest.mark.parametrize("n", [65_535, 65_536])
def test_the_rows_array_head_is_cbors_own(n: int) -> None:
    from safething.things.history import _array_head

    assert _array_head(n) == bytes(cbor2.dumps([0] * n))[: len(_array_head(n))]
    assert bytes(cbor2.dumps([0] * n)).endswith(b"\x00" * n)
    assert len(bytes(cbor2.dumps([0] * n))) == len(_array_head(n)) + n
