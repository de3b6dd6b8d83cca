"""A store attacker with write access to the chunk space (``store.put_chunk`` of forged
bytes) against ``safething.net.immutable``: every forged chunk or data map is refused.

Each comparison is attacked from both sides (a forged value that sorts above and below
the real one), so that weakening ``!=`` to ``<`` or ``>`` fails a test."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from safething.errors import ChunkError, LimitExceededError, TamperedDataError
from safething.net import immutable
from safething.net.codec import encode_record
from safething.net.immutable import BlobRef, get_blob, get_chunk, put_blob, put_chunk
from safething.net.keys import SecretKey
from safething.net.xorname import XorName
from safething.store import Store

LOW, HIGH = b"\x00" * 32, b"\xff" * 32


async def _public_map(store: Store, fields: dict[str, Any]) -> str:
    """A forged public data map (the attacker stores it and hands out its address)."""
    return (await put_chunk(store, encode_record("datamap", fields))).hex()


def _convergent_box(plain_hash: bytes) -> tuple[SecretKey, bytes]:
    # Public knowledge: how a reader derives a chunk's key from the row's hash.
    key = hashlib.blake2b(plain_hash, person=b"st-conv-key", digest_size=32).digest()
    nonce = hashlib.blake2b(plain_hash, person=b"st-conv-nonce", digest_size=24).digest()
    return SecretKey(key), nonce


@pytest.mark.parametrize("address", [LOW, HIGH], ids=["below", "above"])
async def test_forged_chunk_at_an_address_that_sorts_below_or_above_its_hash(
    store: Store, address: bytes
) -> None:
    forged = b"not the chunk you asked for"
    assert XorName.of(forged).value not in (LOW, HIGH)
    await store.put_chunk(address.hex(), forged)
    with pytest.raises(TamperedDataError, match="does not match its address"):
        await get_chunk(store, address.hex())


@pytest.mark.parametrize("claimed", [LOW, HIGH], ids=["below", "above"])
async def test_encrypted_chunk_whose_plaintext_does_not_hash_to_its_row(
    store: Store, claimed: bytes
) -> None:
    # The chunk decrypts under the key derived from the row's hash, but its plaintext
    # is the attacker's: the reader must check the plaintext against that hash.
    forged = b"attacker's firmware"
    key, nonce = _convergent_box(claimed)
    chunk = await put_chunk(store, key.encrypt(forged, nonce))
    ref = await _public_map(
        store, {"size": len(forged), "enc": True, "chunks": [[chunk.value, len(forged), claimed]]}
    )
    with pytest.raises(TamperedDataError, match="plaintext hash mismatch"):
        await get_blob(store, ref)


async def test_encrypted_row_whose_chunk_does_not_decrypt(store: Store) -> None:
    plain = b"real text"
    chunk = await put_chunk(store, b"\x01" * 64)  # not a box under any derived key
    ref = await _public_map(
        store,
        {
            "size": len(plain),
            "enc": True,
            "chunks": [[chunk.value, len(plain), hashlib.sha3_256(plain).digest()]],
        },
    )
    with pytest.raises(TamperedDataError, match="does not decrypt"):
        await get_blob(store, ref)


@pytest.mark.parametrize("delta", [-1, 1], ids=["shorter", "longer"])
async def test_row_whose_length_does_not_match_its_chunk(store: Store, delta: int) -> None:
    # The map's total matches the data, so only the per-row length check can refuse it.
    piece = b"0123456789"
    chunk = await put_chunk(store, piece)
    ref = await _public_map(
        store, {"size": len(piece), "enc": False, "chunks": [[chunk.value, len(piece) + delta]]}
    )
    with pytest.raises(TamperedDataError, match="wrong size"):
        await get_blob(store, ref)


@pytest.mark.parametrize("delta", [-1, 1], ids=["smaller", "larger"])
async def test_map_whose_total_size_does_not_match_its_chunks(store: Store, delta: int) -> None:
    piece = b"0123456789"
    chunk = await put_chunk(store, piece)
    ref = await _public_map(
        store, {"size": len(piece) + delta, "enc": False, "chunks": [[chunk.value, len(piece)]]}
    )
    with pytest.raises(TamperedDataError, match="reassembled size"):
        await get_blob(store, ref)


@pytest.mark.parametrize(
    "fields",
    [
        {"enc": False, "chunks": []},  # no size: KeyError
        {"size": 0, "enc": False, "chunks": 7},  # chunks not a list: TypeError
        {"size": "lots", "enc": False, "chunks": []},  # size not a number: ValueError
    ],
    ids=["missing-size", "chunks-not-a-list", "size-not-a-number"],
)
async def test_malformed_data_map_is_a_clear_error(store: Store, fields: dict[str, Any]) -> None:
    ref = await _public_map(store, fields)
    with pytest.raises(ChunkError, match="is malformed"):
        await get_blob(store, ref)


async def test_a_chunk_of_exactly_the_limit_is_stored(store: Store) -> None:
    data = b"x" * (1024 * 1024)
    assert await get_chunk(store, await put_chunk(store, data)) == data
    with pytest.raises(LimitExceededError):
        await put_chunk(store, data + b"x")


async def test_blob_row_limit_is_exact(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 000 rows of 1 MiB are 12 GB; the same check with a limit of 3 rows is cheap.
    monkeypatch.setattr(immutable, "_MAX_MAP_ROWS", 3)
    mib = immutable.MAX_CHUNK_BYTES
    ref = await put_blob(store, b"a" * (3 * mib))
    assert len(await get_blob(store, ref)) == 3 * mib
    with pytest.raises(LimitExceededError, match="at most 3 chunks") as caught:
        await put_blob(store, b"a" * (3 * mib + 1))
    assert caught.value.limit == 3 * mib


async def test_blob_ref_cannot_be_altered(store: Store) -> None:
    ref = await put_blob(store, b"data", encrypt=True)
    with pytest.raises(AttributeError):
        ref.key = None  # type: ignore[misc]
    assert isinstance(ref, BlobRef)
