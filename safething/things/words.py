"""Enumerations a person types: ``"Owner"``, ``" all "`` and ``"owner"`` are the same word."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

__all__ = ["Word"]


class Word(StrEnum):
    """A ``StrEnum`` that also accepts its values in any case, with spaces around."""

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if isinstance(value, str):
            text = value.strip().lower()
            for member in cls:
                if member.value == text:
                    return member
        return None
