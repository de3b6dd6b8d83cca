"""TrustState: what a reader verified survives a restart; a lost file starts afresh."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from safething.errors import (
    BadKeyError,
    MalformedRecordError,
    RolledBackError,
    StoreError,
    TamperedDataError,
)
from safething.net import ANYONE, TAG_THING, Client, Identity, MDHeader, XorName
from safething.net.records import EntryRecord
from safething.net.trust import _SCHEMA, HeaderState, TrustState, _File
from safething.store import open_store


def test_marks_survive_a_reopen_and_only_go_up(tmp_path: Path) -> None:
    path = tmp_path / "me.trust.db"
    state = TrustState.open(path)
    created = state.created
    state.set_header("md.h", HeaderState(frozenset({b"a" * 32, b"b" * 32}), 3, b"raw"))
    state.set_entry_version("md.e.1", 5)
    state.set_entry_version("md.e.1", 2)  # never goes down
    assert state.entry_version("md.e.1") == 5
    state.set_entry_version("md.e.2", 1)
    state.forget_entry("md.e.2")
    state.mark_processed("thing", "r1", time.time() + 60)
    state.set_value("status/thing", b"disabled")
    state.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = TrustState.open(path)
    assert again.created == created
    assert again.header("md.h") == HeaderState(frozenset({b"a" * 32, b"b" * 32}), 3, b"raw")
    assert again.entry_version("md.e.1") == 5
    assert again.entry_version("md.e.2") == -1
    assert again.processed("thing", "r1")
    assert not again.processed("thing", "r2")
    assert again.value("status/thing") == b"disabled"
    again.close()


def test_a_relative_path_is_the_file_in_the_working_directory_of_each_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths as given are remembered as opened (one per thing in a gateway), but only
    absolute ones: a relative path names the file of the working directory it is
    opened in."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    relative = Path("me.trust.db")
    monkeypatch.chdir(tmp_path / "a")
    first = TrustState.open(relative)
    first.set_value("status/thing", b"published")
    first.sync()
    monkeypatch.chdir(tmp_path / "b")
    second = TrustState.open(relative)
    assert second.path == tmp_path / "b" / "me.trust.db" != first.path
    assert second.value("status/thing") is None
    absolute = TrustState.open(tmp_path / "a" / "me.trust.db")
    assert absolute.path == first.path
    assert absolute.value("status/thing") == b"published"
    for state in (first, second, absolute):
        state.close()


def test_a_lost_file_is_a_fresh_state(tmp_path: Path) -> None:
    path = tmp_path / "me.trust.db"
    TrustState.open(path).close()
    path.unlink()
    before = time.time()
    fresh = TrustState.open(path)
    assert fresh.created >= before
    assert fresh.entry_version("anything") == -1
    fresh.close()


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "me.trust.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="trust state file"):
        TrustState.open(path)


async def test_a_restarted_reader_refuses_what_it_had_seen_newer(tmp_path: Path) -> None:
    owner = Identity.generate()
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as store:
        md = await Client(store, owner).create_md(XorName.of("x"), TAG_THING)
        await md.put("k", "v0")
        old = await store.get(md.address.entry_key(b"k"))
        assert old is not None
        await md.put("k", "v1")
        reader = Client(store, trust=TrustState.open(tmp_path / "reader.trust.db"))
        assert (await reader.md(XorName.of("x"), TAG_THING).get("k")).value == b"v1"
        reader.trust.close()
        await store.put(old.key, old.value)  # the store goes back while the reader is down
        restarted = Client(store, trust=TrustState.open(tmp_path / "reader.trust.db"))
        with pytest.raises(RolledBackError, match="went back from version 1 to 0"):
            await restarted.md(XorName.of("x"), TAG_THING).get("k")
        assert restarted.tampered_count == 1
        restarted.trust.close()


async def test_a_version_no_sqlite_integer_holds_keeps_no_reader_from_remembering(
    tmp_path: Path,
) -> None:
    """A key allowed to write an entry signs it at version 2**63 (its own signature: it
    may write there). Had the reader taken it, its trust state could not store that
    version, and every later write of the file failed with it: a reader that restarts
    would then take a rolled-back record. It is refused as malformed, counted, and
    what the reader verifies afterwards survives its restart."""
    owner, writer = Identity.generate("owner"), Identity.generate("writer")
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as store:
        md = await Client(store, owner).create_md(
            XorName.of("x"), TAG_THING, permissions={writer.public_sign_key: "insert, update"}
        )
        await md.put("k", "v0")
        await md.put("k", "v1")
        old = await store.get(md.address.entry_key(b"k"))
        assert old is not None
        await md.put("k", "v2")
        huge = EntryRecord.create(
            md.address,
            signer=writer.sign_key,
            stored_key=b"big",
            sealed_key=None,
            stored_value=b"beyond",
            version=2**63,
        )
        await store.put(md.address.entry_key(b"big"), huge.to_bytes())
        reader = Client(store, trust=TrustState.open(tmp_path / "reader.trust.db"))
        theirs = reader.md(XorName.of("x"), TAG_THING)
        with pytest.raises(MalformedRecordError, match="not a version"):
            await theirs.get("big")
        assert reader.tampered_count == 1
        assert (await theirs.get("k")).value == b"v2"
        reader.trust.close()  # its last write: would fail with the huge version in it
        await store.put(old.key, old.value)
        restarted = Client(store, trust=TrustState.open(tmp_path / "reader.trust.db"))
        with pytest.raises(RolledBackError, match="went back from version 2 to 1"):
            await restarted.md(XorName.of("x"), TAG_THING).get("k")
        restarted.trust.close()


@pytest.mark.parametrize("durable", [False, True])
def test_a_forgotten_entry_is_unseen_at_once(tmp_path: Path, durable: bool) -> None:
    """A purged entry's key may be reused: the next write of it is version 0 again."""
    state = TrustState.open(tmp_path / "me.trust.db") if durable else TrustState()
    state.set_entry_version("md.e.1", 4)
    state.forget_entry("md.e.1")
    assert state.entry_version("md.e.1") == -1
    state.set_entry_version("md.e.1", 0)
    assert state.entry_version("md.e.1") == 0
    state.close()


