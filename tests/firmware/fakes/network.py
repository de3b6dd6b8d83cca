"""A fake ``network`` module: the ESP8266's Wi-Fi, which joins any network at once.

Like the ESP8266 SDK, ``connect()`` stores the network in flash (``_hw_wifi``,
reported as ``{"hw": "wifi", "event": "connect", "ssid": ...}``) and an active
station joins the stored network by itself at the next start, so a test can
see that ``boot.py`` writes the credentials only once. The station's address
is 127.0.0.1: the gateway runs on this machine.
"""

from __future__ import annotations

from typing import Any

import _hw

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = 2
STAT_NO_AP_FOUND = 3
STAT_CONNECT_FAIL = 4
STAT_GOT_IP = 5
AUTH_OPEN = 0
AUTH_WPA2_PSK = 3

_active = {STA_IF: False, AP_IF: True}  # the ESP8266 starts with its access point on
_joined = False


def _stored() -> str:
    return _hw.read("wifi") or ""


class WLAN:
    def __init__(self, interface_id: int = STA_IF) -> None:
        self.interface = interface_id

    def active(self, is_active: bool | None = None) -> bool | None:
        global _joined
        if is_active is None:
            return _active[self.interface]
        _active[self.interface] = bool(is_active)
        if self.interface == STA_IF:
            _joined = bool(is_active) and bool(_stored())  # auto-connect to the stored network
        _hw.emit("wifi", event="active", interface=self.interface, value=bool(is_active))
        return None

    def connect(self, ssid: str | None = None, key: str | None = None, **kw: Any) -> None:
        global _joined
        if self.interface != STA_IF or not _active[STA_IF]:
            raise OSError("STA must be active")
        if ssid is not None:
            _hw.write("wifi", ssid)  # the SDK writes the credentials to flash
        _joined = bool(_stored())
        _hw.emit("wifi", event="connect", ssid=ssid)

    def disconnect(self) -> None:
        global _joined
        _joined = False

    def isconnected(self) -> bool:
        if self.interface == AP_IF:
            return False
        return _active[STA_IF] and _joined

    def status(self, param: str | None = None) -> Any:
        if param == "rssi":
            return -55
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self, config: tuple[str, str, str, str] | None = None) -> Any:
        if config is None:
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return None

    def config(self, *args: str, **kw: Any) -> Any:
        if kw:
            return None
        (name,) = args
        if name in ("essid", "ssid"):
            return _stored() if self.interface == STA_IF else "MicroPython-5afe7e"
        if name == "mac":
            return b"\x5c\xcf\x7f\x5a\xfe\x7e"
        if name == "hostname":
            return "espressif"
        raise ValueError("unknown config param")

    def scan(self) -> list[tuple[bytes, bytes, int, int, int, int]]:
        ssid = _stored()
        return (
            [(ssid.encode(), b"\x00\x11\x22\x33\x44\x55", 6, -55, AUTH_WPA2_PSK, 0)] if ssid else []
        )
