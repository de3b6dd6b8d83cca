"""An LED, or a relay, as a SAFEthing: TurnOn, TurnOff and Blink, and its state.

Wiring (BCM numbers): LED long leg (anode) to GPIO27 through a 330 ohm
resistor, short leg to GND. A relay module instead: IN to GPIO27, VCC to 5V,
GND to GND; for a module that switches on a *low* input set LED_ACTIVE_HIGH=0.

Try it: ``safething thing request led-01 Blink on_time=0.2 off_time=0.8``.

Run: ``python led_relay.py``. Settings (environment): SAFETHING_STORE,
SAFETHING_IDENTITY, THING_ID (led-01), LED_PIN (27), LED_ACTIVE_HIGH (1).
"""

import contextlib
import os
import signal
from collections.abc import Callable

from gpiozero import LED

from safething.net import Identity
from safething.things import Action, ActionRequest, Attribute, Param, ThingDescription
from safething.things.sync import SyncThing


def description(thing_id: str) -> ThingDescription:
    return ThingDescription(
        thing_id,
        title="LED",
        attributes=[Attribute("state", "enum", choices=["on", "off", "blinking"], dynamic=True)],
        actions=[
            Action("TurnOn", access="owner"),
            Action("TurnOff", access="owner"),
            Action(
                "Blink",
                params=[
                    Param("on_time", "number", unit="s", minimum=0.01, maximum=3600, default=1.0),
                    Param("off_time", "number", unit="s", minimum=0.01, maximum=3600, default=1.0),
                ],
                access="owner",
            ),
        ],
    )


def start(
    thing_id: str,
    identity: Identity,
    *,
    store: str | None = None,
    pin: int = 27,
    active_high: bool = True,
) -> tuple[SyncThing, LED]:
    led = LED(pin, active_high=active_high)
    thing = SyncThing(description(thing_id), identity=identity, store=store)

    def switch(state: str, do: Callable[..., None]) -> Callable[[ActionRequest], None]:
        def handler(request: ActionRequest) -> None:
            do(**request.args)  # led.blink(on_time=..., off_time=...) runs in the background
            thing.set("state", state)

        return handler

    thing.on_action("TurnOn", switch("on", led.on))
    thing.on_action("TurnOff", switch("off", led.off))
    thing.on_action("Blink", switch("blinking", led.blink))
    thing.set("state", "off")
    return thing, led


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemctl stop == Ctrl-C
    identity = Identity.load(
        os.environ.get("SAFETHING_IDENTITY", "~/.config/safething/identity.json"),
        password=os.environ.get("SAFETHING_PASSWORD"),
    )
    thing, led = start(
        os.environ.get("THING_ID", "led-01"),
        identity,
        pin=int(os.environ.get("LED_PIN", "27")),
        active_high=os.environ.get("LED_ACTIVE_HIGH", "1") != "0",
    )
    with contextlib.suppress(KeyboardInterrupt), led, thing:  # thing closes first
        print(f"{thing.id}: waiting for TurnOn, TurnOff, Blink; Ctrl-C to stop", flush=True)
        signal.pause()


if __name__ == "__main__":
    main()