def test_a_forget_alone_is_written(tmp_path: Path) -> None:
    state = TrustState.open(tmp_path / "me.trust.db")
    state.set_entry_version("md.e.1", 4)
    state.forget_entry("md.e.1")  # nothing else to write with it
    state.close()
    again = TrustState.open(tmp_path / "me.trust.db")
    assert again.entry_version("md.e.1") == -1
    again.close()


async def test_a_purged_key_is_written_again_from_version_0(tmp_path: Path) -> None:
    owner = Identity.generate()
    async with await open_store("memory://") as store:
        md = await Client(store, owner).create_md(XorName.of("x"), TAG_THING)
        await md.put("k", "v0")
        await md.put("k", "v1")
        await md.purge("k")
        assert (await md.put("k", "again")).version == 0


def test_a_file_damaged_while_open_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "me.trust.db"
    state = TrustState.open(path)
    other = sqlite3.connect(path)
    other.execute("DROP TABLE entries")
    other.execute("DROP TABLE headers")
    other.close()
    with pytest.raises(StoreError, match="cannot read the trust state file"):
        state.preload("md.x.")
    with pytest.raises(StoreError, match="cannot read the trust state file"):
        state.entry_version("md.y.1")
    with pytest.raises(StoreError, match="cannot write the trust state file"):
        state.set_header("md.h", HeaderState(frozenset({b"a" * 32}), 0, b"raw"))
    other = sqlite3.connect(path)  # the tables back: the state is written again
    other.executescript(_SCHEMA)
    other.close()
    state.set_header("md.h", HeaderState(frozenset({b"a" * 32}), 1, b"raw"))
    state.close()
    again = TrustState.open(path)
    assert again.header("md.h") == HeaderState(frozenset({b"a" * 32}), 1, b"raw")
    again.close()


