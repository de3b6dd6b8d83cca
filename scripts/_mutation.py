"""Mutation testing of the security-critical modules with Cosmic Ray (run by scripts/mutation).

Each module is mutated, one mutant at a time, in a private copy of the working tree
(never in the tree itself), and only the tests that guard it are run against each
mutant. A mutant the tests do not notice "survives": either a test is missing or the
mutant is harmless; docs/security.md lists the survivors and why each is harmless.

    scripts/mutation                      every module below (slow: about an hour)
    scripts/mutation safething/net/keys.py gateway/safething_gateway/protocol.py
    scripts/mutation --list               the modules and the tests run against each
    scripts/mutation --again MODULE       only its survivors again, after adding tests
    scripts/mutation --resume MODULE      the mutants an interrupted run did not reach

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
import shlex
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
# Narrower selections for the modules whose mutants took 15 to 50 s each with all of
# tests/net: the tests that use the module, fastest first (``-x`` stops at the first
# failure), on SQLite only (``-k "not nats"``: the NATS store runs the same client code).
TRUST = [
    "tests/net/test_trust_state.py",
    "tests/net/test_tampering.py",
    "tests/things/test_trust_attacks.py",
    "tests/net/test_trust_property.py",
    "-k",
    "not nats",
]
MUTABLE = [
    "tests/net/test_mutable.py",
    "tests/net/test_tampering.py",
    "tests/net/test_raw_store_attacks.py",
    "tests/net/test_trust_state.py",
    "tests/net/test_trust_property.py",
    "-k",
    "not nats",
]
CLIENT = [
    "tests/net/test_tampering.py",
    "tests/net/test_trust_state.py",
    "tests/net/test_mutable.py",
    "tests/things/test_trust_attacks.py::test_co_owner_header_and_the_entries_it_would_authorise",
    "tests/things/test_trust_attacks.py::test_reader_pinned_to_the_owner_refuses_a_header_it_did_not_sign",
    "tests/net/test_trust_property.py",
    "-k",
    "not nats",
]
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
# The gateway's refusal paths: tests that send what an attacker or a broken device sends,
# the fastest and those that kill most first (-x stops at the first failure). Not the two
# HTTP floods of results for unknown request ids (10 s each): test_core_limits.py checks
# the same bounds on the core directly.
_NOT_FLOODS = ["-k", "not results_for_unknown_request_ids"]
GATEWAY_REFUSALS = [
    "tests/gateway/test_core.py",
    "tests/gateway/test_core_limits.py",
    "tests/gateway/test_link_versions.py",
    "tests/gateway/test_store_outage.py",
    "tests/gateway/test_attacks_http.py",
    *_NOT_FLOODS,
]
MQTT_REFUSALS = [
    "tests/gateway/test_mqtt_refusals.py",
    "tests/gateway/test_mqtt.py::test_pubacks_go_out_in_arrival_order",
    "tests/gateway/test_mqtt.py::test_rejections_are_reported_on_the_err_topic",
    "tests/gateway/test_mqtt.py::test_a_birth_during_a_store_outage_is_not_lost",
    "tests/gateway/test_attacks_mqtt.py::test_a_locked_registry_freezes_nothing_and_loses_nothing",
]
COAP_REFUSALS = ["tests/gateway/test_attacks_coap.py", "tests/gateway/test_coap.py"]
HTTP_REFUSALS = ["tests/gateway/test_http.py", "tests/gateway/test_attacks_http.py", *_NOT_FLOODS]
TARGETS: dict[str, list[str]] = {
    "safething/net/records.py": NET,
    "safething/net/mutable.py": MUTABLE,
    "safething/net/trust.py": TRUST,
    "safething/net/keys.py": NET,
    "safething/net/permissions.py": NET,
    "safething/net/identity.py": NET,
    "safething/net/immutable.py": NET,
    "safething/net/client.py": CLIENT,
    "safething/things/access.py": THINGS,
    "safething/things/thing.py": THINGS,
    "gateway/safething_gateway/protocol.py": GATEWAY_CORE,
    "gateway/safething_gateway/registry.py": GATEWAY_CORE,
    "gateway/safething_gateway/core.py": GATEWAY_REFUSALS,
    "gateway/safething_gateway/bridges/mqtt.py": MQTT_REFUSALS,
    "gateway/safething_gateway/bridges/coap.py": COAP_REFUSALS,
    "gateway/safething_gateway/bridges/http.py": HTTP_REFUSALS,
}

# module -> the only functions, classes (qualified names) and module constants whose
# mutants are run, for modules too large to run whole on this machine; the others are
# marked "outside" and not counted.
ONLY: dict[str, tuple[str, ...]] = {
    # what a reader trusts and its writing to the file; not: where the file is, the
    # connection sharing, when writes are scheduled, the cache size
    "safething/net/trust.py": (
        "TrustState.header",
        "TrustState.set_header",
        "TrustState.entry_version",
        "TrustState.preload",
        "TrustState.set_entry_version",
        "TrustState.forget_entry",
        "TrustState.processed",
        "TrustState.mark_processed",
        "TrustState.value",
        "TrustState.set_value",
        "TrustState.sync",
    ),
    # the header checks and the version marks; not: list_mds, create_md, the constructor
    "safething/net/client.py": (
        "Client.md",
        "Client._writer",
        "Client._pin",
        "Client._tampered",
        "Client._check_header",
        "Client._accept_header",
        "Client._trusted_header",
        "Client._header",
        "Client._check_version",
    ),
    # verification of what is read (the protection: readers refuse what fails) and the
    # header changes; not: the writer's own checks in _write (a courtesy: readers refuse
    # what a writer may not write), the convenience wrappers, repair_header, coercion
    "safething/net/mutable.py": (
        "MutableData.set_permissions",
        "MutableData._signed_header",
        "MutableData._need_codec",
        "MutableData._open",
        "MutableData._current",
        "MutableData.purge",
        "EntryWatch.__anext__",
    ),
    # The gateway's refusal and validation paths (authentication, MAC, replay, rate and
    # size limits, unknown devices, malformed bodies) and the constants they use; not: the
    # lifecycle, dispatching accepted messages, downlinks, metrics, API metadata.
    "gateway/safething_gateway/core.py": (
        "MAX_COUNTER",
        "EARLY_RESULT_TTL",
        "EARLY_PER_DEVICE",
        "EARLY_TOTAL",
        "_EARLY_UPDATES",
        "_RESULT_STATES",
        "_UNKNOWN_SECRET",
        "Gateway._handle",
        "Gateway._open",
        "Gateway._sealed_reason",
        "Gateway._rate_limit",
        "Gateway._refund",
        "Gateway._birth_description",
        "Gateway._result",
        "Gateway._forget_early",
        "_field",
        "_is_data",
        "_check_link_fields",
    ),
    "gateway/safething_gateway/bridges/mqtt.py": (
        "_QUEUE_LIMIT",
        "Topics",
        "MqttBridge._received",
        "MqttBridge._process",
        "MqttBridge._handle",
        "MqttBridge._report",
    ),
    "gateway/safething_gateway/bridges/coap.py": (
        "_frame_bytes",
        "decode_downlinks",
        "_code",
        "_diagnostic",
        "coap_reply",
        "_error_reply",
        "_Root",
        "_Block1Assemblies",
        "_DeviceResources",
        "_route",
        "_check_size",
        "_body_format",
        "_reply_format",
        "CoapBridge._reject",
        "CoapBridge._known_device",
        "CoapBridge._handle",
        "CoapBridge._poll",
    ),
    "gateway/safething_gateway/bridges/http.py": (
        "_FORMATS",
        "UnsupportedFormatError",
        "problem_response",
        "reply_response",
        "_rate",
        "_HTTP_REASONS",
        "_install_error_handlers",
        "_GuardedRoute",
        "_format_of",
        "_read_limited",
        "create_app.rejected",
        "create_app.device_message",
        "create_app.down_stream",
        "_guarded_protocol",
    ),
}

# one hypothesis seed, so that a mutant is killed or not the same way every run
PYTEST = "python -m pytest -x -q -p no:cacheprovider -p no:randomly --hypothesis-seed=0"


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
        f"test-command = {json.dumps(PYTEST + ' ' + shlex.join(tests))}\n"
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


def _functions(
    module: Path, names: tuple[str, ...]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the functions and classes named (qualified: ``Class.method``, ``f.inner``)
    and the module constants named are. A definition's decorators are not part of it
    (those of the HTTP routes are API metadata)."""
    found: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                found[name] = ((child.lineno, 0), (child.end_lineno or child.lineno, 10**6))
                visit(child, name + ".")
            elif not prefix and isinstance(child, ast.Assign | ast.AnnAssign):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = (
                            (child.lineno, 0),
                            (child.end_lineno or child.lineno, 10**6),
                        )

    visit(ast.parse(module.read_text()), "")
    missing = [n for n in names if n not in found]
    if missing:
        sys.exit(f"{module}: nothing named {', '.join(missing)} (see ONLY in {__file__})")
    return [found[n] for n in names]


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


