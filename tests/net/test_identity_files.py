"""Tampered, foreign or malformed identity files are refused with an ``IdentityError``,
never loaded and never a raw exception. Each comparison is attacked from both sides."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from safething.errors import IdentityError
from safething.net import Identity
from safething.net.identity import PublicIdentity

LOW, HIGH = "00" * 32, "ff" * 32


def _saved(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = Identity.generate("door").save(tmp_path / "ids" / "door.json")
    return path, json.loads(path.read_text())


def _rewrite(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc))
    os.chmod(path, 0o600)


@pytest.mark.parametrize("claimed", [LOW, HIGH], ids=["below", "above"])
@pytest.mark.parametrize("field", ["public_sign_key", "public_encryption_key"])
def test_public_key_that_does_not_match_the_secret_keys(
    tmp_path: Path, field: str, claimed: str
) -> None:
    path, doc = _saved(tmp_path)
    doc[field] = claimed
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match="do not match"):
        Identity.load(path)


@pytest.mark.parametrize("length", [63, 65])
def test_key_material_of_the_wrong_length(tmp_path: Path, length: int) -> None:
    path, doc = _saved(tmp_path)
    doc["secret"]["keys"] = (bytes.fromhex(doc["secret"]["keys"]) * 2)[:length].hex()
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match="wrong length"):
        Identity.load(path)


@pytest.mark.parametrize("mode", [0o601, 0o602, 0o604, 0o610, 0o620, 0o640])
def test_unencrypted_keys_readable_or_usable_by_others_are_refused(
    tmp_path: Path, mode: int
) -> None:
    path, _ = _saved(tmp_path)
    os.chmod(path, mode)
    with pytest.raises(IdentityError, match="readable by others"):
        Identity.load(path)


@pytest.mark.parametrize("kdf", ["aaa", "scrypt"], ids=["below", "above"])
def test_unknown_key_protection_is_refused(tmp_path: Path, kdf: str) -> None:
    path, doc = _saved(tmp_path)
    doc["secret"]["kdf"] = kdf  # the plaintext keys are still there
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match="unknown key protection"):
        Identity.load(path)


@pytest.mark.parametrize(
    "change",
    [
        {"format": "aaa"},
        {"format": "zzz"},
        {"version": 0},
        {"version": 2},
    ],
    ids=["format-below", "format-above", "version-below", "version-above"],
)
def test_foreign_format_or_version_is_refused(tmp_path: Path, change: dict[str, Any]) -> None:
    path, doc = _saved(tmp_path)
    _rewrite(path, doc | change)
    with pytest.raises(IdentityError, match=r"SAFEthing identity file|format version"):
        Identity.load(path)


def test_a_file_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path, doc = _saved(tmp_path)
    _rewrite(path, [doc])
    with pytest.raises(IdentityError, match="not a SAFEthing identity file"):
        Identity.load(path)


@pytest.mark.parametrize("field", ["public_sign_key", "public_encryption_key", "secret"])
def test_missing_field_is_refused(tmp_path: Path, field: str) -> None:
    path, doc = _saved(tmp_path)
    del doc[field]
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match=f"missing {field}"):
        Identity.load(path)


@pytest.mark.parametrize("keys", [None, "zz" * 64, 5], ids=["missing", "not-hex", "not-text"])
def test_damaged_secret_keys_are_refused(tmp_path: Path, keys: Any) -> None:
    path, doc = _saved(tmp_path)
    if keys is None:
        del doc["secret"]["keys"]
    else:
        doc["secret"]["keys"] = keys
    _rewrite(path, doc)
    with pytest.raises(IdentityError, match="not a valid identity file"):
        Identity.load(path)


def test_a_directory_is_not_an_identity(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot read"):
        Identity.load(tmp_path)


def test_file_is_version_1_in_a_private_directory(tmp_path: Path) -> None:
    path, doc = _saved(tmp_path)
    assert doc["version"] == 1  # files written by this release stay readable by others
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_read_public_says_whether_the_keys_are_encrypted(tmp_path: Path) -> None:
    plain = Identity.generate().save(tmp_path / "plain.json")
    locked = Identity.generate().save(
        tmp_path / "locked.json", password="pw", opslimit=1, memlimit=8192
    )
    assert Identity.read_public(plain)["encrypted"] is False
    assert Identity.read_public(locked)["encrypted"] is True


@pytest.mark.parametrize(
    "doc",
    [
        {"enc": "00" * 32},
        {"sign": 5, "enc": 5},
        {"sign": "zz", "enc": "zz"},
        # a name no text can hold (str() of an integer of more than 4300 digits)
        {"sign": "00" * 32, "enc": "00" * 32, "name": 10**5000},
    ],
    ids=["missing", "not-text", "not-hex", "name-too-long"],
)
def test_malformed_public_identity(doc: dict[str, Any]) -> None:
    with pytest.raises(IdentityError, match="malformed public identity"):
        PublicIdentity.from_dict(doc)


def test_identities_are_immutable_and_round_trip() -> None:
    identity = Identity.generate("door")
    public = identity.public
    assert PublicIdentity.from_dict(public.to_dict()) == public
    assert public.sign_key == identity.public_sign_key
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        public.name = "other"  # type: ignore[misc]
