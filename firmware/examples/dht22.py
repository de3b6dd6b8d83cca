# A sleepy temperature and humidity sensor: a DHT22 (AM2302) on GPIO4 (D2).
# Wakes every 10 minutes, measures, sends, fetches what waits, sleeps again;
# readings taken while the gateway is unreachable wait on flash for the next
# wake. Wiring: DHT22 VCC to 3V3, GND to GND, DATA to GPIO4 with a 10 kOhm
# pull-up to 3V3; GPIO16 (D0) to RST so that the RTC can wake the board.
# Copy it to the board as main.py.
import dht
import machine

from safething.device import Device
from safething.port import config

PERIOD = 600000  # ms between wakes
sensor = dht.DHT22(machine.Pin(4))


def read():
    sensor.measure()  # OSError if the sensor does not answer: retried next wake
    return {"temperature": sensor.temperature(), "humidity": sensor.humidity()}


device = Device(
    config(),
    {
        "title": "Temperature and humidity",
        "attributes": [
            {"name": "temperature", "type": "number", "unit": "Cel", "minimum": -40,
             "maximum": 80, "dynamic": True},
            {"name": "humidity", "type": "number", "unit": "%", "minimum": 0, "maximum": 100,
             "dynamic": True},
            {"name": "model", "type": "string", "value": "DHT22"},
        ],
    },
)
device.cycle(read, PERIOD)
