"""The header a client has just created is not read back before its first write
(issue 14: a birth's CPU): the commit of that write is guarded by the revision the
creation returned, so a store attacker who rewrites the header in between is still
caught: the write reads the header again, refuses and counts it, and writes under
the header the client signed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from safething.errors import RolledBackError, TamperedDataError
from safething.net import ANYONE, TAG_THING, Action, Client, Identity, PermissionSet, XorName
from safething.net.records import EntryRecord, MDHeader
from safething.net.trust import TrustState
from safething.store import Record, Store, open_store

NAMES = [XorName.of(f"created-header-{i}") for i in range(2)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as s:
        yield s


def _gets(store: Store, key: str) -> list[int]:
    """Count the store's reads of ``key`` from now on (the real store does the reading)."""
    calls = [0]
    get = store.get

    async def counted(k: str) -> Record | None:
        if k == key:
            calls[0] += 1
        return await get(k)

    store.get = counted  # type: ignore[method-assign,assignment]
    return calls


async def test_a_first_write_after_create_mds_reads_no_header(store: Store) -> None:
    alice = Client(store, Identity.generate())
    md, _ = await alice.create_mds([(n, TAG_THING, None) for n in NAMES])
    assert md is not None
    reads = _gets(store, md.address.header_key)
    await md.insert("valve", b"open")
    assert reads[0] == 0
    reader = Client(store).md(NAMES[0], TAG_THING, owner=alice.identity.public_sign_key)  # type: ignore[union-attr]
    assert (await reader.get("valve")).value == b"open"


async def test_a_header_rewritten_between_creation_and_first_write_is_caught(
    store: Store,
) -> None:
    """Mallory (the store) replaces the new header by one of her own that names her the
    owner and lets anyone write, before Alice's first write: Alice's commit is refused
    by its guard, she reads the header, refuses it (counted once) and writes under her
    own (the entry signed by her); a reader who pins Alice refuses Mallory's header."""
    alice, mallory = Identity.generate(), Identity.generate()
    client = Client(store, alice)
    md, _ = await client.create_mds([(n, TAG_THING, None) for n in NAMES])
    assert md is not None
    forged = MDHeader.create(
        md.address,
        signer=mallory.sign_key,
        owners=(mallory.public_sign_key,),
        permissions=PermissionSet({ANYONE: Action.READ | Action.INSERT | Action.UPDATE}),
        version=0,
        private=False,
    )
    await store.put(md.address.header_key, forged.to_bytes())
    reads = _gets(store, md.address.header_key)
    await md.insert("valve", b"open")
    assert reads[0] == 1  # the guard failed: read once, refused
    assert client.tampered_count == 1
    assert (await md.get("valve")).value == b"open"  # under the header Alice signed
    (key,) = [r.key for r in await store.scan(md.address.entry_prefix)]
    stored = await store.get(key)
    assert stored is not None
    record = EntryRecord.from_bytes(stored.value, md.address, None)
    assert record.signer == alice.public_sign_key
    reader = Client(store).md(NAMES[0], TAG_THING, owner=alice.public_sign_key)
    with pytest.raises(TamperedDataError, match="owner substitution"):
        await reader.get("valve")  # a reader who pins Alice refuses Mallory's header


async def test_mds_created_again_in_a_wiped_store_are_checked_against_the_trust_state(
    tmp_path: Path,
) -> None:
    """Alice's MD went to permissions version 1; the store is swapped for an empty one
    and Alice's client, with its trust state, creates her MDs again at version 0: that
    is a rollback of a header her trust state holds, refused (the headers of the MDs
    created are read from the trust state together, in one query)."""
    alice = Identity.generate()
    trust = tmp_path / "alice.trust.db"
    async with await open_store(f"sqlite://{tmp_path}/one.db") as one:
        client = Client(one, alice, trust=TrustState.open(trust))
        md, _ = await client.create_mds([(n, TAG_THING, None) for n in NAMES])
        assert md is not None
        await md.set_permissions(ANYONE, Action.READ)
        client.trust.close()
    async with await open_store(f"sqlite://{tmp_path}/two.db") as two:
        client = Client(two, alice, trust=TrustState.open(trust))
        with pytest.raises(RolledBackError, match="went back from version 1 to 0"):
            await client.create_mds([(n, TAG_THING, None) for n in NAMES])
        client.trust.close()
