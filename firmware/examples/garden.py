# The gardening device on an ESP8266: soil moisture on the ADC (A0), the water
# valve's relay on GPIO5 (D1). The same description as the Raspberry Pi's
# examples/raspberrypi/garden_device.py, so the gardening controller drives
# either: it reads `moisture`, hears VeryDryAlarm/VeryWetAlarm, and requests
# OpenValve/CloseValve. Wiring: sensor analogue out to A0 (NodeMCU boards
# divide 3.3 V down to the ADC's 1 V), relay IN to GPIO5, relay VCC to 5 V; the
# relay switches the valve's own supply. Copy it to the board as main.py.
import machine

from safething.device import Device
from safething.port import config

DRY_BELOW = 20.0  # % moisture: VeryDryAlarm
WET_ABOVE = 85.0  # % moisture: VeryWetAlarm
adc = machine.ADC(0)
valve = machine.Pin(5, machine.Pin.OUT, value=0)  # closed at start
state = {"alarm": None}  # type: dict[str, str | None]

device = Device(
    config(),
    {
        "title": "Gardening device",
        "attributes": [
            {"name": "moisture", "type": "number", "unit": "%", "minimum": 0, "maximum": 100,
             "dynamic": True},
            {"name": "valve", "type": "enum", "choices": ["open", "closed"], "dynamic": True},
        ],
        "topics": [
            {"name": "VeryDryAlarm", "type": "number", "unit": "%"},
            {"name": "VeryWetAlarm", "type": "number", "unit": "%"},
        ],
        "actions": [
            {"name": "OpenValve", "access": "owner",
             "params": [{"name": "psi", "type": "number", "minimum": 0, "maximum": 100,
                         "default": 30}]},
            {"name": "CloseValve", "access": "owner"},
        ],
    },
)


def set_valve(on):
    valve(1 if on else 0)  # a relay cannot set the pressure: psi is only recorded
    device.reading({"valve": "open" if on else "closed"})


device.on_action("OpenValve", lambda args: set_valve(True))
device.on_action("CloseValve", lambda args: set_valve(False))


def read():
    moisture = round(adc.read() * 100 / 1024, 1)  # a sensor reading lower when wet: 100 - ...
    now = "VeryDryAlarm" if moisture < DRY_BELOW else "VeryWetAlarm" if moisture > WET_ABOVE else None
    if now is not None and now != state["alarm"]:
        device.event(now, moisture)  # only when the soil *turns* very dry or very wet
    state["alarm"] = now
    return {"moisture": moisture, "valve": "open" if valve() else "closed"}


device.reading({"valve": "closed"})
device.run(read, every=5000)