async def test_marks_not_written_yet_outlive_a_preload(tmp_path: Path) -> None:
    """A prefix read from the file never replaces marks newer than the file's."""
    state = TrustState.open(tmp_path / "me.trust.db")
    state.set_entry_version("md.x.e.1", 2)
    state.set_entry_version("md.x.e.2", 3)
    state.sync()
    state.set_entry_version("md.x.e.1", 5)  # written within 50 ms, not yet
    state.forget_entry("md.x.e.2")  # purged: its key may be reused
    state.preload("md.x.")
    assert state.entry_version("md.x.e.1") == 5
    assert state.entry_version("md.x.e.2") == -1
    state.close()


@pytest.mark.parametrize("durable", [False, True])
def test_a_processed_request_id_alone_is_kept(tmp_path: Path, durable: bool) -> None:
    """What a thing ran is remembered (on file: across a restart), with nothing else."""
    path = tmp_path / "me.trust.db"
    state = TrustState.open(path) if durable else TrustState()
    state.set_entry_version("md.e.1", 1)  # the first write also prunes
    assert not state.processed("thing", "r1")
    state.mark_processed("thing", "r1", time.time() + 60)
    assert state.processed("thing", "r1")
    state.close()
    if durable:
        again = TrustState.open(path)
        assert again.processed("thing", "r1")
        again.close()


def test_expired_request_ids_are_dropped_when_pruned(tmp_path: Path) -> None:
    state = TrustState.open(tmp_path / "me.trust.db")
    state.mark_processed("thing", "old", time.time() - 1)  # the first write prunes
    state.mark_processed("thing", "new", time.time() + 60)
    assert not state.processed("thing", "old")
    assert state.processed("thing", "new")
    state.close()


async def test_a_pin_of_other_owners_than_the_trusted_ones_is_refused(tmp_path: Path) -> None:
    owner, other = Identity.generate(), Identity.generate()
    async with await open_store("memory://") as store:
        await Client(store, owner).create_md(XorName.of("x"), TAG_THING)
        reader = Client(store)
        pinned = reader.md(XorName.of("x"), TAG_THING, owners=(owner.public_sign_key,))
        await pinned.header()  # trusted now
        reader.md(XorName.of("x"), TAG_THING, owners=(owner.public_sign_key,))
        with pytest.raises(TamperedDataError, match="not the ones given"):
            reader.md(XorName.of("x"), TAG_THING, owners=(other.public_sign_key,))
        with pytest.raises(TamperedDataError, match="do not include"):
            reader.md(XorName.of("x"), TAG_THING, owner=other.public_sign_key)


async def test_a_first_header_naming_fewer_owners_than_pinned_is_refused() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with await open_store("memory://") as store:
        await Client(store, alice).create_md(XorName.of("x"), TAG_THING)  # alice alone
        reader = Client(store).md(
            XorName.of("x"), TAG_THING, owners=(alice.public_sign_key, bob.public_sign_key)
        )
        with pytest.raises(TamperedDataError, match="other owners than the pinned ones"):
            await reader.header()


async def test_a_refused_header_is_counted_once_and_the_trusted_one_kept(tmp_path: Path) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as store:  # new bytes per read
        md = await Client(store, alice).create_md(XorName.of("x"), TAG_THING)
        await md.insert("k", "v")
        reader_client = Client(store)
        reader = reader_client.md(XorName.of("x"), TAG_THING)
        trusted = await reader.header()
        forged = MDHeader.create(
            md.address,
            signer=mallory.sign_key,
            owners=(mallory.public_sign_key,),
            permissions=trusted.permissions,
            version=trusted.version + 1,
            private=False,
        )
        await store.put(md.address.header_key, forged.to_bytes())
        for _ in range(3):
            assert (await reader.get("k")).value == b"v"
            assert (await reader.header()).to_bytes() == trusted.to_bytes()
        assert reader_client.tampered_count == 1


