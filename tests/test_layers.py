"""The layering of docs/architecture.md holds in the code: no arrow runs upward.

Read off every module's imports (including those inside functions), so a
lazy import counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "safething": ROOT / "safething",
    "safething_gateway": ROOT / "gateway" / "safething_gateway",
}

FORBIDDEN: list[tuple[str, str, tuple[str, ...]]] = [
    # (modules under this prefix, must not import this prefix, except these importers)
    ("safething", "safething_gateway", ("safething.cli",)),
    ("safething", "safething.cli", ("safething.cli", "safething.__main__")),
    ("safething_gateway", "safething.cli", ()),
    ("safething", "safething.demo", ("safething.demo", "safething.cli")),
    ("safething", "safething.bench", ("safething.bench", "safething.cli.bench")),
    ("safething.net", "safething.things", ()),
    ("safething.store", "safething.things", ()),
    ("safething.store", "safething.net", ()),
    ("safething.things", "safething.store.", ()),
    # test helpers are for tests, demos and benchmarks, never for production modules
    (
        "safething_gateway",
        "safething_gateway.testing",
        ("safething_gateway.bench", "safething_gateway.console.testing"),
    ),
]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _under(name: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


MODULES = _modules()


@pytest.mark.parametrize(("importer", "target", "allowed"), FORBIDDEN, ids=lambda v: str(v))
def test_no_import_runs_upward(importer: str, target: str, allowed: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if _under(name, importer) and not any(_under(name, a) for a in allowed)
        for imported in _imports(name, path)
        if _under(imported, target) and imported in MODULES
    )
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_lazy_import() -> None:
    """The rule above is not vacuous: the CLI's lazy import of the gateway is found."""
    imported = _imports("safething.cli.gateway", MODULES["safething.cli.gateway"])
    assert "safething_gateway.config" in imported
