"""Mutation testing of the security-critical modules with Cosmic Ray (run by scripts/mutation).

Each module is mutated, one mutant at a time, in a private copy of the working tree
(never in the tree itself), and only the tests that guard it are run against each
mutant. A mutant the tests do not notice "survives": either a test is missing or the
mutant is harmless; docs/security.md lists the survivors and why each is harmless.

    scripts/mutation                      every module below (slow: hours)
    scripts/mutation safething/net/keys.py gateway/safething_gateway/protocol.py
    scripts/mutation --list               the modules and the tests run against each
    scripts/mutation --again MODULE       only its survivors again, after adding tests
    scripts/mutation --resume MODULE      the mutants an interrupted run did not reach
    scripts/mutation --whole MODULE       every mutant against the whole selection
    scripts/mutation --resume --part 1/2 MODULE   (and 2/2 beside it) the mutants left,
                                          shared among processes side by side

Tests chosen by coverage: before a module's mutants run, its test selection runs once,
unmutated, under coverage.py with one dynamic context per test (``--trace``; Python
processes the tests start are measured too, for the test that started them), which
gives for each line of the module the tests that ran it. Cosmic Ray's test command is
then ``--select``: it compares the mutated module with the kept original, finds the
lines the mutant changes (of a multi-line statement: the whole statement; of a compound
one: its header) and runs only the tests that ran them, in the selection's order, with
``-x``. The whole selection runs instead when a changed line runs at import time
(outside any function's body), ran outside any test, or cannot be mapped; a mutant
whose lines no test of the selection ran is not run and survives, marked "not covered
by any test of the selection". ``--whole`` runs every mutant against the whole
selection instead, as before (slower; the two agree, see docs/security.md). The tests
chosen run in a fork of a server process (``--serve``) that has imported pytest and the
libraries the tests use, never the code under test, so each mutant's tests do not pay
for those imports again.

A mutant whose tests time out counts as killed, so the bound must leave load out of it:
three times what the tests chosen take unmutated (under coverage, slower than without):
their own time, pytest's start-up, the slowest setup of each of their files and of the
whole run (fixtures shared by a file or the session), and never below 30 s.

Mutants inside annotations are not run (with ``from __future__ import annotations``
Python never evaluates them). Survivors inside ``log.*()`` calls are marked "logging
only". Sessions (SQLite, one per module) are kept in .mutation/ for ``cr-report`` and
``cr-html``, with the module as it was mutated and the coverage map
(``<module>.trace.json``); each module's line of the summary is appended to
.mutation/summary.txt and its survivors, with their diffs, written to
.mutation/<module>.survivors.txt (``--report`` summarises the kept sessions again).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

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
    "tests/net/test_batch_signatures.py",
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
# thing.py's request handling and access checks: every test of tests/things that drives
# a Thing's requests, status or keys, fastest first (-x); the attacker tests that back the
# request-handling protections in docs/security.md; the availability a thing announces
# when it starts serving (register); SQLite only for the process holding only the store
# (its NATS case runs the same thing code).
THING = [
    "tests/things/test_thing.py",
    "tests/things/test_thing_authority.py",
    "tests/things/test_forged_requests.py",
    "tests/things/test_trust_attacks.py",
    "tests/things/test_states.py",
    "tests/things/test_trust_property_thing.py",
    "tests/things/test_store_attacker.py",
    "tests/things/test_availability.py",
    "-k",
    "not nats",
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
# The registry: its own tests first (direct, no gateway), then the tests that revoke,
# replay, journal, buffer and restore through a gateway (the core, its limits, the
# crash and store-outage tests, things restored on demand), the file modes, the old
# registries the link versions test opens, and revocation by the admin and the CLI.
# No bridge tests: test_registry.py covers what the bridges ask of it (``waiting``).
REGISTRY = [
    "tests/gateway/test_registry.py",
    "tests/gateway/test_core.py",
    "tests/gateway/test_core_limits.py",
    "tests/gateway/test_device_admin.py",
    "tests/gateway/test_attacks_files.py",
    "tests/gateway/test_store_outage.py",
    "tests/gateway/test_attacks_crash.py",
    "tests/gateway/test_things_on_demand.py",
    "tests/gateway/test_link_versions.py",
    "tests/gateway/test_config_cli.py",
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
    "tests/gateway/test_mqtt.py::test_without_acl_the_gateway_refuses_another_devices_topic",
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
    "safething/things/thing.py": THING,
    "gateway/safething_gateway/protocol.py": GATEWAY_CORE,
    "gateway/safething_gateway/registry.py": REGISTRY,
    "gateway/safething_gateway/core.py": GATEWAY_REFUSALS,
    "gateway/safething_gateway/bridges/mqtt.py": MQTT_REFUSALS,
    "gateway/safething_gateway/bridges/coap.py": COAP_REFUSALS,
    "gateway/safething_gateway/bridges/http.py": HTTP_REFUSALS,
}

# module -> the only functions, classes (qualified names) and module constants whose
# mutants are run, for modules too large to run whole on this machine; the others are
# marked "outside" and not counted.
ONLY: dict[str, tuple[str, ...]] = {
    # what a reader trusts and its writing to the file (sync, since dfb30ad split into
    # _take, _written, _Rows and _File.write); not: where the file is, the connection
    # sharing, when writes are scheduled, the cache size
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
        "TrustState._take",
        "TrustState._written",
        "_Rows.__bool__",
        "_Rows.write",
        "_File.write",
    ),
    # the header checks and the version marks, and what a reader keeps to skip the
    # signature check of bytes it verified or signed (_remember: the digest and the
    # header; the shortcut itself is in MutableData._open); not: list_mds, create_md,
    # the constructor
    "safething/net/client.py": (
        "Client.md",
        "Client._remember",
        "Client._writer",
        "Client._pin",
        "Client._tampered",
        "Client._check_header",
        "Client._accept_header",
        "Client._trusted_header",
        "Client._header",
        "Client._decide_header",
        "Client._write_header",
        "Client._check_version",
    ),
    # verification of what is read (the protection: readers refuse what fails), which
    # keys a writer takes back as not new after the store refused them (_unread_key), and
    # the header changes; not: the writer's own checks in _write (a courtesy: readers refuse
    # what a writer may not write), the convenience wrappers, repair_header, coercion
    "safething/net/mutable.py": (
        "MutableData.set_permissions",
        "MutableData._signed_header",
        "MutableData._need_codec",
        "MutableData._open",
        "MutableData._current",
        "MutableData._unread_key",
        "MutableData.purge",
        "EntryWatch.__anext__",
    ),
    # Request handling (who may request, at most once, issue time and expiry, who may
    # cancel, processed marks before the handler, shutdown and resume; since 6c33f46 the
    # count and purge of a refused record, _refuse, and the rescan for a replay delivered
    # while its request was ending, _scan_if_passed_over), the access checks (the MDs
    # pinned to the thing and its owner; level keys, status and the group's members only
    # from them) and what the thing refuses or repairs from the store at registration
    # (since 94885eb also the short way of a new thing, _knows_nothing, _register_new,
    # and the end of register split off as _serve; who each level key is sealed to,
    # _level_readers);
    # not: the lifecycle, data writes and sequence numbers, subscriptions, history,
    # availability, the outbox's formatting and trimming.
    "safething/things/thing.py": (
        "_status_of",
        "_StatusMark.from_bytes",
        "_StatusMark.follows",
        "Thing._md",
        "Thing._authorities",
        "Thing.register",
        "Thing._restore_status",
        "Thing._knows_nothing",
        "Thing._register_new",
        "Thing._serve",
        "Thing._put_if_changed",
        "Thing._level_readers",
        "Thing._ensure_level_keys",
        "Thing._take_level_record",
        "Thing._seen_version",
        "Thing._write_back",
        "Thing._refresh_group_key",
        "Thing._older_epoch",
        "Thing.status_trusted",
        "Thing._status_mark",
        "Thing._trust_status",
        "Thing._set_status",
        "Thing._put_back_status",
        "Thing._put_first_status",
        "Thing.action",
        "Thing._follow_status",
        "Thing._status_from",
        "Thing._take_status",
        "Thing._older_status",
        "Thing._put_back",
        "Thing._scan_inbox",
        "Thing._on_inbox",
        "Thing._refuse",
        "Thing._allowed",
        "Thing._members",
        "Thing._check_lifetime",
        "Thing._on_processed",
        "Thing._mark_processed",
        "Thing._on_request",
        "Thing._scan_if_passed_over",
        "Thing._take_request",
        "Thing._run",
        "Thing._accept",
        "Thing._finish",
        "Thing._on_cancel",
        "Thing._on_desired",
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

# what the selector prints for a mutant whose lines no test of the selection runs
UNCOVERED = "not covered by any test of the selection"

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


def _config(module: str, test_command: str, timeout: float) -> str:
    return (
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command)}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


# --- Which tests run which line (coverage.py, one dynamic context per test) -------------

# The test being run, for the subprocesses the tests start (see _SITECUSTOMIZE).
_CONTEXT_VAR = "SAFETHING_MUTATION_TEST"
# Cosmic Ray's exception-replacement operator (core/ExceptionReplacer) puts this name in
# an ``except`` clause in place of the class caught. Cosmic Ray never defines it in the
# processes that run the tests: without it, any exception that reaches the handler turns
# into a NameError and the mutant is killed whatever the tests check. Defined here as a
# builtin exception that nothing raises, so the mutant behaves as Cosmic Ray means it to:
# the handler no longer catches what it caught.
_TESTING_EXCEPTION = "CosmicRayTestingException"
# On PYTHONPATH (first) of every process that runs tests against a mutant: the fork
# server (its children inherit the builtin), pytest started without it, and the Python
# processes the tests start (a gateway under test, a store attacker). During the coverage
# run it also measures those processes, their lines counted for the test that started
# them.
_SITECUSTOMIZE = f"""\
import builtins
import os

