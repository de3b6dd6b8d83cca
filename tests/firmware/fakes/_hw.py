"""Plumbing shared by the fake board modules (``machine``, ``network``, ``dht``, ``esp``).

The fakes stand in for the hardware of an ESP8266 board and nothing else. They
keep what a board keeps across resets in files named ``_hw_<name>`` in
``$ST_HW_DIR`` (default: the current directory, which ``e2e_device.py`` makes
the board's flash), and report what happens on the board as one JSON object per
line on stdout, e.g. ``{"hw": "pin", "id": 5, "value": 1, "t": <monotonic ns>}``,
so that a test can watch a relay switch or know which value a sensor gave.
``t`` is ``time.monotonic_ns()``: the same clock in every process of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any


def path(name: str) -> str:
    """The file that holds the state ``name`` of the simulated board."""
    return os.path.join(os.environ.get("ST_HW_DIR", "."), "_hw_" + name)


def emit(kind: str, **fields: Any) -> None:
    """Report something the hardware did (one JSON line on stdout)."""
    line = json.dumps({"hw": kind, **fields, "t": time.monotonic_ns()})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def read(name: str) -> str | None:
    try:
        with open(path(name)) as f:
            return f.read()
    except OSError:
        return None


def write(name: str, text: str) -> None:
    tmp = path(name) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path(name))


def remove(name: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path(name))


def count(name: str) -> int:
    """The next number of a counter kept on the board (0 first), e.g. samples taken."""
    text = read(name)
    n = int(text) if text else 0
    write(name, str(n + 1))
    return n


def reset_cause() -> str:
    """Why this start happened: ``"deepsleep"``, ``"soft"``, ``"hard"`` or ``"power"``
    (``$ST_HW_RESET``, set by ``e2e_device.py`` when it restarts the board)."""
    return os.environ.get("ST_HW_RESET", "power")
