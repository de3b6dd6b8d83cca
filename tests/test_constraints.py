"""constraints.txt: every dependency pinned, the pins satisfy pyproject.toml, and this
test run uses exactly them (so what a Pi installs with ``-c constraints.txt`` is what the
suite tested). Lint and type-check tools are pinned in pyproject.toml itself."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line!r}"
            found[canonicalize_name(name)] = version
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed += extra
    return [Requirement(r) for r in listed]


def test_every_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pinned[name]}, outside {requirement}"
        )


def test_this_run_uses_the_pinned_versions() -> None:
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        assert installed == pinned[name], (
            f"{requirement.name} {installed} is installed, constraints.txt says {pinned[name]}"
        )


def test_lint_and_type_check_tools_are_pinned() -> None:
    dev = {canonicalize_name(r.name): r for r in requirements()}
    for tool in ("ruff", "mypy"):
        specs = list(dev[tool].specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{tool} is not pinned: {dev[tool]}"
