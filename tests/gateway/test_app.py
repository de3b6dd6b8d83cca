"""``safething gateway`` as an operator runs it: a process, a config file, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from safething.net import Identity


def test_gateway_process_serves_and_stops_cleanly(tmp_path: Path) -> None:
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
start_broker = true
port = 0
[coap]
port = 0
[http]
port = 0
"""
    )
    env = {**os.environ, "SAFETHING_IDENTITY": str(tmp_path / "owner.json")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "safething", "gateway", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    endpoints: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while len(endpoints) < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("serving "):
                endpoints.append(line.split()[1])
        assert {e.split(":")[0] for e in endpoints} == {"mqtt", "coap", "http"}, endpoints
        http = next(e for e in endpoints if e.startswith("http"))
        health = httpx.get(f"{http}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        metrics = httpx.get(f"{http}/metrics", timeout=10).text
        assert "safething_gateway_connected_devices" in metrics
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(re.match(r"gateway up in \d+ ms", doc["msg"]) for doc in logs)
    assert any(doc["msg"] == "stopping" for doc in logs)


def test_gateway_without_an_owner_identity_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nstore = "memory://"\nregistry = "{tmp_path}/gw.db"\n'
        f'identity = "{tmp_path}/missing.json"\n[mqtt]\nenabled = false\n'
        "[coap]\nenabled = false\n[http]\nenabled = false\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "safething", "gateway", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "owner identity" in proc.stderr
    assert "Traceback" not in proc.stderr
