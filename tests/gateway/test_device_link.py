"""The reference device's side of the link (``safething_gateway.device_clients.base``): it acts
only on downlinks the gateway framed with the device's secret, once each."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from safething_gateway.device_clients.base import DeviceLink
from safething_gateway.protocol import BadMacError, frame, parse_frame

from .conftest import SENSOR, tamper


def _link(tmp_path: Path) -> tuple[DeviceLink, list[tuple[str, dict[str, Any]]]]:
    link = DeviceLink("sensor-01", secrets.token_bytes(32), SENSOR, state_file=tmp_path / "s")
    ran: list[tuple[str, dict[str, Any]]] = []
    link.on_action = lambda action, args: ran.append((action, args))
    return link, ran


def _action(secret: bytes, counter: int, request_id: str = "r1") -> tuple[str, bytes]:
    channel = f"action/{request_id}"
    body = json.dumps({"id": request_id, "action": "OpenValve", "args": {"psi": 90}}).encode()
    return channel, frame(secret, "sensor-01", channel, counter, body, uplink=False)


def test_a_forged_downlink_is_refused_and_not_run(tmp_path: Path) -> None:
    link, ran = _link(tmp_path)
    # an attacker on the broker or the LAN without the device's secret
    channel, forged = _action(secrets.token_bytes(32), 1)
    with pytest.raises(BadMacError):
        link.handle_down(channel, forged)
    # a valid downlink whose body was changed on the way
    channel, genuine = _action(link.secret, 1)
    with pytest.raises(BadMacError):
        link.handle_down(channel, tamper(genuine))
    # sealed with the right secret but the uplink keys (a frame reflected back)
    reflected = frame(link.secret, "sensor-01", channel, 1, b"{}", uplink=True)
    with pytest.raises(BadMacError):
        link.handle_down(channel, reflected)
    # a valid downlink moved to another channel
    with pytest.raises(BadMacError):
        link.handle_down("action/r2", genuine)
    assert ran == []
    assert link.down_counter == 0
    assert link.up_counter == 0  # not even acknowledged
    # the same path runs the genuine one: the refusals above were not for another reason
    out = link.handle_down(channel, genuine)
    assert ran == [("OpenValve", {"psi": 90})]
    assert [c for c, _ in out] == ["ack", "result/r1", "result/r1"]
    ack = parse_frame(out[0][1])
    assert json.loads(ack.open(link.secret, "sensor-01", "ack", uplink=True)) == {"down": 1}


def test_a_replayed_downlink_is_acknowledged_again_but_not_run_twice(tmp_path: Path) -> None:
    link, ran = _link(tmp_path)
    channel, first = _action(link.secret, 1, "r1")
    link.handle_down(channel, first)
    again = link.handle_down(channel, first)  # replayed by the broker or an attacker
    assert ran == [("OpenValve", {"psi": 90})]
    assert [c for c, _ in again] == ["ack"]
    # the counter survives a restart of the device: the replay still does not run
    restarted = DeviceLink("sensor-01", link.secret, SENSOR, state_file=tmp_path / "s")
    restarted.on_action = lambda action, args: ran.append((action, args))
    assert [c for c, _ in restarted.handle_down(channel, first)] == ["ack"]
    assert ran == [("OpenValve", {"psi": 90})]