@pytest.mark.parametrize("first", [0, 1])
async def test_a_second_header_at_a_high_version_is_refused(first: int) -> None:
    """Versions above 256 are separate int objects; both orders of the two headers' bytes."""
    alice, bob = Identity.generate(), Identity.generate()
    async with await open_store("memory://") as store:
        md = await Client(store, alice).create_md(XorName.of("x"), TAG_THING)
        trusted = await md.header()
        headers = [
            MDHeader.create(
                md.address,
                signer=alice.sign_key,
                owners=trusted.owners,
                permissions=trusted.permissions.with_grant(bob.public_sign_key, actions),
                version=int("300"),
                private=False,
            ).to_bytes()
            for actions in ("insert", "update")
        ]
        if first:
            headers.reverse()
        reader = Client(store).md(XorName.of("x"), TAG_THING)
        await store.put(md.address.header_key, headers[0])
        assert (await reader.header()).version == 300
        await store.put(md.address.header_key, headers[1])
        assert (await reader.header()).to_bytes() == headers[0]  # the trusted one, kept
        assert reader.client.tampered_count == 1


async def test_a_state_whose_last_write_fails_still_releases_its_file(tmp_path: Path) -> None:
    path = tmp_path / "me.trust.db"
    state = TrustState.open(path)
    state.set_entry_version("md.e.1", 1)
    state.sync()
    other = sqlite3.connect(path)
    other.execute("DROP TABLE entries")
    other.close()
    state.set_entry_version("md.e.1", 2)  # pending: written within 50 ms, or at close
    with pytest.raises(StoreError, match="cannot write the trust state file"):
        state.close()  # what was pending is lost, and said so
    again = TrustState.open(path)  # a new connection: the tables made again
    assert again.entry_version("md.e.1") == -1  # dropped with its table
    again.set_header("md.h", HeaderState(frozenset({b"a" * 32}), 0, b"raw"))
    again.close()


async def test_a_first_header_naming_more_owners_than_pinned_is_refused() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with await open_store("memory://") as store:
        await Client(store, alice).create_md(
            XorName.of("x"), TAG_THING, owners=(bob.public_sign_key,)
        )
        reader = Client(store).md(XorName.of("x"), TAG_THING, owners=(alice.public_sign_key,))
        with pytest.raises(TamperedDataError, match="other owners than the pinned ones"):
            await reader.header()


async def test_a_restarted_reader_keeps_the_trusted_header_over_a_forged_one(
    tmp_path: Path,
) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    async with await open_store("memory://") as store:
        md = await Client(store, alice).create_md(XorName.of("x"), TAG_THING)
        await md.insert("k", "v")
        first = Client(store, trust=TrustState.open(tmp_path / "reader.trust.db"))
        trusted = await first.md(XorName.of("x"), TAG_THING).header()
        first.trust.close()
        forged = MDHeader.create(
            md.address,
            signer=mallory.sign_key,
            owners=(mallory.public_sign_key,),
            permissions=trusted.permissions,
            version=trusted.version + 1,
            private=False,
        )
        await store.put(md.address.header_key, forged.to_bytes())  # while the reader is down
        restarted = Client(store, trust=TrustState.open(tmp_path / "reader.trust.db"))
        assert (await restarted.md(XorName.of("x"), TAG_THING).get("k")).value == b"v"
        assert restarted.tampered_count == 1
        restarted.trust.close()


async def test_a_pin_of_something_else_than_sign_keys_is_a_clear_error() -> None:
    alice = Identity.generate()
    async with await open_store("memory://") as store:
        with pytest.raises(BadKeyError, match="owners needs a PublicSignKey, got str"):
            Client(store).md(XorName.of("x"), TAG_THING, owners=(alice.public_sign_key, "alice"))  # type: ignore[arg-type]


