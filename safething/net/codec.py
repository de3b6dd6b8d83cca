"""CBOR serialisation of stored records, with a format version.

Every record the network stores is a CBOR map ``{"f": <format>, "t": <kind>,
...}``. Readers refuse formats they do not know with
:class:`~safething.errors.FormatVersionError` and undecodable bytes with
:class:`~safething.errors.MalformedRecordError`, so a future format can be
introduced without old readers misreading it.

What gets signed is never the stored map but :func:`signing_bytes`: a
domain tag (what kind of statement this is) and a canonical CBOR array, so
a signature over one kind of record can never be replayed as another.
"""

from __future__ import annotations

from typing import Any

import cbor2

from safething.errors import FormatVersionError, MalformedRecordError

__all__ = ["FORMAT", "decode_record", "encode_record", "field", "signing_bytes"]

FORMAT = 1
"""The record format this release writes (and the newest it reads) for every kind of
record but one: an entry signed in a batch with others is format 2
(:data:`safething.net.records.BATCH_FORMAT`), so that a release reading only format 1
refuses it as unreadable ("upgrade") instead of as forged."""


def encode_record(kind: str, fields: dict[str, Any], *, fmt: int = FORMAT) -> bytes:
    """CBOR of ``{"f": fmt, "t": kind, **fields}``."""
    return bytes(cbor2.dumps({"f": fmt, "t": kind, **fields}))


def decode_record(
    data: bytes, kind: str, *, where: str = "", newest: int = FORMAT
) -> dict[str, Any]:
    """Decode a record of ``kind`` in a format up to ``newest``; raise a precise error
    for anything else (the caller reads ``doc["f"]`` when it knows several formats)."""
    try:
        doc = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several unrelated types on garbage
        raise MalformedRecordError(
            f"{where}: stored record is not valid CBOR", address=where
        ) from e
    if not isinstance(doc, dict):
        raise MalformedRecordError(f"{where}: stored record is not a map", address=where)
    fmt = doc.get("f")
    if not isinstance(fmt, int):
        raise MalformedRecordError(f"{where}: stored record has no format version", address=where)
    if fmt > newest or fmt < 1:
        raise FormatVersionError(
            f"{where}: record format {fmt} is not readable by this release (reads 1..{newest}); "
            "upgrade safething",
            address=where,
        )
    if doc.get("t") != kind:
        raise MalformedRecordError(
            f"{where}: expected a {kind!r} record, found {doc.get('t')!r}", address=where
        )
    return doc


def field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], *, where: str = "") -> Any:
    """``doc[name]`` checked to be of ``kind``, else ``MalformedRecordError``."""
    value = doc.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedRecordError(
            f"{where}: record field {name!r} is missing or invalid", address=where
        )
    return value


MAX_VERSION = 2**63 - 1
"""The highest header or entry version: the largest integer SQLite stores (a reader's
trust state keeps each version it verified). No MD or entry gets there by updates; a
record beyond it is malformed, even when signed by a key allowed to write it."""


def version_field(doc: dict[str, Any], name: str, *, where: str = "") -> int:
    """``doc[name]``, a version: an integer from 0 to :data:`MAX_VERSION`, else
    ``MalformedRecordError``."""
    value: int = field(doc, name, int, where=where)
    if not 0 <= value <= MAX_VERSION:
        raise MalformedRecordError(
            f"{where}: record field {name!r} is not a version from 0 to 2**63-1", address=where
        )
    return value


def signing_bytes(domain: str, items: list[Any]) -> bytes:
    """The exact bytes a signature covers: ``domain`` tag, NUL, canonical CBOR of ``items``."""
    return domain.encode() + b"\x00" + bytes(cbor2.dumps(items, canonical=True))
