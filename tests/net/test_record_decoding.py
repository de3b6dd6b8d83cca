"""Decoding stored headers and entries: anything malformed is a MalformedRecordError,
never another exception a caller would not expect (written against the mutants of
safething/net/records.py (then mutable.py) that survived tests/net)."""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import pytest

from safething.errors import LimitExceededError, MalformedRecordError, TamperedDataError
from safething.net import TAG_THING, Action, Identity, PermissionSet, XorName
from safething.net.keys import SecretKey
from safething.net.records import (
    MAX_ENTRIES,
    MAX_ENTRY_KEY_BYTES,
    MAX_MD_BYTES,
    TAG_PUBLIC_ID,
    TAG_SERVICE,
    Entry,
    EntryRecord,
    MDAddress,
    MDHeader,
    PrivateCodec,
    check_entry_key,
    needed_action,
)

ADDRESS = MDAddress(XorName.of("decode-01"), TAG_THING)
OWNER = Identity.generate("owner")


def _header() -> MDHeader:
    return MDHeader.create(
        ADDRESS,
        signer=OWNER.sign_key,
        owners=(OWNER.public_sign_key,),
        permissions=PermissionSet({OWNER.public_sign_key: "insert"}),
        version=0,
        private=False,
    )


def _edited(record: bytes, **changes: Any) -> bytes:
    doc = cbor2.loads(record)
    doc.update(changes)
    return bytes(cbor2.dumps(doc))


def test_the_network_tags_and_limits_are_fixed() -> None:
    """Other implementations and stored data rely on these numbers (docs/architecture.md:
    type tags, "up to 1000 entries and 1 MiB in total")."""
    assert (TAG_PUBLIC_ID, TAG_SERVICE, TAG_THING) == (15001, 15002, 27417)
    assert (MAX_ENTRIES, MAX_MD_BYTES, MAX_ENTRY_KEY_BYTES) == (1000, 1024 * 1024, 256)


def test_a_header_round_trips_and_is_immutable() -> None:
    header = _header()
    again = MDHeader.from_bytes(header.to_bytes(), ADDRESS)
    assert again == header
    again.verify()
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.version = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"perms": "everyone may write"},  # not a permission list
        {"perms": [["anyone", 1 << 20]]},  # unknown flags
        {"owners": [b"short"]},  # not a key
        {"by": b"short"},
        {"tag": 5},  # a reserved tag
        {"name": b"short"},
    ],
)
def test_a_malformed_header_is_a_malformed_record(changes: dict[str, Any]) -> None:
    with pytest.raises(MalformedRecordError, match="malformed header"):
        MDHeader.from_bytes(_edited(_header().to_bytes(), **changes), ADDRESS)


@pytest.mark.parametrize("version", [-1, 2**63, 10**400])
def test_a_header_version_no_sqlite_integer_holds_is_a_malformed_record(version: int) -> None:
    with pytest.raises(MalformedRecordError, match="not a version"):
        MDHeader.from_bytes(_edited(_header().to_bytes(), ver=version), ADDRESS)


def test_a_header_of_another_md_is_tampering() -> None:
    other = MDAddress(XorName.of("decode-02"), TAG_THING)
    with pytest.raises(TamperedDataError, match="header of another MD"):
        MDHeader.from_bytes(_header().to_bytes(), other)


def _entry(version: int = 0, value: bytes | None = b"v") -> EntryRecord:
    return EntryRecord.create(
        ADDRESS,
        signer=OWNER.sign_key,
        stored_key=b"k",
        sealed_key=None,
        stored_value=value,
        version=version,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"v": 5}, "value is neither bytes nor null"),
        ({"sk": "text"}, "sealed key is not bytes"),
        ({"by": b"short"}, "malformed entry"),
        ({"ver": -1}, "not a version"),
        ({"ver": 2**63}, "not a version"),  # no SQLite integer holds it (a trust state)
        ({"ver": 10**400}, "not a version"),
    ],
)
def test_a_malformed_entry_is_a_malformed_record(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedRecordError, match=message):
        EntryRecord.from_bytes(_edited(_entry().to_bytes(), **changes), ADDRESS, None)


def test_an_entry_round_trips_and_is_immutable() -> None:
    record = _entry(3)
    again = EntryRecord.from_bytes(record.to_bytes(), ADDRESS, b"k")
    assert again == record
    with pytest.raises(TamperedDataError, match="another entry than the one asked for"):
        EntryRecord.from_bytes(record.to_bytes(), ADDRESS, b"other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.version = 9  # type: ignore[misc]
    entry = Entry(b"k", b"v", 0, OWNER.public_sign_key)  # what a reader is handed
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.value = b"w"  # type: ignore[misc]


def test_each_write_needs_its_own_permission() -> None:
    assert needed_action(0, False) == Action.INSERT
    assert needed_action(1, False) == Action.UPDATE
    assert needed_action(7, False) == Action.UPDATE
    assert needed_action(0, True) == Action.DELETE
    assert needed_action(4, True) == Action.DELETE
    header = _header()  # the owner's grant: insert only, but owners may do everything
    _entry(0).verify(ADDRESS, header)
    writer = Identity.generate("writer")
    granted = MDHeader.create(
        ADDRESS,
        signer=OWNER.sign_key,
        owners=(OWNER.public_sign_key,),
        permissions=PermissionSet({writer.public_sign_key: "insert"}),
        version=1,
        private=False,
    )
    insert = EntryRecord.create(
        ADDRESS,
        signer=writer.sign_key,
        stored_key=b"k",
        sealed_key=None,
        stored_value=b"v",
        version=0,
    )
    insert.verify(ADDRESS, granted)
    update = EntryRecord.create(
        ADDRESS,
        signer=writer.sign_key,
        stored_key=b"k",
        sealed_key=None,
        stored_value=b"w",
        version=1,
    )
    with pytest.raises(TamperedDataError, match="lacks update permission"):
        update.verify(ADDRESS, granted)


def test_private_keys_are_32_byte_keyed_hashes() -> None:
    codec = PrivateCodec(SecretKey.generate())
    stored = codec.stored_key(b"front-door")
    assert len(stored) == 32
    assert stored != codec.stored_key(b"front-door2")
    assert stored != PrivateCodec(SecretKey.generate()).stored_key(b"front-door")
    assert codec.open_key(codec.seal_key(b"front-door")) == b"front-door"
    assert codec.open_value(codec.seal_value(b"1234")) == b"1234"
    with pytest.raises(ValueError, match="not a sealed entry key"):
        codec.open_key(codec.seal_value(b"front-door"))  # a value is not a key
    with pytest.raises(ValueError, match="not a sealed entry value"):
        codec.open_value(codec.seal_key(b"1234"))


def test_entry_keys_up_to_the_limit() -> None:
    assert check_entry_key(b"k" * MAX_ENTRY_KEY_BYTES) == b"k" * MAX_ENTRY_KEY_BYTES
    with pytest.raises(LimitExceededError, match="entry key is 257 bytes; the limit is 256"):
        check_entry_key(b"k" * (MAX_ENTRY_KEY_BYTES + 1))
    with pytest.raises(ValueError, match="must not be empty"):
        check_entry_key(b"")
    with pytest.raises(TypeError, match="bytes or str, got int"):
        check_entry_key(5)  # type: ignore[arg-type]
