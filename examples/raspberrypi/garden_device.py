"""The gardening device of the SAFEthing seed: a soil-moisture sensor and a water valve.

Wiring (BCM numbers; turn SPI on first: ``sudo raspi-config nonint do_spi 0``):

* MCP3008: VDD and VREF to 3V3, AGND and DGND to GND, CLK to GPIO11,
  DOUT to GPIO9 (MISO), DIN to GPIO10 (MOSI), CS to GPIO8 (CE0).
* Soil-moisture sensor: VCC to 3V3, GND to GND, analogue out to MCP3008 CH0.
* Relay module: IN to GPIO17, VCC to 5V, GND to GND. The relay switches the
  valve's own supply (a 12 V solenoid valve, say), never the Pi's.

The moisture is the sensor's voltage in percent of 3.3 V. A sensor that reads
*lower* when wet (most capacitive ones) wants ``100 - ...`` in ``measure``.

Run: ``python garden_device.py``. Settings (environment): SAFETHING_STORE,
SAFETHING_IDENTITY, THING_ID (garden-device-01), MOISTURE_CHANNEL (0),
VALVE_PIN (17), INTERVAL (5 seconds).
"""

import contextlib
import os
import signal
from time import sleep

from gpiozero import MCP3008, OutputDevice

from safething.net import Identity, PublicIdentity
from safething.things import Action, ActionRequest, Attribute, Param, ThingDescription, Topic
from safething.things.sync import SyncThing

DRY_BELOW = 20.0  # % moisture: VeryDryAlarm
WET_ABOVE = 85.0  # % moisture: VeryWetAlarm


def description(thing_id: str) -> ThingDescription:
    return ThingDescription(
        thing_id,
        title="Gardening device",
        attributes=[
            Attribute("moisture", "number", unit="%", minimum=0, maximum=100, dynamic=True),
            Attribute("valve", "enum", choices=["open", "closed"], dynamic=True),
        ],
        topics=[
            Topic("VeryDryAlarm", "number", unit="%"),
            Topic("VeryWetAlarm", "number", unit="%"),
        ],
        actions=[  # only the owner (and this thing's own identity) may water the garden
            Action(
                "OpenValve",
                params=[Param("psi", "number", minimum=0, maximum=100, default=30)],
                access="owner",
            ),
            Action("CloseValve", access="owner"),
        ],
    )


def start(
    thing_id: str,
    identity: Identity,
    *,
    owner: PublicIdentity | None = None,  # may water the garden too (default: identity itself)
    store: str | None = None,
    channel: int = 0,
    valve_pin: int = 17,
) -> tuple[SyncThing, MCP3008, OutputDevice]:
    sensor, valve = MCP3008(channel=channel), OutputDevice(valve_pin)  # the valve starts closed
    thing = SyncThing(description(thing_id), identity=identity, owner=owner, store=store)

    def open_valve(request: ActionRequest) -> None:
        valve.on()  # a relay cannot set the pressure: psi is only recorded in the request
        thing.set("valve", "open")

    def close_valve(request: ActionRequest) -> None:
        valve.off()
        thing.set("valve", "closed")

    thing.on_action("OpenValve", open_valve)
    thing.on_action("CloseValve", close_valve)
    thing.set("valve", "closed")
    return thing, sensor, valve


def measure(thing: SyncThing, sensor: MCP3008) -> float:
    """Publish one reading; while the soil is very dry or very wet, raise that alarm too."""
    moisture = round(float(sensor.value) * 100, 1)
    thing.set("moisture", moisture)
    if moisture < DRY_BELOW:
        thing.notify("VeryDryAlarm", moisture)
    elif moisture > WET_ABOVE:
        thing.notify("VeryWetAlarm", moisture)
    return moisture


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemctl stop == Ctrl-C
    identity = Identity.load(
        os.environ.get("SAFETHING_IDENTITY", "~/.config/safething/identity.json"),
        password=os.environ.get("SAFETHING_PASSWORD"),
    )
    thing, sensor, valve = start(
        os.environ.get("THING_ID", "garden-device-01"),
        identity,
        channel=int(os.environ.get("MOISTURE_CHANNEL", "0")),
        valve_pin=int(os.environ.get("VALVE_PIN", "17")),
    )
    with contextlib.suppress(KeyboardInterrupt), sensor, valve, thing:  # thing closes first
        print(f"{thing.id}: measuring; Ctrl-C to stop", flush=True)
        while True:
            measure(thing, sensor)
            sleep(float(os.environ.get("INTERVAL", "5")))


if __name__ == "__main__":
    main()
