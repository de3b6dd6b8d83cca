"""Bearer tokens for the WoT HTTP binding, each bound to an identity the owner authorised.

``safething gateway token add NAME`` makes a new identity for one HTTP
consumer (Node-RED, Home Assistant, a node-wot script), keeps it in the
gateway's token directory (mode 0700, one file per token, 0600) and prints
the token once. The gateway never stores the token itself, only its SHA-256:
a copy of the directory does not let anyone call the API. A request with
that token becomes a request *signed by that identity*; what the identity
may do is what the network lets it do: All access for anyone, Group access
once the owner adds the identity's key to a thing's group
(``safething group add``), Owner access only for a token made
``--as-owner`` (then it signs with the owner's key, held by the gateway).

``safething gateway token revoke NAME`` deletes the file: the token stops
working at once (the running gateway checks the file on every request).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from safething.errors import IdentityError, SafeThingError
from safething.net import Identity

__all__ = ["TokenError", "TokenGrant", "TokenStore"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PREFIX = "stt_"


class TokenError(SafeThingError, PermissionError):
    """A missing, malformed, unknown or revoked bearer token."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a valid token stands for."""

    name: str
    """The label the owner gave it."""
    identity: Identity
    """The identity its requests are signed with."""
    as_owner: bool
    """Whether it acts as the gateway's owner."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The token directory: ``<digest>.json`` identity files, named by label inside."""

    def __init__(self, directory: Path, *, owner: Identity | None = None) -> None:
        self.directory = Path(directory)
        self.owner = owner
        self._cache: dict[str, tuple[float, TokenGrant]] = {}

    def _path(self, digest: str) -> Path:
        return self.directory / f"{digest}.json"

    def add(self, name: str, *, as_owner: bool = False) -> tuple[str, Identity]:
        """A new token and its identity; the token is shown only now."""
        if not _NAME.match(name):
            raise ValueError(
                f"token name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)"
            )
        if name in self.names():
            raise ValueError(f"a token named {name!r} exists; revoke it first")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        token = _PREFIX + secrets.token_urlsafe(32)
        label = f"{'owner:' if as_owner else ''}{name}"
        identity = Identity.generate(label)
        identity.save(self._path(_digest(token)))
        os.chmod(self._path(_digest(token)), 0o600)
        return token, identity

    def names(self) -> dict[str, Path]:
        """Label -> file of every token."""
        result = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.json")):
                try:
                    label = str(Identity.read_public(path).get("name", ""))
                except (IdentityError, OSError, ValueError):
                    continue
                result[label.removeprefix("owner:")] = path
        return result

    def revoke(self, name: str) -> None:
        path = self.names().get(name)
        if path is None:
            raise ValueError(f"no token named {name!r}")
        path.unlink()
        self._cache.clear()

    def check(self, authorization: str | None) -> TokenGrant:
        """The grant of an ``Authorization: Bearer <token>`` header, or :class:`TokenError`."""
        if not authorization:
            raise TokenError("a bearer token is needed (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(_PREFIX) or len(token) > 200:
            raise TokenError("malformed bearer token")
        digest = _digest(token)
        path = self._path(digest)
        try:
            stamp = path.stat().st_mtime
        except OSError:
            self._cache.pop(digest, None)
            raise TokenError("unknown or revoked token") from None
        cached = self._cache.get(digest)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            identity = Identity.load(path)
        except (IdentityError, OSError, ValueError) as e:
            raise TokenError("unknown or revoked token") from e
        # the file is named by the digest; compare anyway in constant time
        if not hmac.compare_digest(path.stem, digest):
            raise TokenError("unknown or revoked token")
        as_owner = identity.name.startswith("owner:")
        if as_owner:
            if self.owner is None:
                raise TokenError("this token acts as the owner, and the gateway has no owner key")
            grant = TokenGrant(identity.name.removeprefix("owner:"), self.owner, True)
        else:
            grant = TokenGrant(identity.name, identity, False)
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[digest] = (stamp, grant)
        return grant
