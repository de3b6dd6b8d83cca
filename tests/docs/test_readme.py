"""The README's Python blocks run as written, the thing twice (a second run carries on)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFETHING_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def run_python(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_readme_python_block_runs(tmp_path: Path) -> None:
    """Each block alone, but for one that goes on from the thing (``garden``, ``KEY``): it
    runs after it, with the default identity ``safething identity create`` makes."""
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    env = isolated_env(tmp_path)
    (thing,) = [b for b in blocks if "ThingDescription(" in b]
    cli = [sys.executable, "-m", "safething", "identity", "create"]
    subprocess.run(cli, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
    for block in blocks:
        if "garden" in block and "ThingDescription(" not in block:
            check = "\nassert thing.owner.sign_key == owner.public_sign_key\n"
            block = thing.replace("asyncio.run(main())", "") + block + check
        result = run_python(block, tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


def test_the_readme_thing_runs_twice_and_its_owner_removes_it(tmp_path: Path) -> None:
    (thing,) = [b for b in python_blocks(ROOT / "README.md") if "ThingDescription(" in b]
    env = isolated_env(tmp_path)
    for _ in range(2):
        result = run_python(thing, tmp_path, env)
        assert result.returncode == 0, result.stderr
    cli = [sys.executable, "-m", "safething"]
    shown = subprocess.run(
        [*cli, "thing", "show", "garden-01"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "12.5" in shown.stdout
    # the command the README gives to start over
    command = re.search(r"`(safething thing rm garden-01 [^`]*)`", (ROOT / "README.md").read_text())
    assert command is not None
    argv = command[1].replace("\n", " ").split()[1:]
    removed = subprocess.run(
        [*cli, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert removed.returncode == 0, removed.stderr
    assert "removed garden-01" in removed.stdout
    listed = subprocess.run(
        [*cli, "thing", "list"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "garden-01" not in listed.stdout
    # a new identity may take the id now
    (tmp_path / "garden-01.identity.json").unlink()
    result = run_python(thing, tmp_path, env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("who", ["stranger", "thing"])
def test_only_the_owner_removes_a_thing(tmp_path: Path, who: str) -> None:
    """A stranger's rm, or the thing's own when someone else owns it, is refused; nothing goes."""
    code = """
import asyncio
from safething.net import Identity
from safething.things import Thing, ThingDescription
owner = Identity.load("owner.json")
thing = Identity.generate("t")
thing.save("thing.json")
async def main():
    async with Thing(ThingDescription("pump-01"), identity=thing, owner=owner) as t:
        await t.register()
asyncio.run(main())
"""
    env = isolated_env(tmp_path)
    cli = [sys.executable, "-m", "safething"]
    for name in ("owner", "stranger"):
        subprocess.run(
            [*cli, "identity", "create", "--identity", f"{name}.json"],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
    assert run_python(code, tmp_path, env).returncode == 0
    refused = subprocess.run(
        [*cli, "thing", "rm", "pump-01", "--identity", f"{who}.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert "only the owner of thing 'pump-01' may remove it" in refused.stderr
    listed = subprocess.run([*cli, "thing", "list"], cwd=tmp_path, env=env, capture_output=True)
    assert b"pump-01" in listed.stdout
    removed = subprocess.run(
        [*cli, "thing", "rm", "pump-01", "--identity", "owner.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert removed.returncode == 0, removed.stderr
