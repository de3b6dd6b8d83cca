"""Each extra installs what its modules import.

One wheel of this checkout, then one fresh virtual environment per extra
(``pip install 'safething-*.whl[extra]'``, nothing else) in which every module
that extra ships is imported. A module belongs to the core unless it sits
under a prefix of :data:`OWNERS`. pip's own cache keeps the downloads
to the first run; each environment costs some seconds (marker ``extras``,
run by CI, about a minute; ``pytest -m 'not extras'`` leaves it out).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "safething": ROOT / "safething",
    "safething_gateway": ROOT / "gateway" / "safething_gateway",
}

OWNERS = {
    "safething_gateway": "gateway",
    "safething_gateway.console": "console",
    "safething.store.nats": "nats",
    "safething.store.nats_testing": "nats",
}
"""Module prefix -> the extra that must be installed to import it."""

EXTRAS = ["", "gateway", "pi", "console", "nats"]
"""The core alone, then every extra of ``pyproject.toml`` but ``dev``."""

pytestmark = pytest.mark.extras


def shipped_modules() -> dict[str, str]:
    """Every module of the wheel -> the extra it needs (``""``: the core)."""
    modules: dict[str, str] = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            if parts[-1] == "__main__":
                continue  # running, not importing, is what it is for
            name = ".".join(parts)
            owner = max(
                (p for p in OWNERS if name == p or name.startswith(p + ".")),
                key=len,
                default=None,
            )
            modules[name] = OWNERS[owner] if owner else ""
    return modules


def test_every_module_has_an_owner_that_is_an_extra() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(OWNERS.values()) <= set(declared)
    assert set(EXTRAS) - {""} == set(declared) - {"dev"}
    assert "safething_gateway.core" in shipped_modules()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("safething-*.whl")
    return built


@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: e or "core")
def test_extra_alone_imports_every_module_it_ships(extra: str, wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    requirement = f"{wheel}[{extra}]" if extra else str(wheel)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
        check=True,
        timeout=900,
        env=environ,
    )
    wanted = sorted(m for m, owner in shipped_modules().items() if owner in ("", extra))
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    # Run from an empty directory so the checkout itself is not on sys.path.
    done = subprocess.run(
        [str(python), "-c", script, *wanted],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ,
        timeout=300,
    )
    assert done.returncode == 0, f"safething[{extra}] cannot import:\n{done.stdout}{done.stderr}"
    # Without the gateway extra, the gateway's modules do not import: the split is real.
    if extra == "":
        others = sorted(m for m, owner in shipped_modules().items() if owner == "gateway")
        failed = subprocess.run(
            [str(python), "-c", script, *others],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environ,
            timeout=300,
        )
        assert failed.returncode != 0
        assert "ModuleNotFoundError: No module named" in failed.stdout
