from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from safething.errors import (
    ConflictError,
    EntryExistsError,
    LimitExceededError,
    NoSuchDataError,
    NoSuchEntryError,
    PermissionDeniedError,
    ReservedTypeTagError,
    TamperedDataError,
)
from safething.net import (
    ANYONE,
    MAX_ENTRIES,
    MAX_MD_BYTES,
    TAG_THING,
    Action,
    Client,
    Identity,
    MDAddress,
    SecretKey,
    XorName,
)
from safething.net import client as client_module
from safething.net.records import EntryRecord, PrivateCodec
from safething.store import Store, open_store
from safething.store.sqlite import SQLiteStore

NAME = XorName.of("thing-0001")


async def test_insert_get_update_delete(client: Client, alice: Identity) -> None:
    md = await client.create_md(NAME, TAG_THING)
    e0 = await md.insert("moisture", b"4.2")
    assert (e0.version, e0.value, e0.signer) == (0, b"4.2", alice.public_sign_key)
    assert (await md.get("moisture")).value == b"4.2"
    e1 = await md.update("moisture", "4.3")
    assert e1.version == 1
    assert await md.get_value(b"moisture") == b"4.3"
    with pytest.raises(EntryExistsError, match="use update"):
        await md.insert("moisture", b"1")
    with pytest.raises(NoSuchEntryError):
        await md.update("missing", b"1")
    deleted = await md.delete("moisture")
    assert deleted.deleted and deleted.version == 2
    with pytest.raises(NoSuchEntryError, match="deleted"):
        await md.get("moisture")
    assert (await md.get("moisture", include_deleted=True)).version == 2
    again = await md.put("moisture", b"5")
    assert again.version == 3 and not again.deleted
    assert set(await md.entries()) == {b"moisture"}


async def test_create_mds_in_one_commit(store: Store, client: Client, bob: Identity) -> None:
    taken = XorName.of("taken")
    await Client(store, bob).create_md(taken, TAG_THING)
    first, second, third = await client.create_mds(
        [
            (NAME, TAG_THING, {ANYONE: "insert"}),
            (taken, TAG_THING, None),
            (NAME, TAG_THING + 1, None),
        ]
    )
    assert second is None  # as create_md would raise EntryExistsError
    assert first is not None and third is not None
    assert (await first.header()).allows(bob.public_sign_key, Action.INSERT)
    await first.insert("k", "v")
    assert await Client(store).md(NAME, TAG_THING).get_value("k") == b"v"
    with pytest.raises(PermissionDeniedError):
        await client.md(taken, TAG_THING).insert("k", "v")


