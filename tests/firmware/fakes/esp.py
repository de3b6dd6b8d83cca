"""A fake ``esp`` module: the ESP8266-specific calls, deep sleep through ``machine``."""

from __future__ import annotations

import machine

SLEEP_NONE = 0
SLEEP_LIGHT = 1
SLEEP_MODEM = 2
_sleep_type = SLEEP_LIGHT


def deepsleep(time_us: int = 0, *args: int) -> None:
    machine.deepsleep(time_us // 1000)


def sleep_type(sleep_type: int | None = None) -> int | None:
    global _sleep_type
    if sleep_type is None:
        return _sleep_type
    _sleep_type = sleep_type
    return None


def osdebug(level: int | None) -> None:
    pass


def flash_id() -> int:
    return 0x1640EF


def flash_size() -> int:
    return 4 * 1024 * 1024


def check_fw() -> bool:
    return True


def freemem() -> int:
    return 40_000
