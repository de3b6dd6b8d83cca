# main.py -- an example SAFEthing device: the ADC as a light sensor and the
# on-board LED as an action. Copy config.json (from `safething provision`)
# next to it; the transport (mqtt, coap or http) comes from that file.
# For a sleepy, battery-powered device see examples/dht22.py.
import machine
import time

from safething.device import Device
from safething.port import config

adc = machine.ADC(0)
led = machine.Pin(2, machine.Pin.OUT, value=1)  # the LED of ESP-12 modules is active low


def read():
    return {"light": round(adc.read() * 100 / 1024, 1)}


def blink(args):
    n = int(args.get("times", 3))
    for _ in range(n):
        led(0)
        time.sleep_ms(200)
        led(1)
        time.sleep_ms(200)
    return n


device = Device(
    config(),
    {
        "title": "Light sensor",
        "attributes": [
            {"name": "light", "type": "number", "unit": "%", "minimum": 0, "maximum": 100,
             "dynamic": True},
            {"name": "model", "type": "string", "value": "ESP8266"},
        ],
        "actions": [
            {"name": "Blink", "params": [{"name": "times", "type": "integer", "minimum": 1,
                                          "maximum": 10, "default": 3}]},
        ],
    },
)
device.on_action("Blink", blink)
device.run(read, every=60000)