async def test_put_many_and_entries(client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    items = {f"k{i}": f"v{i}" for i in range(100)}
    written = await md.put_many(items)
    assert [e.version for e in written] == [0] * 100
    again = await md.put_many({"k1": "x", "k2": "y", "new": "z"})
    assert [e.version for e in again] == [1, 1, 0]
    entries = await md.entries()
    assert len(entries) == 101
    assert entries[b"k1"].value == b"x" and entries[b"k50"].value == b"v50"
    assert (await md.usage())[0] == 101


async def test_a_second_reader_verifies(store: Store, client: Client, alice: Identity) -> None:
    md = await client.create_md(NAME, TAG_THING, permissions={ANYONE: "read"})
    await md.insert("a", "1")
    reader = Client(store)  # no identity: read-only
    other = reader.md(NAME, TAG_THING, owner=alice.public_sign_key)
    assert await other.get_value("a") == b"1"
    with pytest.raises(PermissionDeniedError, match="only read"):
        await other.put("a", "2")
    with pytest.raises(NoSuchDataError):
        await reader.md(XorName.of("nope"), TAG_THING).get("a")


async def test_permissions_are_enforced_for_writers(
    store: Store, client: Client, bob: Identity
) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.insert("a", "1")
    bobs = Client(store, bob).md(NAME, TAG_THING)
    with pytest.raises(PermissionDeniedError, match="may not insert"):
        await bobs.insert("b", "1")
    await md.set_permissions(bob.public_sign_key, "insert")
    await bobs.insert("b", "1")
    with pytest.raises(PermissionDeniedError, match="may not update"):
        await bobs.update("a", "2")
    with pytest.raises(PermissionDeniedError, match="owner"):
        await bobs.set_permissions(bob.public_sign_key, "all")
    await md.set_permissions(bob.public_sign_key, Action.INSERT | Action.UPDATE)
    await bobs.update("a", "2")
    assert (await md.header()).version == 2
    assert await md.get_value("a") == b"2"


async def test_revoked_writer_entries_are_refused(
    store: Store, client: Client, bob: Identity
) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.set_permissions(bob.public_sign_key, "insert")
    await Client(store, bob).md(NAME, TAG_THING).insert("b", "1")
    await md.set_permissions(bob.public_sign_key, Action.NONE)
    fresh = Client(store).md(NAME, TAG_THING)
    assert await fresh.entries(skip_tampered=True) == {}
    with pytest.raises(Exception, match="lacks insert permission"):
        await fresh.get("b")


async def test_an_entry_read_before_its_writer_was_revoked_is_refused_after(
    store: Store, client: Client, bob: Identity
) -> None:
    """A reader keeps what it verified, to skip checking the same bytes again; that
    holds only under the header it checked them with."""
    md = await client.create_md(NAME, TAG_THING)
    await md.set_permissions(bob.public_sign_key, "insert")
    await Client(store, bob).md(NAME, TAG_THING).insert("b", "1")
    reader = Client(store).md(NAME, TAG_THING)
    assert await reader.get_value("b") == b"1"
    await md.set_permissions(bob.public_sign_key, Action.NONE)
    with pytest.raises(TamperedDataError, match="lacks insert permission"):
        await reader.get("b")
    assert await reader.entries(skip_tampered=True) == {}


async def test_a_client_keeps_at_most_its_bound_of_known_entries(client: Client) -> None:
    """What a client keeps of the entries it verified or wrote (the compare-and-set
    expectation of its next write, the digest that spares a second signature check)
    is bounded: up to ``_KNOWN_MAX`` store keys, never one more, whatever it reads."""
    md = await client.create_md(NAME, TAG_THING)
    entry = await md.insert("a", "1")
    bound = client_module._KNOWN_MAX
    for i in range(bound):
        client._remember(f"{md.address.entry_prefix}{i:x}", entry, i)
    assert len(client._known) == bound  # all kept up to the bound
    client._remember(f"{md.address.entry_prefix}more", entry, 0)
    assert 1 <= len(client._known) <= bound


async def test_private_md_hides_keys_and_values(store: Store, client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING, private=True)
    assert md.secret is not None
    await md.insert("front-door-code", "1234-secret")
    assert await md.get_value("front-door-code") == b"1234-secret"
    dump = b"".join(r.key.encode() + r.value for r in await store.scan(""))
    assert b"front-door-code" not in dump and b"front-door-code".hex().encode() not in dump
    assert b"1234-secret" not in dump
    # without the key: refused, clearly
    with pytest.raises(PermissionDeniedError, match="private"):
        await Client(store).md(NAME, TAG_THING).get("front-door-code")
    # with the key: a second reader decrypts
    reader = Client(store).md(NAME, TAG_THING, secret=md.secret)
    assert (await reader.entries())[b"front-door-code"].value == b"1234-secret"


async def test_limits_before_anything_is_written(client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    with pytest.raises(LimitExceededError, match="ImmutableData"):
        await md.insert("big", b"x" * (1024 * 1024 + 1))
    with pytest.raises(LimitExceededError, match="entry key"):
        await md.insert(b"k" * 300, b"x")
    assert await md.entries() == {}
    await md.put_many({f"k{i}": b"" for i in range(MAX_ENTRIES)})
    with pytest.raises(LimitExceededError, match="is full") as info:
        await md.insert("one-too-many", b"x")
    assert info.value.limit == MAX_ENTRIES
    assert (await md.usage())[0] == MAX_ENTRIES
    # large values: the byte limit
    big = await client.create_md(XorName.of("big"), TAG_THING)
    await big.insert("a", b"x" * 600_000)
    with pytest.raises(LimitExceededError, match="bytes"):
        await big.insert("b", b"x" * 600_000)
    # an atomic batch of keys assumed new (not read first) is refused as over the limit
    with pytest.raises(LimitExceededError, match="bytes"):
        await big.put_many({"b": b"x" * 600_000, "c": b"y"}, atomic=True, assume_new=["b", "c"])
    assert set(await big.entries()) == {b"a"}


async def test_one_record_may_fill_an_md_exactly(client: Client, alice: Identity) -> None:
    md = await client.create_md(NAME, TAG_THING)
    sample = EntryRecord.create(
        md.address,
        signer=alice.sign_key,
        stored_key=b"k",
        sealed_key=None,
        stored_value=b"x" * 100_000,
        version=0,
    )
    fits = MAX_MD_BYTES - (len(sample.to_bytes()) - 100_000)  # the record is then the limit
    with pytest.raises(LimitExceededError, match=f"value of {fits + 1} bytes .* ImmutableData"):
        await md.insert("k", b"x" * (fits + 1))
    await md.insert("k", b"x" * fits)
    assert await md.usage() == (1, MAX_MD_BYTES)


async def test_reserved_type_tags_and_bad_input(client: Client) -> None:
    with pytest.raises(ReservedTypeTagError, match="reserved"):
        await client.create_md(NAME, 10_000)
    with pytest.raises(ReservedTypeTagError):
        client.md(NAME, 5)
    with pytest.raises(TypeError, match="integer"):
        MDAddress(NAME, "27417")  # type: ignore[arg-type]
    md = await client.create_md(NAME, TAG_THING)
    with pytest.raises(TypeError, match="bytes or str"):
        await md.insert("k", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        await md.insert("", b"x")
    with pytest.raises(EntryExistsError, match="already exists"):
        await client.create_md(NAME, TAG_THING)


async def test_concurrent_modifiers_lose_no_update(store: Store, alice: Identity) -> None:
    md = await Client(store, alice).create_md(NAME, TAG_THING)
    await md.insert("counter", b"0")
    writers = [Client(store, alice).md(NAME, TAG_THING) for _ in range(2)]

    async def bump(handle: object, n: int) -> None:
        for _ in range(n):
            await handle.modify("counter", lambda v: str(int(v or b"0") + 1))  # type: ignore[attr-defined]

    await asyncio.gather(bump(writers[0], 25), bump(writers[1], 25))
    final = await md.get("counter")
    assert final.value == b"50"
    assert final.version == 50


async def test_versioned_update_conflicts(client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.insert("a", "1")
    await md.update("a", "2", version=0)
    with pytest.raises(ConflictError):
        await md.update("a", "3", version=0)
    # "must not exist yet" names version -1 in the error, the version found as current
    with pytest.raises(ConflictError) as info:
        await md.put_many({"a": "4"}, versions={"a": None})
    assert (info.value.expected, info.value.current) == (-1, 1)
    with pytest.raises(ConflictError) as info:
        await md.put_many({"new": "4"}, versions={"new": 0})
    assert (info.value.expected, info.value.current) == (0, -1)
    # a version above the current one is no version the caller read either
    with pytest.raises(ConflictError) as info:
        await md.update("a", "5", version=2)
    assert (info.value.expected, info.value.current) == (2, 1)
    with pytest.raises(ConflictError):
        await md.delete("a", version=7)
    assert (await md.get("a")).value == b"2"


async def test_versions_compare_by_value_beyond_small_integers(client: Client) -> None:
    """Versions above 256 are separate int objects in CPython: compared by value."""
    md = await client.create_md(NAME, TAG_THING)
    client.trust.set_entry_version(md.address.entry_key(b"a"), 299)
    assert (await md.insert("a", "1")).version == 300  # past the version last verified
    read = (await md.get("a")).version
    assert (await md.update("a", "2", version=int(str(read)))).version == 301
    assert (await md.put_many({"a": "3"}, versions={"a": int("301")}))[0].version == 302


async def test_a_delete_that_lost_a_race_deletes_the_newer_version(
    store: Store, client: Client, alice: Identity
) -> None:
    """The store refuses a delete whose entry another writer updated since this client
    read it (compare-and-set): the delete is decided again and deletes the newer
    version, as an update would be written past it; only ``insert`` says "exists"."""
    md = await client.create_md(NAME, TAG_THING)
    await md.put("a", "0")
    await md.put("b", "0")
    other = Client(store, alice).md(NAME, TAG_THING)
    await other.put("a", "1")  # md's idea of "a" and "b" is now stale
    await other.put("b", "1")
    deleted = await md.delete("a")
    assert deleted.deleted and deleted.version == 2
    assert (await md.update("b", "2")).version == 2
    entries = await Client(store).md(NAME, TAG_THING).entries(include_deleted=True)
    assert {k: (e.version, e.value) for k, e in entries.items()} == {
        b"a": (2, None),
        b"b": (2, b"2"),
    }


async def test_a_write_through_the_wrong_kind_of_handle_is_refused_at_once(
    store: Store, client: Client, alice: Identity
) -> None:
    """A private MD written without its secret, a public one with a secret: refused at
    once, saying why, whether the header comes from the store (a client that read
    nothing yet) or is the one this client keeps from a write through the right handle
    (then checked again against the store's); nothing is written."""
    private = await client.create_md(NAME, TAG_THING, private=True)
    public = await client.create_md(XorName.of("public"), TAG_THING)
    assert private.secret is not None
    fresh = Client(store, alice)
    for writer in (fresh, client):  # nothing kept, then the header kept
        if writer is client:
            await private.put("a", "1")
            await public.put("a", "1")
        with pytest.raises(PermissionDeniedError, match="private; open it with its secret"):
            await writer.md(NAME, TAG_THING).put("b", "2")
        with pytest.raises(TamperedDataError, match="opened as private but its header says"):
            await writer.md(public.address.name, TAG_THING, secret=private.secret).put("b", "2")
    assert set(await private.entries()) == {b"a"}
    assert set(await public.entries()) == {b"a"}


async def test_watch_yields_verified_changes(store: Store, client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    reader = Client(store).md(NAME, TAG_THING)
    async with reader.watch() as changes:
        await md.insert("a", "1")
        await md.update("a", "2")
        await md.insert("b", "x")
        seen = []
        async with asyncio.timeout(5):
            async for entry in changes:
                seen.append((entry.key, entry.value))
                if entry.key == b"b":
                    break
    assert seen[-1] == (b"b", b"x")
    assert (b"a", b"2") in seen


async def test_watch_skips_a_forged_change_and_goes_on(store: Store, client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    reader_client = Client(store)
    reader = reader_client.md(NAME, TAG_THING)
    async with reader.watch() as changes:
        # the store writes a record of its own under an entry's key, then the owner writes
        await store.put(md.address.entry_key(b"forged"), b"not a signed entry record")
        await md.insert("a", "1")
        async with asyncio.timeout(5):
            first = await anext(changes)
    assert (first.key, first.value) == (b"a", b"1")
    assert reader_client.tampered_count == 1


async def test_an_atomic_batch_that_lost_a_race_is_decided_again(
    store: Store, client: Client, alice: Identity
) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.put_many({"a": "1", "b": "1"})
    await Client(store, alice).md(NAME, TAG_THING).put("a", "2")  # another writer, meanwhile
    written = await md.put_many({"a": "3", "b": "3"}, atomic=True)
    assert [e.version for e in written] == [2, 1]
    assert {k: e.value for k, e in (await md.entries()).items()} == {b"a": b"3", b"b": b"3"}
    # a refusal other than a lost race is the caller's to see, and nothing is written
    await md.insert("big", b"x" * 600_000)
    with pytest.raises(LimitExceededError):
        await md.put_many({"bigger": b"x" * 600_000, "c": "1"}, atomic=True)
    assert set(await md.entries()) == {b"a", b"b", b"big"}


async def _put_signed(
    store: Store, address: MDAddress, signer: Identity, key: bytes, value: bytes, version: int
) -> None:
    """A public entry record signed by ``signer``, written straight into the store."""
    record = EntryRecord.create(
        address,
        signer=signer.sign_key,
        stored_key=key,
        sealed_key=None,
        stored_value=value,
        version=version,
    )
    await store.put(address.entry_key(key), record.to_bytes())


async def test_keys_assumed_new_are_not_read_unless_they_exist(
    store: Store, client: Client, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``assume_new``: a key the writer holds no version of is written as new without a
    read; one that exists after all (another writer's, or a forged record) is refused by
    the store's compare-and-set, then read, verified and written past, as if read first."""
    md = await client.create_md(NAME, TAG_THING)
    await md.put_many({"p": "0", "s1": "other", "s2": "other"})
    await _put_signed(store, md.address, Identity.generate(), b"s3", b"mallory's", 7)
    writer = Client(store, alice)  # the same identity, nothing read yet (a restart)
    wmd = writer.md(NAME, TAG_THING)
    reads: list[str] = []
    get = store.get

    async def counted(key: str) -> Any:
        reads.append(key)
        return await get(key)

    monkeypatch.setattr(store, "get", counted)
    (p, s0) = await wmd.put_many(
        {"p": "1", "s0": "1"}, versions={"p": 0}, atomic=True, assume_new=["s0"]
    )
    assert (p.version, s0.version) == (1, 0)
    assert md.address.entry_key(b"s0") not in reads  # not read: it was new
    assert md.address.entry_key(b"p") in reads
    # it exists (another writer's): refused by the store, read, written past it
    (p, s1) = await wmd.put_many(
        {"p": "2", "s1": "2"}, versions={"p": 1}, atomic=True, assume_new=["s1"]
    )
    assert (p.version, s1.version) == (2, 1)
    assert md.address.entry_key(b"s1") in reads
    (s2,) = await wmd.put_many({"s2": "3"}, assume_new=["s2"])  # not atomic: the same
    assert s2.version == 1
    # a forged record under the key: read, refused and counted, written past
    (s3,) = await wmd.put_many({"s3": "4"}, atomic=True, assume_new=["s3"])
    assert s3.version == 1 and writer.tampered_count == 1
    reader = Client(store).md(NAME, TAG_THING)
    assert {k: (e.version, e.value) for k, e in (await reader.entries()).items()} == {
        b"p": (2, b"2"),
        b"s0": (0, b"1"),
        b"s1": (1, b"2"),
        b"s2": (1, b"3"),
        b"s3": (1, b"4"),
    }


@pytest.mark.parametrize("as_bytes", [False, True])
async def test_keys_assumed_new_that_all_exist_cost_one_round_more(
    store: Store, client: Client, alice: Identity, monkeypatch: pytest.MonkeyPatch, as_bytes: bool
) -> None:
    """Eight keys assumed new that all exist: the store refuses each by its own key, and
    the writer takes back exactly that key's assumption (not another of the batch's), so
    one round of reads and writes follows the refused one, not one round per key. The
    batch in the keys' order, then in reverse (a writer that took back the first or the
    last key of the others instead would need a round per key)."""
    md = await client.create_md(NAME, TAG_THING)
    # bytes keys reach the writer as the very objects given (str keys are encoded anew)
    keys: list[Any] = [b"slot%d" % i if as_bytes else f"slot{i}" for i in range(8)]
    await md.put_many(dict.fromkeys(keys, "old"))
    commits = 0
    commit = store.commit

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal commits
        commits += 1
        return await commit(*args, **kwargs)

    monkeypatch.setattr(store, "commit", counted)
    for version, order in enumerate((keys, keys[::-1]), start=1):
        wmd = Client(store, alice).md(NAME, TAG_THING)  # nothing read yet (a restart)
        commits = 0
        written = await wmd.put_many(dict.fromkeys(order, "new"), assume_new=order)
        assert [(e.version, e.value) for e in written] == [(version, b"new")] * 8
        assert commits == 2


async def test_a_writer_with_update_rights_writes_over_a_forged_entry(
    store: Store, client: Client, alice: Identity, bob: Identity
) -> None:
    """The store put a record nobody entitled signed under an entry's key: a writer that
    may only update (not insert) replaces it, past version 0 (an update)."""
    md = await client.create_md(NAME, TAG_THING, permissions={bob.public_sign_key: "update"})
    await md.insert("a", "1")
    mallory = Identity.generate()
    forged = EntryRecord.create(
        md.address,
        signer=mallory.sign_key,
        stored_key=b"a",
        sealed_key=None,
        stored_value=b"mallory's",
        version=7,
    )
    await store.put(md.address.entry_key(b"a"), forged.to_bytes())
    bobs = Client(store, bob)
    written = await bobs.md(NAME, TAG_THING).update("a", "bob's")
    assert (written.version, written.value) == (1, b"bob's")
    assert bobs.tampered_count == 1
    assert (await Client(store).md(NAME, TAG_THING).get("a")).value == b"bob's"


async def test_a_watch_of_some_keys_passes_over_the_others(store: Store, client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    reader = Client(store).md(NAME, TAG_THING)
    async with reader.watch(prefixes=(b"door/",)) as changes:
        await md.insert("window/1", "open")
        await md.insert("door/1", "shut")
        async with asyncio.timeout(5):
            first = await anext(changes)
    assert (first.key, first.value) == (b"door/1", b"shut")


async def test_a_watch_of_one_key_yields_only_that_entry_verified(
    store: Store, client: Client
) -> None:
    md = await client.create_md(NAME, TAG_THING)
    reader_client = Client(store)
    reader = reader_client.md(NAME, TAG_THING)
    async with reader.watch_key(b"status") as changes:
        await md.insert("statusx", "not this one")
        await md.insert("moisture", "4.2")
        await md.insert("status", "published")
        async with asyncio.timeout(5):
            first = await anext(changes)
        assert (first.key, first.value) == (b"status", b"published")
        # the store writes a record of its own under the watched key: refused, not yielded
        await store.put(md.address.entry_key(b"status"), b"not a signed entry record")
        forged = asyncio.ensure_future(anext(changes))
        async with asyncio.timeout(5):
            while reader_client.tampered_count == 0:
                await asyncio.sleep(0.01)
        assert not forged.done()
        forged.cancel()


async def test_a_watch_of_one_key_reads_no_change_log_for_the_others(tmp_path: Path) -> None:
    """On SQLite the store filters an exact key's watch where the change log is: writes
    to the MD's other entries neither wake it nor make it read the log (a thing's
    status follower read it once per attribute written)."""
    async with await open_store(f"sqlite:///{tmp_path}/s.db") as sqlite:
        assert isinstance(sqlite, SQLiteStore)
        md = await Client(sqlite, Identity.generate()).create_md(NAME, TAG_THING)
        reads: list[str] = []
        feed = sqlite._feed

        def counted(prefix: str, after: int, glob: str | None = None) -> Any:
            reads.append(prefix)
            return feed(prefix, after, glob)

        sqlite._feed = counted  # type: ignore[method-assign]
        async with md.watch_key(b"status") as changes:
            waiting = asyncio.ensure_future(anext(changes))
            await asyncio.sleep(0.05)
            before = len(reads)  # the first read, of what came before the watch
            for i in range(20):
                await md.put("moisture", str(i))
            await asyncio.sleep(0.05)
            assert not waiting.done() and len(reads) == before
            await md.insert("status", "published")
            async with asyncio.timeout(5):
                entry = await waiting
        assert (entry.key, entry.value, len(reads)) == (b"status", b"published", before + 1)


async def test_owners_changing_permissions_at_once_both_land(
    store: Store, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob, carol = Identity.generate(), Identity.generate()
    md = await Client(store, alice).create_md(NAME, TAG_THING)
    a, b = Client(store, alice).md(NAME, TAG_THING), Client(store, alice).md(NAME, TAG_THING)
    update, raced = store.update, []

    async def b_first(key: str, value: bytes, revision: int) -> int:
        if not raced:  # b's change lands between a's read of the header and a's write
            raced.append(key)
            await b.set_permissions(carol.public_sign_key, "insert")
        return await update(key, value, revision)

    monkeypatch.setattr(store, "update", b_first)
    await a.set_permissions(bob.public_sign_key, "insert")
    header = await md.header()
    assert (raced, header.version) == ([md.address.header_key], 2)
    assert header.allows(bob.public_sign_key, Action.INSERT)
    assert header.allows(carol.public_sign_key, Action.INSERT)


async def test_a_private_entry_sealed_under_another_key_is_refused(
    store: Store, client: Client, bob: Identity
) -> None:
    """A writer allowed to insert, but not holding the MD's key, writes ciphertext the
    MD's key does not open: readers refuse it as tampered, never crash on it."""
    md = await client.create_md(
        NAME, TAG_THING, private=True, permissions={bob.public_sign_key: "insert"}
    )
    wrong = Client(store, bob).md(NAME, TAG_THING, secret=SecretKey.generate())
    await wrong.insert("k", "sealed under another key")
    reader = Client(store)
    with pytest.raises(TamperedDataError, match="does not decrypt"):
        await reader.md(NAME, TAG_THING, secret=md.secret).entries()
    assert reader.tampered_count == 1


async def test_a_watch_passes_over_header_changes_and_removals(
    store: Store, client: Client, bob: Identity
) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.insert("gone", "1")
    reader_client = Client(store)
    reader = reader_client.md(NAME, TAG_THING)
    gone = await reader.get("gone")  # the header is trusted
    record = await store.get(md.address.entry_key(b"gone"))
    assert record is not None and gone.value == b"1"
    async with reader.watch(since=record.revision) as changes:
        await md.set_permissions(bob.public_sign_key, "insert")  # a header change
        await md.purge("gone")  # a removal
        await md.insert("a", "1")
        async with asyncio.timeout(5):
            first = await anext(changes)
    assert (first.key, first.value) == (b"a", b"1")
    assert reader_client.tampered_count == 0


async def test_a_watch_refuses_the_entries_of_a_writer_revoked_while_it_watches(
    store: Store, client: Client, bob: Identity
) -> None:
    """A watch reads the header again after each change of it (and only then): an entry
    the revoked writer signs after its revocation, written straight into the store, is
    refused; the owner's next one is yielded."""
    md = await client.create_md(NAME, TAG_THING)
    await md.set_permissions(bob.public_sign_key, "insert")
    bobs = Client(store, bob).md(NAME, TAG_THING)
    reader_client = Client(store)
    reader = reader_client.md(NAME, TAG_THING)
    async with reader.watch() as changes:
        await bobs.insert("b1", "1")
        async with asyncio.timeout(5):
            first = await anext(changes)
        assert (first.key, first.value) == (b"b1", b"1")
        await md.set_permissions(bob.public_sign_key, Action.NONE)
        await _put_signed(store, md.address, bob, b"b2", b"2", 0)  # its key, revoked
        await md.insert("a", "1")
        async with asyncio.timeout(5):
            second = await anext(changes)
    assert (second.key, second.value) == (b"a", b"1")
    assert reader_client.tampered_count == 1


async def test_a_watch_goes_on_while_the_store_hides_the_header(
    store: Store, client: Client
) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.insert("a", "0")
    entry = await store.get(md.address.entry_key(b"a"))
    header = await store.get(md.address.header_key)
    assert entry is not None and header is not None
    reader = Client(store).md(NAME, TAG_THING)
    async with reader.watch() as changes:
        first_change = asyncio.create_task(anext(changes))
        await store.delete(md.address.header_key)  # the store hides the MD's header...
        seen = await store.put(entry.key, entry.value)  # ...while an entry changes
        async with asyncio.timeout(5):
            while changes.last_revision < seen:  # the watch has read that change
                await asyncio.sleep(0.01)
        assert not first_change.done()
        await store.put(header.key, header.value)  # then puts it back
        await md.insert("b", "1")
        async with asyncio.timeout(5):
            first = await first_change
    assert (first.key, first.value) == (b"b", b"1")


async def test_a_private_entry_whose_sealed_key_is_not_its_address_is_refused(
    store: Store, client: Client, alice: Identity
) -> None:
    """A writer holding the MD's key seals one key but stores the entry at another's
    address (to shadow it): readers refuse it, whichever of the two addresses sorts first."""
    md = await client.create_md(NAME, TAG_THING, private=True)
    assert md.secret is not None
    codec = PrivateCodec(md.secret)
    for sealed, stored in [(b"door", b"window"), (b"window", b"door")]:
        record = EntryRecord.create(
            md.address,
            signer=alice.sign_key,
            stored_key=codec.stored_key(stored),
            sealed_key=codec.seal_key(sealed),
            stored_value=codec.seal_value(b"open"),
            version=0,
        )
        await store.put(md.address.entry_key(codec.stored_key(stored)), record.to_bytes())
    reader_client = Client(store)
    reader = reader_client.md(NAME, TAG_THING, secret=md.secret)
    with pytest.raises(TamperedDataError, match="sealed key does not match"):
        await reader.entries()
    assert await reader.entries(skip_tampered=True) == {}
    assert reader_client.tampered_count == 3


async def test_a_watch_passes_over_a_replayed_older_version(store: Store, client: Client) -> None:
    md = await client.create_md(NAME, TAG_THING)
    await md.insert("a", "old")
    old = await store.get(md.address.entry_key(b"a"))
    assert old is not None
    await md.update("a", "new")
    reader_client = Client(store)
    reader = reader_client.md(NAME, TAG_THING)
    assert (await reader.get("a")).value == b"new"
    async with reader.watch() as changes:
        await store.put(old.key, old.value)  # the store replays the older version
        await md.insert("b", "1")
        async with asyncio.timeout(5):
            first = await anext(changes)
    assert (first.key, first.value) == (b"b", b"1")
    # in a feed an older version is stale news (a watch resumed from an old revision
    # replays history), not counted as an attack; a read refuses it
    assert reader_client.tampered_count == 0


async def test_a_writer_revoked_meanwhile_is_refused_on_its_next_write(
    store: Store, client: Client, bob: Identity
) -> None:
    """A writer keeps the header it read between writes; the owner's change in between
    (through another client) still stops its next write, before anything is stored."""
    md = await client.create_md(NAME, TAG_THING)
    await md.set_permissions(bob.public_sign_key, Action.INSERT | Action.UPDATE)
    bobs = Client(store, bob).md(NAME, TAG_THING)
    await bobs.put("b", "1")
    await bobs.put("b", "2")
    await md.set_permissions(bob.public_sign_key, Action.INSERT)
    with pytest.raises(PermissionDeniedError, match="may not update"):
        await bobs.put("b", "3")
    await md.set_permissions(bob.public_sign_key, Action.INSERT | Action.UPDATE)
    assert (await md.get("b")).value == b"2"  # nothing of the refused write was stored
    assert (await bobs.put("b", "4")).version == 2