async def test_a_legitimate_header_after_a_refused_one_is_read_whatever_its_bytes() -> None:
    """The refused header is remembered by its bytes (counted once), never by their order:
    here the owner's next header sorts below the refused, forged one."""
    alice = Identity.generate()
    async with await open_store("memory://") as store:
        md = await Client(store, alice).create_md(XorName.of("x"), TAG_THING)
        trusted = await md.header()
        legit = MDHeader.create(
            md.address,
            signer=alice.sign_key,
            owners=trusted.owners,
            permissions=trusted.permissions.with_grant(ANYONE, "read"),
            version=trusted.version + 1,
            private=False,
        ).to_bytes()
        while True:  # a forger whose header sorts above the owner's next one
            mallory = Identity.generate()
            forged = MDHeader.create(
                md.address,
                signer=mallory.sign_key,
                owners=(mallory.public_sign_key,),
                permissions=trusted.permissions,
                version=trusted.version + 1,
                private=False,
            ).to_bytes()
            if forged > legit:
                break
        reader_client = Client(store)
        reader = reader_client.md(XorName.of("x"), TAG_THING)
        await reader.header()
        await store.put(md.address.header_key, forged)
        assert (await reader.header()).version == trusted.version  # refused, the trusted kept
        await store.put(md.address.header_key, legit)
        assert (await reader.header()).to_bytes() == legit
        assert reader_client.tampered_count == 1


def _five_states_on_one_file(path: Path) -> tuple[list[TrustState], _File, list[str]]:
    """Five states on one trust file (as a gateway's things share it), the file, and the
    list its transactions' BEGINs are added to as they start."""
    states = [TrustState.open(path) for _ in range(5)]
    transactions: list[str] = []
    file = states[0]._file
    assert file is not None and all(s._file is file for s in states)
    file.db.set_trace_callback(
        lambda sql: transactions.append(sql) if sql.startswith("BEGIN") else None
    )
    return states, file, transactions


async def test_the_marks_of_many_states_on_one_file_are_written_together(
    tmp_path: Path,
) -> None:
    """A gateway's custodial things share one trust file: their entry marks of the
    same 50 ms go out in one transaction, each state's own, and none is lost."""
    path = tmp_path / "trust.db"
    states, file, transactions = _five_states_on_one_file(path)
    for i, state in enumerate(states):
        state.set_entry_version(f"md.t.{i}.e.1", i + 1)
        state.set_entry_version(f"md.t.{i}.e.2", 7)
    deadline = asyncio.get_running_loop().time() + 10
    while transactions == [] and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert transactions == ["BEGIN IMMEDIATE"]
    file.db.set_trace_callback(None)
    for state in states:
        state.close()
    again = TrustState.open(path)
    try:
        assert [again.entry_version(f"md.t.{i}.e.1") for i in range(5)] == [1, 2, 3, 4, 5]
        assert {again.entry_version(f"md.t.{i}.e.2") for i in range(5)} == {7}
    finally:
        again.close()


async def test_the_changes_of_many_states_in_one_step_are_written_together_at_its_end(
    tmp_path: Path,
) -> None:
    """Headers and values are written at the end of the event-loop step that made them:
    the states on one trust file (a gateway's things born together) in one transaction,
    each its own rows, and nothing before the step ends."""
    path = tmp_path / "trust.db"
    states, file, transactions = _five_states_on_one_file(path)
    raw = b"\x01" * 32
    for i, state in enumerate(states):
        state.set_header(f"md.t.{i}.h", HeaderState(frozenset({raw}), i, b"header %d" % i))
        state.set_value(f"status/{i}", b"published")
    assert transactions == []  # not yet: at the end of this step
    await asyncio.sleep(0)
    assert transactions == ["BEGIN IMMEDIATE"]
    states[2].set_value("status/2", b"disabled")  # a later step: its own transaction
    await asyncio.sleep(0)
    assert transactions == ["BEGIN IMMEDIATE"] * 2
    file.db.set_trace_callback(None)
    reader = sqlite3.connect(path)
    try:  # written, before any state is closed
        assert reader.execute("SELECT count(*) FROM headers").fetchone() == (5,)
        values = dict(reader.execute("SELECT name, value FROM meta WHERE name LIKE 'v:%'"))
        assert values["v:status/2"] == b"disabled" and values["v:status/4"] == b"published"
    finally:
        reader.close()
    for state in states:
        state.close()


