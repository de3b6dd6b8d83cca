"""``safething demo``: through the gateway (default), ``--local`` and ``--net``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from safething.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFETHING_IDENTITY", str(tmp_path / "identity.json"))
    monkeypatch.delenv("SAFETHING_STORE", raising=False)
    monkeypatch.delenv("SAFETHING_PASSWORD", raising=False)
    return tmp_path


def test_garden_demo(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:///{env}/vault.db"
    code = main(["demo", "--local", "--seconds", "6", "--store", store, "--verbose"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    device = re.search(r"device: +(garden-device-[0-9a-f]{8})", out)
    assert device is not None
    assert f"safething thing watch {device[1]} --store {store}" in out
    assert re.search(r"notification +VeryDryAlarm [0-9.]+ % from garden-device-", out)
    assert re.search(r"action +OpenValve\(psi=30\) on garden-device-\w+: requested by", out)
    assert re.search(r"action +OpenValve\(psi=30\) on garden-device-\w+: done ->", out)
    assert re.search(r"action +CloseValve\(\) on garden-device-\w+: done ->", out)
    assert re.search(r"reading +garden-device-\w+ +moisture = [0-9.]+ %", out)
    assert re.search(r"^stopped after \d+\.\d s: ", out, re.M)  # (6 s and the stop)
    for role in ("garden-device", "garden-controller"):
        assert (env / f"identity.{role}.json").exists()  # the things keep their identities

    # a second run in another process reuses the identities and the things; Ctrl-C stops it
    proc = subprocess.Popen(
        [sys.executable, "-m", "safething", "demo", "--local", "--store", store, "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if " reading " in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped after" in rest


def test_garden_demo_is_calm_by_default(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--local", "--seconds", "5", "--store", f"sqlite:///{env}/vault.db"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "moisture = " not in out  # no reading stream; valve changes are shown
    assert re.search(r"action +OpenValve\(psi=30\) on garden-device-\w+: done ->", out)
    assert "requested by" not in out and ": running" not in out


def test_network_demo(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--net", "--store", f"sqlite:///{env}/vault.db"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "owner: a new identity in" in out
    assert "a reader with no keys verified moisture" in out
    assert "plaintext visible in sqlite:" in out and "YES" not in out
    assert "the reader refused it" in out
    assert "done. Inspect it with" in out


def test_bad_seconds(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--seconds", "0"])
    assert exit_info.value.code == 2
    assert "expected seconds above 0" in capsys.readouterr().err


def test_gateway_demo(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The main job: a private broker, three bridges, a device on each, a controller."""
    store = f"sqlite:///{env}/vault.db"
    code = main(["demo", "--seconds", "8", "--store", store, "--verbose"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "started a private Mosquitto on mqtt://127.0.0.1:" in out
    for scheme in ("mqtt", "coap", "http"):
        assert re.search(rf"^  {scheme}://127\.0\.0\.1:\d+$", out, re.M), scheme
        assert re.search(rf"device garden-{scheme}-\w+ is online over {scheme}", out)
        assert re.search(rf"reading +garden-{scheme}-\w+ +moisture = [0-9.]+ %", out)
    assert re.search(r"notification +VeryDryAlarm [0-9.]+ % from garden-", out)
    assert re.search(r"action +OpenValve on garden-\w+-\w+: done ->", out)
    assert re.search(r"^stopped after \d+\.\d s: ", out, re.M)  # (8 s and the stop)
    # the registry and counters are kept: a second run continues without replays
    code = main(["demo", "--seconds", "3", "--store", store, "--verbose"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "replay" not in out + err
    assert re.search(r"reading +garden-mqtt-\w+ +moisture", out)


def test_gateway_demo_is_calm_and_keeps_its_own_vault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --store or --identity: its own vault and owner, said where; no readings shown."""
    for name in ("SAFETHING_STORE", "SAFETHING_IDENTITY", "SAFETHING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    demo = tmp_path / "data" / "safething" / "demo"
    code = main(["demo", "--seconds", "6"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"owner: a new identity in {demo / 'owner.json'} (mode 0600)" in out
    assert f"vault: sqlite://{demo / 'vault.db'}" in out
    assert f"gateway state (registry, device counters, broker files): {demo}" in out
    assert f"to start afresh: rm -r {demo}" in out
    assert f"safething thing list --store sqlite://{demo / 'vault.db'}" in out
    assert (demo / "vault.db").is_file()
    assert not (tmp_path / "data" / "safething" / "vault.db").exists()  # the user's vault
    assert not (tmp_path / "config").exists()  # nor the user's identity
    assert " reading " not in out
    done = re.findall(r"action +OpenValve on garden-\w+-\w+: done in \d+ ms \(VeryDryAlarm", out)
    assert done
    shown = out.split("curl http://")[1].splitlines()[2:]
    assert len([line for line in shown if line.strip()]) <= 3 + 6 * 2  # about 1 line per second


async def test_gateway_demo_closes_only_open_valves(tmp_path: Path) -> None:
    """The controller remembers what it did: no CloseValve to a closed valve (nor Open to an
    open one), while moisture readings above the threshold keep coming after a close."""
    from safething.net import Identity
    from safething.store import open_store
    from safething_gateway.demo import GatewayDemo

    lines: list[str] = []
    async with await open_store("memory://") as store:
        owner = Identity.generate("owner")
        async with GatewayDemo(store, owner, tmp_path / "state", echo=lines.append) as demo:
            async with asyncio.timeout(300):  # a hang guard only
                while demo.counts["CloseValve done"] < 4:
                    await asyncio.sleep(0.1)
    assert [d.needless for d in demo.devices] == [0, 0, 0]
    assert demo.counts["OpenValve done"] >= demo.counts["CloseValve done"]


def test_gateway_demo_stops_quietly_on_ctrl_c_to_its_process_group(env: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground group: the private broker must not
    die first (the bridge then warned of a lost connection while the demo stopped)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "safething", "demo", "--store", f"sqlite:///{env}/vault.db"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group, as a shell gives a foreground job
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(r"action +\w+ on garden-\w+-\w+: done", line):
                break
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    output = "".join(seen) + rest
    assert proc.returncode == 0, output
    assert "stopped after" in rest
    assert "lost the connection" not in output and "Traceback" not in output, output
