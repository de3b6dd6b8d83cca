"""A device's configuration file (and its QR code): where the gateway is, the device's secret.

Used by ``safething provision`` and by the console's Provision page, so both
write the same document (format ``safething-device``, version 1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["DeviceEndpoints", "device_config", "qr_svg"]


@dataclass(frozen=True, slots=True)
class DeviceEndpoints:
    """Where devices reach this gateway, per transport."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_prefix: str = "st/v1"
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    http_url: str = "http://127.0.0.1:8080"

    @classmethod
    def from_config(cls, config: Any, host: str | None = None) -> DeviceEndpoints:
        """From a :class:`~safething_gateway.config.GatewayConfig`; ``host`` replaces each host."""
        http_host = host or config.http.bind
        http_name = f"[{http_host}]" if ":" in http_host else http_host
        return cls(
            host or config.mqtt.host,
            config.mqtt.port,
            config.mqtt.prefix,
            host or config.coap.bind,
            config.coap.port,
            f"http://{http_name}:{config.http.port}",
        )


def device_config(
    endpoints: DeviceEndpoints,
    device_id: str,
    transport: str,
    secret: bytes,
    *,
    wifi: dict[str, str] | None = None,
    mqtt_login: dict[str, str] | None = None,
    console_tls: str = "",
    protocol: int = 2,
) -> dict[str, Any]:
    """The device's ``config.json``; ``protocol``: the device link version (``ST2``);
    ``console_tls``: the console certificate's SHA-256."""
    doc: dict[str, Any] = {
        "format": "safething-device",
        "version": 1,
        "device_id": device_id,
        "secret": secret.hex(),
        "link": f"ST{protocol}",
        "transport": transport,
        "wifi": wifi if wifi is not None else {"ssid": "", "password": ""},
    }
    if transport == "mqtt":
        doc["mqtt"] = {
            "host": endpoints.mqtt_host,
            "port": endpoints.mqtt_port,
            "prefix": endpoints.mqtt_prefix,
            **(mqtt_login or {}),
        }
    elif transport == "coap":
        doc["coap"] = {"host": endpoints.coap_host, "port": endpoints.coap_port}
    elif transport == "http":
        doc["http"] = {"url": endpoints.http_url}
    else:
        raise ValueError(f"unknown transport {transport!r}: use mqtt, coap or http")
    if console_tls:
        doc["console_tls_sha256"] = console_tls
    return doc


def qr_svg(doc: dict[str, Any]) -> str:
    """The config as a QR code, an ``<svg>`` element to put inline in a page."""
    import segno

    qr = segno.make(json.dumps(doc, separators=(",", ":")), error="l")
    return str(qr.svg_inline(scale=4, border=4, dark="#000", light="#fff", omitsize=False))
