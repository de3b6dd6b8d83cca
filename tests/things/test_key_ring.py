"""Level keys: sealed to each reader, new epochs for removals, old keys carried
forward for current members only (written against the mutants of
safething/things/access.py)."""

from __future__ import annotations

import cbor2
import pytest

from safething.errors import AccessDeniedError, MalformedRecordError
from safething.net import Identity, SecretKey
from safething.things.access import KeyRing, make_key_record

OWNER, MEMBER, REMOVED = (Identity.generate(n) for n in ("owner", "member", "removed"))


def _ring(who: Identity) -> KeyRing:
    return KeyRing(who.encryption_key)


def test_a_key_record_opens_for_its_readers_only() -> None:
    key = SecretKey.generate()
    record = make_key_record(0, key, [OWNER.public, MEMBER.public])
    for reader in (OWNER, MEMBER):
        ring = _ring(reader)
        assert ring.learn("group", record) is True
        assert ring.has("group")
        assert ring.keys_of("group") == {0: key}
        assert ring.open(_ring_of(record, OWNER).seal("group", b"hello")) == b"hello"
    outsider = _ring(REMOVED)
    assert outsider.learn("group", record) is False
    assert not outsider.has("group")
    assert outsider.current == {"group": 0}  # it knows the epoch, not the key
    with pytest.raises(AccessDeniedError, match="no group key"):
        outsider.seal("group", b"x")
    with pytest.raises(AccessDeniedError, match=r"group access \(epoch 0\)"):
        outsider.open(_ring_of(record, OWNER).seal("group", b"secret"))


def _ring_of(record: bytes, who: Identity) -> KeyRing:
    ring = _ring(who)
    assert ring.learn("group", record)
    return ring


def test_a_removed_member_reads_nothing_written_after_removal() -> None:
    old, new = SecretKey.generate(), SecretKey.generate()
    first = make_key_record(0, old, [OWNER.public, MEMBER.public, REMOVED.public])
    second = make_key_record(1, new, [OWNER.public, MEMBER.public], previous={0: old})
    removed, member = _ring(REMOVED), _ring(MEMBER)
    for ring in (removed, member):
        ring.learn("group", first)
    before = member.seal("group", b"before")
    assert removed.learn("group", second) is False
    assert member.learn("group", second) is True
    assert member.keys_of("group") == {0: old, 1: new}  # old data stays readable
    after = member.seal("group", b"after")
    assert after[:2] == ["group", 1]
    assert member.open(before) == b"before"
    assert removed.open(before) == b"before"  # what it could read, it still can
    with pytest.raises(AccessDeniedError):
        removed.open(after)
    assert not removed.has("group")  # its key is not the current epoch's


def test_the_newest_epoch_stays_current() -> None:
    records = [make_key_record(e, SecretKey.generate(), [OWNER.public]) for e in range(3)]
    ring = _ring(OWNER)
    for record in (records[2], records[0], records[1]):  # an old record comes in late
        ring.learn("owner", record)
    assert ring.current["owner"] == 2
    assert ring.seal("owner", b"x")[1] == 2
    key = SecretKey.generate()
    ring.add("owner", 1, key)
    assert ring.current["owner"] == 2
    ring.add("owner", 5, key)
    assert ring.current["owner"] == 5
    assert ring.seal("owner", b"x")[1] == 5


def test_levels_are_kept_apart() -> None:
    ring = _ring(OWNER)
    ring.learn("owner", make_key_record(0, SecretKey.generate(), [OWNER.public]))
    sealed = ring.seal("owner", b"x")
    with pytest.raises(AccessDeniedError, match="no group key"):
        ring.seal("group", b"x")
    with pytest.raises(AccessDeniedError, match="for group access"):
        ring.open(["group", *sealed[1:]])
    assert ring.keys_of("group") == {}
    group_key = SecretKey.generate()
    ring.learn("group", make_key_record(3, group_key, [OWNER.public]))
    assert ring.keys_of("group") == {3: group_key}
    assert 3 not in ring.keys_of("owner") and 3 not in ring.keys_of("thing")
    assert set(ring.keys_of("owner")) == {0}


@pytest.mark.parametrize(
    "record",
    [b"not cbor \xff", cbor2.dumps({"to": {}}), cbor2.dumps({"ep": "x", "to": {}}), b""],
)
def test_malformed_key_records(record: bytes) -> None:
    with pytest.raises(MalformedRecordError, match="malformed owner key record"):
        _ring(OWNER).learn("owner", record)


def test_a_key_record_that_does_not_open() -> None:
    good = cbor2.loads(make_key_record(0, SecretKey.generate(), [OWNER.public]))
    me = OWNER.public_encryption_key.value
    bad_seal = {**good, "to": {me: b"\x00" * 80}}
    with pytest.raises(MalformedRecordError, match="owner key record does not open"):
        _ring(OWNER).learn("owner", cbor2.dumps(bad_seal))
    bad_prev = {**good, "prev": good["prev"][:-1] + bytes([good["prev"][-1] ^ 1])}
    with pytest.raises(MalformedRecordError, match="does not open"):
        _ring(OWNER).learn("owner", cbor2.dumps(bad_prev))
    # previous keys that open but are no list of (epoch, key) pairs
    key = SecretKey.generate()
    for prev in (5, [[None, bytes(32)]]):
        not_pairs = {**good, "to": {me: OWNER.public_encryption_key.seal(key.value)}}
        not_pairs["prev"] = key.encrypt(cbor2.dumps(prev))
        with pytest.raises(MalformedRecordError, match="owner key record does not open"):
            _ring(OWNER).learn("owner", cbor2.dumps(not_pairs))


def test_malformed_and_altered_values() -> None:
    ring = _ring(OWNER)
    ring.learn("owner", make_key_record(0, SecretKey.generate(), [OWNER.public]))
    level, epoch, box = ring.seal("owner", b"x")
    for shape in ([level, epoch], None, [level, "zero", box]):
        with pytest.raises(MalformedRecordError, match="malformed encrypted value"):
            ring.open(shape)
    altered = bytes(box[:-1]) + bytes([box[-1] ^ 1])
    with pytest.raises(MalformedRecordError, match="does not decrypt"):
        ring.open([level, epoch, altered])
