# boot.py -- runs at every start, before main.py: Wi-Fi from config.json.
# Joins the network in the provisioning file (`safething provision ... --wifi-ssid`),
# waiting longer after each failed try (0.5 s, 1 s, 2 s ... up to 8 s between
# checks, about 30 s in all), then gives up and lets main.py run: readings are
# buffered and sent once the network is back. The ESP8266 keeps retrying the
# access point by itself afterwards. connect() is only called when the stored
# network differs: the SDK writes the credentials to flash on every connect().
import gc

import network
import time


def wifi(ssid, password, tries=7):
    ap = network.WLAN(network.AP_IF)
    if ap.active():
        ap.active(False)  # the access point costs RAM and power
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if sta.config("essid") != ssid:
        sta.connect(ssid, password)
    wait = 500
    for i in range(tries):
        for _ in range(wait // 100):
            if sta.isconnected():
                return True
            time.sleep_ms(100)
        if i == 2:  # not even the stored network: connect again
            sta.connect(ssid, password)
        wait = min(wait * 2, 8000)
    return sta.isconnected()


try:
    import json

    with open("config.json") as f:
        w = json.load(f).get("wifi") or {}
    if w.get("ssid"):
        print("wifi:", "connected" if wifi(w["ssid"], w.get("password", "")) else "not yet")
    del w
except (OSError, ValueError) as e:
    print("boot: no usable config.json:", e)
gc.collect()
