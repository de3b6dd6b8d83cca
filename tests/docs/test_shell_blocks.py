"""Every shell block in README.md, docs/*.md and firmware/README.md runs here as written,
unless the doc marks it, on the line before, with ``<!-- doc-test: skip (reason) -->``
(flashing a board, sudo on a Pi, a command that runs until Ctrl-C). The skip is then
reported with its reason: blocks are left out by rule, never silently.

A block runs in bash (``-e -o pipefail``) with an empty HOME, in an empty directory that
holds only a link to the checkout's ``.venv`` (``source .venv/bin/activate`` works, and
what a block writes never lands in the checkout), seeing nothing of the user.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "firmware" / "README.md"]
FENCE = re.compile(r"^(\s*)```(sh|bash|shell|console)\s*$")
MARK = re.compile(r"^\s*<!-- doc-test: skip \((.+)\) -->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found: list[Block] = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = FENCE.match(lines[i])
            if fence is None:
                i += 1
                continue
            indent = len(fence[1])
            body: list[str] = []
            j = i + 1
            while not lines[j].strip().startswith("```"):
                body.append(lines[j][indent:])
                j += 1
            mark = MARK.match(lines[i - 1]) if i > 0 else None
            found.append(Block(path, i + 1, "\n".join(body) + "\n", mark[1] if mark else None))
            i = j + 1
    return found


ALL = blocks()


def test_the_docs_have_shell_blocks_and_every_skip_names_a_reason() -> None:
    assert len(ALL) >= 20
    assert [b for b in ALL if b.skip is None], "no block runs at all"
    for block in ALL:
        if block.skip is not None:
            assert len(block.skip) > 10, block.name
            for test in re.findall(r"tests/[\w/]+\.py", block.skip):
                assert (ROOT / test).is_file(), f"{block.name}: {test} does not exist"


@pytest.mark.parametrize("block", ALL, ids=[b.name for b in ALL])
def test_shell_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    if block.skip is not None:
        pytest.skip(f"marked in the doc: {block.skip}")
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv in the checkout (./scripts/test makes it)")
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFETHING_", "XDG_"))}
    env.pop("VIRTUAL_ENV", None)
    env["HOME"] = str(home)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.code],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard only: a block that runs longer needs a skip mark
    )
    assert result.returncode == 0, (
        f"{block.name} failed ({result.returncode}):\n{block.code}\n"
        f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    )
    assert "Traceback" not in result.stderr, result.stderr
