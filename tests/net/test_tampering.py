"""An attacker with write access to the store, bypassing every client.

Each test writes something bad straight into the store, behind the store API:
into the SQLite file with the sqlite3 module, or into the NATS buckets with a
plain NATS client of its own (a publish on ``$KV.<bucket>.<key>``, no
compare-and-set, no safething code), and checks that a reader refuses it with
a clear error and returns none of it as data.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import cbor2
import nats
import nats.aio.client
import pytest

from safething.errors import (
    FormatVersionError,
    MalformedRecordError,
    TamperedDataError,
)
from safething.net import (
    ANYONE,
    TAG_THING,
    Action,
    Client,
    Identity,
    MDHeader,
    PermissionSet,
    XorName,
    get_blob,
    put_blob,
)
from safething.net.records import EntryRecord, record_digest
from safething.store import Store, open_store
from safething.store.nats_testing import NatsServer, unique_bucket

NAME = XorName.of("greenhouse-01")


class Raw:
    """The attacker's own access to the stored bytes."""

    async def get(self, key: str) -> bytes:
        raise NotImplementedError

    async def put(self, key: str, value: bytes) -> None:
        """Overwrite (or add) a record behind the clients' backs."""
        raise NotImplementedError

    async def get_chunk(self, address: str) -> bytes:
        raise NotImplementedError

    async def put_chunk(self, address: str, data: bytes) -> None:
        raise NotImplementedError


class RawSQLite(Raw):
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)

    async def get(self, key: str) -> bytes:
        row = self.db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
        assert row is not None, key
        return bytes(row[0])

    async def put(self, key: str, value: bytes) -> None:
        self.db.execute(
            "INSERT INTO records(key, value, rev) VALUES (?, ?, 999999) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, rev = rev + 1000000",
            (key, value),
        )

    async def get_chunk(self, address: str) -> bytes:
        row = self.db.execute("SELECT data FROM chunks WHERE address = ?", (address,)).fetchone()
        return bytes(row[0])

    async def put_chunk(self, address: str, data: bytes) -> None:
        self.db.execute("UPDATE chunks SET data = ? WHERE address = ?", (data, address))


class RawNats(Raw):
    """A plain nats-py connection publishing into the buckets' subjects."""

    def __init__(self, client: nats.aio.client.Client, bucket: str) -> None:
        self.nc = client
        self.bucket = bucket

    async def _publish(self, subject: str, value: bytes) -> None:
        reply = await self.nc.request(subject, value, timeout=10)
        assert "error" not in json.loads(reply.data), reply.data

    async def _get(self, stream: str, subject: str) -> bytes:
        reply = await self.nc.request(
            f"$JS.API.STREAM.MSG.GET.{stream}",
            json.dumps({"last_by_subj": subject}).encode(),
            timeout=10,
        )
        return base64.b64decode(json.loads(reply.data)["message"].get("data", ""))

    @staticmethod
    def _chunk_token(address: str) -> str:
        return base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")

    async def get(self, key: str) -> bytes:
        return await self._get(f"KV_{self.bucket}", f"$KV.{self.bucket}.{key}")

    async def put(self, key: str, value: bytes) -> None:
        await self._publish(f"$KV.{self.bucket}.{key}", value)

    async def get_chunk(self, address: str) -> bytes:
        chunks = f"{self.bucket}-chunks"
        return await self._get(f"KV_{chunks}", f"$KV.{chunks}.{self._chunk_token(address)}")

    async def put_chunk(self, address: str, data: bytes) -> None:
        await self._publish(f"$KV.{self.bucket}-chunks.{self._chunk_token(address)}", data)


@pytest.fixture(params=["sqlite", "nats"])
def attacked_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/vault.db"
    server: NatsServer = request.getfixturevalue("nats_single")
    return f"{server.url}?bucket={unique_bucket()}"


@pytest.fixture
async def attacked(attacked_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Raw]]:
    """A store and the attacker's raw access to what it holds."""
    async with await open_store(attacked_url) as s:
        if attacked_url.startswith("sqlite"):
            raw_sqlite = RawSQLite(tmp_path / "vault.db")
            try:
                yield s, raw_sqlite
            finally:
                raw_sqlite.db.close()
            return
        server, _, bucket = attacked_url.partition("?bucket=")
        client = await nats.connect(server)
        try:
            yield s, RawNats(client, bucket)
        finally:
            await client.close()


@pytest.fixture
def sqlite_store(attacked: tuple[Store, Raw]) -> Store:
    """The attacked store (SQLite or NATS; the name predates the NATS backend)."""
    return attacked[0]


