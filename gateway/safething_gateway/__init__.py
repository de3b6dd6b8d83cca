"""The SAFEthing gateway for the Raspberry Pi: MQTT, CoAP and REST bridges (in progress)."""

__all__: list[str] = []
