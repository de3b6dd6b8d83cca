"""Identity: a signing key and an encryption key, saved to a 0600 file.

File format (JSON, so a person can see which public keys a file holds
without the password)::

    {"format": "safething-identity", "version": 1, "name": "kitchen-pi",
     "public_sign_key": "<hex>", "public_encryption_key": "<hex>",
     "secret": {"kdf": "none", "keys": "<hex of 64 bytes>"}}

With a password, ``secret`` is ``{"kdf": "argon2id", "opslimit": n,
"memlimit": n, "salt": "<hex>", "box": "<hex>"}``: the 64 key bytes sealed
with XSalsa20-Poly1305 under a key stretched from the password by argon2id.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from safething.errors import IdentityError, WrongPasswordError
from safething.files import write_private
from safething.net.keys import (
    EncryptionKey,
    PublicEncryptionKey,
    PublicSignKey,
    SigningKey,
    check_key_type,
)

__all__ = ["Identity", "PublicIdentity"]

FORMAT = "safething-identity"
VERSION = 1
OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE  # 64 MiB: fits a Pi Zero


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """The public half of an identity: what others need to verify and to seal to."""

    sign_key: PublicSignKey
    """Verifies this identity's signatures."""
    encryption_key: PublicEncryptionKey
    """Seals data only this identity can open."""
    name: str = ""
    """A label for people."""

    def __post_init__(self) -> None:
        check_key_type(self.sign_key, PublicSignKey, "a public identity's sign_key")
        check_key_type(
            self.encryption_key, PublicEncryptionKey, "a public identity's encryption_key"
        )

    def to_dict(self) -> dict[str, str]:
        return {"sign": self.sign_key.hex(), "enc": self.encryption_key.hex(), "name": self.name}

    @classmethod
    def from_dict(cls, doc: dict[str, str]) -> PublicIdentity:
        """Inverse of :meth:`to_dict`; ``IdentityError`` when malformed."""
        try:
            return cls(
                PublicSignKey.from_hex(doc["sign"]),
                PublicEncryptionKey.from_hex(doc["enc"]),
                str(doc.get("name", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IdentityError(f"malformed public identity: {e}") from e


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signs and who decrypts: one ed25519 key and one x25519 key."""

    sign_key: SigningKey = field(repr=False)
    """Signs every write this identity makes."""
    encryption_key: EncryptionKey = field(repr=False)
    """Opens data sealed to this identity (group and owner keys)."""
    name: str = ""
    """A label for people; not secret, not unique."""

    def __post_init__(self) -> None:
        check_key_type(self.sign_key, SigningKey, "an identity's sign_key")
        check_key_type(self.encryption_key, EncryptionKey, "an identity's encryption_key")

    @classmethod
    def generate(cls, name: str = "") -> Self:
        """A fresh identity with random keys."""
        return cls(SigningKey.generate(), EncryptionKey.generate(), name)

    @property
    def public_sign_key(self) -> PublicSignKey:
        return self.sign_key.public

    @property
    def public_encryption_key(self) -> PublicEncryptionKey:
        return self.encryption_key.public

    @property
    def public(self) -> PublicIdentity:
        """What others may know of this identity."""
        return PublicIdentity(self.public_sign_key, self.public_encryption_key, self.name)

    # --- files -----------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        password: str | None = None,
        overwrite: bool = False,
        opslimit: int = OPSLIMIT,
        memlimit: int = MEMLIMIT,
    ) -> Path:
        """Write the identity to ``path`` with mode 0600, atomically.

        Refuses to replace an existing file unless ``overwrite``. With a
        ``password`` the keys are encrypted (argon2id + XSalsa20-Poly1305).
        """
        target = Path(path).expanduser()
        if target.exists() and not overwrite:
            raise IdentityError(f"{target} already exists; refusing to overwrite an identity")
        keys = self.sign_key.seed + self.encryption_key.secret
        secret: dict[str, Any]
        if password:
            salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
            box_key = nacl.pwhash.argon2id.kdf(
                nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt, opslimit, memlimit
            )
            secret = {
                "kdf": "argon2id",
                "opslimit": opslimit,
                "memlimit": memlimit,
                "salt": salt.hex(),
                "box": bytes(nacl.secret.SecretBox(box_key).encrypt(keys)).hex(),
            }
        else:
            secret = {"kdf": "none", "keys": keys.hex()}
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "public_sign_key": self.public_sign_key.hex(),
            "public_encryption_key": self.public_encryption_key.hex(),
            "secret": secret,
        }
        write_private(target, json.dumps(doc, indent=2) + "\n", dir_mode=0o700)
        return target

    @staticmethod
    def read_public(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The file's public part (name, public keys, whether it is encrypted)."""
        doc = _read_doc(Path(path).expanduser())
        return {
            "name": doc.get("name", ""),
            "public_sign_key": doc["public_sign_key"],
            "public_encryption_key": doc["public_encryption_key"],
            "encrypted": doc["secret"].get("kdf") != "none",
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, password: str | None = None) -> Identity:
        """Read an identity file; ``WrongPasswordError`` if the password does not open it."""
        source = Path(path).expanduser()
        doc = _read_doc(source)
        secret = doc["secret"]
        kdf = secret.get("kdf")
        try:
            if kdf == "none":
                mode = stat.S_IMODE(source.stat().st_mode)
                if mode & 0o077:
                    raise IdentityError(
                        f"{source} is readable by others (mode {mode:o}) and holds unencrypted "
                        f"keys; run: chmod 600 {source}"
                    )
                keys = bytes.fromhex(secret["keys"])
            elif kdf == "argon2id":
                if not password:
                    raise WrongPasswordError(f"{source} is password-protected; give the password")
                box_key = nacl.pwhash.argon2id.kdf(
                    nacl.secret.SecretBox.KEY_SIZE,
                    password.encode(),
                    bytes.fromhex(secret["salt"]),
                    int(secret["opslimit"]),
                    int(secret["memlimit"]),
                )
                try:
                    keys = bytes(
                        nacl.secret.SecretBox(box_key).decrypt(bytes.fromhex(secret["box"]))
                    )
                except nacl.exceptions.CryptoError as e:
                    raise WrongPasswordError(f"wrong password for {source}") from e
            else:
                raise IdentityError(f"{source}: unknown key protection {kdf!r}")
        except (KeyError, ValueError, TypeError) as e:
            if isinstance(e, IdentityError):
                raise
            raise IdentityError(f"{source} is not a valid identity file: {e}") from e
        if len(keys) != 64:
            raise IdentityError(f"{source}: key material has the wrong length")
        identity = Identity(
            SigningKey(keys[:32]), EncryptionKey(keys[32:]), str(doc.get("name", ""))
        )
        if (
            identity.public_sign_key.hex() != doc["public_sign_key"]
            or identity.public_encryption_key.hex() != doc["public_encryption_key"]
        ):
            raise IdentityError(f"{source}: the public keys do not match the secret keys")
        return identity

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, sign={self.public_sign_key.hex()[:12]}...)"


def _read_doc(source: Path) -> dict[str, Any]:
    try:
        text = source.read_text()
    except FileNotFoundError as e:
        raise IdentityError(
            f"no identity at {source}; create one with: safething identity create"
        ) from e
    except OSError as e:
        raise IdentityError(f"cannot read {source}: {e.strerror}") from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise IdentityError(f"{source} is not a valid identity file (not JSON)") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IdentityError(f"{source} is not a SAFEthing identity file")
    if doc.get("version") != VERSION:
        raise IdentityError(
            f"{source} has identity format version {doc.get('version')!r}; "
            f"this release reads version {VERSION}"
        )
    for field_name in ("public_sign_key", "public_encryption_key", "secret"):
        if field_name not in doc:
            raise IdentityError(f"{source} is not a valid identity file: missing {field_name}")
    if not isinstance(doc["secret"], dict):
        raise IdentityError(f"{source} is not a valid identity file: bad secret")
    return doc
