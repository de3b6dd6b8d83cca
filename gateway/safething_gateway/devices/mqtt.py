"""Deprecated: now :mod:`safething_gateway.device_clients.mqtt`."""

import warnings

from safething_gateway.device_clients.mqtt import MqttDevice

warnings.warn(
    "safething_gateway.devices.mqtt is now safething_gateway.device_clients.mqtt",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["MqttDevice"]
