"""Names that say what each thing is; moved names keep working, with a warning."""

from __future__ import annotations

import ast
import importlib
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway" / "safething_gateway"

MOVED = [
    # (old module, name, new module)
    ("safething_gateway.devices", "DeviceLink", "safething_gateway.device_clients"),
    ("safething_gateway.devices.base", "DeviceLink", "safething_gateway.device_clients.base"),
    ("safething_gateway.devices.mqtt", "MqttDevice", "safething_gateway.device_clients.mqtt"),
    ("safething_gateway.devices.coap", "CoapDevice", "safething_gateway.device_clients.coap"),
    ("safething_gateway.devices.http", "HttpDevice", "safething_gateway.device_clients.http"),
    ("safething.store.registry", "open_store", "safething.store.urls"),
    ("safething.things.consumer", "ThingClient", "safething.things.client"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED, ids=lambda v: str(v))
def test_a_moved_name_still_imports_with_a_deprecation_warning(
    old: str, name: str, new: str
) -> None:
    for module in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        del sys.modules[module]
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_class_names_are_unique_across_the_gateway_package() -> None:
    """Public classes: two ``MqttBridge`` or two ``ConfigError`` confuse every reader."""
    defined: Counter[str] = Counter()
    where: dict[str, list[str]] = {}
    for path in GATEWAY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                defined[node.name] += 1
                where.setdefault(node.name, []).append(str(path.relative_to(GATEWAY)))
    twice = {name: where[name] for name, n in defined.items() if n > 1}
    assert not twice, twice


def test_the_gateway_package_exports_its_public_api() -> None:
    import safething_gateway

    assert "(in progress)" not in (safething_gateway.__doc__ or "")
    for name in safething_gateway.__all__:
        assert getattr(safething_gateway, name) is not None, name
    from safething_gateway.core import Gateway

    assert safething_gateway.Gateway is Gateway


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("safething.net.client", "MutableData", "safething.net.mutable"),
        ("safething.net.client", "EntryWatch", "safething.net.mutable"),
        ("safething.net.mutable", "MDHeader", "safething.net.records"),
        ("safething.net.mutable", "EntryRecord", "safething.net.records"),
    ],
)
def test_a_moved_attribute_still_resolves_with_a_deprecation_warning(
    old: str, name: str, new: str
) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{new}.{name}".replace(".", r"\.")):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
