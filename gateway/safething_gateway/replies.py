"""Errors turned into replies, in one place (as aiocoap's ``RenderableError``).

The gateway core raises typed errors; every bridge catches what handling a
device message raised with one ``except`` and asks :func:`reply_for` what to
answer. The :class:`Reply` it gets knows the HTTP status, the CoAP code, the
reason word and a detail fit for the device; each bridge only renders it
(an ``application/problem+json`` response, a CoAP code with a diagnostic
payload, a body on the device's MQTT error topic).

A refused message (:class:`ProtocolError`) answers with its own status and
text. A store outage is 503 / 5.03 ``store_unavailable``; anything else is
500 / 5.00 ``internal_error`` with a generic detail, the error itself going
to the gateway's log, never to the device.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from safething.errors import StoreError
from safething_gateway.protocol import ProtocolError, RateLimitedError

__all__ = ["STORE_RETRY_AFTER", "Reply", "problem", "reply_for"]

log = logging.getLogger("safething.gateway")

STORE_RETRY_AFTER = 5
"""Seconds a device is asked to wait before retrying while the store does not answer."""

PROBLEM_TYPE = "https://safething.dev/problems/"


def problem(status: int, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    """RFC 9457 problem details; the one builder of problem documents."""
    return {
        "type": f"{PROBLEM_TYPE}{reason}",
        "title": reason.replace("_", " "),
        "status": status,
        "detail": detail,
        **extra,
    }


@dataclass(frozen=True, slots=True)
class Reply:
    """What to answer a device whose message was not handled."""

    status: int
    """HTTP status."""
    coap: str
    """CoAP code, ``"4.01"``."""
    reason: str
    """Short machine-readable word: problem type, metrics label, CoAP diagnostic prefix."""
    detail: str
    """Human-readable text for the device's operator."""
    retry_after: int | None = None
    """Seconds to wait before trying again (HTTP ``Retry-After``, CoAP ``Max-Age``)."""

    def problem(self, **extra: Any) -> dict[str, Any]:
        """This reply as RFC 9457 problem details (HTTP body, MQTT error topic)."""
        return problem(self.status, self.reason, self.detail, **extra)

    def diagnostic(self) -> bytes:
        """This reply as a CoAP diagnostic payload (RFC 7252 §5.5.2): ``reason: detail``."""
        return f"{self.reason}: {self.detail}".encode()


def reply_for(error: BaseException, *, where: str, rate: float | None = None) -> Reply:
    """The reply to ``error`` raised while handling ``where`` (for the log, e.g.
    ``"sensor-01/reading"``); ``rate`` is the per-device rate, for how long a
    rate-limited device should wait. Logs what the device is not told."""
    if isinstance(error, ProtocolError):
        wait = None
        if isinstance(error, RateLimitedError):
            wait = max(1, math.ceil(1 / max(rate, 1e-3))) if rate else 1
        return Reply(error.http, error.coap, error.reason, str(error), wait)
    if isinstance(error, StoreError):
        log.warning("%s: not handled, the store does not answer: %s", where, error)
        return Reply(
            503,
            "5.03",
            "store_unavailable",
            "the data store does not answer; retry",
            STORE_RETRY_AFTER,
        )
    log.error("%s: internal error", where, exc_info=error)
    return Reply(500, "5.00", "internal_error", "the gateway failed to handle it; see its log")
