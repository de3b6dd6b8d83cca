"""Transports between devices and the gateway, one module per protocol."""

from safething_gateway.bridges.mqtt import MqttBridge

__all__ = ["MqttBridge"]
