"""Mutation testing of the security-critical modules with Cosmic Ray (run by scripts/mutation).

Each module is mutated, one mutant at a time, in a private copy of the working tree
(never in the tree itself), and only the tests that guard it are run against each
mutant. A mutant the tests do not notice "survives": either a test is missing or the
mutant is harmless; docs/security.md lists the survivors and why each is harmless.

    scripts/mutation                      every module below (slow: about an hour)
    scripts/mutation safething/net/keys.py gateway/safething_gateway/protocol.py
    scripts/mutation --list               the modules and the tests run against each
    scripts/mutation --again MODULE       only its survivors again, after adding tests

Mutants inside annotations are not run (with ``from __future__ import annotations``
Python never evaluates them). Survivors inside ``log.*()`` calls are marked "logging
only". Sessions (SQLite, one per module) are kept in .mutation/ for ``cr-report`` and
``cr-html``, with the module as it was mutated; each module's line of the summary is
appended to .mutation/summary.txt and its survivors, with their diffs, written to
.mutation/<module>.survivors.txt (``--report`` summarises the kept sessions again).
"""

from __future__ import annotations

import argparse
import ast
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
THINGS = [
    "tests/things/test_key_ring.py",
    "tests/things/test_thing.py",
    "tests/things/test_thing_authority.py",
    "tests/things/test_forged_requests.py",
    "tests/things/test_store_attacker.py",
]
GATEWAY_CORE = [
    "tests/gateway/test_core.py",
    "tests/gateway/test_device_link.py",
    "tests/gateway/test_link_vectors.py",
    "tests/gateway/test_link_versions.py",
    "tests/gateway/test_protocol_shell.py::test_the_recipe_is_the_gateways_sealing",
    "tests/gateway/test_registry.py",
    "tests/gateway/test_store_outage.py",
]
TARGETS: dict[str, list[str]] = {
    "safething/net/records.py": NET,
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


def _spans(module: Path, *, logging: bool) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where annotations are (``logging=False``) or the arguments of ``log.*()`` calls."""
    tree = ast.parse(module.read_text())
    nodes: list[ast.AST] = []
    for node in ast.walk(tree):
        if logging:
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
            ):
                nodes.append(node)
        elif isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            nodes.append(node.returns)
    return [
        ((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0))
        for n in nodes
        if hasattr(n, "lineno")
    ]


def _inside(row: int, col: int, spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
    return any(start <= (row, col) < end for start, end in spans)


def _skip_annotations(session: Path, module: Path) -> int:
    """Mark mutants of annotations as not run: with ``from __future__ import annotations``
    Python never evaluates them, so such a mutant cannot change behaviour."""
    if "from __future__ import annotations" not in module.read_text():
        return 0
    spans = _spans(module, logging=False)
    db = sqlite3.connect(session)
    try:
        rows = db.execute("SELECT job_id, start_pos_row, start_pos_col FROM mutation_specs")
        skipped = [job for job, row, col in rows.fetchall() if _inside(row, col, spans)]
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', 'annotation: never evaluated', NULL, '', ?)",
            [(job,) for job in skipped],
        )
        db.commit()
    finally:
        db.close()
    return len(skipped)


def _summary(session: Path, source: Path) -> tuple[dict[str, int], list[str]]:
    """Counts by outcome, and each surviving mutant (place, operator, diff). ``source`` is
    the module as it was mutated (kept beside the session)."""
    annotations = (
        _spans(source, logging=False)
        if "from __future__ import annotations" in source.read_text()
        else []
    )
    logging = _spans(source, logging=True)
    db = sqlite3.connect(session)
    try:
        rows = db.execute(
            "SELECT m.start_pos_row, m.start_pos_col, m.operator_name, "
            "r.worker_outcome, r.test_outcome, r.diff "
            "FROM mutation_specs m LEFT JOIN work_results r USING (job_id) "
            "ORDER BY m.start_pos_row, m.start_pos_col"
        ).fetchall()
    finally:
        db.close()
    counts = dict.fromkeys(
        ("mutants", "annotation", "killed", "survived", "logging", "pending", "error"), 0
    )
    survivors = []
    for row, col, operator, worker, test, diff in rows:
        worker, test = str(worker).lower(), str(test).lower()
        if _inside(row, col, annotations):
            counts["annotation"] += 1  # never evaluated: not a mutant of the behaviour
            continue
        counts["mutants"] += 1
        if worker == "none":
            counts["pending"] += 1
        elif (worker == "normal" and test in ("killed", "incompetent")) or worker == "abnormal":
            counts["killed"] += 1  # a failing test, a timeout, a crash, or cannot even run
        elif worker == "normal" and test == "survived":
            counts["survived"] += 1
            tag = ""
            if _inside(row, col, logging):
                counts["logging"] += 1
                tag = "  [logging only]"
            survivors.append(f"{source.name}:{row}:{col} {operator}{tag}\n{diff}")
        else:
            counts["error"] += 1  # Cosmic Ray itself failed on it: see the session
    return counts, survivors


def _report(module: str, minutes: float | None = None) -> str:
    name = module.replace("/", ".").removesuffix(".py")
    counts, survivors = _summary(OUT / f"{name}.sqlite", OUT / f"{name}.py.mutated")
    (OUT / f"{name}.survivors.txt").write_text("\n".join(survivors))
    done = counts["mutants"] - counts["pending"]
    score = 100.0 * counts["killed"] / max(1, done)
    took = f"; {minutes:.1f} min" if minutes is not None else ""
    pending = f", {counts['pending']} NOT RUN YET" if counts["pending"] else ""
    return (
        f"{module:40s} {counts['mutants']:4d} mutants {counts['killed']:4d} killed "
        f"{counts['survived']:3d} survived ({counts['logging']} in logging) "
        f"score {score:5.1f}%  [{counts['annotation']} in annotations not run"
        f"{pending}, {counts['error']} errors{took}]"
    )


def _run(
    module: str,
    tests: list[str],
    work: Path,
    env: dict[str, str],
    timeout: float,
    *,
    again: bool = False,
) -> None:
    name = module.replace("/", ".").removesuffix(".py")
    config = OUT / f"{name}.toml"
    session = OUT / f"{name}.sqlite"
    kept = OUT / f"{name}.py.mutated"
    config.write_text(_config(module, tests, timeout))
    bin_dir = Path(sys.executable).parent
    started = time.monotonic()
    if again:
        # Only the survivors run again: the module is unchanged and tests were only added,
        # so a mutant killed before is still killed.
        if not (session.exists() and kept.exists()):
            sys.exit(f"{module}: no kept session to run again; run it in full first")
        if kept.read_bytes() != (work / module).read_bytes():
            sys.exit(f"{module} changed since its session: run it in full")
        db = sqlite3.connect(session)
        with db:
            db.execute(
                "DELETE FROM work_results WHERE worker_outcome = 'NORMAL' "
                "AND test_outcome = 'SURVIVED'"
            )
        db.close()
    else:
        session.unlink(missing_ok=True)
        shutil.copy2(work / module, kept)
        subprocess.run(
            [bin_dir / "cosmic-ray", "init", config, session], cwd=work, env=env, check=True
        )
        _skip_annotations(session, work / module)
    baseline = subprocess.run(
        [*PYTEST.split(), *tests], cwd=work, env=env, capture_output=True, text=True
    )
    if baseline.returncode != 0:
        sys.exit(f"{module}: its tests fail without any mutant:\n{baseline.stdout[-3000:]}")
    subprocess.run([bin_dir / "cosmic-ray", "exec", config, session], cwd=work, env=env, check=True)
    line = _report(module, (time.monotonic() - started) / 60)
    print(line, flush=True)
    with (OUT / "summary.txt").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M')} {line}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of them)")
    parser.add_argument("--list", action="store_true", help="show the modules and their tests")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant's tests")
    parser.add_argument(
        "--report", action="store_true", help="summarise the kept sessions again, run nothing"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="run only the survivors of the kept sessions again (after adding tests)",
    )
    args = parser.parse_args()
    if args.list:
        for module, tests in TARGETS.items():
            print(f"{module:45s} {' '.join(tests)}")
        return
    if args.report:
        for module in args.modules or list(TARGETS):
            name = module.replace("/", ".").removesuffix(".py")
            if (OUT / f"{name}.sqlite").exists() and (OUT / f"{name}.py.mutated").exists():
                print(_report(module))
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
            _run(module, TARGETS[module], work, env, args.timeout, again=args.again)
    print(f"sessions in {OUT}; survivors with their diffs in {OUT}/*.survivors.txt")


if __name__ == "__main__":
    main()
