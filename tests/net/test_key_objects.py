"""Key objects refuse what is not a key of their kind, never show a secret, never change
(written against the mutants of safething/net/keys.py that survived tests/net)."""

from __future__ import annotations

import dataclasses

import pytest

from safething.errors import BadKeyError
from safething.net import (
    EncryptionKey,
    PublicEncryptionKey,
    PublicSignKey,
    SecretKey,
    SigningKey,
)
from safething.net.keys import check_key_type

KINDS = [PublicSignKey, SigningKey, PublicEncryptionKey, EncryptionKey, SecretKey]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_a_key_of_the_wrong_length_is_refused(kind: type, length: int) -> None:
    with pytest.raises(BadKeyError, match=f"must be 32 bytes, got {length}"):
        kind(b"k" * length)


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_that_is_not_bytes_is_refused(kind: type) -> None:
    with pytest.raises(BadKeyError, match="must be 32 bytes, got str"):
        kind("k" * 32)
    assert kind(bytearray(b"k" * 32)) == kind(b"k" * 32)


@pytest.mark.parametrize("kind", [PublicSignKey, PublicEncryptionKey, SecretKey])
def test_hex_round_trips_and_bad_hex_is_a_key_error(kind: type) -> None:
    key = kind(bytes(range(32)))
    assert kind.from_hex(key.hex()) == key
    with pytest.raises(BadKeyError, match="not a hex"):
        kind.from_hex("zz" * 32)
    with pytest.raises(BadKeyError, match="must be 32 bytes"):
        kind.from_hex("ab" * 31)


def test_keys_cannot_be_changed_after_creation() -> None:
    sign, enc, secret = SigningKey.generate(), EncryptionKey.generate(), SecretKey.generate()
    for key, field in (
        (sign, "seed"),
        (sign.public, "value"),
        (enc, "secret"),
        (enc.public, "value"),
        (secret, "value"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(key, field, b"x" * 32)


def test_no_secret_in_repr_or_str() -> None:
    sign, enc, secret = SigningKey.generate(), EncryptionKey.generate(), SecretKey.generate()
    shown = " ".join(f"{k!r} {k!s}" for k in (sign, enc, secret))
    for material in (sign.seed, enc.secret, secret.value):
        assert material.hex() not in shown
        assert material.hex()[:12] not in shown
    assert repr(sign) == f"SigningKey(public={sign.public.hex()[:12]}...)"
    assert repr(enc) == f"EncryptionKey(public={enc.public.hex()[:12]}...)"
    assert repr(sign.public) == f"PublicSignKey({sign.public.hex()[:12]}...)"
    assert repr(enc.public) == f"PublicEncryptionKey({enc.public.hex()[:12]}...)"
    assert repr(secret) == "SecretKey(...)"
    assert str(sign.public) == sign.public.hex()


def test_a_signature_of_another_length_does_not_verify() -> None:
    key = SigningKey.generate()
    signature = key.sign(b"message")
    assert key.public.verify(b"message", signature)
    assert not key.public.verify(b"message", signature[:-1])
    assert not key.public.verify(b"message", signature + b"\0")
    assert not key.public.verify(b"message", signature + b"message")


def test_check_key_type_says_an_encryption_key_cannot_sign() -> None:
    with pytest.raises(BadKeyError, match=r"got EncryptionKey \(an encryption key cannot sign"):
        check_key_type(EncryptionKey.generate(), SigningKey, "signing")
    with pytest.raises(BadKeyError) as caught:
        check_key_type(b"raw", SigningKey, "signing")
    assert str(caught.value) == "signing needs a SigningKey, got bytes"
    check_key_type(SigningKey.generate(), SigningKey, "signing")  # the right kind passes
