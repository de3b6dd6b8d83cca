"""Entries signed together: one signature over the leaves of a commit's entries (format 2).

The attacker is the store (memory or an SQLite file) with a key pair of its own: it
writes raw records with ``store.put``, reusing the owner's genuine batch records and
their signature, or signing batches with its own key. Each record must be verified on
its own: its own leaf (a hash of what it would sign alone) at its index in the list
the signature covers, its signer's permission, its version not below the one the
reader verified; a batch signature a reader has already checked saves only the
signature check, never the leaf or permission check.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from safething.errors import (
    FormatVersionError,
    LimitExceededError,
    MalformedRecordError,
    RolledBackError,
    TamperedDataError,
)
from safething.net import ANYONE, TAG_THING, Client, Identity, MDAddress, XorName
from safething.net.codec import decode_record
from safething.net.keys import PublicSignKey, SigningKey
from safething.net.records import (
    BATCH_FORMAT,
    MAX_BATCH,
    MAX_MD_BYTES,
    EntryRecord,
    VerifiedBatches,
    batches,
)
from safething.store import Store, open_store

NAME = XorName.of("batch-01")
ADDRESS = MDAddress(NAME, TAG_THING)
OWNER = Identity.generate("owner")


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/vault.db"
    async with await open_store(url) as s:
        yield s


def _signed(
    signer: Identity,
    items: dict[bytes, bytes | None],
    version: int = 0,
    address: MDAddress = ADDRESS,
) -> list[EntryRecord]:
    return EntryRecord.create_batch(
        address,
        signer=signer.sign_key,
        entries=[(k, None, v, version) for k, v in items.items()],
    )


async def _put(store: Store, records: list[EntryRecord]) -> None:
    for record in records:
        await store.put(ADDRESS.entry_key(record.stored_key), record.to_bytes())


async def _owned_md(store: Store, name: XorName = NAME) -> MDAddress:
    """An MD of the owner's, readable by anyone (so that only the checks under test stop
    a forged record: the owner may write anything)."""
    md = await Client(store, OWNER).create_md(name, TAG_THING, permissions={ANYONE: "read"})
    return md.address


async def _genuine(store: Store) -> list[EntryRecord]:
    """The owner's two entries, signed as one batch, in the store."""
    await _owned_md(store)
    records = _signed(OWNER, {b"valve": b"closed", b"moisture": b"41"})
    await _put(store, records)
    return records


def _reader(store: Store) -> Any:
    return Client(store).md(NAME, TAG_THING, owner=OWNER.public_sign_key)


# --- the format ---------------------------------------------------------------------


def test_a_batch_record_round_trips_and_a_lone_entry_keeps_format_1() -> None:
    one, two = _signed(OWNER, {b"a": b"1", b"b": b"2"})
    assert one.signature == two.signature and one.batch == two.batch
    assert (one.index, two.index) == (0, 1)
    assert cbor2.loads(one.to_bytes())["f"] == BATCH_FORMAT == 2  # on the wire: fixed
    assert EntryRecord.from_bytes(one.to_bytes(), ADDRESS, b"a") == one
    assert one.batch[1] == EntryRecord.leaf(ADDRESS, b"b", b"2", 0)
    (alone,) = _signed(OWNER, {b"a": b"1"})
    single = EntryRecord.create(
        ADDRESS,
        signer=OWNER.sign_key,
        stored_key=b"a",
        sealed_key=None,
        stored_value=b"1",
        version=0,
    )
    assert alone.to_bytes() == single.to_bytes()  # ed25519 signatures are deterministic
    assert set(cbor2.loads(alone.to_bytes())) == {"f", "t", "k", "v", "ver", "by", "sig"}
    assert cbor2.loads(alone.to_bytes())["f"] == 1


def test_a_release_reading_only_format_1_asks_for_an_upgrade() -> None:
    """What a release from before batches does with one: "upgrade", not "forged"."""
    record, _ = _signed(OWNER, {b"a": b"1", b"b": b"2"})
    with pytest.raises(FormatVersionError, match="upgrade safething"):
        decode_record(record.to_bytes(), "entry", where="MD x")