if not hasattr(builtins, {_TESTING_EXCEPTION!r}):
    class {_TESTING_EXCEPTION}(Exception):
        \"\"\"What Cosmic Ray's exception-replacement mutants catch: never raised.\"\"\"

    setattr(builtins, {_TESTING_EXCEPTION!r}, {_TESTING_EXCEPTION})

try:
    import coverage
except ImportError:
    coverage = None
if coverage is not None:
    _cov = coverage.process_startup()
    if _cov is not None and os.environ.get({_CONTEXT_VAR!r}):
        _cov.switch_context(os.environ[{_CONTEXT_VAR!r}])
"""


def _trace(module: str, out: Path, tests: list[str]) -> int:
    """Run ``tests`` on the unmutated tree (the current directory) under coverage.py and
    write to ``out`` (JSON): for each line of ``module`` that ran, the tests that ran it
    ("" for what ran outside any test: imports, collection); the tests in the order they
    ran, how long each took, and the whole run's time. Run in a fresh interpreter."""
    import coverage  # only here: the selector itself needs nothing beyond the stdlib
    import pytest

    class Contexts:
        """Each test's lines recorded under its node id (its setup and teardown
        included), and how long each test took."""

        def __init__(self) -> None:
            self.order: list[str] = []
            self.took: dict[str, float] = {}
            self.setup: dict[str, float] = {}

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_protocol(self, item: Any, nextitem: Any) -> Generator[None, Any, Any]:
            self.order.append(item.nodeid)
            cov.switch_context(item.nodeid)
            os.environ[_CONTEXT_VAR] = item.nodeid
            try:
                return (yield)
            finally:
                os.environ.pop(_CONTEXT_VAR, None)
                cov.switch_context("")

        def pytest_runtest_logreport(self, report: Any) -> None:
            self.took[report.nodeid] = self.took.get(report.nodeid, 0.0) + report.duration
            if report.when == "setup":
                self.setup[report.nodeid] = report.duration

    target = str(Path(module).resolve())
    data = out.with_suffix(".data")
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    rc = data / "coveragerc"
    rc.write_text(
        f"[run]\nparallel = True\ndata_file = {data / 'cov'}\ninclude = {target}\n"
        "concurrency = thread\n"
    )
    site = data / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    os.environ["COVERAGE_PROCESS_START"] = str(rc)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    cov = coverage.Coverage(config_file=str(rc))
    plugin = Contexts()
    began = time.monotonic()
    cov.start()
    try:
        code = pytest.main([*PYTEST.split()[3:], *tests], plugins=[plugin])
    finally:
        cov.stop()
        cov.save()
    took = time.monotonic() - began
    combined = coverage.Coverage(config_file=str(rc))
    combined.combine(strict=True)
    measured = combined.get_data()
    files = [f for f in measured.measured_files() if Path(f).resolve() == Path(target)]
    lines: dict[int, list[str]] = {}
    for name in files:
        for line, contexts in measured.contexts_by_lineno(name).items():
            lines[line] = sorted(set(lines.get(line, [])) | set(contexts))
    out.write_text(
        json.dumps(
            {
                "module": module,
                "tests": tests,
                "order": plugin.order,
                "took": plugin.took,
                "setup": plugin.setup,
                "whole": took,
                "startup": max(0.0, took - sum(plugin.took.values())),
                "lines": {str(k): v for k, v in sorted(lines.items())},
            }
        )
    )
    shutil.rmtree(data, ignore_errors=True)
    return int(code)


