"""The records a thing writes: readings, events, action states, requests.

Each is a small CBOR map. Sequence number and time stay in clear (they
order and deduplicate notifications); the payload is in clear for ``All``
access and sealed under the level key otherwise (see :mod:`.access`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from safething.errors import MalformedRecordError
from safething.net import PublicSignKey
from safething.things.access import KeyRing

__all__ = ["Notification", "Reading", "decode_payload", "dumps", "encode_payload", "loads"]


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
