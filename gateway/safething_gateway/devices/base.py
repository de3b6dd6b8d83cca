"""Deprecated: now :mod:`safething_gateway.device_clients.base`."""

import warnings

from safething_gateway.device_clients.base import DeviceLink

warnings.warn(
    "safething_gateway.devices.base is now safething_gateway.device_clients.base",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["DeviceLink"]
