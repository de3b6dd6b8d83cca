"""MutableData: the signed records and the rules every reader checks.

This module is pure: it builds, signs, encodes and verifies records and
knows nothing of stores. :mod:`safething.net.client` puts them in a store.

An MD at address (name, tag) is kept as one *header* record (owners,
permission set, permission version, kind, all signed by an owner) and one
record per *entry* (stored key, stored value or a tombstone, version,
signer, signature). In a private MD the stored key is a keyed hash of the
real key (lookups leak nothing) and the real key and value are encrypted
with the MD's :class:`~safething.net.keys.SecretKey`.

Validity, checked by every reader:

* the header is signed by one of the owners it names, over (name, tag,
  owners, permissions, permission version, kind);
* an entry's signature covers (name, tag, stored key, stored value,
  version) and verifies under its signer; or, for an entry signed in a *batch*
  with others of the same commit (format 2), the entry's leaf (a hash of those
  same fields) is the one at the record's index in the list of leaves it
  carries, and the signature covers that whole list;
* the signer is an owner or holds, in the current permission set, Insert
  (version 0), Update (a later version with a value) or Delete (a tombstone);
* versions only move forward: a reader remembers the highest version it
  verified per entry and per header and refuses anything older.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from safething.errors import (
    LimitExceededError,
    MalformedRecordError,
    ReservedTypeTagError,
    TamperedDataError,
)
from safething.net.codec import decode_record, encode_record, field, signing_bytes, version_field
from safething.net.keys import PublicSignKey, SecretKey, SigningKey
from safething.net.permissions import Action, PermissionSet
from safething.net.xorname import XorName

__all__ = [
    "BATCH_FORMAT",
    "MAX_BATCH",
    "MAX_ENTRIES",
    "MAX_ENTRY_KEY_BYTES",
    "MAX_MD_BYTES",
    "RESERVED_TAG_MAX",
    "TAG_PUBLIC_ID",
    "TAG_SERVICE",
    "TAG_THING",
    "Entry",
    "EntryRecord",
    "MDAddress",
    "MDHeader",
    "PrivateCodec",
    "VerifiedBatches",
    "batches",
    "check_entry_key",
    "needed_action",
    "record_digest",
]

RESERVED_TAG_MAX = 10_000
"""Type tags 0..10000 belong to the network and are refused for user data."""
TAG_PUBLIC_ID = 15001
"""Public-id MDs: service name -> service MD (``safe://service.publicid``)."""
TAG_SERVICE = 15002
"""Service MDs that a public name points to."""
TAG_THING = 27417
"""SAFEthing things."""
MAX_TAG = 2**64 - 1

MAX_ENTRIES = 1000
"""Most entries (tombstones included) an MD holds."""
MAX_MD_BYTES = 1024 * 1024
"""Most bytes of stored entry records an MD holds."""
MAX_ENTRY_KEY_BYTES = 256
"""Longest entry key, in bytes."""

MAX_BATCH = 8
"""Most entries signed together. A batch record carries one 32-byte leaf per entry, so
a larger batch makes every record of it larger (fewer entries fit in an MD's bytes)
and saves little: a commit's hot writes are 2 entries (a reading) and 6 (a new
thing), and one signature costs about 19 us of CPU."""
BATCH_FORMAT = 2
"""The record format of an entry signed in a batch (a lone entry stays format 1)."""

_HEADER_DOMAIN = "safething/md-header/v1"
_ENTRY_DOMAIN = "safething/md-entry/v1"
_BATCH_DOMAIN = "safething/md-batch/v1"
_LEAF_PERSON = b"safething/leaf"
_LEAF_BYTES = 32


def record_digest(data: bytes) -> bytes:
    """What a client keeps of a record it verified or signed, to know the same bytes
    again without checking their signature again (a 256-bit BLAKE2b hash)."""
    return hashlib.blake2b(data, digest_size=32).digest()


def _check_tag(tag: int) -> int:
    if not isinstance(tag, int) or isinstance(tag, bool):
        raise TypeError(f"a type tag is an integer, got {type(tag).__name__}")
    if tag < 0 or tag > MAX_TAG:
        raise ValueError(f"type tag {tag} is out of range 10001..{MAX_TAG}")
    if tag <= RESERVED_TAG_MAX:
        raise ReservedTypeTagError(tag)
    return tag


@functools.lru_cache(maxsize=4096)
def _entry_prefix(name: bytes, tag: int) -> str:
    return f"md.{tag}.{name.hex()}.e."


@functools.lru_cache(maxsize=4096)
def _header_key(name: bytes, tag: int) -> str:
    # asked for about ten times per reading written and read (pins, guards, watches)
    return f"md.{tag}.{name.hex()}.h"


@dataclass(frozen=True, slots=True)
class MDAddress:
    """Where an MD lives: its XorName and type tag."""

    name: XorName
    """The MD's 32-byte name (hex accepted)."""
    tag: int
    """Type tag, above 10000."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", XorName.parse(self.name))
        _check_tag(self.tag)

    @classmethod
    def parse(cls, text: str) -> Self:
        """``"<hex name>:<tag>"`` or ``"<hex name>/<tag>"``."""
        for sep in (":", "/"):
            if sep in text:
                name, _, tag = text.rpartition(sep)
                try:
                    return cls(XorName.from_hex(name), int(tag))
                except ValueError as e:
                    if isinstance(e, ReservedTypeTagError):
                        raise
                    raise ValueError(f"bad MD address {text!r}: {e}") from e
        raise ValueError(f"bad MD address {text!r}: write <64 hex chars>:<type tag>")

    @property
    def header_key(self) -> str:
        """Store key of the header record."""
        return _header_key(self.name.value, self.tag)

    @property
    def prefix(self) -> str:
        """Store-key prefix of the header and every entry (what a watch follows)."""
        return f"md.{self.tag}.{self.name.hex()}."

    @property
    def entry_prefix(self) -> str:
        """Store-key prefix of every entry record."""
        return _entry_prefix(self.name.value, self.tag)

    def entry_key(self, stored_key: bytes) -> str:
        """Store key of the entry whose stored key is ``stored_key``."""
        return self.entry_prefix + stored_key.hex()

    def __str__(self) -> str:
        return f"{self.name.hex()}:{self.tag}"


@dataclass(frozen=True, slots=True)
class MDHeader:
    """Owners, permissions and kind of an MD, signed by an owner."""

    address: MDAddress
    """Where the MD lives."""
    owners: tuple[PublicSignKey, ...]
    """Keys that may do anything, including sign the header."""
    permissions: PermissionSet
    """Grants for non-owners."""
    version: int
    """Permission version: 0 at creation, +1 on every change."""
    private: bool
    """Private MDs hold encrypted keys and values."""
    signer: PublicSignKey
    """Owner who signed this header."""
    signature: bytes
    """Signature over :meth:`signed_part`."""

    @staticmethod
    def signed_part(
        address: MDAddress,
        owners: tuple[PublicSignKey, ...],
        permissions: PermissionSet,
        version: int,
        private: bool,
    ) -> bytes:
        return signing_bytes(
            _HEADER_DOMAIN,
            [
                address.name.value,
                address.tag,
                sorted(o.value for o in owners),
                permissions.to_wire(),
                version,
                private,
            ],
        )

    @classmethod
    def create(
        cls,
        address: MDAddress,
        *,
        signer: SigningKey,
        owners: tuple[PublicSignKey, ...],
        permissions: PermissionSet,
        version: int,
        private: bool,
    ) -> MDHeader:
        """Build and sign a header; the signer must be one of the owners."""
        if not owners:
            raise ValueError("an MD needs at least one owner")
        if signer.public not in owners:
            raise ValueError("only an owner can sign an MD's permission set")
        owners = tuple(sorted(set(owners), key=lambda k: k.value))
        sig = signer.sign(cls.signed_part(address, owners, permissions, version, private))
        return cls(address, owners, permissions, version, private, signer.public, sig)

    def verify(self) -> None:
        """Raise ``TamperedDataError`` unless an owner signed exactly this header."""
        where = str(self.address)
        if self.signer not in self.owners:
            raise TamperedDataError(
                f"MD {where}: permission set signed by {self.signer.hex()[:16]}..., "
                "who is not an owner",
                address=where,
            )
        message = self.signed_part(
            self.address, self.owners, self.permissions, self.version, self.private
        )
        if not self.signer.verify(message, self.signature):
            raise TamperedDataError(
                f"MD {where}: bad owner signature on the permission set (version {self.version})",
                address=where,
            )

    def is_owner(self, key: PublicSignKey) -> bool:
        return key in self.owners

    def allows(self, key: PublicSignKey, action: Action) -> bool:
        """Owners may do anything; others per the permission set."""
        return key in self.owners or self.permissions.allows(key, action)

    def to_bytes(self) -> bytes:
        return encode_record(
            "md",
            {
                "name": self.address.name.value,
                "tag": self.address.tag,
                "owners": [o.value for o in self.owners],
                "perms": self.permissions.to_wire(),
                "ver": self.version,
                "private": self.private,
                "by": self.signer.value,
                "sig": self.signature,
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes, address: MDAddress) -> MDHeader:
        """Decode a stored header, checking it is for ``address`` (not yet its signature)."""
        where = str(address)
        doc = decode_record(data, "md", where=f"MD {where}")
        try:
            name = XorName(field(doc, "name", bytes, where=where))
            tag = field(doc, "tag", int, where=where)
            owners = tuple(PublicSignKey(o) for o in field(doc, "owners", list, where=where))
            perms = PermissionSet.from_wire(doc.get("perms"))
            header = cls(
                MDAddress(name, tag),
                owners,
                perms,
                version_field(doc, "ver", where=where),
                field(doc, "private", bool, where=where),
                PublicSignKey(field(doc, "by", bytes, where=where)),
                field(doc, "sig", bytes, where=where),
            )
        except (ValueError, TypeError) as e:
            if isinstance(e, MalformedRecordError):
                raise
            raise MalformedRecordError(f"MD {where}: malformed header: {e}", address=where) from e
        if header.address != address:
            raise TamperedDataError(
                f"MD {where}: the store returned the header of another MD ({header.address})",
                address=where,
            )
        return header


@dataclass(frozen=True, slots=True)
class Entry:
    """A verified entry as a reader sees it (plaintext for private MDs)."""

    key: bytes
    """The entry's key."""
    value: bytes | None
    """The value, or ``None`` for a deleted entry (tombstone)."""
    version: int
    """0 when inserted, +1 on every update or delete."""
    signer: PublicSignKey
    """Key that wrote this version."""

    @property
    def deleted(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """An entry as stored: what the signature covers, plus the sealed key of private MDs.

    Signed alone (format 1), ``signature`` covers :meth:`signed_part`. Signed in a
    batch with the other entries of one commit (format 2), it carries the leaf of
    every entry of the batch (:meth:`leaf`, in the order they were signed) and its own
    index among them, and ``signature`` covers that list (one signature for the whole
    commit); a reader checks that the record's own leaf is the one at its index, so
    the record is verified on its own, without the other entries.
    """

    stored_key: bytes
    """The key in the store: the real key (public MD) or its keyed hash (private MD)."""
    sealed_key: bytes | None
    """Private MDs: the real key, encrypted. Public MDs: ``None``."""
    stored_value: bytes | None
    """The value, its ciphertext (private) or ``None`` (tombstone)."""
    version: int
    """Entry version."""
    signer: PublicSignKey
    """Writer's public key."""
    signature: bytes
    """Signature over :meth:`signed_part` (alone) or over the batch's leaves."""
    batch: tuple[bytes, ...] = ()
    """The leaves of the entries signed together, 2 to :data:`MAX_BATCH` distinct
    32-byte digests; empty for an entry signed alone."""
    index: int = 0
    """This entry's place in ``batch`` (0 when signed alone)."""

    def __post_init__(self) -> None:
        batch, index = self.batch, self.index
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError("a batch index is an integer")
        if not batch:
            if index != 0:
                raise ValueError("an entry signed alone has no batch index")
            return
        if not isinstance(batch, tuple):
            raise TypeError("a batch is a tuple of leaves")
        if not 2 <= len(batch) <= MAX_BATCH:
            raise ValueError(f"a batch holds 2 to {MAX_BATCH} entries, not {len(batch)}")
        if not 0 <= index < len(batch):
            raise ValueError(f"batch index {index} is outside the batch of {len(batch)}")
        for leaf in batch:
            if not isinstance(leaf, bytes) or len(leaf) != _LEAF_BYTES:
                raise ValueError(f"a batch leaf is {_LEAF_BYTES} bytes")
        if len(set(batch)) != len(batch):
            raise ValueError("a batch names one leaf twice")

    @staticmethod
    def signed_part(
        address: MDAddress, stored_key: bytes, stored_value: bytes | None, version: int
    ) -> bytes:
        return signing_bytes(
            _ENTRY_DOMAIN,
            [address.name.value, address.tag, stored_key, stored_value, version],
        )

    @classmethod
    def leaf(
        cls, address: MDAddress, stored_key: bytes, stored_value: bytes | None, version: int
    ) -> bytes:
        """An entry's leaf in a batch: a 256-bit BLAKE2b hash (personalised, so it is
        never any other hash of ours) of exactly what it would sign alone."""
        return hashlib.blake2b(
            cls.signed_part(address, stored_key, stored_value, version),
            digest_size=_LEAF_BYTES,
            person=_LEAF_PERSON,
        ).digest()

    @staticmethod
    def batch_part(leaves: Sequence[bytes]) -> bytes:
        """What a batch signature covers: its leaves, in order, under their own domain."""
        return signing_bytes(_BATCH_DOMAIN, [list(leaves)])

    @classmethod
    def create(
        cls,
        address: MDAddress,
        *,
        signer: SigningKey,
        stored_key: bytes,
        sealed_key: bytes | None,
        stored_value: bytes | None,
        version: int,
    ) -> EntryRecord:
        sig = signer.sign(cls.signed_part(address, stored_key, stored_value, version))
        return cls(stored_key, sealed_key, stored_value, version, signer.public, sig)

    @classmethod
    def create_batch(
        cls,
        address: MDAddress,
        *,
        signer: SigningKey,
        entries: Sequence[tuple[bytes, bytes | None, bytes | None, int]],
    ) -> list[EntryRecord]:
        """Sign up to :data:`MAX_BATCH` entries, each ``(stored key, sealed key, stored
        value, version)``, with one signature; one entry alone is signed as by
        :meth:`create` (format 1). Split longer lists with :func:`batches`."""
        if len(entries) == 1:
            ((stored_key, sealed_key, stored_value, version),) = entries
            return [
                cls.create(
                    address,
                    signer=signer,
                    stored_key=stored_key,
                    sealed_key=sealed_key,
                    stored_value=stored_value,
                    version=version,
                )
            ]
        leaves = tuple(cls.leaf(address, k, v, ver) for k, _, v, ver in entries)
        if not 2 <= len(leaves) <= MAX_BATCH or len(set(leaves)) != len(leaves):
            raise ValueError(f"a batch signs 1 to {MAX_BATCH} different entries")
        sig = signer.sign(cls.batch_part(leaves))
        public = signer.public
        return [
            cls(k, sealed, v, ver, public, sig, leaves, i)
            for i, (k, sealed, v, ver) in enumerate(entries)
        ]

    def verify(
        self, address: MDAddress, header: MDHeader, *, verified: VerifiedBatches | None = None
    ) -> None:
        """Raise ``TamperedDataError`` unless this record is a valid write under ``header``.

        ``verified``: batch signatures already checked, so that the other entries of a
        batch cost no signature check (their own leaf is checked all the same)."""
        where = str(address)
        message = self.signed_part(address, self.stored_key, self.stored_value, self.version)
        if self.batch:
            leaf = hashlib.blake2b(message, digest_size=_LEAF_BYTES, person=_LEAF_PERSON).digest()
            if leaf != self.batch[self.index]:
                raise TamperedDataError(
                    f"MD {where}: forged entry (not the entry its batch signature covers) "
                    f"at version {self.version}",
                    address=where,
                    key=self.stored_key,
                )
            message = self.batch_part(self.batch)
            valid = (
                verified.check(self.signer, message, self.signature)
                if verified is not None
                else self.signer.verify(message, self.signature)
            )
        else:
            valid = self.signer.verify(message, self.signature)
        if not valid:
            raise TamperedDataError(
                f"MD {where}: forged entry (bad signature) at version {self.version}",
                address=where,
                key=self.stored_key,
            )
        action = needed_action(self.version, self.stored_value is None)
        if not header.allows(self.signer, action):
            raise TamperedDataError(
                f"MD {where}: entry version {self.version} signed by "
                f"{self.signer.hex()[:16]}..., who lacks {action.names()[0]} permission "
                f"(permission version {header.version})",
                address=where,
                key=self.stored_key,
            )

    def to_bytes(self) -> bytes:
        fields: dict[str, Any] = {
            "k": self.stored_key,
            "v": self.stored_value,
            "ver": self.version,
            "by": self.signer.value,
            "sig": self.signature,
        }
        if self.sealed_key is not None:
            fields["sk"] = self.sealed_key
        if not self.batch:
            return encode_record("entry", fields)
        fields["bl"] = list(self.batch)
        fields["bi"] = self.index
        return encode_record("entry", fields, fmt=BATCH_FORMAT)

    @classmethod
    def from_bytes(cls, data: bytes, address: MDAddress, expected_key: bytes | None) -> Self:
        """Decode a stored entry; check it is the one asked for (not yet its signature)."""
        where = str(address)
        doc = decode_record(data, "entry", where=f"MD {where}", newest=BATCH_FORMAT)
        try:
            value = doc.get("v")
            if value is not None and not isinstance(value, bytes):
                raise ValueError("value is neither bytes nor null")
            sealed = doc.get("sk")
            if sealed is not None and not isinstance(sealed, bytes):
                raise ValueError("sealed key is not bytes")
            if doc["f"] == BATCH_FORMAT:
                leaves = field(doc, "bl", list, where=where)
                if not 2 <= len(leaves) <= MAX_BATCH:  # before looking at each leaf
                    raise ValueError(f"a batch holds 2 to {MAX_BATCH} entries, not {len(leaves)}")
                batch, index = tuple(leaves), field(doc, "bi", int, where=where)
            elif "bl" in doc or "bi" in doc:
                raise ValueError("a format 1 entry is signed alone: it names no batch")
            else:
                batch, index = (), 0
            record = cls(
                field(doc, "k", bytes, where=where),
                sealed,
                value,
                version_field(doc, "ver", where=where),
                PublicSignKey(field(doc, "by", bytes, where=where)),
                field(doc, "sig", bytes, where=where),
                batch,
                index,
            )
        except (ValueError, TypeError) as e:
            if isinstance(e, MalformedRecordError):
                raise
            raise MalformedRecordError(f"MD {where}: malformed entry: {e}", address=where) from e
        if expected_key is not None and record.stored_key != expected_key:
            raise TamperedDataError(
                f"MD {where}: the store returned another entry than the one asked for",
                address=where,
                key=expected_key,
            )
        return record


def batches(count: int) -> list[range]:
    """Split ``count`` entries of one commit into batches of at most :data:`MAX_BATCH`,
    as even as can be (9 entries: 5 and 4, not 8 and a lone one)."""
    if count <= 0:
        return []
    parts = -(-count // MAX_BATCH)
    size, extra = divmod(count, parts)
    result, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        result.append(range(start, end))
        start = end
    return result


class VerifiedBatches:
    """Batch signatures a reader has checked: the other entries of a batch it has seen
    cost a hash, not a signature check. Bounded (the oldest go first), since an attacker
    can sign as many batches of its own as it likes; an entry still needs its own leaf
    in the batch and its signer's permission, checked on every read."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._seen: dict[tuple[bytes, bytes, bytes], None] = {}

    def check(self, signer: PublicSignKey, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` by ``signer`` covers ``message`` (checked, or known)."""
        key = (signer.value, signature, record_digest(message))
        if key in self._seen:
            return True
        if not signer.verify(message, signature):
            return False
        if len(self._seen) >= self._size:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = None
        return True


def needed_action(version: int, tombstone: bool) -> Action:
    """Permission a write of ``version`` needs: Insert (0), Delete (tombstone) or Update."""
    if tombstone:
        return Action.DELETE
    return Action.INSERT if version == 0 else Action.UPDATE


class PrivateCodec:
    """Encrypts keys and values of a private MD under its secret key.

    The stored key is a keyed BLAKE2b hash of the real key, so a lookup
    names no plaintext; the real key travels sealed beside it for listing.
    """

    def __init__(self, secret: SecretKey) -> None:
        self.secret = secret
        self._lookup_key = secret.derive("safething/md/lookup")
        self._value_key = SecretKey(secret.derive("safething/md/value"))

    def stored_key(self, key: bytes) -> bytes:
        return hashlib.blake2b(key, key=self._lookup_key, digest_size=32).digest()

    def seal_key(self, key: bytes) -> bytes:
        return self._value_key.encrypt(b"k" + key)

    def open_key(self, sealed: bytes) -> bytes:
        plain = self._value_key.decrypt(sealed)
        if not plain.startswith(b"k"):
            raise ValueError("not a sealed entry key")
        return plain[1:]

    def seal_value(self, value: bytes) -> bytes:
        return self._value_key.encrypt(b"v" + value)

    def open_value(self, sealed: bytes) -> bytes:
        plain = self._value_key.decrypt(sealed)
        if not plain.startswith(b"v"):
            raise ValueError("not a sealed entry value")
        return plain[1:]


def check_entry_key(key: bytes) -> bytes:
    """Validate an entry key given by a user (bytes or str accepted upstream)."""
    if not isinstance(key, bytes):
        raise TypeError(f"an entry key is bytes or str, got {type(key).__name__}")
    if not key:
        raise ValueError("an entry key must not be empty")
    if len(key) > MAX_ENTRY_KEY_BYTES:
        raise LimitExceededError(
            f"entry key is {len(key)} bytes; the limit is {MAX_ENTRY_KEY_BYTES}",
            limit=MAX_ENTRY_KEY_BYTES,
            actual=len(key),
        )
    return key