def test_batches_split_a_commit_evenly_and_never_above_the_cap() -> None:
    assert batches(0) == [] and batches(-1) == []
    assert batches(1) == [range(0, 1)]
    assert batches(2) == [range(0, 2)]
    # the cap is 8: a registration's six entries fit in one batch, a record grows by at
    # most 8 x 32 bytes (docs/architecture.md); literal sizes, so a changed cap fails
    assert MAX_BATCH == 8
    assert batches(6) == [range(0, 6)]
    assert batches(8) == [range(0, 8)]
    assert batches(9) == [range(0, 5), range(5, 9)]
    assert batches(17) == [range(0, 6), range(6, 12), range(12, 17)]
    for count in range(1, 100):
        parts = batches(count)
        assert [i for part in parts for i in part] == list(range(count))
        assert all(len(part) <= MAX_BATCH for part in parts)
        assert len(parts) == -(-count // MAX_BATCH)  # no more batches than needed
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    _signed(OWNER, {b"%d" % i: b"v" for i in range(MAX_BATCH)})
    with pytest.raises(ValueError, match="1 to 8 different entries"):
        _signed(OWNER, {})
    twice = (b"a", None, b"1", 0)
    with pytest.raises(ValueError, match="1 to 8 different entries"):
        EntryRecord.create_batch(ADDRESS, signer=OWNER.sign_key, entries=[twice, twice])
    with pytest.raises(ValueError, match="1 to 8 different entries"):
        _signed(OWNER, {b"%d" % i: b"v" for i in range(MAX_BATCH + 1)})


def _edited(record: EntryRecord, **changes: Any) -> bytes:
    doc = cbor2.loads(record.to_bytes())
    doc.update(changes)
    for name in [k for k, v in changes.items() if v is ...]:
        del doc[name]
    return bytes(cbor2.dumps(doc))


LEAF = EntryRecord.leaf(ADDRESS, b"x", b"y", 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bl": "leaves"}, "'bl' is missing or invalid"),
        ({"bl": ...}, "'bl' is missing or invalid"),
        ({"bi": ...}, "'bi' is missing or invalid"),
        ({"bi": "0"}, "'bi' is missing or invalid"),
        ({"bi": True}, "'bi' is missing or invalid"),
        ({"bi": 2}, "batch index 2 is outside the batch of 2"),
        ({"bi": -1}, "batch index -1 is outside the batch of 2"),
        ({"bl": [LEAF]}, "a batch holds 2 to 8 entries, not 1"),
        ({"bl": []}, "a batch holds 2 to 8 entries, not 0"),
        ({"bl": [LEAF] * 9}, "a batch holds 2 to 8 entries, not 9"),
        ({"bl": [LEAF] * 1_000_000}, "a batch holds 2 to 8 entries, not 1000000"),
        ({"bl": [LEAF, LEAF]}, "names one leaf twice"),
        ({"bl": [LEAF, LEAF[:31]]}, "a batch leaf is 32 bytes"),
        ({"bl": [LEAF, LEAF + b"\0"]}, "a batch leaf is 32 bytes"),
        ({"bl": [LEAF, "x" * 32]}, "a batch leaf is 32 bytes"),
        ({"bl": [LEAF, None]}, "a batch leaf is 32 bytes"),
        ({"f": 1}, "a format 1 entry is signed alone"),
    ],
)
def test_malformed_batch_fields_are_malformed_records(
    changes: dict[str, Any], message: str
) -> None:
    record, _ = _signed(OWNER, {b"a": b"1", b"b": b"2"})
    with pytest.raises(MalformedRecordError, match=message):
        EntryRecord.from_bytes(_edited(record, **changes), ADDRESS, None)


@pytest.mark.parametrize("changes", [{"bl": [LEAF, b"\1" * 32]}, {"bi": 0}, {"bl": [LEAF, LEAF]}])
def test_a_lone_entry_naming_a_batch_is_malformed(changes: dict[str, Any]) -> None:
    (record,) = _signed(OWNER, {b"a": b"1"})
    with pytest.raises(MalformedRecordError, match="a format 1 entry is signed alone"):
        EntryRecord.from_bytes(_edited(record, **changes), ADDRESS, None)


