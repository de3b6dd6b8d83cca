"""Keys: ed25519 for signing, x25519 for encryption, XSalsa20-Poly1305 for secrets.

Each kind of key is its own type, so handing an encryption key to something
that signs fails at once with :class:`~safething.errors.BadKeyError` rather
than producing garbage. Only this module and :mod:`safething.net.identity`
touch PyNaCl.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Self

import nacl.bindings as sodium
import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.utils

from safething.errors import BadKeyError

__all__ = [
    "EncryptionKey",
    "PublicEncryptionKey",
    "PublicSignKey",
    "SecretKey",
    "SigningKey",
    "check_key_type",
]

SIGNATURE_LEN = 64


def _detached() -> tuple[Any, Any] | None:
    """libsodium's ``crypto_sign_detached`` and ``crypto_sign_verify_detached`` from the
    library PyNaCl has loaded (and initialised), or None where that library does not
    export them (then the signed-message functions of ``nacl.bindings`` are used).

    PyNaCl binds only the functions that build a signed message (signature + message)
    and copy it: a signature made that way is sliced off a new buffer, and a check
    first joins signature and message, then has ``crypto_sign_open`` copy the message
    out of it (two cffi allocations). The detached functions compute the same ed25519
    signatures and checks without those copies (``test_keys.py`` compares them with
    PyNaCl's). Called through :class:`ctypes.CDLL`, which lets go of the GIL during a
    call as PyNaCl's cffi calls do (another thread's Python runs meanwhile under load;
    holding it, with :class:`ctypes.PyDLL`, measured no faster when idle)."""
    spec = importlib.util.find_spec("nacl._sodium")
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
        sign, verify = lib.crypto_sign_detached, lib.crypto_sign_verify_detached
    except (OSError, AttributeError):
        return None
    sign.argtypes = [
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_ulonglong,
        ctypes.c_char_p,
    ]
    sign.restype = ctypes.c_int
    verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
    verify.restype = ctypes.c_int
    return sign, verify


_DETACHED = _detached()


def _raw(value: Any, length: int, what: str) -> bytes:
    if isinstance(value, bytearray | memoryview):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadKeyError(f"{what} must be {length} bytes, got {type(value).__name__}")
    if len(value) != length:
        raise BadKeyError(f"{what} must be {length} bytes, got {len(value)}")
    return value


def check_key_type(value: object, expected: type, role: str) -> None:
    """Raise ``BadKeyError`` naming the role when ``value`` is not an ``expected``."""
    if not isinstance(value, expected):
        raise BadKeyError(
            f"{role} needs a {expected.__name__}, got {type(value).__name__}"
            + (
                " (an encryption key cannot sign or verify)"
                if isinstance(value, EncryptionKey | PublicEncryptionKey)
                else ""
            )
        )


@dataclass(frozen=True, slots=True)
class PublicSignKey:
    """An ed25519 public key: verifies signatures, names a writer in permissions."""

    value: bytes
    """The 32 raw bytes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _raw(self.value, 32, "a public sign key"))

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse the 64-character hex form."""
        try:
            return cls(bytes.fromhex(text))
        except ValueError as e:
            raise BadKeyError(f"not a hex public sign key: {text!r}") from e

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``message``."""
        if len(signature) != SIGNATURE_LEN:
            return False
        signature, data = bytes(signature), bytes(message)
        if _DETACHED is not None:
            return bool(_DETACHED[1](signature, data, len(data), self.value) == 0)
        try:
            sodium.crypto_sign_open(signature + data, self.value)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    def hex(self) -> str:
        return self.value.hex()

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"PublicSignKey({self.hex()[:12]}...)"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An ed25519 signing key, kept as its 32-byte seed."""

    seed: bytes = field(repr=False)
    """The 32-byte secret seed."""
    _secret: bytes = field(init=False, repr=False, compare=False)
    _public: PublicSignKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seed = _raw(self.seed, 32, "a signing key seed")
        pk, sk = sodium.crypto_sign_seed_keypair(seed)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "_secret", sk)
        object.__setattr__(self, "_public", PublicSignKey(pk))

    @classmethod
    def generate(cls) -> Self:
        """A fresh random key."""
        return cls(nacl.utils.random(32))

    @property
    def public(self) -> PublicSignKey:
        """The matching public key."""
        return self._public

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        data = bytes(message)
        if _DETACHED is not None:
            signature = ctypes.create_string_buffer(SIGNATURE_LEN)
            if _DETACHED[0](signature, None, data, len(data), self._secret):
                raise nacl.exceptions.CryptoError("crypto_sign_detached failed")
            return signature.raw
        signed: bytes = sodium.crypto_sign(data, self._secret)
        return signed[:SIGNATURE_LEN]

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.hex()[:12]}...)"


@dataclass(frozen=True, slots=True)
class PublicEncryptionKey:
    """An x25519 public key: anyone can seal data that only its owner opens."""

    value: bytes
    """The 32 raw bytes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _raw(self.value, 32, "a public encryption key"))

    @classmethod
    def from_hex(cls, text: str) -> Self:
        try:
            return cls(bytes.fromhex(text))
        except ValueError as e:
            raise BadKeyError(f"not a hex public encryption key: {text!r}") from e

    def seal(self, plaintext: bytes) -> bytes:
        """Anonymous sealed box: only the matching :class:`EncryptionKey` opens it."""
        return bytes(nacl.public.SealedBox(nacl.public.PublicKey(self.value)).encrypt(plaintext))

    def hex(self) -> str:
        return self.value.hex()

    def __repr__(self) -> str:
        return f"PublicEncryptionKey({self.hex()[:12]}...)"


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    """An x25519 secret key; opens what was sealed to its public key."""

    secret: bytes = field(repr=False)
    """The 32-byte secret scalar."""
    _public: PublicEncryptionKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        secret = _raw(self.secret, 32, "an encryption key")
        object.__setattr__(self, "secret", secret)
        object.__setattr__(
            self,
            "_public",
            PublicEncryptionKey(bytes(nacl.public.PrivateKey(secret).public_key)),
        )

    @classmethod
    def generate(cls) -> Self:
        return cls(bytes(nacl.public.PrivateKey.generate()))

    @property
    def public(self) -> PublicEncryptionKey:
        return self._public

    def unseal(self, sealed: bytes) -> bytes:
        """Open a sealed box; ``ValueError`` if it was not sealed to this key or was altered."""
        try:
            return bytes(nacl.public.SealedBox(nacl.public.PrivateKey(self.secret)).decrypt(sealed))
        except nacl.exceptions.CryptoError as e:
            raise ValueError("sealed data could not be opened with this key") from e

    def __repr__(self) -> str:
        return f"EncryptionKey(public={self._public.hex()[:12]}...)"


