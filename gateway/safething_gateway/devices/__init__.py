"""Deprecated: the reference device clients are :mod:`safething_gateway.device_clients`.

This package keeps ``safething_gateway.devices.*`` imports working for now,
with a :class:`DeprecationWarning`.
"""

import warnings

from safething_gateway.device_clients.base import DeviceLink

warnings.warn(
    "safething_gateway.devices is now safething_gateway.device_clients",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["DeviceLink"]
