"""Run the MicroPython firmware as a board would, under CPython, in a process of its own.

    python tests/firmware/e2e_device.py CONFIG STATE_DIR [--app garden|dht22|main]
        [--every MS] [--wait MS] [--sleep-cap-ms MS] [--wakes N]

``STATE_DIR`` is the board's flash: ``CONFIG`` (the file ``safething provision``
writes) is copied there as ``config.json``, as ``mpremote cp`` would; the
firmware keeps its counters (``st_link``) and saved readings (``st_ring``) there,
the fake hardware its state (``_hw_*``). Like the board, the process runs
``firmware/boot.py`` (Wi-Fi), then the app as ``__main__``:
``firmware/examples/<app>.py``, or ``firmware/main.py`` for ``--app main``.

Real: the firmware library (``firmware/safething``, from source, imported as
``safething`` as on the board), ``boot.py`` and the app unchanged; CPython's
``socket`` (CoAP over UDP); CPython's ``requests`` (HTTP); micropython-lib's
``umqtt.simple`` 1.3.4 (MQTT, in ``tests/firmware/vendor``, unmodified).
Fake: the hardware only, ``machine``, ``network``, ``dht``, ``esp``
(``tests/firmware/fakes``). Shimmed here, outside the libraries: the MicroPython
names of standard modules (``usocket`` = CPython sockets with MicroPython's
stream methods ``read``/``write``/``readline``; ``ustruct``, ``ubinascii``...;
``time.sleep_ms`` and ``time.ticks_*``; ``cryptolib``, the board's AES, on the
``cryptography`` package).

Options that change the app's timing (the app files are not edited):
``--every``/``--wait`` replace the arguments of ``Device.run`` (the garden
example reads every 5 s; a test wants a reading every few hundred ms), and
``--sleep-cap-ms`` shortens each deep sleep (the DHT22 example sleeps 10 min).

Stdout: one JSON object per line: ``{"event": "boot", ...}`` at each start,
``{"event": "deepsleep"|"crash"|"exit", ...}``, the MQTT connection's TCP
connects and closes (``{"event": "tcp", "op": "connected"|"failed"|"closed"}``,
from the ``usocket`` shim), the fake hardware's reports
(``{"hw": "pin", "id": 5, "value": 1, ...}``), and plain text from the app
(``boot.py`` prints the Wi-Fi state).

Deep sleep: the fake ``machine.deepsleep`` raises; this script sleeps and
restarts itself with ``os.execv`` (same pid, a fresh interpreter: RAM is lost),
reset cause ``DEEPSLEEP_RESET``, RTC memory kept. ``--wakes N``: stay off after
the N-th deep sleep (exit 0).
"""

from __future__ import annotations

import argparse
import binascii
import errno
import json
import os
import runpy
import select
import shutil
import socket
import struct
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIRMWARE = ROOT / "firmware"
FAKES = HERE / "fakes"
VENDOR = HERE / "vendor"
APPS = {
    "garden": FIRMWARE / "examples" / "garden.py",
    "dht22": FIRMWARE / "examples" / "dht22.py",
    "main": FIRMWARE / "main.py",
}


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields, "t": time.monotonic_ns()}) + "\n")
    sys.stdout.flush()


# --- MicroPython names for CPython's standard modules ---------------------------------------


class MpSocket:
    """A CPython socket with the stream methods of a MicroPython socket.

    ``read(n)`` blocks until ``n`` bytes or the end of the stream; on a
    non-blocking socket it returns what is there, or ``None`` when nothing is.
    ``write(buf, n)`` sends the first ``n`` bytes of ``buf`` (all by default); a
    ``str`` is written as its UTF-8 bytes, as MicroPython does."""

    def __init__(self, af: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0):
        self._s = socket.socket(af, type, proto)
        if type == socket.SOCK_STREAM:  # as the gateway's own clients (no Nagle stalls)
            self._s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __getattr__(self, name: str) -> Any:  # bind, settimeout, setblocking, fileno...
        return getattr(self._s, name)

    def connect(self, address: Any) -> None:
        # reported, so that a test sees when the device is back online
        try:
            self._s.connect(address)
        except OSError as e:
            say("tcp", op="failed", port=address[1], error=str(e))
            raise
        say("tcp", op="connected", port=address[1])

    def read(self, n: int = -1) -> bytes | None:
        if n < 0:
            chunks = []
            while chunk := self._s.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks)
        got = bytearray()
        while len(got) < n:
            try:
                chunk = self._s.recv(n - len(got))
            except BlockingIOError:
                return bytes(got) if got else None
            if not chunk:
                break
            got += chunk
        return bytes(got)

    def readinto(self, buf: bytearray, n: int | None = None) -> int | None:
        data = self.read(len(buf) if n is None else n)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        line = bytearray()
        while not line.endswith(b"\n"):
            chunk = self._s.recv(1)
            if not chunk:
                break
            line += chunk
        return bytes(line)

    def write(self, buf: str | bytes | bytearray | memoryview, n: int | None = None) -> int:
        if isinstance(buf, str):  # a MicroPython str is a buffer of its UTF-8 bytes
            buf = buf.encode()
        data = memoryview(buf)[: len(buf) if n is None else n]
        self._s.sendall(data)
        return len(data)

    def send(self, buf: bytes) -> int:
        return self._s.send(buf)

    def close(self) -> None:
        if self._s.fileno() >= 0:
            say("tcp", op="closed")
        self._s.close()