@dataclass(frozen=True, slots=True)
class SecretKey:
    """A 32-byte symmetric key (XSalsa20-Poly1305), e.g. the key of a private MD."""

    value: bytes = field(repr=False)
    """The 32 raw bytes."""
    _box: nacl.secret.SecretBox = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        value = _raw(self.value, 32, "a secret key")
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "_box", nacl.secret.SecretBox(value))

    @classmethod
    def generate(cls) -> Self:
        return cls(nacl.utils.random(32))

    @classmethod
    def from_hex(cls, text: str) -> Self:
        try:
            return cls(bytes.fromhex(text))
        except ValueError as e:
            raise BadKeyError("not a hex secret key") from e

    def encrypt(self, plaintext: bytes, nonce: bytes | None = None) -> bytes:
        """Nonce (24 bytes) + ciphertext + tag. A random nonce unless one is given."""
        return bytes(self._box.encrypt(plaintext, nonce))

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Inverse of :meth:`encrypt`; ``ValueError`` if altered or under another key."""
        try:
            return bytes(self._box.decrypt(ciphertext))
        except nacl.exceptions.CryptoError as e:
            raise ValueError("ciphertext could not be decrypted with this key") from e

    def derive(self, purpose: str) -> bytes:
        """A 32-byte subkey for ``purpose`` (keyed BLAKE2b); different purposes, unrelated keys."""
        return hashlib.blake2b(purpose.encode(), key=self.value, digest_size=32).digest()

    def hex(self) -> str:
        return self.value.hex()

    def __repr__(self) -> str:
        return "SecretKey(...)"
