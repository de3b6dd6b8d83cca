"""Adopting existing MQTT devices, and showing SAFEthings to Home Assistant.

* :class:`HomeAssistantAdopter` - devices announced with Home Assistant MQTT
  discovery (Tasmota, Zigbee2MQTT, ESPHome...) become custodial things
  ``ha-<identifier>``;
* :class:`HomieAdopter` - devices following the Homie convention (v4, v5)
  become custodial things ``homie-<device>``;
* :class:`HomeAssistantPublisher` - the gateway's things appear in Home
  Assistant through device-based MQTT discovery.

Adopted devices cannot sign: their registry records carry
``"broker_authenticated": true`` and their descriptions
:data:`BROKER_AUTHENTICATED`.

All three are :class:`MqttAdapter` s (``client``: on the gateway's one MQTT
connection per broker login, feeding one worker task); the adopters build on
:class:`MqttAdopter` (``base``: registering adopted devices, rebuilding their
things once announcements settle).
"""

from typing import Any

from safething_gateway.adoption.base import BROKER_AUTHENTICATED, AdoptedDevice, MqttAdopter
from safething_gateway.adoption.client import BrokerUnavailableError, MqttAdapter
from safething_gateway.adoption.homeassistant import (
    DiscoveryConfigError,
    HomeAssistantAdopter,
    TemplateError,
    ValueTemplate,
)
from safething_gateway.adoption.homie import HomieAdopter
from safething_gateway.adoption.publish import HomeAssistantPublisher

__all__ = [
    "BROKER_AUTHENTICATED",
    "AdoptedDevice",
    "BrokerUnavailableError",
    "DiscoveryConfigError",
    "HomeAssistantAdopter",
    "HomeAssistantPublisher",
    "HomieAdopter",
    "MqttAdapter",
    "MqttAdopter",
    "TemplateError",
    "ValueTemplate",
]


def __getattr__(name: str) -> Any:
    """Old names, with a warning: class names are unique across the gateway package."""
    import warnings

    renamed = {"ConfigError": DiscoveryConfigError, "MqttBridge": MqttAdapter}
    if name in renamed:
        new = renamed[name]
        warnings.warn(f"{__name__}.{name} is now {new.__name__}", DeprecationWarning, stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
