"""A PIR motion sensor as a SAFEthing: a Motion event when something moves, NoMotion after.

Wiring (BCM numbers): HC-SR501 OUT to GPIO22, VCC to 5V, GND to GND (its
output is 3.3 V, safe for the Pi). Its two trimmers set the sensitivity and
how long OUT stays high after the last movement.

Watch it: ``safething thing watch pir-01``.

Run: ``python pir_motion.py``. Settings (environment): SAFETHING_STORE,
SAFETHING_IDENTITY, THING_ID (pir-01), PIR_PIN (22).
"""

import contextlib
import os
import signal

from gpiozero import MotionSensor

from safething.net import Identity
from safething.things import ThingDescription, Topic
from safething.things.sync import SyncThing


def description(thing_id: str) -> ThingDescription:
    return ThingDescription(
        thing_id, title="Motion sensor", topics=[Topic("Motion"), Topic("NoMotion")]
    )


def start(
    thing_id: str, identity: Identity, *, store: str | None = None, pin: int = 22
) -> tuple[SyncThing, MotionSensor]:
    thing = SyncThing(description(thing_id), identity=identity, store=store)
    pir = MotionSensor(pin)
    pir.when_motion = lambda: thing.notify("Motion")
    pir.when_no_motion = lambda: thing.notify("NoMotion")
    return thing, pir


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemctl stop == Ctrl-C
    identity = Identity.load(
        os.environ.get("SAFETHING_IDENTITY", "~/.config/safething/identity.json"),
        password=os.environ.get("SAFETHING_PASSWORD"),
    )
    thing, pir = start(
        os.environ.get("THING_ID", "pir-01"), identity, pin=int(os.environ.get("PIR_PIN", "22"))
    )
    with contextlib.suppress(KeyboardInterrupt), thing, pir:  # pir closes first
        print(f"{thing.id}: watching for motion; Ctrl-C to stop", flush=True)
        signal.pause()


if __name__ == "__main__":
    main()
