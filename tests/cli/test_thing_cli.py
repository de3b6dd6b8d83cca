"""``safething thing ...`` against a real SQLite store, with a thing serving in the test's loop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from safething.cli import main
from safething.cli.thing import parse_arg
from safething.net import Identity
from safething.store import open_store
from safething.things import ActionRequest, Thing, ThingDescription, ValueType
from safething.things.description import Schema
from tests.things.conftest import garden_description

Run = tuple[int, str, str]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFETHING_STORE", f"sqlite://{tmp_path}/vault.db")
    monkeypatch.setenv("SAFETHING_IDENTITY", str(tmp_path / "owner.json"))
    monkeypatch.delenv("SAFETHING_PASSWORD", raising=False)
    Identity.generate("owner").save(tmp_path / "owner.json")
    Identity.generate("stranger").save(tmp_path / "stranger.json")
    return tmp_path


def as_stranger(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFETHING_IDENTITY", str(env / "stranger.json"))


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run the CLI in a thread (it has its own event loop) while the thing serves here."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def description() -> ThingDescription:
    return garden_description("garden-01")


VALVE_GATES: dict[float, asyncio.Event] = {}
"""OpenValve with this psi waits, after reporting progress, until its event is set."""


@pytest.fixture
async def garden(env: Path) -> AsyncIterator[Thing]:
    owner = Identity.load(env / "owner.json")
    store = f"sqlite://{env}/vault.db"
    async with Thing(
        description(), identity=Identity.generate("device"), owner=owner, store=store
    ) as t:

        @t.action("OpenValve")
        async def open_valve(request: ActionRequest) -> dict[str, float]:
            await request.progress(50, "opening")
            gate = VALVE_GATES.get(request.args["psi"])
            if gate is not None:  # the test lets it finish once the requester saw 'running'
                await gate.wait()
            await asyncio.sleep(0.05)
            return {"psi": request.args["psi"]}

        t.on_action("Reboot", lambda request: "rebooted")
        await t.register()
        await t.set("moisture", 41.5)
        await t.set("valve", "closed")
        await t.set("secret_code", "1234")
        await t.notify("VeryDryAlarm", 18.0)
        yield t


async def test_list(
    garden: Thing, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = await cli(capsys, "thing", "list")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "ID",
        "STATUS",
        "AVAILABLE",
        "SEEN",
        "TITLE",
        "ATTRIBUTES",
        "TOPICS",
        "ACTIONS",
    ]
    assert out.splitlines()[1].startswith("garden-01  registered  online     ")
    assert "  Gardening device  moisture," in out.splitlines()[1]
    code, out, _ = await cli(capsys, "thing", "list", "--json", "--search", "DRYalarm")
    assert json.loads(out)["topics"] == ["VeryDryAlarm", "VeryWetAlarm"]
    code, out, _ = await cli(capsys, "thing", "list", "--status", "published")
    assert out.startswith("no matching things in sqlite://")
    monkeypatch.setenv("SAFETHING_STORE", "memory://")
    assert (await cli(capsys, "thing", "list"))[1].startswith("no things in memory://")


async def test_show_values_events_and_encrypted_ones(
    garden: Thing,
    env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, _ = await cli(capsys, "thing", "show", "garden-01")
    assert code == 0
    assert "status:    registered" in out
    assert "available: online, last seen " in out
    assert "(you)" in out
    assert "moisture     41.5 %  (seq 1, " in out
    assert "secret_code  1234  (seq 1" in out
    assert "target       <no value yet>" in out
    assert "model        GD-1  [static, all access]" in out
    assert "OpenValve(psi: number between 0 and 100 = 30.0) -> object  [all access]" in out
    assert "VeryDryAlarm  18.0  (seq 1)" in out

    as_stranger(env, monkeypatch)
    code, out, _ = await cli(capsys, "thing", "show", "garden-01")
    assert "secret_code  <encrypted: owner access>" in out
    assert "(you)" not in out
    code, out, _ = await cli(capsys, "thing", "show", "garden-01", "--json")
    doc = json.loads(out)
    values = {a["name"]: a for a in doc["attributes"]}
    assert values["moisture"]["value"] == 41.5
    assert values["secret_code"]["encrypted"] is True
    assert doc["events"][0]["value"] == 18.0

    monkeypatch.setenv("SAFETHING_IDENTITY", str(env / "nobody.json"))  # no file: read-only
    assert (
        "secret_code  <encrypted: owner access>"
        in (await cli(capsys, "thing", "show", "garden-01"))[1]
    )


async def test_td(garden: Thing, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await cli(capsys, "thing", "td", "garden-01")
    td = json.loads(out)
    assert code == 0
    assert td["id"] == "urn:safething:thing:garden-01"
    assert td["properties"]["moisture"]["observable"] is True
    assert "OpenValve" in td["actions"]


async def test_owner_publishes_and_disables(
    garden: Thing,
    env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, _ = await cli(capsys, "thing", "publish", "garden-01")
    assert (code, out) == (0, "garden-01: registered -> published\n")
    async with asyncio.timeout(5):
        while garden.status != "published":  # the running thing follows its owner
            await asyncio.sleep(0.01)
    assert (await cli(capsys, "thing", "publish", "garden-01"))[
        1
    ] == "garden-01 was already published\n"
    code, out, _ = await cli(
        capsys, "thing", "request", "garden-01", "CloseValve", "--timeout", "0.5"
    )
    assert code == 1  # published, but no handler yet: the request waits, the requester gives up
    assert "timed_out" in out
    assert (await cli(capsys, "thing", "disable", "garden-01"))[0] == 0
    async with asyncio.timeout(5):
        while garden.status != "disabled":
            await asyncio.sleep(0.01)
    code, _, err = await cli(capsys, "thing", "request", "garden-01", "OpenValve")
    assert code == 1
    assert err == (
        "safething: error: OpenValve on garden-01 ended rejected: thing 'garden-01' is disabled\n"
    )

    as_stranger(env, monkeypatch)
    code, _, err = await cli(capsys, "thing", "publish", "garden-01")
    assert code == 1
    assert err.startswith("safething: error: only the owner of thing 'garden-01'")
    assert "listing" not in err and len(err.splitlines()) == 1


async def test_request_prints_every_state(
    garden: Thing, capsys: pytest.CaptureFixture[str]
) -> None:
    await garden.publish()
    # A requester shows the states it observes; a state replaced within milliseconds can
    # be skipped on a loaded machine, so the handler holds until 'running' was printed.
    # The requester is its own process, read through a pipe: reading capsys while a
    # thread prints into it loses lines (its read and truncate are two steps).
    VALVE_GATES[40.0] = gate = asyncio.Event()
    try:
        proc = await _spawn("request", "garden-01", "OpenValve", "psi=40")
        assert proc.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(30):
            while not lines or " OpenValve  running 50%: opening" not in lines[-1]:
                line = (await proc.stdout.readline()).decode()
                assert line, lines  # it ended before 'running 50%'
                lines.append(line.rstrip("\n"))
            gate.set()
            rest, err = await proc.communicate()
    finally:
        del VALVE_GATES[40.0]
    lines += rest.decode().splitlines()
    assert (proc.returncode, err.decode()) == (0, "")
    assert " OpenValve  requested  (request " in lines[0]
    assert lines[-1].endswith('OpenValve  done  result: {"psi": 40.0}')

    code, out, _ = await cli(capsys, "thing", "request", "garden-01", "OpenValve", "--json")
    assert code == 0
    states = [json.loads(line) for line in out.splitlines()]
    assert states[0]["state"] == "requested"
    assert states[-1]["state"] == "done"
    assert states[-1]["result"] == {"psi": 30.0}
    assert {s["request"] for s in states} == {states[0]["request"]}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["garden-01", "OpenValve", "psi=abc"], "param 'psi': expected number between 0 and 100"),
        (["garden-01", "OpenValve", "psi=500"], "param 'psi': expected number between 0 and 100"),
        (["garden-01", "OpenValve", "pressure=3"], "has no param 'pressure'"),
        (["garden-01", "OpenValve", "psi"], "write NAME=VALUE"),
        (["garden-01", "OpenValve", "psi=1", "psi=2"], "given twice"),
        (["garden-01", "Explode"], "thing 'garden-01' has no action 'Explode'"),
        (["garden-99", "OpenValve"], "no thing 'garden-99' in this store"),
    ],
)
async def test_request_errors_are_one_line(
    garden: Thing, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = await cli(capsys, "thing", "request", *argv)
    assert code == 1
    assert message in err
    assert len(err.splitlines()) == 1
    assert out == ""


async def test_request_access_denied_and_timeout(
    garden: Thing,
    env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, err = await cli(
        capsys, "thing", "request", "garden-01", "Reboot", "--timeout", "0.3"
    )
    assert code == 1  # registered, not published: the request waits in the inbox
    assert "timed_out" in out.splitlines()[-1]
    assert err == "safething: error: Reboot on garden-01 ended timed_out: no result within 0.3 s\n"
    await garden.publish()
    assert (await cli(capsys, "thing", "request", "garden-01", "Reboot"))[0] == 0
    as_stranger(env, monkeypatch)
    code, out, err = await cli(capsys, "thing", "request", "garden-01", "Reboot")
    assert code == 1
    assert "rejected: access denied: action Reboot is for owner access" in err
    monkeypatch.setenv("SAFETHING_IDENTITY", str(env / "nobody.json"))
    code, _, err = await cli(capsys, "thing", "request", "garden-01", "Reboot")
    assert code == 1
    assert "safething identity create" in err


async def test_unknown_thing_is_one_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with await open_store(f"sqlite://{env}/vault.db"):
        pass  # a vault, without that thing
    for argv in (["show", "nothing-1"], ["td", "nothing-1"], ["publish", "nothing-1"]):
        code, _, err = await cli(capsys, "thing", *argv)
        assert (code, err) == (1, "safething: error: no thing 'nothing-1' in this store\n")
    code, _, err = await cli(capsys, "thing", "watch", "nothing-1")
    assert code == 1


def test_parse_arg() -> None:
    assert parse_arg(Schema("number"), "30") == 30
    assert parse_arg(Schema("number"), "2.5e1") == 25.0
    assert parse_arg(Schema("boolean"), "Yes") is True
    assert parse_arg(Schema("boolean"), "false") is False
    assert parse_arg(Schema("string"), "42") == "42"
    assert parse_arg(Schema("enum", choices=["open", "1"]), "1") == "1"
    assert parse_arg(Schema("object"), '{"a": [1, null]}') == {"a": [1, None]}
    assert parse_arg(Schema(ValueType.NUMBER), "wet") == "wet"  # the type check names it


async def _spawn(*argv: str) -> asyncio.subprocess.Process:
    """``safething thing ARGV`` in its own process, its output on pipes."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "safething",
        "thing",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )


