"""Values of any shape, as an attacker writes them into a record or a message body.

Shared by the seeded tests that throw them at the thing's inbox, readers, the store and
the gateway (``random.Random(seed)``: the same values each run)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

HUGE = 10**400
"""An integer no float holds (CBOR and JSON carry any integer)."""


def scalar(rng: random.Random, *, binary: bool = True, words: Sequence[str] = ()) -> Any:
    """One value that is not a container: wrong types, edges of int64 and of SQLite's
    integers, integers no float holds, NaN and infinities, empty, odd and long strings,
    a plausible time; bytes too when ``binary`` (CBOR), and one of ``words``."""
    choices: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        2**63,
        -(2**64),
        HUGE,
        -HUGE,
        float("nan"),
        float("inf"),
        float("-inf"),
        1e308,
        -0.0,
        time.time(),
        "",
        "\u202e\x00" * rng.randint(1, 20),
        "x" * rng.randint(100, 5_000),
        *words,
    ]
    if binary:
        choices += [b"", rng.randbytes(32), rng.randbytes(rng.randint(0, 300))]
    return rng.choice(choices)


def value(
    rng: random.Random,
    *,
    fields: Sequence[str],
    binary: bool = True,
    words: Sequence[str] = (),
    depth: int = 0,
) -> Any:
    """A scalar, a list, a map whose keys are mostly ``fields``, or a value nested a few
    hundred levels deep (as a parser's recursion meets it). At most 3 levels of lists and
    maps otherwise, so that values stay small."""
    roll = rng.random()
    if depth >= 3 or roll < 0.5:
        return scalar(rng, binary=binary, words=words)
    if roll < 0.65:
        return [
            value(rng, fields=fields, binary=binary, words=words, depth=depth + 1)
            for _ in range(rng.randint(0, 4))
        ]
    if roll < 0.7:
        inner: Any = scalar(rng, binary=binary, words=words)
        key = fields[0] if fields else "a"
        for _ in range(rng.randint(20, 300)):
            inner = [inner] if rng.random() < 0.5 else {key: inner}
        return inner
    keys = [
        rng.choice(fields) if fields and rng.random() < 0.8 else str(scalar(rng))[:50]
        for _ in range(3)
    ]
    return {k: value(rng, fields=fields, binary=binary, words=words, depth=depth + 1) for k in keys}
