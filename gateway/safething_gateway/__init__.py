"""The SAFEthing gateway: every bridged device becomes a custodial SAFEthing.

The public API, imported on first use (so ``pip install safething[console]``
alone can still import the console without the bridges' libraries)::

    from safething_gateway import Gateway, MqttBridge, Registry

The test site (a broker with logins, gateways on free ports) is
:mod:`safething_gateway.testing`; the reference device clients are
:mod:`safething_gateway.device_clients`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safething_gateway.app import GatewayApp, serve
    from safething_gateway.bridges.coap import CoapBridge
    from safething_gateway.bridges.http import HttpBridge
    from safething_gateway.bridges.mqtt import MqttBridge
    from safething_gateway.config import GatewayConfig, load_config
    from safething_gateway.core import Bridge, DeviceActionError, Gateway, Health
    from safething_gateway.protocol import ProtocolError
    from safething_gateway.registry import DeviceRecord, Registry
    from safething_gateway.replies import Reply, reply_for

__all__ = [
    "Bridge",
    "CoapBridge",
    "DeviceActionError",
    "DeviceRecord",
    "Gateway",
    "GatewayApp",
    "GatewayConfig",
    "Health",
    "HttpBridge",
    "MqttBridge",
    "ProtocolError",
    "Registry",
    "Reply",
    "load_config",
    "reply_for",
    "serve",
]

_HOMES = {
    "Bridge": "core",
    "CoapBridge": "bridges.coap",
    "DeviceActionError": "core",
    "DeviceRecord": "registry",
    "Gateway": "core",
    "GatewayApp": "app",
    "GatewayConfig": "config",
    "Health": "core",
    "HttpBridge": "bridges.http",
    "MqttBridge": "bridges.mqtt",
    "ProtocolError": "protocol",
    "Registry": "registry",
    "Reply": "replies",
    "load_config": "config",
    "reply_for": "replies",
    "serve": "app",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
