"""The console's audit log: who published, disabled, requested, revoked, logged in.

Each entry is a small JSON document holding the SHA-256 of the entry before
it (``prev``) and signed by the owner identity (ed25519). The log lives in a
SQLite file in the console's state directory; whoever can write that file
can change or delete rows, but cannot re-sign them, so :meth:`AuditLog.verify`
shows the first entry where the chain breaks: a changed entry fails its
signature, a removed or reordered one breaks the ``prev`` link of the next.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safething.net import Identity, PublicSignKey

__all__ = ["AuditEntry", "AuditLog"]

GENESIS = "0" * 64
"""``prev`` of the first entry."""

_SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, doc TEXT NOT NULL, sig TEXT NOT NULL
)"""


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry as read back, with the result of checking it."""

    seq: int
    """Position in the log, from 1."""
    t: float
    """When it was written (unix time)."""
    actor: str
    """Who: ``owner`` with the session's address, or the address of a failed login."""
    action: str
    """``login``, ``login-failed``, ``publish``, ``disable``, ``request``, ``revoke``..."""
    target: str
    """What it acted on (a thing or device id), may be empty."""
    detail: str
    """Anything else worth keeping (arguments, the result)."""
    ok: bool
    """Signature and chain verified."""
    problem: str = ""
    """Why not, when ``ok`` is false."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "t": self.t,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "verified": self.ok,
            "problem": self.problem,
        }


class AuditLog:
    """Append signed, chained entries; read them back verified."""

    def __init__(self, path: Path, signer: Identity) -> None:
        self.path = path
        self.signer = signer
        self.key: PublicSignKey = signer.public_sign_key
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        path.chmod(0o600)

    def close(self) -> None:
        self._db.close()

    def append(self, actor: str, action: str, target: str = "", detail: str = "") -> int:
        """Write one entry after the newest; returns its sequence number."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, doc, sig FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            seq = 1 if row is None else int(row[0]) + 1
            prev = GENESIS if row is None else _digest(row[1], row[2])
            doc = {
                "seq": seq,
                "t": round(time.time(), 3),
                "actor": actor[:200],
                "action": action[:50],
                "target": target[:200],
                "detail": detail[:2000],
                "prev": prev,
                "key": self.key.hex(),
            }
            text = _canonical(doc).decode()
            sig = self.signer.sign_key.sign(text.encode()).hex()
            self._db.execute("INSERT INTO audit(seq, doc, sig) VALUES (?, ?, ?)", (seq, text, sig))
            return seq

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    def entries(self) -> Iterator[AuditEntry]:
        """Every entry, oldest first, each checked: signature by the owner, link to the one before.

        After a break, later entries are still shown; each is checked against
        the stored entry before it, so one change shows as one broken link.
        """
        prev = GENESIS
        expected_seq = 1
        for seq, text, sig in self._db.execute("SELECT seq, doc, sig FROM audit ORDER BY seq"):
            problem = ""
            try:
                doc = json.loads(text)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
            except ValueError:
                doc = {}
                problem = "not a readable entry"
            if not problem:
                try:
                    good = self.key.verify(str(text).encode(), bytes.fromhex(str(sig)))
                except ValueError:
                    good = False
                if not good:
                    problem = "signature does not verify: the entry was changed"
                elif doc.get("prev") != prev:
                    problem = "chain broken: the entry before it was changed or removed"
                elif doc.get("seq") != seq or seq != expected_seq:
                    problem = "chain broken: entries were removed or reordered"
            yield AuditEntry(
                int(seq),
                float(doc.get("t", 0.0)) if isinstance(doc.get("t"), int | float) else 0.0,
                str(doc.get("actor", "")),
                str(doc.get("action", "")),
                str(doc.get("target", "")),
                str(doc.get("detail", "")),
                not problem,
                problem,
            )
            prev = _digest(text, sig)
            expected_seq = int(seq) + 1

    def export(self) -> Iterator[str]:
        """The raw log as JSON lines (entry, signature), for checking elsewhere."""
        for text, sig in self._db.execute("SELECT doc, sig FROM audit ORDER BY seq"):
            yield json.dumps({"entry": json.loads(text), "doc": text, "sig": sig}) + "\n"


def _digest(text: str, sig: str) -> str:
    return hashlib.sha256(f"{text}\n{sig}".encode()).hexdigest()