def _changed_lines(original: list[str], mutated: list[str]) -> list[int]:
    """The lines of ``original`` (numbered from 1) that ``mutated`` changes or removes,
    and the two beside a pure insertion."""
    changed: set[int] = set()
    matcher = difflib.SequenceMatcher(a=original, b=mutated, autojunk=False)
    for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            changed.update(range(i1 + 1, i2 + 1))
        elif tag == "insert":
            changed.update({max(1, i1), i1 + 1})
    return sorted(changed)


def _statement_lines(tree: ast.Module, line: int) -> list[int] | None:
    """The lines of the innermost statement inside a function's body that holds ``line``
    (of a compound statement, or an ``except`` clause, its header only), or None when
    ``line`` is outside every function's body (it runs at import time) or in no such
    statement (a decorator, a signature)."""
    best: ast.AST | None = None
    in_function = False
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            body = node.body if isinstance(node.body, list) else [node.body]
            if body[0].lineno <= line <= (node.end_lineno or node.lineno):
                in_function = True
        if not isinstance(node, ast.stmt | ast.ExceptHandler):
            continue
        if not node.lineno <= line <= (node.end_lineno or node.lineno):
            continue
        if best is None or (node.lineno, -(node.end_lineno or 0)) >= (
            best.lineno,  # type: ignore[attr-defined]
            -(best.end_lineno or 0),  # type: ignore[attr-defined]
        ):
            best = node
    if not in_function or best is None:
        return None
    start = best.lineno  # type: ignore[attr-defined]
    end = best.end_lineno or start  # type: ignore[attr-defined]
    inner = getattr(best, "body", None)
    if isinstance(inner, list) and inner and isinstance(inner[0], ast.AST):
        first = min(
            [inner[0].lineno] + [d.lineno for d in getattr(inner[0], "decorator_list", [])]  # type: ignore[attr-defined]
        )
        if first > line:  # in the header
            end = first - 1
    if isinstance(best, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return None  # a nested definition's signature or decorators: when it is made
    return list(range(start, end + 1))


def _choose(trace: dict[str, Any], source: str, changed: list[int]) -> tuple[list[str] | None, str]:
    """The tests to run against a mutant that changes ``changed`` lines of ``source``:
    None for the whole selection, [] for none (no test runs those lines), with why."""
    tree = ast.parse(source)
    executed: dict[str, list[str]] = trace["lines"]
    chosen: set[str] = set()
    for line in changed or [0]:
        lines = _statement_lines(tree, line) if line else None
        if lines is None:
            return None, f"line {line} runs when the module is imported: the whole selection"
        for each in lines:
            contexts = executed.get(str(each), [])
            if "" in contexts:
                return None, f"line {each} ran outside any test: the whole selection"
            chosen.update(contexts)
    if not chosen:
        return [], f"{UNCOVERED}: no test run"
    order = [t for t in trace["order"] if t in chosen]
    return order, f"{len(order)} of {len(trace['order'])} tests cover lines {changed}"


def _bound(trace: dict[str, Any], tests: list[str] | None) -> float:
    """At least three times what the tests chosen took unmutated (under coverage, so more
    than they take without it): their own time, pytest's start-up and collection, and for
    each file the slowest setup in it (module fixtures set up for its first test)."""
    if tests is None:
        return 3 * float(trace["whole"])
    setups: dict[str, float] = {}
    for test in trace["order"]:
        name = test.split("::")[0]
        setups[name] = max(setups.get(name, 0.0), trace["setup"].get(test, 0.0))
    files = {t.split("::")[0] for t in tests}
    estimate = (
        float(trace["startup"])
        + sum(float(trace["took"].get(t, 0.0)) for t in tests)
        + sum(setups.get(f, 0.0) for f in files)
        + max(setups.values(), default=0.0)  # session fixtures
    )
    return max(30.0, 3 * estimate)


# Cosmic Ray 8.7.0 mutates a dotted class (``except nacl.exceptions.CryptoError:``) by
# renaming its first dot: ``naclCosmicRayTestingExceptionexceptions.CryptoError``, a name
# never defined, so such a mutant too was killed by a NameError whatever the tests check.
# The selector writes the mutant Cosmic Ray means (``except CosmicRayTestingException:``)
# before running the tests (Cosmic Ray puts the original back after them).
_MANGLED = re.compile(r"[\w.]*" + _TESTING_EXCEPTION + r"[\w.]*")


def _intended(mutated: str) -> str:
    """``mutated`` with every dotted name Cosmic Ray mangled replaced by the name."""
    return _MANGLED.sub(_TESTING_EXCEPTION, mutated)


def _select(trace_path: Path, original: Path) -> int:
    """Cosmic Ray's test command: run, against the mutant in the current directory, only
    the tests that ran the lines it changes (``-x``, in the selection's order)."""
    trace = json.loads(trace_path.read_text())
    source = original.read_text()
    mutated = Path(trace["module"]).read_text()
    if _intended(mutated) != mutated:
        mutated = _intended(mutated)
        Path(trace["module"]).write_text(mutated)
        print(f"a dotted name in an except clause: run as {_TESTING_EXCEPTION}", flush=True)
    changed = _changed_lines(source.splitlines(), mutated.splitlines())
    try:
        tests, why = _choose(trace, source, changed)
    except (SyntaxError, ValueError, KeyError) as exc:
        tests, why = None, f"cannot map the change ({exc!r}): the whole selection"
    print(why, flush=True)
    if tests == []:
        return 0
    code = _bounded(tests if tests is not None else trace["tests"], _bound(trace, tests))
    if code == 5 and tests is not None:  # pytest found none of them: never count a kill
        print("none of the tests chosen was found: the whole selection", flush=True)
        code = _bounded(trace["tests"], _bound(trace, None))
    return code


def _bounded(tests: list[str], bound: float) -> int:
    """pytest on ``tests`` (forked by the fork server if there is one); past ``bound``
    seconds the run (and all it started) is killed and counts as a failure: a mutant that
    makes the tests hang."""
    args = [*PYTEST.split()[3:], *tests]
    server = os.environ.get(_SERVER_VAR)
    if server:
        try:
            return _forked(Path(server), args, bound)
        except (OSError, ValueError) as exc:  # never a kill: a new process instead
            print(f"the fork server failed ({exc!r}): a new process", flush=True)
    proc = subprocess.Popen([*PYTEST.split()[:3], *args], start_new_session=True)
    try:
        return proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"timeout: the tests ran past {bound:.0f} s", flush=True)
        return 1


