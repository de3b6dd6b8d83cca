"""systemd's notify protocol (sd_notify(3)) without a library: one datagram to
``$NOTIFY_SOCKET``.

``Type=notify`` in the unit makes ``systemctl start`` wait for ``READY=1``
(sent once every bridge listens), and ``WatchdogSec=`` restarts a gateway
whose event loop stopped turning: :func:`watchdog` sends ``WATCHDOG=1`` at
half the interval systemd asks for (``$WATCHDOG_USEC``), only while the
device registry answers. A store outage does not stop it: the gateway
buffers through those by design. Outside systemd every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

__all__ = ["notify", "watchdog", "watchdog_interval"]

log = logging.getLogger("safething.gateway")


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` lines to systemd; False when not run by it (or it did not listen)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not fields:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(fields).encode())
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), None without one.
    ``$WATCHDOG_PID``, when set, must be this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(alive: Callable[[], Awaitable[bool]]) -> None:
    """Ping systemd's watchdog while ``alive()`` says so; runs until cancelled."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if await alive():
            notify("WATCHDOG=1")
        else:
            log.warning("watchdog: the gateway is not healthy; not telling systemd it is")
        await asyncio.sleep(interval)
