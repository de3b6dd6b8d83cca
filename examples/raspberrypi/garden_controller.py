"""The gardening controller of the SAFEthing seed: waters a gardening device.

It keeps three stored subscriptions on the device (its VeryDryAlarm, its
moisture above 70 %, its VeryWetAlarm) and asks it to OpenValve when the soil
is very dry and to CloseValve when it is wet enough. A subscription survives
a restart: what the controller missed while it was down is delivered first.

No wiring: the controller needs no GPIO. It runs on the device's Pi or on any
machine that shares its store. The device's valve actions are for its owner:
run both with the same identity (SAFETHING_IDENTITY), or start the device with
``owner=`` the controller's public identity.

Run: ``python garden_controller.py``. Settings (environment): SAFETHING_STORE,
SAFETHING_IDENTITY, THING_ID (garden-controller-01), GARDEN_DEVICE
(garden-device-01), PSI (30).
"""

import contextlib
import os
import signal
import threading

from safething.net import Identity
from safething.things import Attribute, Notification, ThingDescription
from safething.things.sync import SyncThing

CLOSE_ABOVE = 70.0  # % moisture: enough water


def description(thing_id: str, device_id: str) -> ThingDescription:
    return ThingDescription(
        thing_id,
        title="Gardening controller",
        attributes=[
            Attribute("device", "string", value=device_id),
            Attribute("watering", "boolean", dynamic=True),
        ],
    )


def start(
    thing_id: str, identity: Identity, device_id: str, *, store: str | None = None, psi: float = 30
) -> SyncThing:
    thing = SyncThing(description(thing_id, device_id), identity=identity, store=store)
    one_at_a_time = threading.Lock()  # callbacks run in worker threads

    def act(note: Notification, action: str, if_valve: str, **args: float) -> None:
        with one_at_a_time:
            if thing.read(device_id, "valve").value == if_valve:
                print(f"{note.name} = {note.value} -> {action}", flush=True)
                thing.request(device_id, action, **args)
                thing.set("watering", action == "OpenValve")

    def water(note: Notification) -> None:
        act(note, "OpenValve", if_valve="closed", psi=psi)

    def stop(note: Notification) -> None:
        act(note, "CloseValve", if_valve="open")

    thing.subscribe(device_id, topic="VeryDryAlarm", callback=water)
    thing.subscribe(device_id, attribute="moisture", filter=f"gt:{CLOSE_ABOVE:g}", callback=stop)
    thing.subscribe(device_id, topic="VeryWetAlarm", callback=stop)
    return thing


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemctl stop == Ctrl-C
    identity = Identity.load(
        os.environ.get("SAFETHING_IDENTITY", "~/.config/safething/identity.json"),
        password=os.environ.get("SAFETHING_PASSWORD"),
    )
    device_id = os.environ.get("GARDEN_DEVICE", "garden-device-01")
    thing = start(
        os.environ.get("THING_ID", "garden-controller-01"),
        identity,
        device_id,
        psi=float(os.environ.get("PSI", "30")),
    )
    with contextlib.suppress(KeyboardInterrupt), thing:
        print(f"{thing.id}: looking after {device_id}; Ctrl-C to stop", flush=True)
        signal.pause()


if __name__ == "__main__":
    main()