def _forked(server: Path, args: list[str], bound: float) -> int:
    import socket
    import struct

    def read(conn: socket.socket) -> int:
        data = b""
        while len(data) < 4:
            chunk = conn.recv(4 - len(data))
            if not chunk:
                raise ValueError("the fork server closed the connection")
            data += chunk
        return int(struct.unpack("!i", data)[0])

    sys.stdout.flush()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(server))
        socket.send_fds(conn, [json.dumps(args).encode()], [1, 2])
        conn.shutdown(socket.SHUT_WR)
        pid = read(conn)
        conn.settimeout(bound)
        try:
            return read(conn)
        except TimeoutError:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:  # not in its own session yet
                os.kill(pid, signal.SIGKILL)
            conn.settimeout(None)
            read(conn)
            print(f"timeout: the tests ran past {bound:.0f} s", flush=True)
            return 1


# --- A fork server: pytest and the libraries the tests use imported once --------------

# Imported once by the server, never the modules under test (they are mutated): each
# test run is a fork of it, so a mutant's tests start in a fraction of the time.
_PRELOAD = (
    "pytest",
    "_pytest.python",
    "hypothesis",
    "pytest_asyncio",
    "anyio",
    "nacl.bindings",
    "nacl.public",
    "nacl.signing",
    "cbor2",
    "cryptography",
    "fastapi",
    "starlette.testclient",
    "httpx",
    "pydantic",
    "uvicorn",
    "aiocoap",
    "paho.mqtt.client",
    "nats",
    "jsonschema",
    "prometheus_client",
)
_SERVER_VAR = "SAFETHING_MUTATION_SERVER"


