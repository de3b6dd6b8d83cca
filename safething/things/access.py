"""Access types made real: Owner, Group and Thing data is encrypted.

Each protected level has a 32-byte :class:`~safething.net.SecretKey`. Its
*key record* (entry ``k/<level>`` of the thing MD) holds the key sealed to
every public encryption key allowed to read that level:

* ``thing``: the thing only;
* ``owner``: the owner and the thing;
* ``group``: the owner, the thing and every group member.

Removing a group member starts a new *epoch*: a fresh key sealed to the
remaining members; the record also carries the older keys encrypted under
the new one, so current members keep reading old data while the removed
member cannot read anything written after removal.

Values of ``All`` access are stored in clear (still signed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cbor2

from safething.errors import AccessDeniedError, MalformedRecordError
from safething.net import EncryptionKey, PublicIdentity, SecretKey

__all__ = ["LEVELS", "KeyRing", "key_record_epoch", "make_key_record"]

LEVELS = ("owner", "group", "thing")


def make_key_record(
    epoch: int,
    key: SecretKey,
    readers: Iterable[PublicIdentity],
    previous: dict[int, SecretKey] | None = None,
) -> bytes:
    """The value of a ``k/<level>`` entry: ``key`` sealed to each reader."""
    sealed = {r.encryption_key.value: r.encryption_key.seal(key.value) for r in readers}
    prev = [[e, k.value] for e, k in sorted((previous or {}).items())]
    return bytes(cbor2.dumps({"ep": epoch, "to": sealed, "prev": key.encrypt(cbor2.dumps(prev))}))


def key_record_epoch(record: bytes) -> int:
    """The epoch of a ``k/<level>`` record; ``MalformedRecordError`` if it has none."""
    try:
        return int(cbor2.loads(record)["ep"])
    except Exception as e:
        raise MalformedRecordError("malformed key record") from e


class KeyRing:
    """The level keys one identity can open, by (level, epoch)."""

    def __init__(self, encryption_key: EncryptionKey) -> None:
        self._me = encryption_key
        self._keys: dict[tuple[str, int], SecretKey] = {}
        self.current: dict[str, int] = {}
        """Level -> newest epoch known."""

    def learn(self, level: str, record: bytes) -> bool:
        """Read a key record; True if it gave this identity the level's key."""
        try:
            doc = cbor2.loads(record)
            epoch = int(doc["ep"])
            sealed = doc["to"].get(self._me.public.value)
        except Exception as e:
            raise MalformedRecordError(f"malformed {level} key record") from e
        self.current[level] = max(epoch, self.current.get(level, -1))
        if sealed is None:
            return False
        try:
            key = SecretKey(self._me.unseal(sealed))
            self._keys[(level, epoch)] = key
            for old_epoch, old_key in cbor2.loads(key.decrypt(doc["prev"])):
                self._keys[(level, int(old_epoch))] = SecretKey(bytes(old_key))
        except (ValueError, TypeError) as e:
            raise MalformedRecordError(f"{level} key record does not open") from e
        return True

    def has(self, level: str) -> bool:
        return (level, self.current.get(level, -1)) in self._keys

    def keys_of(self, level: str) -> dict[int, SecretKey]:
        return {e: k for (lvl, e), k in self._keys.items() if lvl == level}

    def add(self, level: str, epoch: int, key: SecretKey) -> None:
        self._keys[(level, epoch)] = key
        self.current[level] = max(epoch, self.current.get(level, -1))

    def seal(self, level: str, plaintext: bytes) -> list[Any]:
        """``[level, epoch, box]`` under the newest key of ``level``."""
        epoch = self.current.get(level, -1)
        key = self._keys.get((level, epoch))
        if key is None:
            raise AccessDeniedError(f"no {level} key to encrypt with")
        return [level, epoch, key.encrypt(plaintext)]

    def open(self, sealed: Any) -> bytes:
        """Inverse of :meth:`seal`; ``AccessDeniedError`` without the key."""
        try:
            level, epoch, box = sealed
            key = self._keys.get((str(level), int(epoch)))
        except (TypeError, ValueError) as e:
            raise MalformedRecordError("malformed encrypted value") from e
        if key is None:
            raise AccessDeniedError(
                f"this value is for {level} access (epoch {epoch}); "
                "this identity holds no key for it"
            )
        try:
            return key.decrypt(bytes(box))
        except ValueError as e:
            raise MalformedRecordError("encrypted value does not decrypt") from e
