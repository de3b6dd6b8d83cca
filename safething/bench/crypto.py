"""The crypto limit: ed25519 sign + verify per second on one core, measured in the run.

Every signed, verified update costs at least one ed25519 signature (the writer)
and one verification (the reader). :func:`sign_verify_rate` measures how many
such pairs this process's one thread does per second through
:mod:`safething.net.keys` (PyNaCl, libsodium), so a group can report its own
rate next to it, measured minutes apart on the same loaded machine, and divide
the two (:func:`limit_ratio`). A group that uses it reports the limit under its
own prefix (``things_ed25519_sign_verify_rate``, ``gateway_...``), because every
metric name appears once per run and every ratio's two sides are metrics of the
run.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

from safething.bench.common import with_target
from safething.bench.runner import BenchContext, Metric, rate_metric, ratio_metric
from safething.net import SigningKey

__all__ = ["MESSAGE_BYTES", "limit_ratio", "sign_verify_rate"]

MESSAGE_BYTES = 128
"""Bytes signed per pair: about the size of one signed entry of a small reading."""


@dataclass(frozen=True, slots=True)
class _Round:
    sign_s: float
    """Wall seconds of the signatures."""
    verify_s: float
    """Wall seconds of the verifications."""
    cpu_s: float
    """CPU seconds of this thread for both."""

    @property
    def wall_s(self) -> float:
        return self.sign_s + self.verify_s


def _round(key: SigningKey, messages: list[bytes]) -> _Round:
    """Sign every message, then verify every signature."""
    public = key.public
    cpu_started = time.thread_time()
    started = time.perf_counter()
    signatures = [key.sign(message) for message in messages]
    signed = time.perf_counter()
    for message, signature in zip(messages, signatures, strict=True):
        if not public.verify(message, signature):
            raise RuntimeError("ed25519: a fresh signature did not verify")
    verified = time.perf_counter()
    return _Round(signed - started, verified - signed, time.thread_time() - cpu_started)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def sign_verify_rate(ctx: BenchContext, name: str) -> Metric:
    """``name``: ed25519 sign + verify pairs per second, one after the other, one thread.

    The median of three rounds (one in a quick run). ``params`` also has the
    signatures and the verifications per second on their own, and the pairs
    per CPU second of the thread (``cpu_rate``), which a busy machine lowers less.
    """
    pairs = ctx.size(5_000, 500)
    rounds = ctx.size(3, 1)
    key = SigningKey.generate()
    messages = [os.urandom(MESSAGE_BYTES) for _ in range(pairs)]
    _round(key, messages[: min(200, pairs)])  # warm-up: first calls load libsodium's tables
    timings = [_round(key, messages) for _ in range(rounds)]
    return rate_metric(
        name,
        pairs,
        [r.wall_s for r in timings],
        "pairs/s",
        params={
            "what": "SigningKey.sign then PublicSignKey.verify (PyNaCl) of each message, "
            "on one thread",
            "message_bytes": MESSAGE_BYTES,
            "sign_rate": _median([pairs / r.sign_s for r in timings]),
            "verify_rate": _median([pairs / r.verify_s for r in timings]),
            "cpu_rate": _median([pairs / r.cpu_s for r in timings if r.cpu_s > 0] or [0.0]),
            "role": "the crypto limit of one signed, verified update on one core",
        },
    )


def limit_ratio(name: str, rate: Metric, limit: Metric, *, target: float) -> Metric:
    """``rate / limit`` with the issue's target ``>= target`` next to it."""
    return with_target(ratio_metric(name, rate, limit), ">=", target)
