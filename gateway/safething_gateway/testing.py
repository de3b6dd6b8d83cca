"""Real servers for tests and demos: a Mosquitto broker on a free loopback port.

Shipped in the package (as gpiozero ships its mock pins) so users can test
their own devices and bridges the way SAFEthing tests its own. Production
modules never import this one.
"""

from safething_gateway.broker import Mosquitto, free_port, mosquitto

__all__ = ["Mosquitto", "free_port", "mosquitto"]
