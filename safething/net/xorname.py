"""XorName: the 32-byte address of everything on the network (seed 003).

Nodes and data share one XOR space: the distance between two names is their
bitwise XOR read as an unsigned integer, and "who is responsible" for a name
is answered by the k names closest to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

__all__ = ["XORNAME_LEN", "XorName", "closest"]

XORNAME_LEN = 32


@dataclass(frozen=True, slots=True, order=True)
class XorName:
    """A 32-byte name; ``XorName.of("thing-0001")`` hashes a source with SHA3-256."""

    value: bytes
    """The 32 raw bytes."""

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or len(self.value) != XORNAME_LEN:
            raise ValueError(f"a XorName is exactly {XORNAME_LEN} bytes")

    @classmethod
    def of(cls, source: str | bytes) -> Self:
        """SHA3-256 of ``source`` (UTF-8 for strings)."""
        data = source.encode() if isinstance(source, str) else source
        return cls(hashlib.sha3_256(data).digest())

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse the 64-character hex form."""
        try:
            raw = bytes.fromhex(text)
        except ValueError as e:
            raise ValueError(f"not a hex XorName: {text!r}") from e
        if len(raw) != XORNAME_LEN:
            raise ValueError(f"a XorName is {2 * XORNAME_LEN} hex characters, got {len(text)}")
        return cls(raw)

    @classmethod
    def parse(cls, name: XorName | str | bytes) -> XorName:
        """Accept a XorName, its hex form or its 32 raw bytes."""
        if isinstance(name, XorName):
            return name
        if isinstance(name, str):
            return cls.from_hex(name)
        return cls(name)

    def hex(self) -> str:
        """The 64-character lowercase hex form."""
        return self.value.hex()

    def distance(self, other: XorName) -> int:
        """XOR distance to ``other`` as a non-negative integer."""
        return int.from_bytes(self.value, "big") ^ int.from_bytes(other.value, "big")

    def __xor__(self, other: XorName) -> XorName:
        return XorName(bytes(a ^ b for a, b in zip(self.value, other.value, strict=True)))

    def common_prefix_bits(self, other: XorName) -> int:
        """Number of leading bits shared with ``other`` (256 for equal names)."""
        d = self.distance(other)
        return XORNAME_LEN * 8 - d.bit_length()

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"XorName({self.hex()[:12]}...)"


def closest(target: XorName, names: Iterable[XorName], k: int) -> list[XorName]:
    """The ``k`` names closest to ``target`` in XOR distance, nearest first."""
    if k < 0:
        raise ValueError("k must not be negative")
    t = int.from_bytes(target.value, "big")
    return sorted(names, key=lambda n: int.from_bytes(n.value, "big") ^ t)[:k]
