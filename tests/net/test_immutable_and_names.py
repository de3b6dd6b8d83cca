from __future__ import annotations

import os

import pytest

from safething.errors import (
    LimitExceededError,
    NameTakenError,
    NoSuchDataError,
    TamperedDataError,
)
from safething.net import (
    TAG_SERVICE,
    BlobRef,
    Client,
    Identity,
    PublicNames,
    XorName,
    get_blob,
    get_chunk,
    parse_safe_url,
    put_blob,
    put_chunk,
)
from safething.store import Store

MiB = 1024 * 1024


async def test_chunks_are_content_addressed(store: Store) -> None:
    address = await put_chunk(store, b"firmware")
    assert address == XorName.of(b"firmware")
    assert await get_chunk(store, address) == b"firmware"
    assert await put_chunk(store, b"firmware") == address  # idempotent
    with pytest.raises(LimitExceededError, match="put_blob"):
        await put_chunk(store, b"x" * (MiB + 1))
    with pytest.raises(NoSuchDataError):
        await get_chunk(store, XorName.of(b"nothing"))


async def test_chunk_swapped_by_the_store_is_detected(store: Store) -> None:
    address = XorName.of(b"genuine")
    await store.put_chunk(address.hex(), b"forged")
    with pytest.raises(TamperedDataError, match="does not match its address"):
        await get_chunk(store, address)


@pytest.mark.parametrize("encrypt", [False, True])
async def test_blob_round_trip(store: Store, encrypt: bool) -> None:
    data = os.urandom(2 * MiB + 12345)
    ref = await put_blob(store, data, encrypt=encrypt)
    assert (ref.key is not None) == encrypt
    assert await get_blob(store, ref) == data
    assert await get_blob(store, str(ref)) == data
    assert BlobRef.parse(str(ref)) == ref
    info = await store.info()
    assert info.chunks == 4  # three pieces and the data map
    assert await get_blob(store, await put_blob(store, b"", encrypt=encrypt)) == b""


async def test_encrypted_blob_leaks_no_plaintext_and_deduplicates(store: Store) -> None:
    secret = b"private camera frame " * 1000
    ref1 = await put_blob(store, secret, encrypt=True)
    ref2 = await put_blob(store, secret, encrypt=True)
    assert ref1.key != ref2.key
    # the content chunk is stored once (convergent); each data map is distinct
    assert (await store.info()).chunks == 3
    stored = [await store.get_chunk(a.hex()) for a in (ref1.address, ref2.address)]
    assert all(s is not None and b"camera" not in s for s in stored)
    with pytest.raises(Exception, match="does not open"):
        await get_blob(store, BlobRef(ref1.address, ref2.key))


def test_parse_safe_url() -> None:
    assert parse_safe_url("safe://garden.alice") == ("garden", "alice")
    assert parse_safe_url("safe://alice") == ("www", "alice")
    with pytest.raises(ValueError, match="not a safe:// URL"):
        parse_safe_url("http://x")
    with pytest.raises(ValueError, match="invalid public id"):
        parse_safe_url("safe://garden.Al ice")


async def test_public_names(store: Store, alice: Identity, bob: Identity) -> None:
    names = PublicNames(Client(store, alice))
    service = await names.create_service("safe://garden.alice")
    await service.insert("index", b"hello")
    resolved = await PublicNames(Client(store)).resolve("safe://garden.alice")
    assert resolved.address == service.address
    assert resolved.address.tag == TAG_SERVICE
    assert await resolved.get_value("index") == b"hello"
    with pytest.raises(NameTakenError, match="already registered"):
        await names.create_service("safe://garden.alice")
    bobs = PublicNames(Client(store, bob))
    with pytest.raises(NameTakenError, match="belongs to someone else"):
        await bobs.register_public_id("alice")
    with pytest.raises(NameTakenError):
        await bobs.create_service("safe://shop.alice")
    with pytest.raises(NoSuchDataError, match="no public id"):
        await bobs.resolve("safe://garden.nobody")
    with pytest.raises(NoSuchDataError, match="no service"):
        await bobs.resolve("safe://shop.alice")