def _skip_outside(session: Path, module: Path, names: tuple[str, ...]) -> int:
    """Mark mutants outside the functions selected for ``module`` (``ONLY``) as not run."""
    spans = _functions(module, names)
    db = sqlite3.connect(session)
    try:
        rows = db.execute(
            "SELECT m.job_id, m.start_pos_row, m.start_pos_col FROM mutation_specs m "
            "LEFT JOIN work_results r USING (job_id) WHERE r.job_id IS NULL"
        )
        skipped = [job for job, row, col in rows.fetchall() if not _inside(row, col, spans)]
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', 'outside the functions selected', NULL, '', ?)",
            [(job,) for job in skipped],
        )
        db.commit()
    finally:
        db.close()
    return len(skipped)


def _summary(
    session: Path, source: Path, only: tuple[str, ...] = ()
) -> tuple[dict[str, int], list[str]]:
    """Counts by outcome, and each surviving mutant (place, operator, diff). ``source`` is
    the module as it was mutated (kept beside the session)."""
    annotations = (
        _spans(source, logging=False)
        if "from __future__ import annotations" in source.read_text()
        else []
    )
    logging = _spans(source, logging=True)
    selected = _functions(source, only) if only else None
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
        (
            "mutants",
            "annotation",
            "outside",
            "killed",
            "survived",
            "logging",
            "pending",
            "error",
        ),
        0,
    )
    survivors = []
    for row, col, operator, worker, test, diff in rows:
        worker, test = str(worker).lower(), str(test).lower()
        if _inside(row, col, annotations):
            counts["annotation"] += 1  # never evaluated: not a mutant of the behaviour
            continue
        if selected is not None and not _inside(row, col, selected):
            counts["outside"] += 1  # not in the functions selected for this module
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
    counts, survivors = _summary(
        OUT / f"{name}.sqlite", OUT / f"{name}.py.mutated", ONLY.get(module, ())
    )
    (OUT / f"{name}.survivors.txt").write_text("\n".join(survivors))
    done = counts["mutants"] - counts["pending"]
    score = 100.0 * counts["killed"] / max(1, done)
    took = f"; {minutes:.1f} min" if minutes is not None else ""
    pending = f", {counts['pending']} NOT RUN YET" if counts["pending"] else ""
    outside = f", {counts['outside']} outside the functions selected" if counts["outside"] else ""
    return (
        f"{module:40s} {counts['mutants']:4d} mutants {counts['killed']:4d} killed "
        f"{counts['survived']:3d} survived ({counts['logging']} in logging) "
        f"score {score:5.1f}%  [{counts['annotation']} in annotations not run"
        f"{outside}{pending}, {counts['error']} errors{took}]"
    )


