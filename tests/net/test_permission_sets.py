"""Permission sets: exactly the flags granted, a canonical wire form (the owner's
signature covers it), and malformed rows refused (written against the mutants of
safething/net/permissions.py that survived tests/net)."""

from __future__ import annotations

import dataclasses

import pytest

from safething.errors import BadKeyError
from safething.net import ANYONE, Action, Identity, PermissionSet

ALICE = Identity.generate("alice").public_sign_key
BOB = Identity.generate("bob").public_sign_key


def test_parse_accepts_what_people_write() -> None:
    assert Action.parse("read,insert") == Action.READ | Action.INSERT
    assert Action.parse(" Read , Update ") == Action.READ | Action.UPDATE
    assert Action.parse(["delete", "manage-permissions"]) == (
        Action.DELETE | Action.MANAGE_PERMISSIONS
    )
    assert Action.parse("managepermissions") == Action.MANAGE_PERMISSIONS
    assert Action.parse("all") == Action.all()
    assert Action.parse("read,,") == Action.READ
    assert Action.parse("read,,insert") == Action.READ | Action.INSERT  # empty words skipped
    assert Action.parse(["", "update"]) == Action.UPDATE
    assert Action.parse("") == Action.NONE
    assert Action.parse(Action.UPDATE) is Action.UPDATE
    with pytest.raises(ValueError, match="unknown permission 'fly'"):
        Action.parse("read,fly")
    with pytest.raises(ValueError, match="unknown permission 'fly'"):
        Action.parse("all,fly")  # every word is checked, also after 'all'
    for word in ("a", "abc", "al"):  # not a prefix of 'all'
        with pytest.raises(ValueError, match="unknown permission"):
            Action.parse(word)


def test_all_is_every_flag_and_names_are_in_a_fixed_order() -> None:
    every = Action.READ | Action.INSERT | Action.UPDATE | Action.DELETE
    assert Action.all() == every | Action.MANAGE_PERMISSIONS
    assert Action.all().names() == ["read", "insert", "update", "delete", "manage_permissions"]
    assert (Action.DELETE | Action.READ).names() == ["read", "delete"]
    assert Action.NONE.names() == []


def test_allows_needs_every_flag_from_the_key_or_anyone() -> None:
    perms = PermissionSet({ALICE: "insert", ANYONE: "read"})
    assert perms.allows(ALICE, Action.INSERT)
    assert perms.allows(ALICE, Action.READ)  # through ANYONE
    assert perms.allows(ALICE, Action.READ | Action.INSERT)  # both, from two grants
    assert not perms.allows(ALICE, Action.INSERT | Action.UPDATE)  # one of two is not enough
    assert perms.allows(BOB, Action.READ)
    assert not perms.allows(BOB, Action.INSERT)
    assert not PermissionSet().allows(ALICE, Action.READ)
    both = PermissionSet({ALICE: "read,insert", ANYONE: "read"})  # read granted twice
    assert both.allows(ALICE, Action.READ)
    assert both.allows(ALICE, Action.READ | Action.INSERT)


def test_with_grant_sets_exactly_and_none_removes() -> None:
    perms = PermissionSet({ALICE: "insert,update"})
    assert perms.with_grant(ALICE, "read").grants == {ALICE: Action.READ}
    assert perms.with_grant(ALICE, Action.NONE).grants == {}
    assert perms.with_grant(BOB, "delete").grants == {
        ALICE: Action.INSERT | Action.UPDATE,
        BOB: Action.DELETE,
    }
    assert perms.grants == {ALICE: Action.INSERT | Action.UPDATE}  # unchanged: a new set
    with pytest.raises(dataclasses.FrozenInstanceError):
        perms.grants = {}  # type: ignore[misc]


def test_grantees_are_sign_keys_or_anyone() -> None:
    with pytest.raises(BadKeyError, match="a permission grantee needs a PublicSignKey"):
        PermissionSet({Identity.generate().public_encryption_key: "read"})  # type: ignore[dict-item]
    with pytest.raises(BadKeyError):
        PermissionSet({"everyone": "read"})  # type: ignore[dict-item]


def test_wire_form_is_canonical_and_round_trips() -> None:
    one = PermissionSet({ANYONE: "read", BOB: "insert", ALICE: "update"})
    two = PermissionSet({ALICE: "update", ANYONE: "read", BOB: "insert"})
    wire = one.to_wire()
    assert wire == two.to_wire()  # the same set, the same bytes to sign
    keys = sorted([ALICE.value, BOB.value])
    flags = {ALICE.value: Action.UPDATE.value, BOB.value: Action.INSERT.value}
    assert wire == [[k, flags[k]] for k in keys] + [[ANYONE, Action.READ.value]]
    assert PermissionSet.from_wire(wire) == one
    # keys with the same flags: the order is the keys', whatever order they came in
    carol = Identity.generate("carol").public_sign_key
    same = [
        PermissionSet({a: "insert", b: "insert", c: "insert"})
        for a, b, c in ((ALICE, BOB, carol), (carol, BOB, ALICE), (BOB, carol, ALICE))
    ]
    assert same[0].to_wire() == same[1].to_wire() == same[2].to_wire()
    assert [row[0] for row in same[0].to_wire()] == sorted([ALICE.value, BOB.value, carol.value])
    assert one.describe() == {
        "anyone": ["read"],
        BOB.hex(): ["insert"],
        ALICE.hex(): ["update"],
    }


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"anyone": 1}, "permissions must be a list"),
        ([["anyone"]], "malformed permission row"),
        ([["anyone", 1, 2]], "malformed permission row"),
        ([("anyone", 1)], "malformed permission row"),
        ([["anyone", "read"]], "malformed permission row"),
        ([[42, 1]], "malformed permission grantee"),
        ([["anyone", 64]], "unknown permission flags"),
        ([["anyone", 1 | 128]], "unknown permission flags"),
    ],
)
def test_malformed_wire_rows_are_refused(rows: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PermissionSet.from_wire(rows)


def test_every_known_flag_is_accepted_on_the_wire() -> None:
    assert PermissionSet.from_wire([["anyone", Action.all().value]]).grants == {
        ANYONE: Action.all()
    }
    with pytest.raises(BadKeyError):
        PermissionSet.from_wire([[b"short", 1]])
