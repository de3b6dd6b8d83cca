"""Who may use the console: the owner binding, login, sessions, login back-off.

* **Binding.** Until an owner is bound, the console accepts one thing: the
  one-time setup code it printed at start (``secrets.token_urlsafe``), with
  the password the owner chooses. The owner identity is then saved in the
  console's state directory encrypted under that password (argon2id +
  XSalsa20-Poly1305, :meth:`Identity.save`) and the code is spent.
* **Login** unlocks that file with the password: a wrong password cannot
  open it. The session keeps the unlocked identity; every command of the
  session is signed with it.
* **Sessions** live on the server: the cookie carries only a random id
  (HttpOnly, SameSite=Strict; ``__Host-`` and Secure under TLS); a session
  ends after ``idle_s`` without use or ``max_s`` after login, whichever
  comes first, or when the owner revokes it.
* **Back-off.** Each failed login or setup attempt doubles the wait before
  the next attempt from the same address and for the same account (0.5 s,
  1 s, 2 s ... at most ``max_wait_s``); the counts expire after ``forget_s``
  without failures: never a permanent ban.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from safething.errors import SafeThingError, WrongPasswordError
from safething.net import Identity

__all__ = ["Backoff", "OwnerBinding", "Session", "Sessions", "SlowDownError"]

MIN_PASSWORD = 8


class SlowDownError(SafeThingError):
    """Too many failed attempts: wait ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed attempts; try again in {retry_after:.1f} s")
        self.retry_after = retry_after


class OwnerBinding:
    """The owner identity the console logs in with, and the setup code until it is bound."""

    def __init__(self, state_dir: Path, owner: Identity, *, needed: bool = True) -> None:
        self.path = state_dir / "owner.identity.json"
        self.owner = owner
        self.setup_code: str | None = None
        """Until the owner is bound, when login is needed (none is made otherwise)."""
        if needed and not self.bound:
            self.setup_code = secrets.token_urlsafe(9)

    @property
    def bound(self) -> bool:
        return self.path.exists()

    def bind(self, code: str, password: str) -> None:
        """Spend the setup code; ``ValueError`` with the reason if refused."""
        if self.setup_code is None or self.bound:
            raise ValueError("the console already has its owner; log in instead")
        if not hmac.compare_digest(code.strip().encode(), self.setup_code.encode()):
            raise ValueError("wrong setup code")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"choose a password of at least {MIN_PASSWORD} characters")
        self.owner.save(self.path, password=password)
        self.setup_code = None

    def unlock(self, password: str) -> Identity:
        """The owner identity opened with ``password``; ``WrongPasswordError`` otherwise.

        Runs argon2id (about 0.1 s): call it off the event loop.
        """
        if not self.bound:
            raise WrongPasswordError("no owner is bound yet")
        identity = Identity.load(self.path, password=password or "-")
        if identity.public_sign_key != self.owner.public_sign_key:
            raise WrongPasswordError("the bound identity is not this console's owner")
        return identity


@dataclass
class Session:
    """One logged-in browser."""

    id: str
    identity: Identity = field(repr=False)
    address: str
    agent: str
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    notices: list[str] = field(default_factory=list)
    """Said once on the next page (what a command did, what is left to do)."""

    @property
    def short(self) -> str:
        """A label that does not reveal the id."""
        return self.id[:6]


class Sessions:
    """Server-side sessions with idle and absolute expiry."""

    def __init__(self, *, idle_s: float = 1800.0, max_s: float = 12 * 3600.0) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._by_id: dict[str, Session] = {}

    def create(self, identity: Identity, address: str, agent: str) -> Session:
        self._expire()
        session = Session(secrets.token_urlsafe(32), identity, address, agent[:200])
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle timer restarts), or None."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = time.time()
        if now - session.last_used > self.idle_s or now - session.created > self.max_s:
            del self._by_id[session_id]
            return None
        session.last_used = now
        return session

    def revoke(self, short: str) -> bool:
        for sid in [s for s in self._by_id if s.startswith(short) and len(short) >= 6]:
            del self._by_id[sid]
            return True
        return False

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def all(self) -> list[Session]:
        self._expire()
        return sorted(self._by_id.values(), key=lambda s: s.created)

    def _expire(self) -> None:
        now = time.time()
        for sid, s in list(self._by_id.items()):
            if now - s.last_used > self.idle_s or now - s.created > self.max_s:
                del self._by_id[sid]


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    wait_until: float = 0.0


class Backoff:
    """Failed attempts per key (an address, an account): exponential wait that expires."""

    def __init__(
        self,
        *,
        first_s: float = 0.5,
        max_wait_s: float = 60.0,
        forget_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_s = first_s
        self.max_wait_s = max_wait_s
        self.forget_s = forget_s
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def check(self, *keys: str) -> None:
        """``SlowDownError`` if any key must still wait."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            f = self._failures.get(key)
            if f is None:
                continue
            if now - f.last > self.forget_s:
                del self._failures[key]
                continue
            wait = max(wait, f.wait_until - now)
        if wait > 0:
            raise SlowDownError(wait)

    def failed(self, *keys: str) -> float:
        """Count a failure for each key; returns the wait now imposed."""
        now = self._clock()
        if len(self._failures) > 10_000:  # bounded memory under a flood of addresses
            self._failures = {k: f for k, f in self._failures.items() if now - f.last < 60}
        wait = 0.0
        for key in keys:
            f = self._failures.setdefault(key, _Failures())
            f.count += 1
            f.last = now
            delay = min(self.max_wait_s, self.first_s * 2 ** (f.count - 1))
            f.wait_until = now + delay
            wait = max(wait, delay)
        return wait

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
