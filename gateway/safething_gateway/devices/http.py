"""Deprecated: now :mod:`safething_gateway.device_clients.http`."""

import warnings

from safething_gateway.device_clients.http import GatewayHttpError, HttpDevice

warnings.warn(
    "safething_gateway.devices.http is now safething_gateway.device_clients.http",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["GatewayHttpError", "HttpDevice"]
