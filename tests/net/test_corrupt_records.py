"""A store that corrupts what it serves, byte by byte or field by field (SQLite, NATS).

Genuine headers and entries (single and batch-signed) are stored, then the store
rewrites each record many ways: bits flipped, cut short, grown, replaced by random
bytes, or decoded and re-encoded with one field swapped for a value of any shape
(wrong types, integers no SQLite or float holds, NaN, nesting, long strings). A reader
(in memory, and one with a durable trust state, restarted in between) then either
returns the genuine value or raises a SafeThingError; never another exception, never
a value the writer did not write; and its trust state keeps being written. A writer the
owner allowed to write the MD signs entries of its own at any version, 2**63 and
beyond included: its values may be returned (it may write), nothing else changes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cbor2
import pytest

from safething.errors import NoSuchEntryError, SafeThingError
from safething.net import TAG_THING, Client, Identity, XorName
from safething.net.records import EntryRecord
from safething.net.trust import TrustState
from safething.store import Store, open_store
from safething.store.nats_testing import NatsServer, unique_bucket

from ..hostile import value

KEYS = [b"alone", b"b0", b"b1", b"b2"]
WRITTEN = b"the allowed writer's value"
ROUNDS = 150


def _field_value(rng: random.Random) -> Any:
    """A value for one field of a record: of any shape, or a list of leaves."""
    if rng.random() < 0.15:
        return [rng.randbytes(32)] * rng.randint(0, 300)
    return value(rng, fields=("k", "v"), words=("md", "entry"))


def _corrupt(rng: random.Random, data: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.2:
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(flipped))
            flipped[i] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if roll < 0.3:
        return data[: rng.randrange(len(data))]
    if roll < 0.35:
        return data + rng.randbytes(rng.randint(1, 64))
    if roll < 0.4:
        return rng.randbytes(rng.randint(0, 200))
    doc = cbor2.loads(data)
    name = rng.choice([*doc, "f", "t", "bl", "bi", "sk", "extra"])
    doc[name] = _field_value(rng)
    if rng.random() < 0.2:
        doc.pop(rng.choice(list(doc)), None)
    return bytes(cbor2.dumps(doc))


async def _read(client: Client, name: XorName, genuine: dict[bytes, bytes]) -> None:
    md = client.md(name, TAG_THING)
    for key in KEYS:
        try:
            entry = await md.get(key)
        except NoSuchEntryError:
            continue
        except SafeThingError:
            continue
        assert entry.value in (genuine[key], WRITTEN), (key, entry.value)
    try:
        entries = await md.entries(skip_tampered=True)
    except SafeThingError:
        return
    for key, entry in entries.items():
        assert entry.value in (genuine[key], WRITTEN), (key, entry.value)


async def _genuine(
    store: Store, owner: Identity, writer: Identity
) -> tuple[XorName, dict[bytes, bytes]]:
    name = XorName.of("corrupt")
    grant = {writer.public_sign_key: "insert, update, delete"}
    md = await Client(store, owner).create_md(name, TAG_THING, permissions=grant)
    await md.put(KEYS[0], b"written alone")
    await md.put_many({k: b"batch " + k for k in KEYS[1:]})
    return name, {KEYS[0]: b"written alone", **{k: b"batch " + k for k in KEYS[1:]}}


@pytest.fixture(params=["sqlite", "nats"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The SQLite file, or a bucket of a NATS server (what the store serves is what a
    process holding its login published)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/vault.db"
    server: NatsServer = request.getfixturevalue("nats_single")
    return f"{server.url}?bucket={unique_bucket()}"


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_a_reader_of_corrupted_records_gets_refusals_or_the_genuine_values(
    url: str, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    owner, writer = Identity.generate("owner"), Identity.generate("writer")
    trust_path = tmp_path / "reader.trust.db"
    async with await open_store(url) as store:
        name, genuine = await _genuine(store, owner, writer)
        address = Client(store).md(name, TAG_THING).address
        records = {r.key: r.value for r in await store.scan("")}
        durable = Client(store, trust=TrustState.open(trust_path))
        await _read(durable, name, genuine)  # the genuine records first: trusted
        for round_ in range(ROUNDS):
            key = rng.choice(sorted(records))
            if rng.random() < 0.3:  # the allowed writer, at a version of its choosing
                own = EntryRecord.create(
                    address,
                    signer=writer.sign_key,
                    stored_key=rng.choice(KEYS),
                    sealed_key=None,
                    stored_value=rng.choice([WRITTEN, None]),
                    version=rng.choice([0, 1, 5, 2**63 - 1, 2**63, 10**400]),
                )
                await store.put(address.entry_key(own.stored_key), own.to_bytes())
            else:
                await store.put(key, _corrupt(rng, records[key]))
            await _read(Client(store), name, genuine)
            await _read(durable, name, genuine)
            if round_ % 25 == 24:  # its trust state is written, then read back
                durable.trust.close()
                durable = Client(store, trust=TrustState.open(trust_path))
            for genuine_key, value in records.items():  # the store serves the genuine ones
                await store.put(genuine_key, value)
        await _read(durable, name, genuine)
        durable.trust.close()
