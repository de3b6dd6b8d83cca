"""Class names are unique across the gateway package (two ``MqttBridge`` and two
``ConfigError`` once meant two different things), and the gateway has one MQTT client
module: no other production module creates a paho client."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import safething_gateway

PACKAGE = Path(safething_gateway.__file__).parent


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_class_names_are_unique_across_the_gateway_package() -> None:
    names: Counter[str] = Counter()
    for path in _modules():
        tree = ast.parse(path.read_text())
        names.update(n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
    assert [name for name, count in names.items() if count > 1] == []


def test_only_the_mqtt_client_module_makes_paho_clients() -> None:
    """In production modules: the load generators of ``bench/`` and the login probe of
    ``testing.py`` drive paho directly on purpose."""
    makers = []
    for path in _modules():
        if path.relative_to(PACKAGE).parts[0] in ("bench", "testing.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Client"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "mqtt"
            ):
                makers.append(path.relative_to(PACKAGE).as_posix())
    assert sorted(set(makers)) == ["mqtt_client.py"]
