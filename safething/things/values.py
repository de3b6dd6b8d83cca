"""The records a thing writes: readings, events, action states, requests, status.

Each is a small CBOR map. Sequence number and time stay in clear (they
order and deduplicate notifications); the payload is in clear for ``All``
access and sealed under the level key otherwise (see :mod:`.access`).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import cbor2

from safething.errors import MalformedRecordError, TamperedDataError
from safething.net import PublicSignKey
from safething.things.access import KeyRing

__all__ = [
    "STATUSES",
    "Notification",
    "Reading",
    "decode_payload",
    "dumps",
    "encode_payload",
    "finite",
    "loads",
    "read_status",
    "status_record",
    "unauthorised",
]

STATUSES = ("registered", "published", "disabled")
"""What a thing's ``status`` record may say."""


def dumps(doc: Any) -> bytes:
    return bytes(cbor2.dumps(doc))


def loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as e:
        raise MalformedRecordError(f"malformed {what} record") from e


def loads_map(data: bytes, what: str) -> dict[Any, Any]:
    """A record that must be a CBOR map (anything else is malformed)."""
    doc = loads(data, what)
    if not isinstance(doc, dict):
        raise MalformedRecordError(f"malformed {what} record (not a map)")
    return doc


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite real number (not a bool), else ``None``.
    Records are CBOR, which carries integers of any size: ``float()`` of one too large
    raises ``OverflowError``, and so does arithmetic mixing it with a float, so every
    number read from a record that takes part in such arithmetic goes through here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def status_record(status: str, decided: float) -> bytes:
    """A thing's ``status`` record: ``{"s": status, "t": decided}``, the decision's time
    by the clock of whoever signs it (the thing or its owner), in unix seconds."""
    return dumps({"s": status, "t": decided})


def read_status(value: bytes | None) -> tuple[str, float]:
    """``(status, decided)`` of a ``status`` record. A record without a decision time, or
    with one that is no number (NaN, or an integer too large for a float) counts as
    decided at 0. ``MalformedRecordError`` for a deleted record, one that is no map or
    one without a status; whether the status is one of :data:`STATUSES` is the
    caller's to decide."""
    if value is None:
        raise MalformedRecordError("the status record was deleted")
    doc = loads_map(value, "status")
    if "s" not in doc:
        raise MalformedRecordError("malformed status record (no status)")
    decided = doc.get("t")
    if isinstance(decided, float) and math.isinf(decided):  # a decision at the end of time
        return str(doc["s"]), decided
    return str(doc["s"]), finite(decided) or 0.0


def unauthorised(
    signer: PublicSignKey,
    authorities: Collection[PublicSignKey],
    what: str,
    address: str = "",
) -> TamperedDataError | None:
    """The refusal of a record (``what``) signed by neither the thing nor its owner
    (``authorities``: their signing keys), ``None`` if one of them signed it. Only they
    write a thing's description, status, key records and history index; another key
    that may write its MD (one the owner granted update rights by mistake) may not.
    Not counted: the caller counts it (``Client._tampered``) where it refuses it."""
    if signer in authorities:
        return None
    return TamperedDataError(
        f"{what} signed by {signer.hex()[:16]}..., neither the thing nor its owner",
        address=address,
    )


def encode_payload(*, seq: int, t: float, value: Any, level: str | None, ring: KeyRing) -> bytes:
    """``{"n": seq, "t": t, "v": value}``, or ``"x"`` (sealed value) for protected levels."""
    if level is None:
        return dumps({"n": seq, "t": t, "v": value})
    return dumps({"n": seq, "t": t, "x": ring.seal(level, dumps(value))})


def decode_payload(data: bytes, ring: KeyRing | None, what: str) -> tuple[int, float, Any]:
    """``(seq, t, value)``; ``AccessDeniedError`` for a sealed value without its key."""
    doc = loads(data, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("n"), int):
        raise MalformedRecordError(f"malformed {what} record")
    t = doc.get("t")
    if not isinstance(t, int | float):
        raise MalformedRecordError(f"malformed {what} record (time)")
    if "x" in doc:
        if ring is None:
            from safething.errors import AccessDeniedError

            raise AccessDeniedError(f"{what} is encrypted and this reader holds no keys")
        return doc["n"], float(t), loads(ring.open(doc["x"]), what)
    return doc["n"], float(t), doc.get("v")


@dataclass(frozen=True, slots=True)
class Reading:
    """A value of a dynamic attribute, as read back (verified, decrypted)."""

    thing_id: str
    """Whose attribute."""
    name: str
    """Attribute name."""
    value: Any
    """The value (typed as the description says)."""
    seq: int
    """Sequence number of this update (1, 2, ...)."""
    timestamp: float
    """Unix time the thing stamped on it."""


@dataclass(frozen=True, slots=True)
class Notification:
    """What a subscriber receives: an event or an attribute change."""

    thing_id: str
    """The thing that published it."""
    kind: str
    """``"event"`` or ``"attribute"``."""
    name: str
    """Topic or attribute name."""
    value: Any
    """Event data or the attribute's new value."""
    seq: int
    """Per topic/attribute sequence number: in order, no duplicates."""
    timestamp: float
    """Unix time the thing stamped on it."""
    signer: PublicSignKey | None = None
    """Key that signed it (the thing's)."""