async def _watch(*argv: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start ``safething thing watch garden-01 ARGV``; returns it once it is watching, with
    the lines it wrote on stderr before."""
    proc = await _spawn("watch", "garden-01", *argv)
    assert proc.stderr is not None
    before: list[str] = []
    async with asyncio.timeout(20):
        while not (line := (await proc.stderr.readline()).decode()).startswith("watching "):
            assert line, before
            before.append(line)
    assert line.startswith("watching garden-01: ")
    return proc, before


async def _lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        return [(await proc.stdout.readline()).decode() for _ in range(count)]


async def _interrupt(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(10):
        _, err = await proc.communicate()
    assert proc.returncode == 0
    return err.decode()


async def test_watch_streams_until_ctrl_c(garden: Thing) -> None:
    proc, _ = await _watch()
    await garden.set("moisture", 12.5)
    await garden.notify("VeryDryAlarm", 12.5)
    await garden.notify("VeryWetAlarm")
    # one subscription per attribute and topic: their lines come in no fixed order
    lines = sorted(line.split("  garden-01  ", 1)[1] for line in await _lines(proc, 3))
    assert lines == [
        "VeryDryAlarm ! 12.5  (seq 2)\n",
        "VeryWetAlarm ! (event)  (seq 1)\n",
        "moisture = 12.5  (seq 2)\n",
    ]
    err = await _interrupt(proc)
    assert err == "stopped\n"


async def test_watch_json_with_filter_and_access(
    garden: Thing, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_stranger(env, monkeypatch)
    proc, _ = await _watch("--attribute", "moisture", "--filter", "gt:50", "--json")
    notes = []
    for low, high in ((12.0, 60.0), (30.0, 70.0)):
        await garden.set("moisture", low)  # filtered out
        await garden.set("moisture", high)
        # An attribute keeps only its latest value (a watcher that reads late sees that
        # one): the next pair is set once this pair's line was printed, not after a sleep.
        notes += [json.loads(line) for line in await _lines(proc, 1)]
    assert [(n["name"], n["value"], n["seq"]) for n in notes] == [
        ("moisture", 60.0, 3),
        ("moisture", 70.0, 5),
    ]
    assert notes[0]["thing"] == "garden-01"
    assert notes[0]["kind"] == "attribute"
    await _interrupt(proc)

    proc, skipped = await _watch()  # everything readable; the rest is skipped, said so
    assert skipped == [
        "skipping secret_code: <encrypted: owner access>\n",
        "skipping group_note: <encrypted: group access>\n",
    ]
    await _interrupt(proc)


async def test_watch_refuses_what_it_cannot_read(
    garden: Thing, env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    as_stranger(env, monkeypatch)
    code, _, err = await cli(capsys, "thing", "watch", "garden-01", "--attribute", "secret_code")
    assert code == 1
    assert "is for owner access and this identity holds no key" in err
    code, _, err = await cli(capsys, "thing", "watch", "garden-01", "--topic", "Nope")
    assert code == 1
    assert err == (
        "safething: error: thing 'garden-01' has no topic 'Nope' "
        "(topics: VeryDryAlarm, VeryWetAlarm)\n"
    )
    code, _, err = await cli(capsys, "thing", "watch", "garden-01", "--filter", "bigger:3")
    assert code == 1
    assert "filter" in err


async def test_history_returns_more_than_the_ring_in_order(
    env: Path, garden: Thing, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = garden.description.attribute("moisture").history
    first = (await garden.things.read("garden-01", "moisture")).seq + 1  # the fixture's value
    for i in range(ring * 3 + 5):
        await garden.set("moisture", float(i))
    code, out, _ = await cli(capsys, "thing", "history", "garden-01", "moisture", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()][first - 1 :]
    assert [r["value"] for r in rows] == [float(i) for i in range(ring * 3 + 5)]
    assert [r["seq"] for r in rows] == list(range(first, first + ring * 3 + 5))
    code, out, _ = await cli(
        capsys, "thing", "history", "garden-01", "moisture", "--since", "1h", "--every", "1d"
    )
    assert code == 0 and f"n={ring * 3 + 5 + first - 1}" in out and "min=0.0" in out
    for i in range(40):
        await garden.set("secret_code", f"s{i}")
    as_stranger(env, monkeypatch)
    code, _, err = await cli(capsys, "thing", "history", "garden-01", "secret_code")
    assert code != 0 and "encrypted" in err
    with pytest.raises(SystemExit):
        await cli(capsys, "thing", "history", "garden-01", "moisture", "--since", "x")
    assert "not a duration" in capsys.readouterr().err