def test_several_mds_read_at_once_give_what_one_by_one_gives(tmp_path: Path) -> None:
    """``preload_all`` and ``load_headers`` (a client that has just created several MDs)
    read in one query each what ``preload`` and ``header`` read one MD at a time: the
    marks under each prefix and none beside them, each header, and no header where
    there is none."""
    path = tmp_path / "me.trust.db"
    prefixes = ["md.1.aa.", "md.1.ab.", "md.2.aa."]
    writer = TrustState.open(path)
    for n, prefix in enumerate(prefixes):
        writer.set_entry_version(prefix + "k", n + 3)
    writer.set_entry_version("md.1.aa0.k", 9)  # beside the first prefix, not under it
    writer.set_entry_version("md.1.a.k", 8)
    owners = frozenset({b"o" * 32, b"p" * 32})
    writer.set_header("md.1.aa.h", HeaderState(owners, 2, b"raw-aa"))
    writer.set_header("md.2.aa.h", HeaderState(frozenset({b"q" * 32}), 0, b"raw-2"))
    writer.close()

    batched = TrustState.open(path)
    statements: list[str] = []
    assert batched._file is not None
    batched._file.db.set_trace_callback(statements.append)
    batched.preload_all(prefixes)
    batched.load_headers(["md.1.aa.h", "md.1.ab.h", "md.2.aa.h"])
    assert len(statements) == 2
    seen = {
        key: batched.entry_version(key) for key in [p + k for p in prefixes for k in ("k", "none")]
    }
    headers = {md: batched.header(md) for md in ("md.1.aa.h", "md.1.ab.h", "md.2.aa.h")}
    assert len(statements) == 2  # all of it read by the two queries
    beside = {key: batched.entry_version(key) for key in ("md.1.aa0.k", "md.1.a.k")}
    batched._file.db.set_trace_callback(None)

    one_by_one = TrustState.open(path)
    for prefix in prefixes:
        one_by_one.preload(prefix)
    assert seen == {key: one_by_one.entry_version(key) for key in seen}
    assert seen[prefixes[0] + "k"] == 3 and seen[prefixes[2] + "none"] == -1
    assert headers == {md: one_by_one.header(md) for md in headers}
    assert headers["md.1.aa.h"] == HeaderState(owners, 2, b"raw-aa")
    assert headers["md.1.ab.h"] is None
    assert beside == {"md.1.aa0.k": 9, "md.1.a.k": 8}
    batched.close()
    one_by_one.close()


def test_several_values_read_at_once_give_what_one_by_one_gives(tmp_path: Path) -> None:
    """``load_values`` (a new thing asking whether its trust state knows its status or
    any level key) reads in one query what ``value`` reads one name at a time."""
    path = tmp_path / "me.trust.db"
    writer = TrustState.open(path)
    writer.set_value("status/t", b"disabled")
    writer.set_value("level/t/owner", b"sealed-owner-key")
    writer.close()
    names = ["status/t", "level/t/thing", "level/t/owner", "level/t/group"]

    batched = TrustState.open(path)
    statements: list[str] = []
    assert batched._file is not None
    batched._file.db.set_trace_callback(statements.append)
    batched.load_values(names)
    values = {name: batched.value(name) for name in names}
    assert len(statements) == 1
    batched._file.db.set_trace_callback(None)
    one_by_one = TrustState.open(path)
    assert values == {name: one_by_one.value(name) for name in names}
    assert values == {
        "status/t": b"disabled",
        "level/t/thing": None,
        "level/t/owner": b"sealed-owner-key",
        "level/t/group": None,
    }
    batched.close()
    one_by_one.close()


