"""Quota arithmetic shared by the backends: how a write changes ``[count, bytes]``."""

from __future__ import annotations

from safething.errors import LimitExceededError
from safething.store.base import Quota

__all__ = ["add_effect", "enforce"]


def add_effect(counts: list[int], old_len: int, new_len: int) -> None:
    """Apply a write's effect to ``[count, bytes]``; a length of -1 means "absent"."""
    counts[0] += (new_len >= 0) - (old_len >= 0)
    counts[1] += max(new_len, 0) - max(old_len, 0)


def enforce(quota: Quota, before: list[int], after: list[int]) -> None:
    """Refuse a write that leaves the prefix above a limit and grows that measure.

    A write that shrinks or keeps a measure passes even when the prefix is
    already over the limit (say, after the limit was lowered).
    """
    if after[0] > quota.max_count and after[0] > before[0]:
        raise LimitExceededError(
            f"quota on {quota.prefix!r}: {after[0]} records would exceed the limit of "
            f"{quota.max_count}",
            limit=quota.max_count,
            actual=after[0],
        )
    if after[1] > quota.max_bytes and after[1] > before[1]:
        raise LimitExceededError(
            f"quota on {quota.prefix!r}: {after[1]} bytes would exceed the limit of "
            f"{quota.max_bytes}",
            limit=quota.max_bytes,
            actual=after[1],
        )