@pytest.fixture
def db(attacked: tuple[Store, Raw]) -> Raw:
    return attacked[1]


async def setup_md(store: Store, owner: Identity) -> Client:
    client = Client(store, owner)
    md = await client.create_md(NAME, TAG_THING, permissions={ANYONE: "read"})
    await md.insert("valve", b"closed")
    await md.insert("moisture", b"41")
    return client


async def test_forged_entry_signature(
    sqlite_store: Store, db: Raw, caplog: pytest.LogCaptureFixture
) -> None:
    alice = Identity.generate()
    await setup_md(sqlite_store, alice)
    md = Client(sqlite_store).md(NAME, TAG_THING, owner=alice.public_sign_key)
    key = md.address.entry_key(b"valve")
    genuine = cbor2.loads(await db.get(key))
    genuine["v"] = b"open"  # same signature, different value
    await db.put(key, cbor2.dumps(genuine))
    with (
        caplog.at_level(logging.WARNING, logger="safething.net"),
        pytest.raises(TamperedDataError, match=r"forged entry \(bad signature\)"),
    ):
        await md.get("valve")
    assert "refused data from the store" in caplog.text
    assert md.client.tampered_count == 1
    entries = await md.entries(skip_tampered=True)
    assert set(entries) == {b"moisture"}  # the forged value is never returned
    with pytest.raises(TamperedDataError):
        await md.entries()


async def test_entry_signed_by_a_key_without_permission(sqlite_store: Store, db: Raw) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    await setup_md(sqlite_store, alice)
    md = Client(sqlite_store).md(NAME, TAG_THING)
    forged = EntryRecord.create(
        md.address,
        signer=mallory.sign_key,
        stored_key=b"command",
        sealed_key=None,
        stored_value=b"open valve",
        version=0,
    )
    await db.put(md.address.entry_key(b"command"), forged.to_bytes())
    with pytest.raises(TamperedDataError, match="lacks insert permission"):
        await md.get("command")
    assert b"command" not in await md.entries(skip_tampered=True)


async def test_replayed_older_version(sqlite_store: Store, db: Raw) -> None:
    alice = Identity.generate()
    writer = await setup_md(sqlite_store, alice)
    wmd = writer.md(NAME, TAG_THING)
    key = wmd.address.entry_key(b"valve")
    old = await db.get(key)  # version 0, validly signed
    await wmd.update("valve", b"open")
    reader = Client(sqlite_store).md(NAME, TAG_THING, owner=alice.public_sign_key)
    assert (await reader.get("valve")).version == 1
    await db.put(key, old)  # roll the entry back
    with pytest.raises(TamperedDataError, match="went back from version 1 to 0"):
        await reader.get("valve")
    # the writer notices too: it builds on the version it verified, not on the replayed
    # one, and so repairs the store (issue 8: the owner's flows keep working)
    tampered = writer.tampered_count
    assert (await wmd.update("valve", b"closed")).version == 2
    assert writer.tampered_count == tampered + 1
    assert (await reader.get("valve")).value == b"closed"


async def test_a_forged_record_over_an_entry_already_verified_is_checked_in_full(
    sqlite_store: Store, db: Raw
) -> None:
    """A client skips the signature check only for the very bytes it verified or
    signed (same digest, same header): a record the attacker signs with its own key
    over an entry its reader verified, and its writer signed, is refused by both,
    never answered with what they knew. Two forged records, one whose digest sorts
    above the known one and one below (an order test instead of equality would let
    one of them through)."""
    alice, mallory = Identity.generate(), Identity.generate()
    writer = (await setup_md(sqlite_store, alice)).md(NAME, TAG_THING)
    reader = Client(sqlite_store).md(NAME, TAG_THING, owner=alice.public_sign_key)
    key = reader.address.entry_key(b"valve")
    assert (await reader.get("valve")).value == b"closed"
    known = record_digest(await db.get(key))
    # A known digest near either end would leave one side empty of forgeries for a long
    # search (4,096 tries ran out about 1 run in 2,000): rewrite the entry until its
    # digest's first byte is 2..253 (each side then holds at least 2/256 of all digests,
    # so 4,096 tries miss a side with p < 1e-13).
    while not 1 < known[0] < 254:
        entry = await writer.update("valve", b"closed %d" % (await writer.get("valve")).version)
        assert (await reader.get("valve")).version == entry.version
        known = record_digest(await db.get(key))
    version = (await reader.get("valve")).version + 1
    orders: set[bool] = set()
    for i in range(4096):
        forged = EntryRecord.create(
            reader.address,
            signer=mallory.sign_key,
            stored_key=b"valve",
            sealed_key=None,
            stored_value=b"open %d" % i,
            version=version,
        ).to_bytes()
        above = record_digest(forged) > known
        if above in orders:
            continue
        orders.add(above)
        await db.put(key, forged)
        for md in (reader, writer):
            with pytest.raises(TamperedDataError, match="lacks update permission"):
                await md.get("valve")
            assert b"valve" not in await md.entries(skip_tampered=True)
        if len(orders) == 2:
            break
    assert orders == {True, False}