def _cryptolib() -> types.ModuleType:
    """MicroPython's ``cryptolib`` (C in the board's firmware: AES), ECB mode, on the
    ``cryptography`` package."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class Aes:
        def __init__(self, key: bytes, mode: int, iv: bytes | None = None) -> None:
            if mode != 1:
                raise ValueError("the shim has ECB (mode 1) only")
            self._e = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

        def encrypt(self, data: bytes) -> bytes:
            if len(data) % 16:
                raise ValueError("ECB takes whole 16-byte blocks")
            return self._e.update(bytes(data))

    module = types.ModuleType("cryptolib")
    module.aes = Aes  # type: ignore[attr-defined]
    return module


def install_shims() -> None:
    usocket = types.ModuleType("usocket")
    for name in dir(socket):
        if name.isupper():
            setattr(usocket, name, getattr(socket, name))
    usocket.socket = MpSocket
    usocket.getaddrinfo = socket.getaddrinfo
    usocket.error = OSError
    sys.modules["usocket"] = usocket
    for micro, std in (
        ("ustruct", struct),
        ("ubinascii", binascii),
        ("ujson", json),
        ("utime", time),
        ("uos", os),
        ("uerrno", errno),
        ("uselect", select),
    ):
        sys.modules[micro] = std
    sys.modules["cryptolib"] = _cryptolib()

    def sleep_ms(ms: int) -> None:
        time.sleep(ms / 1000)

    def sleep_us(us: int) -> None:
        time.sleep(us / 1_000_000)

    def ticks_ms() -> int:
        return time.monotonic_ns() // 1_000_000

    def ticks_us() -> int:
        return time.monotonic_ns() // 1000

    def ticks_diff(a: int, b: int) -> int:
        return a - b

    def ticks_add(a: int, b: int) -> int:
        return a + b

    for fn in (sleep_ms, sleep_us, ticks_ms, ticks_us, ticks_diff, ticks_add):
        setattr(time, fn.__name__, fn)


# --- the board ---------------------------------------------------------------------------


def flash(config: Path, state: Path) -> None:
    """Copy the provisioning file to the board, once (as ``mpremote cp``)."""
    state.mkdir(parents=True, exist_ok=True)
    target = state / "config.json"
    if not target.exists() or target.read_bytes() != config.read_bytes():
        shutil.copyfile(config, target)


def load_firmware(fast_every: int | None, fast_wait: int | None) -> None:
    """The library as ``safething`` (CPython's own ``safething`` is never imported here)."""
    sys.path.append(str(FIRMWARE))
    import host

    host.load("safething")
    from safething import device

    if fast_every or fast_wait:
        run = device.Device.run

        def run_faster(self: Any, read: Any = None, every: int = 60000, wait: int = 1000) -> Any:
            return run(self, read, fast_every or every, fast_wait or wait)

        device.Device.run = run_faster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the device's provisioning file")
    parser.add_argument("state", type=Path, help="the board's flash (a directory)")
    parser.add_argument("--app", choices=sorted(APPS), default="garden")
    parser.add_argument("--every", type=int, help="Device.run: ms between readings")
    parser.add_argument("--wait", type=int, help="Device.run: ms per poll")
    parser.add_argument("--sleep-cap-ms", type=int, default=None, help="longest real deep sleep")
    parser.add_argument("--wakes", type=int, default=None, help="stay off after N deep sleeps")
    args = parser.parse_args(argv)

    args.config, args.state = args.config.resolve(), args.state.resolve()
    state = args.state
    flash(args.config, state)
    os.chdir(state)
    os.environ["ST_HW_DIR"] = str(state)
    sys.path[:0] = [str(FAKES), str(VENDOR)]
    install_shims()
    load_firmware(args.every, args.wait)
    import machine

    wakes = int(os.environ.get("ST_HW_WAKES", "0"))
    say("boot", pid=os.getpid(), cause=machine.reset_cause(), wakes=wakes, app=args.app)
    try:
        runpy.run_path(str(FIRMWARE / "boot.py"), run_name="__main__")
        runpy.run_path(str(APPS[args.app]), run_name="__main__")
    except machine.DeepSleep as sleep:
        say("deepsleep", ms=sleep.ms, wakes=wakes)
        if args.wakes is not None and wakes + 1 >= args.wakes:
            say("exit", reason="asleep")
            return 0
        ms = sleep.ms if args.sleep_cap_ms is None else min(sleep.ms, args.sleep_cap_ms)
        time.sleep(ms / 1000)
        restart(args, "deepsleep", wakes + 1)
    except machine.Reset as reset:
        restart(args, reset.cause, wakes)
    except Exception as e:
        traceback.print_exc()
        say("crash", error=repr(e))
        return 1
    say("exit", reason="the app returned")
    return 0


def restart(args: argparse.Namespace, cause: str, wakes: int) -> None:
    """The board starts again: a fresh interpreter in this process, the flash kept."""
    os.environ["ST_HW_RESET"] = cause
    os.environ["ST_HW_WAKES"] = str(wakes)
    argv = [str(Path(__file__).resolve()), str(args.config), str(args.state), "--app", args.app]
    for option in ("every", "wait", "sleep_cap_ms", "wakes"):
        value = getattr(args, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv])


if __name__ == "__main__":
    sys.exit(main())
