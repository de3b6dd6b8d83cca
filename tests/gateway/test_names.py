"""Class names are unique across the gateway package (two ``MqttBridge`` and two
``ConfigError`` once meant two different things), and the gateway has one MQTT client
module (mqtt_client): no production module drives paho-mqtt."""

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


def test_no_production_module_drives_paho() -> None:
    """The gateway speaks MQTT through mqtt_client (its own MQTT 3.1.1 code since issue
    14): no production module imports paho-mqtt. The load generators of ``bench/`` and
    the login probe of ``testing.py`` drive paho directly on purpose."""
    users = []
    for path in _modules():
        if path.relative_to(PACKAGE).parts[0] in ("bench", "testing.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "paho" or name.startswith("paho.") for name in names):
                users.append(path.relative_to(PACKAGE).as_posix())
    assert users == []