def _run(
    module: str,
    tests: list[str],
    work: Path,
    env: dict[str, str],
    timeout: float,
    *,
    again: bool = False,
    resume: bool = False,
) -> None:
    name = module.replace("/", ".").removesuffix(".py")
    config = OUT / f"{name}.toml"
    session = OUT / f"{name}.sqlite"
    kept = OUT / f"{name}.py.mutated"
    config.write_text(_config(module, tests, timeout))
    bin_dir = Path(sys.executable).parent
    started = time.monotonic()
    if again or resume:
        # Again: only the survivors run again (the module is unchanged and tests were only
        # added, so a mutant killed before is still killed). Resume: only the mutants not
        # run yet (an interrupted run, or functions added to ONLY).
        if not (session.exists() and kept.exists()):
            sys.exit(f"{module}: no kept session to run again; run it in full first")
        if kept.read_bytes() != (work / module).read_bytes():
            sys.exit(f"{module} changed since its session: run it in full")
        db = sqlite3.connect(session)
        with db:
            if again:
                db.execute(
                    "DELETE FROM work_results WHERE worker_outcome = 'NORMAL' "
                    "AND test_outcome = 'SURVIVED'"
                )
            db.execute(
                "DELETE FROM work_results WHERE worker_outcome = 'SKIPPED' "
                "AND output = 'outside the functions selected'"
            )
        db.close()
        if module in ONLY:
            _skip_outside(session, work / module, ONLY[module])
    else:
        session.unlink(missing_ok=True)
        shutil.copy2(work / module, kept)
        subprocess.run(
            [bin_dir / "cosmic-ray", "init", config, session], cwd=work, env=env, check=True
        )
        _skip_annotations(session, work / module)
        if module in ONLY:
            _skip_outside(session, work / module, ONLY[module])
    began = time.monotonic()
    baseline = subprocess.run(
        [*PYTEST.split(), *tests], cwd=work, env=env, capture_output=True, text=True
    )
    if baseline.returncode != 0:
        sys.exit(
            f"{module}: its tests fail without any mutant:\n"
            f"{baseline.stdout[-3000:]}{baseline.stderr[-3000:]}"
        )
    # A mutant whose tests time out counts as killed: never let a slow (loaded) machine
    # decide that, only a mutant that makes the tests hang (3x what they take unmutated).
    took = time.monotonic() - began
    if timeout < 3 * took:
        timeout = 3 * took
        config.write_text(_config(module, tests, timeout))
        print(f"{module}: its tests take {took:.0f} s unmutated: timeout {timeout:.0f} s")
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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="run only the mutants of the kept sessions not run yet (an interrupted run)",
    )
    args = parser.parse_args()
    if args.list:
        for module, tests in TARGETS.items():
            print(f"{module:45s} {shlex.join(tests)}")
            if module in ONLY:
                print(f"{'':45s} only in: {', '.join(ONLY[module])}")
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
            _run(
                module,
                TARGETS[module],
                work,
                env,
                args.timeout,
                again=args.again,
                resume=args.resume,
            )
    print(f"sessions in {OUT}; survivors with their diffs in {OUT}/*.survivors.txt")


if __name__ == "__main__":
    main()