def _serve(path: Path) -> None:
    """Fork, for each request on the Unix socket ``path``, a child that runs pytest with
    the arguments sent, its output on the file descriptors sent; answer the child's pid,
    then its exit status. One request at a time (Cosmic Ray runs one mutant at a time)."""
    import builtins
    import importlib
    import socket
    import struct
    import warnings

    import pytest

    sys.dont_write_bytecode = True  # a mutant's module must never leave a stale .pyc
    with warnings.catch_warnings():  # the tests' own warnings filters are theirs to set
        warnings.simplefilter("ignore")
        for name in _PRELOAD:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    if any(m.startswith(("safething", "safething_gateway")) for m in sys.modules):
        sys.exit("the fork server imported the code under test: see _PRELOAD")
    if not hasattr(builtins, _TESTING_EXCEPTION):
        sys.exit(f"no {_TESTING_EXCEPTION} in builtins: see _SITECUSTOMIZE, _environment")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            request, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 2)
            if len(fds) != 2:
                continue
            while chunk := conn.recv(1 << 16):
                request += chunk
            args = json.loads(request)
            pid = os.fork()
            if pid == 0:  # the child: pytest, in its own session, killed as a group
                code = 3
                try:
                    server.close()
                    conn.close()
                    os.setsid()
                    os.dup2(fds[0], 1)
                    os.dup2(fds[1], 2)
                    # pytest's plugins were imported before it could rewrite their
                    # asserts (the tests' own modules are imported, and rewritten, here)
                    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
                    code = int(pytest.main([*quiet, *args]))
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            for fd in fds:
                os.close(fd)
            conn.sendall(struct.pack("!i", pid))
            _, status = os.waitpid(pid, 0)
            conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))


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


