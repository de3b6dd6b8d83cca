"""ImmutableData: content-addressed chunks and blobs of any size.

A chunk is at most 1 MiB and lives at the SHA3-256 of its bytes, so any
reader can check that the store returned exactly what was asked for. A blob
is split into chunks plus a *data map* (a chunk listing the chunks in order
with their sizes and hashes); :func:`put_blob` returns a :class:`BlobRef`
to the data map, :func:`get_blob` reassembles and verifies.

With ``encrypt=True`` each chunk is encrypted *convergently*: its key and
nonce derive from the hash of its plaintext, so equal chunks still
deduplicate while the store sees only ciphertext. The data map, which holds
those hashes, is then itself encrypted with a random key carried in the
``BlobRef``: whoever holds the ref can read the blob, nobody else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Self

from safething.errors import ChunkError, LimitExceededError, NoSuchDataError, TamperedDataError
from safething.net.codec import decode_record, encode_record
from safething.net.keys import SecretKey
from safething.net.xorname import XorName
from safething.store.base import Store

__all__ = [
    "MAX_CHUNK_BYTES",
    "BlobRef",
    "chunk_address",
    "get_blob",
    "get_chunk",
    "put_blob",
    "put_chunk",
]

MAX_CHUNK_BYTES = 1024 * 1024
"""Largest chunk, in bytes."""
_BOX_OVERHEAD = 40  # nonce + MAC of XSalsa20-Poly1305
_PLAIN_CHUNK = MAX_CHUNK_BYTES - _BOX_OVERHEAD
_MAX_MAP_ROWS = 12_000  # a data map must itself fit in one chunk: ~11 GiB per blob


def chunk_address(data: bytes) -> XorName:
    """Where a chunk lives: SHA3-256 of its bytes."""
    return XorName.of(data)


async def put_chunk(store: Store, data: bytes) -> XorName:
    """Store one chunk (at most 1 MiB); returns its address. Idempotent."""
    if not isinstance(data, bytes):
        raise TypeError("a chunk is bytes")
    if len(data) > MAX_CHUNK_BYTES:
        raise LimitExceededError(
            f"a chunk holds at most {MAX_CHUNK_BYTES} bytes, got {len(data)}; use put_blob",
            limit=MAX_CHUNK_BYTES,
            actual=len(data),
        )
    address = chunk_address(data)
    await store.put_chunk(address.hex(), data)
    return address


async def get_chunk(store: Store, address: XorName | str) -> bytes:
    """The chunk at ``address``, verified against its hash."""
    name = XorName.parse(address)
    data = await store.get_chunk(name.hex())
    if data is None:
        raise NoSuchDataError(f"no chunk at {name.hex()}")
    if chunk_address(data) != name:
        raise TamperedDataError(
            f"chunk {name.hex()[:16]}...: content does not match its address", address=name.hex()
        )
    return data


@dataclass(frozen=True, slots=True)
class BlobRef:
    """How to find (and, if encrypted, open) a blob. Keep ``key`` secret."""

    address: XorName
    """Address of the data map chunk."""
    key: SecretKey | None = None
    """Key of the encrypted data map, or ``None`` for a public blob."""

    def __str__(self) -> str:
        if self.key is None:
            return self.address.hex()
        return f"{self.address.hex()}#{self.key.hex()}"

    @classmethod
    def parse(cls, text: str) -> Self:
        """Inverse of ``str()``: ``<address>`` or ``<address>#<key>``."""
        address, _, key = text.partition("#")
        return cls(XorName.from_hex(address), SecretKey.from_hex(key) if key else None)


def _convergent_key(plain_hash: bytes) -> tuple[SecretKey, bytes]:
    key = hashlib.blake2b(plain_hash, person=b"st-conv-key", digest_size=32).digest()
    nonce = hashlib.blake2b(plain_hash, person=b"st-conv-nonce", digest_size=24).digest()
    return SecretKey(key), nonce


async def put_blob(store: Store, data: bytes, *, encrypt: bool = False) -> BlobRef:
    """Split ``data`` into chunks, store them and a data map; return the map's ref."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("a blob is bytes")
    view = memoryview(data)
    size = _PLAIN_CHUNK if encrypt else MAX_CHUNK_BYTES
    rows: list[list[Any]] = []
    for start in range(0, max(len(view), 1), size):
        piece = bytes(view[start : start + size])
        if encrypt:
            plain_hash = hashlib.sha3_256(piece).digest()
            key, nonce = _convergent_key(plain_hash)
            stored = key.encrypt(piece, nonce)
            address = await put_chunk(store, stored)
            rows.append([address.value, len(piece), plain_hash])
        else:
            address = await put_chunk(store, piece)
            rows.append([address.value, len(piece)])
        if len(rows) > _MAX_MAP_ROWS:
            raise LimitExceededError(
                f"blob too large: at most {_MAX_MAP_ROWS} chunks",
                limit=_MAX_MAP_ROWS * size,
                actual=len(view),
            )
    data_map = encode_record("datamap", {"size": len(view), "enc": encrypt, "chunks": rows})
    if encrypt:
        map_key = SecretKey.generate()
        return BlobRef(await put_chunk(store, map_key.encrypt(data_map)), map_key)
    return BlobRef(await put_chunk(store, data_map))


async def get_blob(store: Store, ref: BlobRef | str) -> bytes:
    """Fetch, verify, decrypt and reassemble the blob behind ``ref``."""
    if isinstance(ref, str):
        ref = BlobRef.parse(ref)
    where = ref.address.hex()
    raw_map = await get_chunk(store, ref.address)
    if ref.key is not None:
        try:
            raw_map = ref.key.decrypt(raw_map)
        except ValueError as e:
            raise ChunkError(f"data map {where[:16]}... does not open with this key") from e
    doc = decode_record(raw_map, "datamap", where=f"data map {where[:16]}...")
    try:
        total, encrypted, rows = int(doc["size"]), bool(doc["enc"]), list(doc["chunks"])
    except (KeyError, TypeError, ValueError) as e:
        raise ChunkError(f"data map {where[:16]}... is malformed") from e
    parts: list[bytes] = []
    for row in rows:
        piece = await get_chunk(store, XorName(bytes(row[0])))
        if encrypted:
            key, _ = _convergent_key(row[2])
            try:
                piece = key.decrypt(piece)
            except ValueError as e:
                raise TamperedDataError(f"blob {where[:16]}...: chunk does not decrypt") from e
            if hashlib.sha3_256(piece).digest() != row[2]:
                raise TamperedDataError(f"blob {where[:16]}...: chunk plaintext hash mismatch")
        if len(piece) != row[1]:
            raise TamperedDataError(f"blob {where[:16]}...: chunk has the wrong size")
        parts.append(piece)
    blob = b"".join(parts)
    if len(blob) != total:
        raise TamperedDataError(f"blob {where[:16]}...: reassembled size {len(blob)} != {total}")
    return blob
