"""The gardening demo of the seed: a device, a controller and their owner, in one process.

* The **gardening device** reports the soil ``moisture`` (a simulated sensor:
  the soil dries while the valve is closed and gets wet fast while it is
  open), the ``valve`` state and its ``model``; it raises ``VeryDryAlarm``
  below :data:`DRY_BELOW` % and ``VeryWetAlarm`` above :data:`WET_ABOVE` %,
  and serves ``OpenValve(psi)`` and ``CloseValve``.
* The **gardening controller** is a thing too, with its own identity. It
  keeps stored subscriptions on the device (``VeryDryAlarm`` any,
  ``moisture`` ``gt:70``, ``VeryWetAlarm`` any) and requests ``OpenValve`` /
  ``CloseValve``.
* The **owner** (the CLI identity) owns both and puts the controller in the
  device's group: the valve actions are for Group access, so only the owner
  and the controller may open the valve; anyone may read the moisture.

Everything goes through the store like it would between machines: readings
and alarms are signed entries, requests are signed inbox entries, each
action state is a signed outbox entry. :class:`GardenDemo` prints what
happens, as it happens, through ``echo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safething.errors import NoSuchDataError, SafeThingError
from safething.net import Client, Identity
from safething.resource import Tasks
from safething.store import Store
from safething.things import (
    Action,
    ActionRequest,
    ActionStatus,
    Attribute,
    Notification,
    Param,
    Thing,
    ThingClient,
    ThingDescription,
    ThingOwner,
    Topic,
)

__all__ = [
    "CLOSE_ABOVE",
    "DRY_BELOW",
    "TICK_S",
    "WET_ABOVE",
    "GardenDemo",
    "Soil",
    "controller_description",
    "device_description",
    "garden_ids",
]

Echo = Callable[[str], None]

log = logging.getLogger("safething.demo")

DRY_BELOW = 20.0
"""Moisture (%) under which the device raises ``VeryDryAlarm``."""
WET_ABOVE = 85.0
"""Moisture (%) over which the device raises ``VeryWetAlarm``."""
CLOSE_ABOVE = 70.0
"""Moisture (%) over which the controller closes the valve (its ``gt:70`` subscription)."""
TICK_S = 0.4
"""Seconds between two sensor readings."""
ALARM_REPEAT_S = 3.0
"""An alarm that still holds is raised again after this many seconds."""


def garden_ids(device: Identity, controller: Identity) -> tuple[str, str]:
    """Thing ids for the demo's device and controller, named after their own keys."""
    return (
        f"garden-device-{device.public_sign_key.hex()[:8]}",
        f"garden-controller-{controller.public_sign_key.hex()[:8]}",
    )


def device_description(thing_id: str) -> ThingDescription:
    """The gardening device of the seed."""
    return ThingDescription(
        thing_id,
        title="Gardening device",
        description="Soil moisture sensor and a water valve.",
        attributes=[
            Attribute(
                "moisture",
                "number",
                unit="%",
                minimum=0,
                maximum=100,
                dynamic=True,
                history=32,
                description="Soil moisture, simulated.",
            ),
            Attribute("valve", "enum", choices=["open", "closed"], dynamic=True),
            Attribute("model", "string", value="SAFEgarden GD-1 (simulated)"),
        ],
        topics=[
            Topic("VeryDryAlarm", "number", unit="%", description="The moisture, when too dry."),
            Topic("VeryWetAlarm", "number", unit="%", description="The moisture, when too wet."),
        ],
        actions=[
            Action(
                "OpenValve",
                params=[Param("psi", "number", minimum=0, maximum=100, default=30)],
                output="object",
                access="group",
                timeout_s=10,
            ),
            Action("CloseValve", output="object", access="group", timeout_s=10),
        ],
    )


def controller_description(thing_id: str, device_id: str) -> ThingDescription:
    """The gardening controller of the seed, looking after ``device_id``."""
    return ThingDescription(
        thing_id,
        title="Gardening controller",
        description="Waters the garden: opens the valve when the soil is very dry.",
        attributes=[
            Attribute("device", "string", value=device_id),
            Attribute(
                "rule",
                "string",
                value=f"OpenValve at VeryDryAlarm; CloseValve above {CLOSE_ABOVE:g} % "
                "or at VeryWetAlarm",
            ),
            Attribute("watering", "boolean", dynamic=True),
        ],
    )


