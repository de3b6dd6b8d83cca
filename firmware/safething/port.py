# Everything that touches the board, in one small module, so that host tests
# can run the library under CPython with fake `machine` modules (or replace
# these functions). Also the few shims that let the same code run on CPython.
try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]
        return x


try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    import time

    def sleep_ms(ms):  # type: ignore[misc]
        time.sleep(ms / 1000)

    def ticks_ms():
        return int(time.monotonic() * 1000)  # type: ignore[attr-defined]

    def ticks_diff(a, b):  # type: ignore[no-redef]
        return a - b

    def ticks_add(a, b):  # type: ignore[misc]
        return a + b


def rtc():
    # The RTC, whose user memory survives deep sleep; None where there is none.
    try:
        import machine

        return machine.RTC()
    except (ImportError, AttributeError):
        return None


def woke():
    # True when this start is a wake from deep sleep (not a power-on or reset).
    try:
        import machine

        return machine.reset_cause() == machine.DEEPSLEEP_RESET
    except (ImportError, AttributeError):
        return False


def deepsleep(ms):
    # Sleep `ms` and restart from boot.py (ESP8266: wire GPIO16 to RST).
    import machine

    machine.deepsleep(ms)


def config(path="config.json"):
    # The provisioning file from `safething provision` (docs/protocol.md section 1).
    import json

    with open(path) as f:
        return json.load(f)
