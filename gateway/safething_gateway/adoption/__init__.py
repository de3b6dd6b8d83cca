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

All three are :class:`MqttBridge` s (``client``: one paho client feeding one
worker task); the adopters build on :class:`MqttAdopter` (``base``:
registering adopted devices, rebuilding their things once announcements
settle).
"""

from safething_gateway.adoption.base import BROKER_AUTHENTICATED, AdoptedDevice, MqttAdopter
from safething_gateway.adoption.client import BrokerUnavailableError, MqttBridge
from safething_gateway.adoption.homeassistant import (
    ConfigError,
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
    "ConfigError",
    "HomeAssistantAdopter",
    "HomeAssistantPublisher",
    "HomieAdopter",
    "MqttAdopter",
    "MqttBridge",
    "TemplateError",
    "ValueTemplate",
]