_OTHER_OPERATOR = "another operator's mutant (--operator)"


def _skip_other_operators(session: Path, operator: str) -> int:
    """Mark the mutants of every operator but ``operator`` as not run."""
    db = sqlite3.connect(session)
    try:
        rows = db.execute(
            "SELECT m.job_id FROM mutation_specs m LEFT JOIN work_results r USING (job_id) "
            "WHERE r.job_id IS NULL AND m.operator_name != ?",
            (operator,),
        )
        skipped = [job for (job,) in rows.fetchall()]
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', ?, NULL, '', ?)",
            [(_OTHER_OPERATOR, job) for job in skipped],
        )
        db.commit()
    finally:
        db.close()
    return len(skipped)


def _summary(
    session: Path, source: Path, only: tuple[str, ...] = (), operator: str | None = None
) -> tuple[dict[str, int], list[str]]:
    """Counts by outcome, and each surviving mutant (place, operator, diff). ``source`` is
    the module as it was mutated (kept beside the session); with ``operator``, only its
    mutants are counted (the others were not run: ``--operator``)."""
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
            "r.worker_outcome, r.test_outcome, r.diff, r.output "
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
            "other",
            "killed",
            "survived",
            "logging",
            "uncovered",
            "pending",
            "error",
        ),
        0,
    )
    survivors = []
    for row, col, name, worker, test, diff, output in rows:
        worker, test = str(worker).lower(), str(test).lower()
        if operator is not None and name != operator:
            counts["other"] += 1  # another operator's: not run (--operator)
            continue
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
            if str(output).startswith(UNCOVERED):
                counts["uncovered"] += 1
                tag += f"  [{UNCOVERED}]"
            survivors.append(f"{source.name}:{row}:{col} {name}{tag}\n{diff}")
        else:
            counts["error"] += 1  # Cosmic Ray itself failed on it: see the session
    return counts, survivors


def _session_name(module: str, operator: str | None = None) -> str:
    """The name of a module's kept session (its own for ``--operator``: never the full
    run's)."""
    name = module.replace("/", ".").removesuffix(".py")
    return f"{name}.{operator.replace('/', '-')}" if operator else name


