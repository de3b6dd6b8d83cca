"""Permissions of a MutableData: who may Read, Insert, Update, Delete, ManagePermissions.

A :class:`PermissionSet` maps a public sign key, or :data:`ANYONE`, to a set
of :class:`Action` flags. Owners may always do everything. The set is part
of the MD's header, versioned and signed by an owner; readers check every
entry's signer against it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from safething.net.keys import PublicSignKey, check_key_type

__all__ = ["ANYONE", "Action", "Grantee", "PermissionSet"]

ANYONE: Final = "anyone"
"""Grantee standing for every key."""

Grantee = PublicSignKey | Literal["anyone"]


class Action(enum.Flag):
    """What a grantee may do with an MD."""

    NONE = 0
    READ = enum.auto()
    INSERT = enum.auto()
    UPDATE = enum.auto()
    DELETE = enum.auto()
    MANAGE_PERMISSIONS = enum.auto()

    @classmethod
    def all(cls) -> Action:
        return cls.READ | cls.INSERT | cls.UPDATE | cls.DELETE | cls.MANAGE_PERMISSIONS

    @classmethod
    def parse(cls, text: str | Iterable[str] | Action) -> Action:
        """``"read,insert"``, ``["Read", "Update"]``, ``"all"`` or an Action."""
        if isinstance(text, Action):
            return text
        words = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
        result = cls.NONE
        for word in words:
            if not word:
                continue
            norm = word.strip().replace("-", "_").upper()
            if norm == "ALL":
                result |= cls.all()
                continue
            if norm == "MANAGEPERMISSIONS":
                norm = "MANAGE_PERMISSIONS"
            try:
                result |= cls[norm]
            except KeyError:
                raise ValueError(
                    f"unknown permission {word!r}: use read, insert, update, delete, "
                    "manage_permissions or all"
                ) from None
        return result

    def names(self) -> list[str]:
        """Lower-case names of the flags set, in a fixed order."""
        return [a.name.lower() for a in Action if a.name and a.value and a in self]


@dataclass(frozen=True, slots=True)
class PermissionSet:
    """Grants per key (or :data:`ANYONE`). Immutable; ``with_grant`` returns a new set."""

    grants: Mapping[Grantee, Action] = field(default_factory=dict)
    """Grantee -> allowed actions."""

    def __post_init__(self) -> None:
        clean: dict[Grantee, Action] = {}
        for grantee, actions in dict(self.grants).items():
            if grantee != ANYONE:
                check_key_type(grantee, PublicSignKey, "a permission grantee")
            clean[grantee] = Action.parse(actions)
        object.__setattr__(self, "grants", clean)

    def allows(self, key: PublicSignKey, action: Action) -> bool:
        """True when ``key`` (directly or through ANYONE) holds every flag in ``action``."""
        held = self.grants.get(key, Action.NONE) | self.grants.get(ANYONE, Action.NONE)
        return action in held

    def with_grant(self, grantee: Grantee, actions: Action | str) -> PermissionSet:
        """A copy where ``grantee`` holds exactly ``actions`` (NONE removes it)."""
        grants = dict(self.grants)
        parsed = Action.parse(actions)
        if parsed == Action.NONE:
            grants.pop(grantee, None)
        else:
            grants[grantee] = parsed
        return PermissionSet(grants)

    def to_wire(self) -> list[list[object]]:
        """Canonical, sorted list of ``[grantee bytes or "anyone", flags int]``."""
        rows: list[list[object]] = [
            [g if g == ANYONE else g.value, a.value] for g, a in self.grants.items()
        ]
        return sorted(rows, key=lambda r: (isinstance(r[0], str), r[0]))

    @classmethod
    def from_wire(cls, rows: object) -> PermissionSet:
        """Inverse of :meth:`to_wire`; ``ValueError`` on anything malformed."""
        if not isinstance(rows, list):
            raise ValueError("permissions must be a list")
        grants: dict[Grantee, Action] = {}
        for row in rows:
            if not isinstance(row, list) or len(row) != 2 or not isinstance(row[1], int):
                raise ValueError("malformed permission row")
            who, flags = row
            grantee: Grantee
            if who == ANYONE:
                grantee = ANYONE
            elif isinstance(who, bytes):
                grantee = PublicSignKey(who)
            else:
                raise ValueError("malformed permission grantee")
            if flags & ~Action.all().value:
                raise ValueError("unknown permission flags")
            grants[grantee] = Action(flags)
        return cls(grants)

    def describe(self) -> dict[str, list[str]]:
        """Human-readable form: ``{"anyone": ["read"], "<hex>": ["insert", ...]}``."""
        return {(g if g == ANYONE else g.hex()): a.names() for g, a in self.grants.items()}
