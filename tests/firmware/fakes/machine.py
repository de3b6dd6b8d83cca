"""A fake ``machine`` module: the ESP8266 board under CPython (hardware only).

- ``Pin``: an output's level is reported (``{"hw": "pin", "id": 5, "value": 1}``) and
  kept in ``_hw_gpio<id>``; an input reads that file (0 when there is none), so a
  test can drive it.
- ``ADC``: each ``read()`` is the next sample of a slow ramp, reported as
  ``{"hw": "adc", "id": 0, "n": <sample number>, "raw": <0..1023>}``. The sample
  number is kept on the board (``_hw_adc<id>``), so a rebooted device goes on
  where it was, as a real sensor would. The ramp stays between 25 % and 84 % of
  full scale (the garden example's alarms are below 20 % and above 85 %).
- ``RTC``: ``memory()`` holds at most 492 bytes, kept across deep sleep only.
- ``deepsleep(ms)``: saves the RTC memory and raises :class:`DeepSleep`;
  ``e2e_device.py`` then restarts the board with ``reset_cause() == DEEPSLEEP_RESET``.
- ``reset()``/``soft_reset()`` raise :class:`Reset` (restarted the same way).
"""

from __future__ import annotations

import time
from typing import Any

import _hw

PWRON_RESET = 0
WDT_RESET = 1
SOFT_RESET = 4
DEEPSLEEP_RESET = 5
HARD_RESET = 6
_CAUSES = {
    "power": PWRON_RESET,
    "soft": SOFT_RESET,
    "deepsleep": DEEPSLEEP_RESET,
    "hard": HARD_RESET,
}
RTC_MEMORY_BYTES = 492
"""User memory of the ESP8266 RTC."""
ADC_LOW, ADC_STEP, ADC_SPAN = 256, 2, 600
"""The ADC ramp: sample n reads ``ADC_LOW + (n * ADC_STEP) % ADC_SPAN``."""


def adc_value(n: int) -> int:
    """The raw value of ADC sample ``n`` (tests compute expected readings with it)."""
    return ADC_LOW + (n * ADC_STEP) % ADC_SPAN


class DeepSleep(BaseException):  # not an Exception: app code must not catch it
    """The board went into deep sleep for ``ms``; code after ``deepsleep()`` never runs."""

    def __init__(self, ms: int) -> None:
        super().__init__(ms)
        self.ms = ms


class Reset(BaseException):
    """``machine.reset()`` or ``soft_reset()``: the board restarts at once."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def reset_cause() -> int:
    return _CAUSES[_hw.reset_cause()]


def unique_id() -> bytes:
    return b"\x5a\xfe\x7e\x01"


def freq(hz: int | None = None) -> int | None:
    return 80_000_000 if hz is None else None


def idle() -> None:
    time.sleep(0)


def disable_irq() -> int:
    return 0


def enable_irq(state: int = 0) -> None:
    pass


def lightsleep(ms: int | None = None) -> None:
    time.sleep((ms or 0) / 1000)


def deepsleep(ms: int = 0) -> None:
    _hw.write("rtc", _rtc_memory.hex())
    _hw.emit("deepsleep", ms=ms)
    raise DeepSleep(ms)


def reset() -> None:
    _hw.emit("reset", cause="hard")
    raise Reset("hard")


def soft_reset() -> None:
    _hw.emit("reset", cause="soft")
    raise Reset("soft")


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id: int, mode: int = -1, pull: int = -1, *, value: Any = None) -> None:
        self.id = id
        self.mode = self.IN
        self.init(mode, pull, value=value)

    def init(self, mode: int = -1, pull: int = -1, *, value: Any = None) -> None:
        if mode != -1:
            self.mode = mode
        if value is not None:
            self.value(value)

    def value(self, x: Any = None) -> int | None:
        if x is None:
            level = _hw.read(f"gpio{self.id}")
            return int(level) if level else 0
        level = 1 if x else 0
        _hw.write(f"gpio{self.id}", str(level))
        _hw.emit("pin", id=self.id, value=level)
        return None

    def __call__(self, x: Any = None) -> int | None:
        return self.value(x)

    def on(self) -> None:
        self.value(1)

    def off(self) -> None:
        self.value(0)

    def irq(self, handler: Any = None, trigger: int = 3) -> None:
        pass


class ADC:
    def __init__(self, id: int = 0) -> None:
        self.id = id

    def read(self) -> int:
        n = _hw.count(f"adc{self.id}")
        raw = adc_value(n)
        _hw.emit("adc", id=self.id, n=n, raw=raw)
        return raw

    def read_u16(self) -> int:
        return self.read() * 64


_rtc_memory = b""
if _hw.reset_cause() == "deepsleep":  # RTC memory survives deep sleep, nothing else
    _rtc_memory = bytes.fromhex(_hw.read("rtc") or "")
_hw.remove("rtc")


class RTC:
    def memory(self, data: bytes | None = None) -> bytes | None:
        global _rtc_memory
        if data is None:
            return _rtc_memory
        if len(data) > RTC_MEMORY_BYTES:
            raise ValueError("buffer too long")
        _rtc_memory = bytes(data)
        return None

    def datetime(self, t: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
        if t is not None:
            return None
        now = time.gmtime()
        return (
            now.tm_year,
            now.tm_mon,
            now.tm_mday,
            now.tm_wday,
            now.tm_hour,
            now.tm_min,
            now.tm_sec,
            0,
        )