async def test_permission_set_not_signed_by_an_owner(sqlite_store: Store, db: Raw) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    await setup_md(sqlite_store, alice)
    md = Client(sqlite_store).md(NAME, TAG_THING)
    header = await md.header()
    # Mallory grants herself Insert and signs the set with her own key
    part = MDHeader.signed_part(
        md.address,
        header.owners,
        header.permissions.with_grant(mallory.public_sign_key, Action.all()),
        header.version + 1,
        header.private,
    )
    doc = cbor2.loads(await db.get(md.address.header_key))
    doc.update(
        perms=PermissionSet({mallory.public_sign_key: Action.all()}).to_wire(),
        ver=header.version + 1,
        by=mallory.public_sign_key.value,
        sig=mallory.sign_key.sign(part),
    )
    await db.put(md.address.header_key, cbor2.dumps(doc))
    fresh = Client(sqlite_store).md(NAME, TAG_THING)
    with pytest.raises(TamperedDataError, match="who is not an owner"):
        await fresh.get("valve")
    # a header whose signature does not cover its content
    doc.update(by=alice.public_sign_key.value)
    await db.put(md.address.header_key, cbor2.dumps(doc))
    with pytest.raises(TamperedDataError, match="bad owner signature"):
        await Client(sqlite_store).md(NAME, TAG_THING).entries()


async def test_owner_substitution(sqlite_store: Store, db: Raw) -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    await setup_md(sqlite_store, alice)
    reader = Client(sqlite_store).md(NAME, TAG_THING)
    await reader.get("valve")  # first contact: alice is pinned
    fake = MDHeader.create(
        reader.address,
        signer=mallory.sign_key,
        owners=(mallory.public_sign_key,),
        permissions=PermissionSet(),
        version=5,
        private=False,
    )
    await db.put(reader.address.header_key, fake.to_bytes())
    # refused and counted; the reader carries on with the header it trusts
    before = reader.client.tampered_count
    assert (await reader.get("valve")).signer == alice.public_sign_key
    assert reader.client.tampered_count == before + 1
    # a reader that was told the owner refuses it even on first contact
    pinned = Client(sqlite_store).md(NAME, TAG_THING, owner=alice.public_sign_key)
    with pytest.raises(TamperedDataError, match="owner substitution"):
        await pinned.get("valve")


async def test_an_undecodable_header_over_a_trusted_one_is_counted(
    sqlite_store: Store, db: Raw
) -> None:
    alice = Identity.generate()
    await setup_md(sqlite_store, alice)
    seen: list[TamperedDataError] = []
    reader = Client(sqlite_store, on_tampered=seen.append).md(NAME, TAG_THING)
    await reader.get("valve")  # first contact: alice's header is trusted
    await db.put(reader.address.header_key, cbor2.dumps([1, 2, 3]))
    # refused, counted and reported like any tampering; the reader carries on with the
    # header it trusts
    assert (await reader.get("valve")).signer == alice.public_sign_key
    assert reader.client.tampered_count == 1
    assert [type(e) for e in seen] == [MalformedRecordError]


