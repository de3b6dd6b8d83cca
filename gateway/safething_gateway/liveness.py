"""Availability of bridged devices, written by the gateway into each custodial thing.

A device the gateway bridges cannot sign its own ``live`` entry (the gateway
holds its key), so the gateway says for it (see
:mod:`safething.things.availability`):

* **online** on any authenticated message (a birth, a reading, a poll...);
* **offline, "last will"** when the MQTT broker delivers the device's
  pre-registered will, or **offline, "said offline"** on a ``state`` message
  with ``online: false``;
* **offline, "inactive"** after ``offline_after`` seconds without a message
  (CoAP and HTTP devices have no connection to lose);
* **offline, "gateway stopped"** when the gateway closes;
* for adopted devices, what their own convention says: Home Assistant's
  availability topic, Homie's ``$state``, a withdrawn announcement.

Only changes are written, so a device sending every second costs no extra
store writes. A device whose thing the gateway closed while it was quiet (see
:mod:`safething_gateway.core`) keeps the availability written last; a change
(offline after its silence, or the gateway stopping) is written for it through
``closed``, the gateway's writer for a thing that is not running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from safething.errors import SafeThingError
from safething.things import Thing

__all__ = ["DEFAULT_OFFLINE_AFTER_S", "Liveness"]

log = logging.getLogger("safething_gateway.liveness")

DEFAULT_OFFLINE_AFTER_S = 600.0
"""Silence after which a device is called offline."""
_CLOSE_AT_ONCE = 64
"""Devices whose "gateway stopped" is written concurrently when the gateway closes."""


class Liveness:
    """Tracks which devices are online and writes the changes to their things."""

    def __init__(
        self,
        things: dict[str, Thing],
        *,
        offline_after: float = DEFAULT_OFFLINE_AFTER_S,
        closed: Callable[[str, bool, str], Awaitable[bool]] | None = None,
    ) -> None:
        """``closed(device_id, online, reason)``: writes the availability of a device
        whose thing is not running; False when it does not (the device has no thing
        closed while quiet: nothing is written, as for a device not heard from)."""
        if not offline_after > 0:
            raise ValueError("offline_after must be a positive number of seconds")
        self._things = things
        self._closed = closed
        self.offline_after = offline_after
        self._online: dict[str, bool] = {}
        self._seen: dict[str, float] = {}

    async def seen(self, device_id: str, at: float | None = None) -> None:
        """An authenticated message of ``device_id`` arrived (at ``at``, default now)."""
        self._seen[device_id] = time.time() if at is None else at
        await self.mark(device_id, True)

    def online(self, device_id: str) -> bool | None:
        """What the gateway last wrote for ``device_id`` (None: nothing yet)."""
        return self._online.get(device_id)

    async def mark(self, device_id: str, online: bool, reason: str = "") -> None:
        """Write ``online``/``offline`` into the device's thing if that is a change."""
        if self._online.get(device_id) == online:
            return
        thing = self._things.get(device_id)
        try:
            if thing is not None:
                await thing.set_availability(online, reason=reason)
            elif self._closed is None or not await self._closed(device_id, online, reason):
                return
        except SafeThingError as e:  # the store is away: try again on the next message
            log.warning("device %s: availability not written: %s", device_id, e)
            return
        self._online[device_id] = online
        log.info("device %s: %s %s", device_id, "online" if online else "offline", reason)

    def written(self, device_id: str, online: bool) -> None:
        """The device's thing has just written ``online`` itself (registered online, in
        the commit of its registration): a message now, nothing more to write."""
        self._seen[device_id] = time.time()
        self._online[device_id] = online

    def forget(self, device_id: str) -> None:
        """Its thing was replaced: write the next state whatever it is."""
        self._online.pop(device_id, None)

    async def sweep(self) -> int:
        """Call silent devices offline; returns how many."""
        now = time.time()
        count = 0
        for device_id, online in list(self._online.items()):
            seen = self._seen.get(device_id)
            if online and (seen is None or now - seen > self.offline_after):
                await self.mark(device_id, False, "inactive")
                count += 1
        return count

    async def run(self, every: float | None = None) -> None:
        """Sweep forever (a task the gateway owns)."""
        period = every if every is not None else min(30.0, self.offline_after / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception:
                log.exception("availability sweep failed")

    async def close(self) -> None:
        """The gateway stops: its devices are unreachable from now on (written for
        :data:`_CLOSE_AT_ONCE` devices at a time, so the store commits them together)."""
        online = [device_id for device_id, on in self._online.items() if on]
        for start in range(0, len(online), _CLOSE_AT_ONCE):
            batch = online[start : start + _CLOSE_AT_ONCE]
            await asyncio.gather(*(self.mark(d, False, "gateway stopped") for d in batch))