@pytest.mark.parametrize(
    ("batch", "index", "error", "message"),
    [
        ((), 1, ValueError, "an entry signed alone has no batch index"),
        ((), -1, ValueError, "an entry signed alone has no batch index"),
        ((LEAF,), 0, ValueError, "a batch holds 2 to 8 entries, not 1"),
        (
            tuple(EntryRecord.leaf(ADDRESS, b"%d" % i, b"v", 0) for i in range(9)),
            0,
            ValueError,
            "a batch holds 2 to 8 entries, not 9",
        ),
        ((LEAF, LEAF[::-1]), 2, ValueError, "batch index 2 is outside the batch of 2"),
        ((LEAF, LEAF[::-1]), True, TypeError, "a batch index is an integer"),
        ([LEAF, LEAF[::-1]], 0, TypeError, "a batch is a tuple of leaves"),
    ],
)
def test_a_record_built_in_code_validates_its_batch(
    batch: Any, index: Any, error: type[Exception], message: str
) -> None:
    """A record made by code (not decoded) is checked all the same."""
    (record,) = _signed(OWNER, {b"a": b"1"})
    with pytest.raises(error, match=message):
        dataclasses.replace(record, batch=batch, index=index)


def test_verified_batches_stay_bounded() -> None:
    """An attacker signs as many batches of its own as it likes: the cache keeps the
    newest ``size``. A known batch with another signature, or another signer, is
    checked again (and refused)."""
    mallory = Identity.generate("mallory")
    cache = VerifiedBatches(size=8)
    last = b""
    for i in range(100):
        last = EntryRecord.batch_part([hashlib.sha256(b"%d" % j).digest() for j in (i, -i - 1)])
        assert cache.check(mallory.public_sign_key, last, mallory.sign_key.sign(last))
        assert len(cache._seen) <= 8
    assert len(cache._seen) == 8
    assert not cache.check(mallory.public_sign_key, last, b"\0" * 64)
    assert not cache.check(OWNER.public_sign_key, last, mallory.sign_key.sign(last))


# --- the attacker, through the store ------------------------------------------------