async def test_header_rewritten_between_two_writes(sqlite_store: Store, db: Raw) -> None:
    """A writer keeps the header it verified between writes (it does not read it back
    every time): a header the store rewrites meanwhile is still read, refused and counted
    at the very next write, before it is stored; the write goes out under the header
    the writer trusts. Rewritten in place, keeping its revision (SQLite), it is counted
    at the next read instead, and the writes in between are those of the trusted
    header all the same."""
    alice, mallory = Identity.generate(), Identity.generate()
    writer = await setup_md(sqlite_store, alice)
    md = writer.md(NAME, TAG_THING)
    await md.put("moisture", b"42")

    def mallorys(version: int) -> bytes:
        return MDHeader.create(
            md.address,
            signer=mallory.sign_key,
            owners=(mallory.public_sign_key,),
            permissions=PermissionSet({ANYONE: Action.all()}),
            version=version,
            private=False,
        ).to_bytes()

    await db.put(md.address.header_key, mallorys(9))
    before = writer.tampered_count
    entry = await md.put("moisture", b"43")  # written under the header alice trusts
    assert writer.tampered_count == before + 1
    assert entry.signer == alice.public_sign_key
    await md.put("moisture", b"44")  # the same refused header: counted once, not again
    assert writer.tampered_count == before + 1
    assert (await md.get("moisture")).value == b"44"
    pinned = Client(sqlite_store).md(NAME, TAG_THING, owner=alice.public_sign_key)
    with pytest.raises(TamperedDataError, match="owner substitution"):
        await pinned.get("moisture")
    if isinstance(db, RawSQLite):
        db.db.execute(
            "UPDATE records SET value = ? WHERE key = ?", (mallorys(10), md.address.header_key)
        )
        assert (await md.put("moisture", b"45")).signer == alice.public_sign_key
        assert (await md.get("moisture")).value == b"45"  # the read checks the header
        assert writer.tampered_count == before + 2


async def test_records_moved_between_addresses(sqlite_store: Store, db: Raw) -> None:
    alice = Identity.generate()
    client = await setup_md(sqlite_store, alice)
    other = await client.create_md(XorName.of("other"), TAG_THING)
    md = client.md(NAME, TAG_THING)
    # another MD's header under this address
    await db.put(md.address.header_key, await db.get(other.address.header_key))
    with pytest.raises(TamperedDataError, match="header of another MD"):
        await Client(sqlite_store).md(NAME, TAG_THING).get("valve")


@pytest.mark.parametrize(("source", "target"), [("valve", "moisture"), ("moisture", "valve")])
async def test_entry_copied_under_another_key(
    sqlite_store: Store, db: Raw, source: str, target: str
) -> None:
    alice = Identity.generate()
    await setup_md(sqlite_store, alice)
    md = Client(sqlite_store).md(NAME, TAG_THING)
    await db.put(
        md.address.entry_key(target.encode()), await db.get(md.address.entry_key(source.encode()))
    )
    with pytest.raises(TamperedDataError, match="another entry"):
        await md.get(target)
    with pytest.raises(TamperedDataError, match="stored under another key"):
        await md.entries()


async def test_malformed_and_future_records(sqlite_store: Store, db: Raw) -> None:
    alice = Identity.generate()
    await setup_md(sqlite_store, alice)
    md = Client(sqlite_store).md(NAME, TAG_THING)
    await db.put(md.address.entry_key(b"valve"), b"\xff\x00garbage")
    with pytest.raises(MalformedRecordError, match="not valid CBOR"):
        await md.get("valve")
    await db.put(md.address.entry_key(b"valve"), cbor2.dumps({"f": 99, "t": "entry"}))
    with pytest.raises(FormatVersionError, match="upgrade safething"):
        await md.get("valve")
    await db.put(md.address.entry_key(b"valve"), cbor2.dumps({"f": 1, "t": "entry", "k": 5}))
    with pytest.raises(MalformedRecordError, match="'k' is missing or invalid"):
        await md.get("valve")
    await db.put(md.address.header_key, cbor2.dumps([1, 2, 3]))
    with pytest.raises(MalformedRecordError, match="not a map"):
        await Client(sqlite_store).md(NAME, TAG_THING).get("moisture")


async def test_private_md_ciphertext_swapped(sqlite_store: Store, db: Raw) -> None:
    alice = Identity.generate()
    client = Client(sqlite_store, alice)
    md = await client.create_md(NAME, TAG_THING, private=True)
    await md.insert("a", b"1")
    await md.insert("b", b"2")
    keys = [r.key for r in await sqlite_store.scan(md.address.entry_prefix)]
    await db.put(keys[0], await db.get(keys[1]))
    reader = Client(sqlite_store).md(NAME, TAG_THING, secret=md.secret)
    entries = await reader.entries(skip_tampered=True)
    assert len(entries) == 1
    assert reader.client.tampered_count == 1


async def test_corrupted_chunk_in_a_blob(sqlite_store: Store, db: Raw) -> None:
    data = bytes(range(256)) * 5000
    ref = await put_blob(sqlite_store, data)
    raw_map = cbor2.loads(await db.get_chunk(ref.address.hex()))
    first = raw_map["chunks"][0][0].hex()
    await db.put_chunk(first, b"evil firmware")
    with pytest.raises(TamperedDataError, match="does not match its address"):
        await get_blob(sqlite_store, ref)