def test_a_file_made_before_marks_were_kept_without_rowid_is_moved_on_open(
    tmp_path: Path,
) -> None:
    """A trust file whose ``entries`` is a rowid table (as every file made before was)
    has its marks moved into the ``WITHOUT ROWID`` table on open, none lost."""
    path = tmp_path / "old.trust.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(
        _SCHEMA.replace(") WITHOUT ROWID;", ");")
        + "INSERT INTO meta VALUES ('created', '1700000000.5');"
    )
    assert "WITHOUT ROWID" not in old.execute("SELECT sql FROM sqlite_master").fetchall()[2][0]
    old.executemany(
        "INSERT INTO entries (key, version) VALUES (?, ?)",
        [(f"md.e.{i}", i * 3) for i in range(500)],
    )
    old.execute("INSERT INTO headers VALUES ('md.h', ?, 4, x'ff')", (b"o" * 32,))
    old.close()

    state = TrustState.open(path)
    assert state.created == 1700000000.5
    assert [state.entry_version(f"md.e.{i}") for i in range(500)] == [i * 3 for i in range(500)]
    assert state.header("md.h") == HeaderState(frozenset({b"o" * 32}), 4, b"\xff")
    state.set_entry_version("md.e.1", 10)
    state.set_entry_version("md.e.new", 2)
    state.close()

    check = sqlite3.connect(path)
    try:
        (sql,) = check.execute("SELECT sql FROM sqlite_master WHERE name = 'entries'").fetchone()
        assert "WITHOUT ROWID" in sql
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT count(*) FROM entries").fetchone() == (501,)
    finally:
        check.close()
    again = TrustState.open(path)  # (nothing left to move)
    assert (again.entry_version("md.e.1"), again.entry_version("md.e.new")) == (10, 2)
    assert again.entry_version("md.e.499") == 1497
    again.close()


def test_the_rows_of_many_states_written_together_are_those_written_one_by_one(
    tmp_path: Path,
) -> None:
    """One transaction for several states' rows (one statement of each kind for all of
    them) leaves the file as their writes one after the other: a later state's rows win,
    a forgotten mark and a prune keep their place (random rounds)."""
    import random

    from safething.net.trust import _Rows

    rng = random.Random(14)
    keys = [f"md.e.{i}" for i in range(6)]
    now = time.time()

    def rows() -> _Rows:
        return _Rows(
            headers=[
                ("md.h", b"o" * 32, rng.randrange(3), b"raw %d" % rng.randrange(3))
                for _ in range(rng.randrange(2))
            ],
            entries=[(rng.choice(keys), rng.randrange(5)) for _ in range(rng.randrange(3))],
            forgotten=[(rng.choice(keys),) for _ in range(rng.random() < 0.2)],
            processed=[
                ("s", f"r{rng.randrange(4)}", now + rng.choice((-5, 5)))
                for _ in range(rng.randrange(2))
            ],
            values=[("v:x", b"%d" % rng.randrange(9)) for _ in range(rng.randrange(2))],
            prune=rng.random() < 0.2,
        )

    def dump(file: _File) -> list[list[tuple[object, ...]]]:
        return [
            sorted(file.db.execute(f"SELECT * FROM {table}").fetchall())
            for table in ("headers", "entries", "processed", "meta")
        ]

    joined_by_one = 0
    for round_ in range(200):
        together = _File(tmp_path / f"together{round_}.db")
        one_by_one = _File(tmp_path / f"one{round_}.db")
        for file in (together, one_by_one):
            file.db.execute("DELETE FROM meta")
        try:
            for _ in range(3):
                batches = [rows() for _ in range(rng.randrange(1, 5))]
                joined_by_one += not any(r.forgotten or r.prune for r in batches)
                together.write(batches, now)
                for batch in batches:
                    one_by_one.write([batch], now)
            assert dump(together) == dump(one_by_one), round_
        finally:
            together.db.close()
            one_by_one.db.close()
    assert joined_by_one > 100  # the joined statements were tried
