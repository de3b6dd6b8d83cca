"""Mutation testing of the security-critical modules with Cosmic Ray (run by scripts/mutation).

Each module is mutated, one mutant at a time, in a private copy of the working tree
(never in the tree itself), and only the tests that guard it are run against each
mutant. A mutant the tests do not notice "survives": either a test is missing or the
mutant is harmless; docs/security.md lists the survivors and why each is harmless.

    scripts/mutation                      every module below (slow: about an hour)
    scripts/mutation safething/net/keys.py gateway/safething_gateway/protocol.py
    scripts/mutation --list               the modules and the tests run against each

Sessions (SQLite, one per module) are kept in .mutation/ for ``cr-report`` and
``cr-html``; the summary is printed at the end and written to .mutation/summary.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".mutation"

# module -> the tests that guard it (only those run against each of its mutants)
NET = ["tests/net"]
THINGS = ["tests/things/test_thing.py", "tests/things/test_store_attacker.py"]
GATEWAY_CORE = [
    "tests/gateway/test_core.py",
    "tests/gateway/test_device_link.py",
    "tests/gateway/test_store_outage.py",
]
TARGETS: dict[str, list[str]] = {
    "safething/net/mutable.py": NET,
    "safething/net/keys.py": NET,
    "safething/net/permissions.py": NET,
    "safething/net/identity.py": NET,
    "safething/net/immutable.py": NET,
    "safething/net/client.py": NET,
    "safething/things/access.py": THINGS,
    "safething/things/thing.py": THINGS,
    "gateway/safething_gateway/protocol.py": GATEWAY_CORE,
    "gateway/safething_gateway/registry.py": GATEWAY_CORE,
    "gateway/safething_gateway/core.py": GATEWAY_CORE,
}

PYTEST = "python -m pytest -x -q -p no:cacheprovider -p no:randomly"


def _copy_tree(dest: Path) -> None:
    """The working tree as it is now (tracked and untracked, not ignored files)."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        src = ROOT / raw.decode()
        if not src.is_file():
            continue
        target = dest / raw.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _config(module: str, tests: list[str], timeout: float) -> str:
    return (
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(PYTEST + ' ' + ' '.join(tests))}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _outcomes(session: Path) -> dict[str, int]:
    db = sqlite3.connect(session)
    try:
        total = db.execute("SELECT COUNT(*) FROM work_items").fetchone()[0]
        rows = db.execute(
            "SELECT worker_outcome, test_outcome, COUNT(*) FROM work_results "
            "GROUP BY worker_outcome, test_outcome"
        ).fetchall()
    finally:
        db.close()
    counts = {"mutants": total, "killed": 0, "survived": 0, "other": 0}
    for worker, test, n in rows:
        worker, test = str(worker).lower(), str(test).lower()
        if worker == "normal" and test in ("killed", "incompetent"):
            counts["killed"] += n  # a failing test, a timeout, or a mutant that cannot run
        elif worker == "normal" and test == "survived":
            counts["survived"] += n
        elif worker == "abnormal":
            counts["killed"] += n  # the tests crashed
        else:
            counts["other"] += n  # skipped, or Cosmic Ray itself failed: look at the session
    return counts


def _run(module: str, tests: list[str], work: Path, env: dict[str, str], timeout: float) -> None:
    name = module.replace("/", ".").removesuffix(".py")
    config = OUT / f"{name}.toml"
    session = OUT / f"{name}.sqlite"
    config.write_text(_config(module, tests, timeout))
    session.unlink(missing_ok=True)
    bin_dir = Path(sys.executable).parent
    started = time.monotonic()
    subprocess.run([bin_dir / "cosmic-ray", "init", config, session], cwd=work, env=env, check=True)
    baseline = subprocess.run(
        [*PYTEST.split(), *tests], cwd=work, env=env, capture_output=True, text=True
    )
    if baseline.returncode != 0:
        sys.exit(f"{module}: its tests fail without any mutant:\n{baseline.stdout[-3000:]}")
    subprocess.run([bin_dir / "cosmic-ray", "exec", config, session], cwd=work, env=env, check=True)
    counts = _outcomes(session)
    seconds = time.monotonic() - started
    done = counts["killed"]
    score = 100.0 * done / max(1, counts["mutants"])
    line = (
        f"{module:45s} {counts['mutants']:5d} mutants  {done:5d} killed  "
        f"{counts['survived']:4d} survived  {counts['other']:3d} other  "
        f"score {score:5.1f}%  ({seconds / 60:.1f} min)"
    )
    print(line, flush=True)
    with (OUT / "summary.txt").open("a") as f:
        f.write(line + "\n")
    report = subprocess.run(
        [bin_dir / "cr-report", "--surviving-only", "--show-diff", session],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    (OUT / f"{name}.survivors.txt").write_text(report.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of them)")
    parser.add_argument("--list", action="store_true", help="show the modules and their tests")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant's tests")
    args = parser.parse_args()
    if args.list:
        for module, tests in TARGETS.items():
            print(f"{module:45s} {' '.join(tests)}")
        return
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        sys.exit(f"not a mutation target: {', '.join(unknown)} (see --list)")
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="safething-mutation-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        env = dict(os.environ)
        # the copy's code, not the editable install's (subprocesses of the tests too)
        env["PYTHONPATH"] = os.pathsep.join([str(work), str(work / "gateway")])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        for module in args.modules or list(TARGETS):
            _run(module, TARGETS[module], work, env, args.timeout)
    print(f"sessions in {OUT}; survivors with their diffs in {OUT}/*.survivors.txt")


if __name__ == "__main__":
    main()
