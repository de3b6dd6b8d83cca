"""Runnable demos: the gardening device and controller of the seed, the data network."""

from safething.demo.garden import (
    GardenDemo,
    Soil,
    controller_description,
    device_description,
    garden_ids,
)
from safething.demo.network import run_network_demo

__all__ = [
    "GardenDemo",
    "Soil",
    "controller_description",
    "device_description",
    "garden_ids",
    "run_network_demo",
]
