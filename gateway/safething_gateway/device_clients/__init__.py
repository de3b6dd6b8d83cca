"""Reference devices in Python: the device side of the protocol, per transport.

Used by the tests, the demo and the benchmarks, and as a readable model for
firmware authors (the MicroPython firmware implements the same).
"""

from safething_gateway.device_clients.base import DeviceLink

__all__ = ["DeviceLink"]
