from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import nacl.signing
import pytest

import safething.net.keys as keys_module
from safething.errors import BadKeyError, IdentityError, WrongPasswordError
from safething.net import (
    EncryptionKey,
    Identity,
    PublicSignKey,
    SecretKey,
    SigningKey,
    XorName,
    closest,
)

FAST_KDF = {"opslimit": 1, "memlimit": 8192 * 1024}


def test_xorname_hashes_and_round_trips() -> None:
    name = XorName.of("thing-0001")
    assert len(name.value) == 32
    assert XorName.from_hex(name.hex()) == name
    assert XorName.of(b"thing-0001") == name
    assert XorName.of("thing-0002") != name
    with pytest.raises(ValueError, match="32 bytes"):
        XorName(b"short")
    with pytest.raises(ValueError, match="hex"):
        XorName.from_hex("zz" * 32)


def test_xor_distance_and_closest() -> None:
    zero = XorName(bytes(32))
    one = XorName(bytes(31) + b"\x01")
    far = XorName(b"\x80" + bytes(31))
    assert zero.distance(zero) == 0
    assert zero.distance(one) == 1
    assert one.distance(zero) == 1
    assert (zero ^ far) == far
    assert zero.common_prefix_bits(one) == 255
    assert zero.common_prefix_bits(far) == 0
    names = [XorName.of(str(i)) for i in range(50)]
    target = XorName.of("target")
    best = closest(target, names, 5)
    assert len(best) == 5
    assert best == sorted(names, key=target.distance)[:5]
    assert all(
        target.distance(b) <= target.distance(n) for b in best for n in names[5:] if n not in best
    )


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"hello")
    assert key.public.verify(b"hello", sig)
    assert not key.public.verify(b"hellO", sig)
    assert not SigningKey.generate().public.verify(b"hello", sig)
    assert not key.public.verify(b"hello", sig[:10])
    assert SigningKey(key.seed).public == key.public


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "signed-message"])
def test_signatures_and_checks_are_pynacl_s(
    monkeypatch: pytest.MonkeyPatch, detached: bool
) -> None:
    """Both ways of signing and checking (libsodium's detached functions, and PyNaCl's
    signed-message bindings where those are not exported) agree with PyNaCl's own
    ed25519: the same signatures, the same verdicts on altered messages, signatures and
    keys."""
    if detached:
        assert keys_module._DETACHED is not None  # PyNaCl's libsodium exports them
    else:
        monkeypatch.setattr(keys_module, "_DETACHED", None)
    rng = random.Random(14)
    for length in (0, 1, 2, 31, 32, 33, 64, 100, 255, 1000, 4096):
        seed = rng.randbytes(32)
        message = rng.randbytes(length)
        if length:
            message = message[: length // 2] + b"\x00" + message[length // 2 + 1 :]
        key = SigningKey(seed)
        theirs = nacl.signing.SigningKey(seed)
        signature = key.sign(message)
        assert signature == theirs.sign(message).signature
        assert key.sign(bytearray(message)) == signature
        assert key.public.value == bytes(theirs.verify_key)
        assert key.public.verify(message, signature)
        assert key.public.verify(memoryview(message), bytearray(signature))
        for i in (0, 31, 32, 63):  # R and S, each end
            bad = bytearray(signature)
            bad[i] ^= 1 << rng.randrange(8)
            assert not key.public.verify(message, bytes(bad))
        if length:
            altered = bytearray(message)
            altered[rng.randrange(length)] ^= 1 << rng.randrange(8)
            assert not key.public.verify(bytes(altered), signature)
        assert not key.public.verify(message + b"\x00", signature)
        assert not SigningKey(rng.randbytes(32)).public.verify(message, signature)
        assert not key.public.verify(message, signature[:63])
        assert not key.public.verify(message, signature + b"\x00")
        assert not key.public.verify(message, bytes(64))


def test_wrong_key_types_are_refused() -> None:
    with pytest.raises(BadKeyError, match="32 bytes"):
        SigningKey(b"x" * 31)
    with pytest.raises(BadKeyError, match="got str"):
        PublicSignKey("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(BadKeyError):
        Identity(EncryptionKey.generate(), EncryptionKey.generate())  # type: ignore[arg-type]


def test_sealed_box_and_secret_key() -> None:
    enc = EncryptionKey.generate()
    sealed = enc.public.seal(b"reading")
    assert enc.unseal(sealed) == b"reading"
    with pytest.raises(ValueError, match="could not be opened"):
        EncryptionKey.generate().unseal(sealed)
    secret = SecretKey.generate()
    box = secret.encrypt(b"value")
    assert secret.decrypt(box) == b"value"
    with pytest.raises(ValueError, match="could not be decrypted"):
        SecretKey.generate().decrypt(box)
    assert secret.derive("a") != secret.derive("b")


def test_identity_file_is_private_and_round_trips(tmp_path: Path) -> None:
    ident = Identity.generate("kitchen")
    path = ident.save(tmp_path / "id.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Identity.load(path)
    assert loaded.public_sign_key == ident.public_sign_key
    assert loaded.public_encryption_key == ident.public_encryption_key
    assert loaded.name == "kitchen"
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        ident.save(path)
    assert Identity.read_public(path)["encrypted"] is False


def test_identity_with_password(tmp_path: Path) -> None:
    ident = Identity.generate()
    path = ident.save(tmp_path / "id.json", password="correct horse", **FAST_KDF)
    assert ident.sign_key.seed.hex() not in path.read_text()
    assert Identity.load(path, password="correct horse").public_sign_key == ident.public_sign_key
    with pytest.raises(WrongPasswordError, match="wrong password"):
        Identity.load(path, password="battery staple")
    with pytest.raises(WrongPasswordError, match="password-protected"):
        Identity.load(path)


def test_identity_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="safething identity create"):
        Identity.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(IdentityError, match="not JSON"):
        Identity.load(bad)
    path = Identity.generate().save(tmp_path / "open.json")
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)
    other = tmp_path / "swapped.json"
    text = (tmp_path / "open.json").read_text()
    pub = Identity.read_public(path)["public_sign_key"]
    other.write_text(text.replace(pub, Identity.generate().public_sign_key.hex()))
    os.chmod(other, 0o600)
    with pytest.raises(IdentityError, match="do not match"):
        Identity.load(other)