@dataclass
class Soil:
    """The simulated soil under the device's sensor."""

    moisture: float = 24.0
    """Percent."""
    psi: float = 0.0
    """Pressure of the open valve; 0 while it is closed."""
    rng: random.Random = field(default_factory=random.Random)

    def step(self) -> float:
        """One tick later: drier, or much wetter while watered. Returns the new moisture."""
        change = 4.0 + self.psi * 0.35 if self.psi > 0 else -5.0
        value = self.moisture + change + self.rng.uniform(-0.5, 0.5)
        self.moisture = round(min(100.0, max(0.0, value)), 1)
        return self.moisture


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


class GardenDemo:
    """The device, the controller and a console view of them, sharing one store.

    ``async with GardenDemo(store, owner=..., device=..., controller=...) as demo:
    await demo.run(seconds=10)``.
    """

    def __init__(
        self,
        store: Store,
        *,
        owner: Identity,
        device: Identity,
        controller: Identity,
        echo: Echo = print,
        tick: float = TICK_S,
        soil: Soil | None = None,
        verbose: bool = False,
    ) -> None:
        self.store = store
        self.verbose = verbose
        """Every moisture reading and action state; otherwise alarms, valve changes and the
        end of each action."""
        self.owner = owner
        self.device_id, self.controller_id = garden_ids(device, controller)
        self.echo = echo
        self.tick = tick
        self.soil = soil or Soil()
        self.counts: Counter[str] = Counter()
        """What happened: ``VeryDryAlarm``, ``OpenValve done``, ``CloseValve failed``..."""
        self.device = Thing(
            device_description(self.device_id), identity=device, owner=owner, store=store
        )
        self.controller = Thing(
            controller_description(self.controller_id, self.device_id),
            identity=controller,
            owner=owner,
            store=store,
        )
        self.console = ThingClient(Client(store, owner))
        self._stack = contextlib.AsyncExitStack()
        self._tasks = Tasks("garden-demo:", log=log)
        self._busy = False

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> GardenDemo:
        try:
            await self._stack.enter_async_context(self.console)
            await self._stack.enter_async_context(self.device)
            await self._stack.enter_async_context(self.controller)
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel and await every task, then close the things (controller first)."""
        await self._tasks.cancel_all()
        await self._stack.aclose()

    def _line(self, kind: str, text: str, t: float | None = None) -> None:
        self.echo(f"{_clock(time.time() if t is None else t)}  {kind:<12}  {text}")

    async def _start(self) -> None:
        device = self.device
        device.on_action("OpenValve", self._open_valve)
        device.on_action("CloseValve", self._close_valve)
        await device.register()
        await device.set("valve", "closed")
        await device.set("moisture", self.soil.moisture)
        await device.publish()
        await self.controller.register()
        await self.controller.set("watering", False)
        await self.controller.publish()
        owner = ThingOwner(Client(self.store, self.owner), self.device_id)
        if self.controller.identity.public_sign_key not in await owner.members():
            await owner.add_member(self.controller.identity.public)
        if self.verbose:
            self._tasks.spawn(self._show(attribute="moisture", filter="any"), "show-moisture")
        self._tasks.spawn(self._show(attribute="valve", filter="changed"), "show-valve")
        await self._subscribe_controller()
        self._tasks.spawn(self._sense(), "sensor")

    async def run(self, *, seconds: float | None = None, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set or ``seconds`` have passed (neither: until cancelled)."""
        waiter = stop or asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await waiter.wait()

    def summary(self) -> str:
        """One line: alarms seen and how the actions ended."""
        parts = [f"{self.counts[k]} {k}" for k in ("VeryDryAlarm", "VeryWetAlarm")]
        parts += [f"{k} {n}" for k, n in sorted(self.counts.items()) if " " in k]
        return ", ".join(parts)

    # --- the device -----------------------------------------------------------------

    async def _sense(self) -> None:
        last: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)
            value = self.soil.step()
            await self.device.set("moisture", value)
            alarm = (
                "VeryDryAlarm"
                if value < DRY_BELOW
                else "VeryWetAlarm"
                if value > WET_ABOVE
                else None
            )
            if alarm is not None and loop.time() - last.get(alarm, -ALARM_REPEAT_S) >= (
                ALARM_REPEAT_S
            ):
                last[alarm] = loop.time()
                await self.device.notify(alarm, value)

    async def _open_valve(self, request: ActionRequest) -> dict[str, Any]:
        psi = float(request.args["psi"])
        await asyncio.sleep(self.tick / 4)
        await request.progress(0, f"opening at {psi:g} psi")
        await asyncio.sleep(self.tick / 2)
        self.soil.psi = psi
        await self.device.set("valve", "open")
        await request.progress(100, "open")
        return {"valve": "open", "psi": psi}

    async def _close_valve(self, request: ActionRequest) -> dict[str, Any]:
        await asyncio.sleep(self.tick / 4)
        await request.progress(0, "closing")
        await asyncio.sleep(self.tick / 2)
        self.soil.psi = 0.0
        await self.device.set("valve", "closed")
        return {"valve": "closed"}

    # --- the console ----------------------------------------------------------------

    async def _show(self, *, attribute: str, filter: str) -> None:
        spec = self.device.description.attribute(attribute)
        unit = f" {spec.schema.unit}" if spec.schema.unit else ""
        sub = self.console.subscribe(self.device_id, attribute=attribute, filter=filter)
        async with sub:
            async for note in sub:
                self._line(
                    "reading",
                    f"{self.device_id}  {attribute} = {_show(note.value)}{unit}  (seq {note.seq})",
                    note.timestamp,
                )

    # --- the controller -------------------------------------------------------------

    async def _subscribe_controller(self) -> None:
        c = self.controller
        await c.subscribe(self.device_id, topic="VeryDryAlarm", filter="any", callback=self._dry)
        await c.subscribe(
            self.device_id, attribute="moisture", filter=f"gt:{CLOSE_ABOVE:g}", callback=self._wet
        )
        await c.subscribe(self.device_id, topic="VeryWetAlarm", filter="any", callback=self._wet)

    def _notified(self, note: Notification) -> None:
        self.counts[note.name] += 1
        self._line(
            "notification",
            f"{note.name} {_show(note.value)} % from {note.thing_id} (seq {note.seq}) "
            f"-> {self.controller_id}",
            note.timestamp,
        )

    def _dry(self, note: Notification) -> None:
        self._notified(note)
        self._want("OpenValve", "closed", note, psi=30)

    def _wet(self, note: Notification) -> None:
        if note.kind == "event":
            self._notified(note)
        self._want("CloseValve", "open", note)

    def _want(self, action: str, valve: str, note: Notification, **args: Any) -> None:
        if not self._busy:
            self._busy = True
            self._tasks.spawn(self._act(action, valve, note, args), f"{action}-{note.seq}")

    async def _act(self, action: str, valve: str, note: Notification, args: dict[str, Any]) -> None:
        """Request ``action`` if the valve is ``valve``; print each state of the request."""
        try:
            try:
                current = (await self.controller.things.read(self.device_id, "valve")).value
            except NoSuchDataError:
                current = "closed"
            if current != valve:
                return
            if note.kind == "attribute":
                self._line(
                    "notification",
                    f"{note.name} {_show(note.value)} % > {CLOSE_ABOVE:g} % from "
                    f"{note.thing_id} (seq {note.seq}) -> {self.controller_id}",
                    note.timestamp,
                )
            handle = await self.controller.request(self.device_id, action, **args)
            shown = f"{action}({', '.join(f'{k}={_show(v)}' for k, v in args.items())})"
            try:
                async with asyncio.timeout(handle.timeout + 2):
                    async for status in handle.states():
                        self._state(shown, status)
            except TimeoutError:
                self._line("action", f"{shown} on {self.device_id}: no answer")
            self.counts[f"{action} {handle.state}"] += 1
            if handle.state == "done":
                await self.controller.set("watering", action == "OpenValve")
        except SafeThingError as e:
            self._line("action", f"{action} on {self.device_id}: {e}")
        finally:
            self._busy = False

    def _state(self, shown: str, status: ActionStatus) -> None:
        if not (self.verbose or status.final):
            return
        text = f"{shown} on {self.device_id}: {status.state}"
        if status.progress is not None:
            text += f" {status.progress:g}%"
        if status.message:
            text += f" ({status.message})"
        if status.state == "requested":
            text += f" by {self.controller_id}"
        if status.result is not None:
            text += f" -> {json.dumps(status.result)}"
        self._line("action", text, status.timestamp or None)
