"""Devices waiting for a push: one waiter per long-poll, event stream or CoAP observation.

A bridge registers a :class:`Waiter` while a device holds a request open and
hands it what :meth:`Gateway.send` queues for the device (through
``Bridge.push``). A downlink stays in the registry's queue until the device
acknowledges it, so a waiter that ends with downlinks in hand loses nothing:
the device's next poll returns them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

__all__ = ["Waiter", "Waiters"]

log = logging.getLogger("safething.gateway")

_Item = tuple[str, bytes]
"""``(channel, framed message)``."""


class Waiter:
    """One device's open request, waiting for downlinks pushed to it."""

    def __init__(self, device_id: str, *, once: bool, limit: int | None) -> None:
        self.device_id = device_id
        """The device that waits."""
        self.once = once
        """Takes one push, then stops waiting (a long-poll)."""
        self.limit = limit
        """Downlinks held at most (None: no limit); further pushes are refused."""
        self.end_reason: str | None = None
        """Why it stopped waiting (set by :meth:`end`); None while it waits."""
        self._held: deque[_Item] = deque()
        self._wake = asyncio.Event()

    def full(self) -> bool:
        return self.limit is not None and len(self._held) >= self.limit

    def put(self, channel: str, message: bytes) -> bool:
        """Hold one downlink for the device; False if ended or full."""
        if self.end_reason is not None or self.full():
            return False
        self._held.append((channel, message))
        self._wake.set()
        return True

    def end(self, reason: str) -> None:
        """Stop waiting: :meth:`take` and :meth:`get` return None from now on."""
        if self.end_reason is None:
            self.end_reason = reason
        self._wake.set()

    async def take(self) -> list[_Item] | None:
        """Every downlink held, once there is one; None once ended (ending wins)."""
        while True:
            if self.end_reason is not None:
                return None
            if self._held:
                held = list(self._held)
                self._held.clear()
                return held
            self._wake.clear()
            await self._wake.wait()

    async def get(self) -> _Item | None:
        """The next downlink held, once there is one; None once ended (ending wins)."""
        while True:
            if self.end_reason is not None:
                return None
            if self._held:
                return self._held.popleft()
            self._wake.clear()
            await self._wake.wait()


class Waiters:
    """The waiters of one bridge, by device.

    ``exclusive``: a device has at most one waiter, a new one ends the one before
    (a CoAP observation supersedes the last); else every waiter of the device
    gets each push (several event streams).
    """

    def __init__(self, *, exclusive: bool = False) -> None:
        self.exclusive = exclusive
        self.closed: str | None = None
        """Why the bridge stopped taking waiters; None while open."""
        self._by_device: dict[str, list[Waiter]] = {}

    def add(self, device_id: str, *, once: bool = False, limit: int | None = None) -> Waiter:
        """A new waiter for ``device_id`` (ended at once if the bridge is closing)."""
        waiter = Waiter(device_id, once=once, limit=limit)
        if self.closed is not None:
            waiter.end(self.closed)
            return waiter
        if self.exclusive:
            for previous in self._by_device.pop(device_id, []):
                previous.end("superseded by a newer observation")
        self._by_device.setdefault(device_id, []).append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Forget ``waiter`` (idempotent)."""
        waiting = self._by_device.get(waiter.device_id, [])
        with contextlib.suppress(ValueError):
            waiting.remove(waiter)
        if not waiting:
            self._by_device.pop(waiter.device_id, None)

    def can_push(self, device_id: str) -> bool:
        """Some waiter of the device would take a push now."""
        return any(
            w.end_reason is None and not w.full() for w in self._by_device.get(device_id, ())
        )

    def push(self, device_id: str, channel: str, message: bytes) -> bool:
        """Hand one downlink to every waiter of the device; True if any took it."""
        delivered = False
        for waiter in list(self._by_device.get(device_id, ())):
            if not waiter.put(channel, message):
                if waiter.full():
                    log.warning("device %s: waiter full, downlink left queued", device_id)
                continue
            delivered = True
            if waiter.once:
                self.remove(waiter)
        return delivered

    def connected(self) -> int:
        """Devices with at least one waiter."""
        return len(self._by_device)

    def close(self, reason: str) -> None:
        """End every waiter with ``reason``; later waiters end at once."""
        self.closed = reason
        for waiting in list(self._by_device.values()):
            for waiter in waiting:
                waiter.end(reason)
        self._by_device.clear()