async def test_a_genuine_batch_is_read_with_one_signature_check(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _genuine(store)
    checks: list[bytes] = []
    verify = PublicSignKey.verify

    def counted(key: PublicSignKey, message: bytes, signature: bytes) -> bool:
        checks.append(message)
        return verify(key, message, signature)

    reader = _reader(store)
    await reader.header()
    monkeypatch.setattr(PublicSignKey, "verify", counted)
    assert (await reader.get("valve")).value == b"closed"
    assert (await reader.get("moisture")).value == b"41"
    assert len(checks) == 1


async def test_a_leaf_list_with_another_entrys_digest_swapped_in(store: Store) -> None:
    """The owner's record and signature, its leaf list changed to cover an entry of the
    attacker's choice: the signature no longer covers the list. Also for a reader that
    has the genuine batch in its cache."""
    valve, _ = await _genuine(store)
    forged_leaf = EntryRecord.leaf(ADDRESS, b"moisture", b"99", 0)
    forged = dataclasses.replace(valve, batch=(valve.batch[0], forged_leaf))
    cold, warm = _reader(store), _reader(store)
    assert (await warm.get("moisture")).value == b"41"  # caches the genuine batch
    await store.put(ADDRESS.entry_key(b"valve"), forged.to_bytes())
    for reader in (cold, warm):
        with pytest.raises(TamperedDataError, match=r"forged entry \(bad signature\)"):
            await reader.get("valve")
    # the attacker's entry itself, under the swapped list: the same
    entry = EntryRecord(b"moisture", None, b"99", 0, OWNER.public_sign_key, valve.signature)
    swapped = dataclasses.replace(entry, batch=forged.batch, index=1)
    await store.put(ADDRESS.entry_key(b"moisture"), swapped.to_bytes())
    for reader in (cold, warm):
        with pytest.raises(TamperedDataError, match=r"forged entry \(bad signature\)"):
            await reader.get("moisture")
    assert cold.client.tampered_count == warm.client.tampered_count == 2


async def test_an_index_pointing_at_another_leaf(store: Store) -> None:
    valve, moisture = await _genuine(store)
    reader = _reader(store)
    await store.put(ADDRESS.entry_key(b"valve"), dataclasses.replace(valve, index=1).to_bytes())
    with pytest.raises(TamperedDataError, match="not the entry its batch signature covers"):
        await reader.get("valve")
    assert (await reader.get("moisture")).value == b"41"  # caches the batch
    await store.put(
        ADDRESS.entry_key(b"moisture"), dataclasses.replace(moisture, index=0).to_bytes()
    )
    with pytest.raises(TamperedDataError, match="not the entry its batch signature covers"):
        await reader.get("moisture")


@pytest.mark.parametrize("cached", [False, True])
async def test_the_owners_batch_signature_reused_for_a_forged_entry(
    store: Store, cached: bool
) -> None:
    """A forged entry (another value, a tombstone, a new key, a later version) carrying
    the owner's genuine leaves, index and signature: its own leaf is not in the batch.
    ``cached``: the reader verified that very batch just before."""
    valve, moisture = await _genuine(store)
    reader = _reader(store)
    if cached:
        assert (await reader.get("moisture")).value == b"41"
    forgeries = [
        dataclasses.replace(valve, stored_value=b"open"),
        dataclasses.replace(valve, stored_value=None, version=1),
        dataclasses.replace(valve, version=1),
        dataclasses.replace(valve, stored_key=b"command", stored_value=b"open valve"),
    ]
    for forged in forgeries:
        await store.put(ADDRESS.entry_key(forged.stored_key), forged.to_bytes())
        with pytest.raises(TamperedDataError, match="not the entry its batch signature covers"):
            await reader.get(forged.stored_key)
    assert reader.client.tampered_count == len(forgeries)
    entries = await reader.entries(skip_tampered=True)
    assert set(entries) == {b"moisture"}
    assert entries[b"moisture"].value == moisture.stored_value


async def test_an_entry_moved_to_another_key_or_another_md(store: Store) -> None:
    """The owner owns both MDs and may write any key: only the leaf (which names the
    MD and the key) tells that the record was signed for another place."""
    valve, _ = await _genuine(store)
    other = await _owned_md(store, XorName.of("batch-02"))
    # the very bytes in another MD of the same owner
    await store.put(other.entry_key(b"valve"), valve.to_bytes())
    elsewhere = Client(store).md(other.name, TAG_THING, owner=OWNER.public_sign_key)
    with pytest.raises(TamperedDataError, match="not the entry its batch signature covers"):
        await elsewhere.get("valve")
    # the record renamed to another key of the same MD (so it is stored where it says)
    moved = dataclasses.replace(valve, stored_key=b"heater")
    await store.put(ADDRESS.entry_key(b"heater"), moved.to_bytes())
    reader = _reader(store)
    assert (await reader.get("valve")).value == b"closed"
    with pytest.raises(TamperedDataError, match="not the entry its batch signature covers"):
        await reader.get("heater")
    # and the very bytes under another key: refused before any signature
    await store.put(ADDRESS.entry_key(b"heater"), valve.to_bytes())
    with pytest.raises(TamperedDataError, match="another entry than the one asked for"):
        await reader.get("heater")


async def test_a_version_rolled_back_inside_a_genuine_batch(store: Store, tmp_path: Path) -> None:
    """Both batches are the owner's, validly signed: the reader refuses the older one
    because it verified the newer, also after a restart (its trust file)."""
    from safething.net.trust import TrustState

    old_valve, _ = await _genuine(store)
    new = _signed(OWNER, {b"valve": b"open", b"moisture": b"42"}, version=1)
    await _put(store, new)
    trust = TrustState.open(tmp_path / "reader.trust.db")
    reader = Client(store, trust=trust).md(NAME, TAG_THING, owner=OWNER.public_sign_key)
    assert (await reader.get("valve")).version == 1
    assert (await reader.get("moisture")).version == 1
    await store.put(ADDRESS.entry_key(b"valve"), old_valve.to_bytes())
    with pytest.raises(RolledBackError, match="went back from version 1 to 0"):
        await reader.get("valve")
    trust.close()
    again = TrustState.open(tmp_path / "reader.trust.db")
    restarted = Client(store, trust=again).md(NAME, TAG_THING, owner=OWNER.public_sign_key)
    with pytest.raises(RolledBackError, match="went back from version 1 to 0"):
        await restarted.get("valve")
    assert (await restarted.get("moisture")).value == b"42"
    again.close()


async def test_a_batch_signed_by_a_key_without_permission(store: Store) -> None:
    mallory = Identity.generate("mallory")
    await _genuine(store)
    reader = _reader(store)
    assert (await reader.get("valve")).value == b"closed"
    # her own batch: a new entry and an update, each refused by its own permission
    insert, update = EntryRecord.create_batch(
        ADDRESS,
        signer=mallory.sign_key,
        entries=[(b"command", None, b"open valve", 0), (b"valve", None, b"open", 1)],
    )
    await _put(store, [insert, update])
    with pytest.raises(TamperedDataError, match="lacks insert permission"):
        await reader.get("command")
    with pytest.raises(TamperedDataError, match="lacks update permission"):
        await reader.get("valve")
    # her batch signature, the owner named as its signer
    claimed = dataclasses.replace(update, signer=OWNER.public_sign_key)
    await store.put(ADDRESS.entry_key(b"valve"), claimed.to_bytes())
    with pytest.raises(TamperedDataError, match=r"forged entry \(bad signature\)"):
        await reader.get("valve")
    assert set(await reader.entries(skip_tampered=True)) == {b"moisture"}


async def test_a_cached_batch_does_not_outlive_its_writers_permission(store: Store) -> None:
    """Bob's batch verified (and its signature cached) while he may write; the owner
    revokes him; the batch's other entry, read for the first time, is refused."""
    bob = Identity.generate("bob")
    owner = Client(store, OWNER)
    md = await owner.create_md(NAME, TAG_THING, permissions={bob.public_sign_key: "insert"})
    await _put(store, _signed(bob, {b"a": b"1", b"b": b"2"}))
    reader = _reader(store)
    assert (await reader.get("a")).signer == bob.public_sign_key
    await md.set_permissions(bob.public_sign_key, "none")
    with pytest.raises(TamperedDataError, match="lacks insert permission"):
        await reader.get("b")


async def test_a_malformed_batch_record_is_refused_and_the_others_served(store: Store) -> None:
    valve, _ = await _genuine(store)
    reader = _reader(store)
    await store.put(ADDRESS.entry_key(b"valve"), _edited(valve, bi=7))
    with pytest.raises(MalformedRecordError, match="batch index 7 is outside the batch of 2"):
        await reader.get("valve")
    assert set(await reader.entries(skip_tampered=True)) == {b"moisture"}


# --- the writer ---------------------------------------------------------------------


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message signed from now on (the real signature is still made)."""
    signed: list[bytes] = []
    sign = SigningKey.sign

    def counted(key: SigningKey, message: bytes) -> bytes:
        signed.append(message)
        return sign(key, message)

    monkeypatch.setattr(SigningKey, "sign", counted)
    return signed


def _stored(raw: bytes) -> EntryRecord:
    return EntryRecord.from_bytes(raw, ADDRESS, None)


@pytest.mark.parametrize(
    ("count", "sizes"), [(1, [1]), (2, [2]), (6, [6]), (8, [8]), (9, [5, 4]), (33, [7, 7, 7, 6, 6])]
)
async def test_put_many_signs_each_batch_once(
    store: Store, signatures: list[bytes], count: int, sizes: list[int]
) -> None:
    md = await Client(store, OWNER).create_md(NAME, TAG_THING)
    signatures.clear()
    items = {b"k%02d" % i: b"v%d" % i for i in range(count)}
    await md.put_many(items)
    assert len(signatures) == len(sizes)
    records = [_stored(r.value) for r in await store.scan(ADDRESS.entry_prefix)]
    by_signature: dict[bytes, list[EntryRecord]] = {}
    for record in records:
        by_signature.setdefault(record.signature, []).append(record)
    assert sorted(len(group) for group in by_signature.values()) == sorted(sizes)
    for group in by_signature.values():
        assert sorted(r.index for r in group) == list(range(len(group) if len(group) > 1 else 1))
    reader = _reader(store)
    assert {k: e.value for k, e in (await reader.entries()).items()} == items


async def test_a_private_batch_is_read_with_the_secret_only(store: Store) -> None:
    md = await Client(store, OWNER).create_md(NAME, TAG_THING, private=True)
    await md.put_many({"a": "1", "b": "2", "c": "3"})
    (raw,) = [r for r in await store.scan(ADDRESS.entry_prefix)][:1]
    assert len(_stored(raw.value).batch) == 3
    reader = Client(store).md(NAME, TAG_THING, secret=md.secret, owner=OWNER.public_sign_key)
    assert {k: e.value for k, e in (await reader.entries()).items()} == {
        b"a": b"1",
        b"b": b"2",
        b"c": b"3",
    }


async def test_an_entry_retried_after_a_conflict_is_signed_again(store: Store) -> None:
    """Not atomic: "b" conflicts (another writer got there first), "a" lands; "b" is
    decided again and signed alone, and every record verifies."""
    owner = Client(store, OWNER)
    md = await owner.create_md(NAME, TAG_THING)
    await md.put("b", "0")
    other = Client(store, OWNER).md(NAME, TAG_THING)
    await other.put("b", "1")  # md's idea of "b" is now stale
    assert [e.version for e in await md.put_many({"a": "x", "b": "2"})] == [0, 2]
    b_record = await store.get(ADDRESS.entry_key(b"b"))
    assert b_record is not None and _stored(b_record.value).batch == ()
    entries = await _reader(store).entries()
    assert {k: (e.value, e.version) for k, e in entries.items()} == {
        b"a": (b"x", 0),
        b"b": (b"2", 2),
    }


async def _filled(store: Store, name: XorName, left: int) -> Any:
    """An MD of the owner's whose one entry leaves exactly ``left`` bytes of the limit
    (a record's size grows byte for byte with a value of this length)."""
    md = await Client(store, OWNER).create_md(name, TAG_THING)
    await md.insert("filler", b"f" * 900_000)
    _, used = await md.usage()
    await md.update("filler", b"f" * (900_000 + MAX_MD_BYTES - used - left))
    assert await md.usage() == (1, MAX_MD_BYTES - left)
    return md


async def test_an_md_near_its_byte_limit_counts_a_batch_as_stored(store: Store) -> None:
    """The byte limit counts records as stored, leaves included. Two entries whose
    records signed alone would fit in what is left, but whose batch records do not:
    an atomic put_many writes nothing; one that is not atomic writes the first, which
    a reader verifies on its own (its batch's other record was never stored). The
    same batch with one byte more left fills the MD exactly."""
    items = {b"a": b"1" * 100, b"b": b"2" * 100}
    size = sum(len(r.to_bytes()) for r in _signed(OWNER, items))  # the writer's, byte for byte
    alone = sum(len(_signed(OWNER, {k: v})[0].to_bytes()) for k, v in items.items())
    assert alone < size - 1
    md = await _filled(store, NAME, size - 1)
    with pytest.raises(LimitExceededError, match="1048577 bytes would exceed the limit"):
        await md.put_many(items, atomic=True)
    assert set(await _reader(store).entries()) == {b"filler"}
    assert await md.usage() == (1, MAX_MD_BYTES - size + 1)

    other = await _filled(store, XorName.of("batch-02"), size - 1)
    with pytest.raises(LimitExceededError, match="nothing of entry b'b' was written"):
        await other.put_many(items)
    reader = Client(store).md(other.address.name, TAG_THING, owner=OWNER.public_sign_key)
    assert {k: e.value for k, e in (await reader.entries()).items()} == {
        b"filler": b"f" * len((await reader.get("filler")).value),
        b"a": b"1" * 100,
    }
    stored = await store.get(other.address.entry_key(b"a"))
    assert (
        stored is not None
        and len(EntryRecord.from_bytes(stored.value, other.address, b"a").batch) == 2
    )

    await md.update("filler", b"f" * (len((await md.get("filler")).value) - 1))
    await md.put_many(items)
    assert await md.usage() == (3, MAX_MD_BYTES)
    assert {
        k: e.value for k, e in (await _reader(store).entries()).items() if k != b"filler"
    } == items
