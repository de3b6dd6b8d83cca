"""Deprecated: now :mod:`safething_gateway.device_clients.coap`."""

import warnings

from safething_gateway.device_clients.coap import CoapDevice, CoapDeviceError

warnings.warn(
    "safething_gateway.devices.coap is now safething_gateway.device_clients.coap",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["CoapDevice", "CoapDeviceError"]