def _report(module: str, minutes: float | None = None, operator: str | None = None) -> str:
    name = _session_name(module, operator)
    counts, survivors = _summary(
        OUT / f"{name}.sqlite", OUT / f"{name}.py.mutated", ONLY.get(module, ()), operator
    )
    (OUT / f"{name}.survivors.txt").write_text("\n".join(survivors))
    done = counts["mutants"] - counts["pending"]
    score = 100.0 * counts["killed"] / max(1, done)
    took = f"; {minutes:.1f} min" if minutes is not None else ""
    pending = f", {counts['pending']} NOT RUN YET" if counts["pending"] else ""
    outside = f", {counts['outside']} outside the functions selected" if counts["outside"] else ""
    if operator:
        outside += f", only {operator}: {counts['other']} of other operators not run"
    return (
        f"{module:40s} {counts['mutants']:4d} mutants {counts['killed']:4d} killed "
        f"{counts['survived']:3d} survived ({counts['logging']} in logging, "
        f"{counts['uncovered']} not covered by any test) "
        f"score {score:5.1f}%  [{counts['annotation']} in annotations not run"
        f"{outside}{pending}, {counts['error']} errors{took}]"
    )


_OTHER_PART = "run by another part (--part)"


def _skip_other_parts(session: Path, k: int, n: int) -> None:
    """Leave to part ``k`` of ``n`` only its share of the mutants not run yet."""
    db = sqlite3.connect(session)
    try:
        rows = db.execute(
            "SELECT i.job_id FROM work_items i LEFT JOIN work_results r USING (job_id) "
            "WHERE r.job_id IS NULL ORDER BY i.job_id"
        ).fetchall()
        others = [job for i, (job,) in enumerate(rows) if i % n != k - 1]
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES ('SKIPPED', ?, NULL, '', ?)",
            [(_OTHER_PART, job) for job in others],
        )
        db.commit()
    finally:
        db.close()


def _merge(part: Path, session: Path) -> None:
    """Write the results of a part's copy of the session into the session."""
    db = sqlite3.connect(session, timeout=300)
    try:
        db.execute("ATTACH DATABASE ? AS part", (str(part),))
        with db:
            db.execute(
                "INSERT OR REPLACE INTO work_results "
                "(worker_outcome, output, test_outcome, diff, job_id) "
                "SELECT worker_outcome, output, test_outcome, diff, job_id "
                "FROM part.work_results WHERE output IS NOT ?",
                (_OTHER_PART,),
            )
        db.execute("DETACH DATABASE part")
    finally:
        db.close()


def _environment(work: Path) -> dict[str, str]:
    """The environment of every process that runs tests against a mutant in ``work``: the
    copy's code, not the editable install's (subprocesses of the tests too), and
    _SITECUSTOMIZE first (``CosmicRayTestingException`` defined)."""
    site = work / ".mutation-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(work), str(work / "gateway")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@contextlib.contextmanager
