"""``safething demo``: through the gateway (default), ``--local`` and ``--net``."""

from __future__ import annotations

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
    code = main(["demo", "--local", "--seconds", "6", "--store", store])
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
    assert "stopped after 6." in out
    for role in ("garden-device", "garden-controller"):
        assert (env / f"identity.{role}.json").exists()  # the things keep their identities

    # a second run in another process reuses the identities and the things; Ctrl-C stops it
    proc = subprocess.Popen(
        [sys.executable, "-m", "safething", "demo", "--local", "--store", store],
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
    code = main(["demo", "--seconds", "8", "--store", store])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "started a private Mosquitto on mqtt://127.0.0.1:" in out
    for scheme in ("mqtt", "coap", "http"):
        assert re.search(rf"^  {scheme}://127\.0\.0\.1:\d+$", out, re.M), scheme
        assert re.search(rf"device garden-{scheme}-\w+ is online over {scheme}", out)
        assert re.search(rf"reading +garden-{scheme}-\w+ +moisture = [0-9.]+ %", out)
    assert re.search(r"notification +VeryDryAlarm [0-9.]+ % from garden-", out)
    assert re.search(r"action +OpenValve on garden-\w+-\w+: done ->", out)
    assert "stopped after 8." in out
    # the registry and counters are kept: a second run continues without replays
    code = main(["demo", "--seconds", "3", "--store", store])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "replay" not in out + err
    assert re.search(r"reading +garden-mqtt-\w+ +moisture", out)
