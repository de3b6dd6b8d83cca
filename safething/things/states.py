"""The lifecycle of an action request, as an enum.

``requested -> accepted -> running -> done | failed | rejected | timed_out |
cancelled``. Members are strings (``ActionState.DONE == "done"``), which is
how they are stored and sent, so code that compares with plain strings
keeps working.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FINAL_STATES", "ActionState"]


class ActionState(StrEnum):
    """One state of an action request."""

    REQUESTED = "requested"
    """Written by the requester into the thing's inbox."""
    ACCEPTED = "accepted"
    """The thing checked the request (signature, access, parameters)."""
    RUNNING = "running"
    """The handler is still at work (optionally with progress)."""
    DONE = "done"
    """Finished with a result."""
    FAILED = "failed"
    """The handler raised."""
    REJECTED = "rejected"
    """Refused before the handler ran (access, parameters, a disabled thing)."""
    TIMED_OUT = "timed_out"
    """No result in time (the request's expiry or the requester's timeout)."""
    CANCELLED = "cancelled"
    """Withdrawn by the requester."""

    @property
    def final(self) -> bool:
        """No further state follows."""
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        ActionState.DONE,
        ActionState.FAILED,
        ActionState.REJECTED,
        ActionState.TIMED_OUT,
        ActionState.CANCELLED,
    }
)
"""The states an action ends in."""
