"""A DS18B20 1-Wire thermometer as a SAFEthing: its temperature, every INTERVAL seconds.

Wiring (BCM numbers): DS18B20 VDD to 3V3, GND to GND, DQ (data) to GPIO4,
and a 4.7 kohm resistor between DQ and 3V3. Turn 1-Wire on and reboot:
``sudo raspi-config nonint do_onewire 0 && sudo reboot``.

The kernel shows each sensor as ``/sys/bus/w1/devices/28-*/temperature``, a
file holding millidegrees Celsius: the very format of the CPU's thermal file,
so gpiozero's ``CPUTemperature(sensor_file=...)`` reads it.

Run: ``python temperature.py``. Settings (environment): SAFETHING_STORE,
SAFETHING_IDENTITY, THING_ID (thermometer-01), W1_SENSOR (the glob above),
INTERVAL (30 seconds).
"""

import contextlib
import glob
import os
import signal
from time import sleep

from gpiozero import CPUTemperature

from safething.net import Identity
from safething.things import Attribute, ThingDescription
from safething.things.sync import SyncThing

SENSORS = "/sys/bus/w1/devices/28-*/temperature"


def description(thing_id: str) -> ThingDescription:
    celsius = Attribute("temperature", "number", unit="°C", minimum=-55, maximum=125, dynamic=True)
    return ThingDescription(thing_id, title="Thermometer", attributes=[celsius])


def start(
    thing_id: str, identity: Identity, *, store: str | None = None, sensor: str = SENSORS
) -> tuple[SyncThing, CPUTemperature]:
    files = sorted(glob.glob(sensor))
    if not files:
        raise SystemExit(f"no DS18B20 at {sensor}: is 1-Wire on and the sensor wired?")
    thermometer = CPUTemperature(sensor_file=files[0], min_temp=-55, max_temp=125)
    return SyncThing(description(thing_id), identity=identity, store=store), thermometer


def publish(thing: SyncThing, thermometer: CPUTemperature) -> float:
    celsius = round(float(thermometer.temperature), 2)
    thing.set("temperature", celsius)
    return celsius


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemctl stop == Ctrl-C
    identity = Identity.load(
        os.environ.get("SAFETHING_IDENTITY", "~/.config/safething/identity.json"),
        password=os.environ.get("SAFETHING_PASSWORD"),
    )
    thing, thermometer = start(
        os.environ.get("THING_ID", "thermometer-01"),
        identity,
        sensor=os.environ.get("W1_SENSOR", SENSORS),
    )
    with contextlib.suppress(KeyboardInterrupt), thermometer, thing:
        print(f"{thing.id}: reading {thermometer.sensor_file}; Ctrl-C to stop", flush=True)
        while True:
            publish(thing, thermometer)
            sleep(float(os.environ.get("INTERVAL", "30")))


if __name__ == "__main__":
    main()
