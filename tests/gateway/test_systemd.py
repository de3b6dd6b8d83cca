"""The gateway under systemd: Type=notify (READY=1, watchdog pings, STOPPING=1) through a
real $NOTIFY_SOCKET datagram socket, journald priorities and JSON fields on stderr."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from safething.net import Identity

ROOT = Path(__file__).resolve().parents[2]


def test_notify_watchdog_and_journal_lines(tmp_path: Path) -> None:
    Identity.generate("owner").save(tmp_path / "owner.json")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
store = "sqlite://{tmp_path}/vault.db"
registry = "{tmp_path}/gateway.db"
identity = "{tmp_path}/owner.json"
log_format = "json"
[mqtt]
enabled = false
[coap]
enabled = false
[http]
port = 0
"""
    )
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
        "JOURNAL_STREAM": "8:12345",
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "safething", "gateway", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert "STATUS=serving http://127.0.0.1:" in ready
        http = ready.split("serving ")[1].split(",")[0].strip()
        pings = 0
        while pings < 3:
            pings += sock.recv(4096) == b"WATCHDOG=1"
        # a refused message: its log line carries device, reason and transport as fields
        r = httpx.post(f"{http}/st/v1/devices/sensor-01/reading", content=b"junk", timeout=10)
        assert r.status_code == 400
        proc.send_signal(signal.SIGTERM)
        while True:
            message = sock.recv(4096).decode()
            if message.startswith("STOPPING=1"):
                break
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        sock.close()
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if line]
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines
    docs = [json.loads(line[3:]) for line in lines]
    refused = [d for d in docs if d["msg"].startswith("rejected sensor-01/reading")]
    assert refused, docs
    assert refused[0]["device"] == "sensor-01"
    assert refused[0]["reason"] == "bad_message"
    assert refused[0]["transport"] == "http"
    assert lines[docs.index(refused[0])].startswith("<6>")  # info


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    from safething_gateway import systemd

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # another process's watchdog
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0


def test_the_unit_is_type_notify_with_a_watchdog() -> None:
    unit = (ROOT / "gateway" / "safething-gateway.service").read_text()
    assert "\nType=notify\n" in unit and "\nWatchdogSec=" in unit
    assert "\nNotifyAccess=main\n" in unit