def _fork_server(work: Path, env: dict[str, str]) -> Generator[dict[str, str]]:
    """The fork server (``--serve``) running in ``work``, and the environment that tells
    the selector where it is."""
    sock = work / ".mutation-server.sock"
    sock.unlink(missing_ok=True)
    server = subprocess.Popen(
        [Path(sys.executable).parent / "python", "scripts/_mutation.py", "--serve", str(sock)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            sys.exit(f"the fork server did not start (exit {server.wait()})")
        yield {**env, _SERVER_VAR: str(sock)}
    finally:
        server.terminate()
        server.wait()
        sock.unlink(missing_ok=True)


def _run(
    module: str,
    tests: list[str],
    work: Path,
    env: dict[str, str],
    timeout: float,
    *,
    again: bool = False,
    resume: bool = False,
    whole: bool = False,
    part: tuple[int, int] | None = None,
    operator: str | None = None,
) -> None:
    name = _session_name(module, operator)
    session = OUT / f"{name}.sqlite"
    kept = OUT / f"{name}.py.mutated"
    main_session = session
    if part is not None:
        # One of N processes that share the mutants left: each runs its own copy of the
        # session, then writes what it ran into the kept session.
        if not (again or resume):
            sys.exit("--part needs --again or --resume (a kept session)")
        name = f"{name}.part{part[0]}"
        session = OUT / f"{name}.sqlite"
        shutil.copy2(main_session, session)
    config = OUT / f"{name}.toml"
    config.write_text(_config(module, PYTEST, timeout))  # for init; set below
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
        if part is not None:
            _skip_other_parts(session, *part)
    else:
        session.unlink(missing_ok=True)
        shutil.copy2(work / module, kept)
        subprocess.run(
            [bin_dir / "cosmic-ray", "init", config, session], cwd=work, env=env, check=True
        )
        _skip_annotations(session, work / module)
        if module in ONLY:
            _skip_outside(session, work / module, ONLY[module])
        if operator:
            _skip_other_operators(session, operator)
    # Which tests run which line, and how long they take, on the unmutated module (its
    # tests must pass). A mutant whose tests time out counts as killed: never let a slow
    # (loaded) machine decide that, only a mutant that makes its tests hang (3x what they
    # take unmutated, measured under coverage, which only makes them slower).
    trace = OUT / f"{name}.trace.json"
    traced = subprocess.run(
        [bin_dir / "python", "scripts/_mutation.py", "--trace", module, str(trace), *tests],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if traced.returncode != 0:
        sys.exit(
            f"{module}: its tests fail without any mutant:\n"
            f"{traced.stdout[-3000:]}{traced.stderr[-3000:]}"
        )
    took = float(json.loads(trace.read_text())["whole"])
    if whole:
        command = PYTEST + " " + shlex.join(tests)
        timeout = max(timeout, 3 * took)
    else:
        command = f"python scripts/_mutation.py --select {shlex.quote(str(trace))} "
        command += shlex.quote(str(kept))
        timeout = max(timeout, 6 * took + 60)  # a backstop: the selector keeps the bound
    config.write_text(_config(module, command, timeout))
    print(f"{module}: its tests take {took:.0f} s unmutated (under coverage)", flush=True)
    if whole:
        subprocess.run(
            [bin_dir / "cosmic-ray", "exec", config, session], cwd=work, env=env, check=True
        )
    else:
        with _fork_server(work, env) as served:
            subprocess.run(
                [bin_dir / "cosmic-ray", "exec", config, session], cwd=work, env=served, check=True
            )
    if part is not None:
        _merge(session, main_session)
    line = _report(module, (time.monotonic() - started) / 60, operator)
    print(line, flush=True)
    with (OUT / "summary.txt").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M')} {line}\n")


def main() -> None:
    if sys.argv[1:2] == ["--select"]:  # Cosmic Ray's test command (see _run)
        sys.exit(_select(Path(sys.argv[2]), Path(sys.argv[3])))
    if sys.argv[1:2] == ["--serve"]:  # the fork server (see _run)
        _serve(Path(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--trace"]:  # the coverage run (see _run)
        sys.exit(_trace(sys.argv[2], Path(sys.argv[3]), sys.argv[4:]))
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
    parser.add_argument(
        "--whole",
        action="store_true",
        help="run the whole test selection against every mutant (no choice by coverage)",
    )
    parser.add_argument(
        "--operator",
        metavar="NAME",
        help="run only this Cosmic Ray operator's mutants (e.g. core/ExceptionReplacer), "
        "in a session of their own",
    )
    parser.add_argument(
        "--part",
        metavar="K/N",
        help="with --resume or --again: run only the K-th of N shares of the mutants left "
        "(N processes side by side, each K once)",
    )
    args = parser.parse_args()
    part = None
    if args.part:
        k, n = (int(x) for x in args.part.split("/"))
        if not 1 <= k <= n:
            sys.exit("--part K/N: K from 1 to N")
        part = (k, n)
    if args.list:
        for module, tests in TARGETS.items():
            print(f"{module:45s} {shlex.join(tests)}")
            if module in ONLY:
                print(f"{'':45s} only in: {', '.join(ONLY[module])}")
        return
    if args.report:
        for module in args.modules or list(TARGETS):
            name = _session_name(module, args.operator)
            if (OUT / f"{name}.sqlite").exists() and (OUT / f"{name}.py.mutated").exists():
                print(_report(module, operator=args.operator))
        return
    unknown = [m for m in args.modules if m not in TARGETS]
    if unknown:
        sys.exit(f"not a mutation target: {', '.join(unknown)} (see --list)")
    OUT.mkdir(exist_ok=True)
    # A stopped run (kill, a closed terminal) unwinds like Ctrl-C: the running mutant's
    # processes are killed and the private copy of the tree is removed.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="safething-mutation-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        env = _environment(work)
        for module in args.modules or list(TARGETS):
            _run(
                module,
                TARGETS[module],
                work,
                env,
                args.timeout,
                again=args.again,
                resume=args.resume,
                whole=args.whole,
                part=part,
                operator=args.operator,
            )
    print(f"sessions in {OUT}; survivors with their diffs in {OUT}/*.survivors.txt")


if __name__ == "__main__":
    main()
