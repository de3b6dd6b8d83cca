"""The two link versions: ST2 (bodies sealed) for new devices, ST1 (in clear) only for
devices provisioned with it, each refused on the other's link."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from safething.net import Client
from safething.store import Store
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.protocol import (
    BadMacError,
    ReplayError,
    frame,
    parse_frame,
)
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device

OWNER_SENSOR = {
    **SENSOR,
    "attributes": [
        {"name": "moisture", "type": "number", "dynamic": True, "access": "owner"},
    ],
    "actions": [
        {"name": "OpenValve", "params": [{"name": "psi", "type": "number"}], "access": "owner"}
    ],
}


async def _born(gateway: Gateway, device: Device, description: dict[str, object]) -> None:
    doc = dict(description, id=device.device_id)
    await gateway.handle(device.device_id, "birth", device.message("birth", {"description": doc}))


async def test_st2_is_the_default_and_its_frames_carry_no_plaintext(
    gateway: Gateway, store: Store
) -> None:
    record = gateway.registry.add("sensor-01", "http")
    assert record.protocol == 2
    device = Device("sensor-01", record.secret)
    await _born(gateway, device, SENSOR)
    message = device.message("reading", {"moisture": 42.125})
    assert message.startswith(b"ST2 ") and b"42.125" not in message and b"moisture" not in message
    await gateway.handle("sensor-01", "reading", message)
    reader = ThingClient(Client(store))
    assert (await reader.read("sensor-01", "moisture")).value == 42.125  # it did arrive
    # the same body sealed under the next counter: a different ciphertext (the nonce moved)
    again = device.message("reading", {"moisture": 42.125})
    assert again.partition(b"\n")[2] != message.partition(b"\n")[2]


async def test_each_direction_has_its_own_keys(gateway: Gateway) -> None:
    record = gateway.registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    await _born(gateway, device, SENSOR)
    queued = await gateway.send("sensor-01", "desired", {"target": 3})
    [out] = await gateway.handle("sensor-01", "poll", device.message("poll", b""))
    assert b"target" not in out.frame
    # The same counter and body both ways: different ciphertexts (a keystream used both
    # ways would give one body away with the other), and a frame sealed with the
    # downlink keys is no uplink.
    body = b'{"target":3}'
    assert queued.body == body
    up = frame(record.secret, "sensor-01", "reading", queued.counter, body, uplink=True)
    down = frame(record.secret, "sensor-01", "reading", queued.counter, body, uplink=False)
    assert up.partition(b"\n")[2] != down.partition(b"\n")[2]
    with pytest.raises(BadMacError):
        await gateway.handle("sensor-01", "reading", down.replace(b"ST2 1 ", b"ST2 99 ", 1))
    with pytest.raises(BadMacError):
        await gateway.handle("sensor-01", "reading", down)


async def test_st1_only_for_devices_provisioned_with_it(
    gateway: Gateway, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    old = gateway.registry.add("sensor-01", "http", protocol=1)
    new = gateway.registry.add("sensor-02", "http")
    old_device = Device("sensor-01", old.secret, version=1)
    with caplog.at_level(logging.WARNING, logger="safething.gateway"):
        await _born(gateway, old_device, SENSOR)
        await gateway.handle("sensor-01", "reading", old_device.message("reading", {"moisture": 7}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "speaks ST1" in w]) == 1  # once, not per message
    assert (await ThingClient(Client(store)).read("sensor-01", "moisture")).value == 7
    # downlinks to it are ST1 too
    queued = await gateway.send("sensor-01", "desired", {"target": 1})
    [out] = await gateway.handle("sensor-01", "poll", old_device.message("poll", b""))
    assert out.counter == queued.counter and out.frame.startswith(b"ST1 ")

    # an ST1 frame for an ST2 device, made with the right secret (its MAC is right under
    # ST1's rules): refused like a wrong MAC (the answer does not tell the version), the
    # reason in the log, and it moves no counter
    new_as_st1 = Device("sensor-02", new.secret, version=1)
    with caplog.at_level(logging.INFO, logger="safething.gateway"):
        with pytest.raises(BadMacError, match="wrong MAC"):
            await gateway.handle("sensor-02", "reading", new_as_st1.message("reading", {}))
        # and the other way round
        old_as_st2 = Device("sensor-01", old.secret)
        old_as_st2.counter = 100
        with pytest.raises(BadMacError, match="wrong MAC"):
            await gateway.handle("sensor-01", "reading", old_as_st2.message("reading", {}))
    assert "sensor-02 was provisioned for ST2: an ST1 message is refused" in caplog.text
    assert "sensor-01 was provisioned for ST1: an ST2 message is refused" in caplog.text
    new_device = Device("sensor-02", new.secret)
    await _born(gateway, new_device, dict(SENSOR, id="sensor-02"))
    assert gateway.registry.get("sensor-02").rx_counter == 1


async def test_sealed_action_arguments_are_never_sent_to_an_st1_device(
    gateway: Gateway, store: Store
) -> None:
    record = gateway.registry.add("sensor-01", "http", protocol=1)
    device = Device("sensor-01", record.secret, version=1)
    await _born(gateway, device, OWNER_SENSOR)
    owner = ThingClient(Client(store, gateway.owner))
    handle = await owner.request("sensor-01", "OpenValve", psi=33.5)
    state = await handle.wait(10)
    assert state.state == "failed"
    assert "ST1" in (state.message or "")
    assert gateway.registry.pending("sensor-01") == []  # nothing queued for the link

    # an ST2 device gets them, sealed
    record2 = gateway.registry.add("sensor-02", "http")
    device2 = Device("sensor-02", record2.secret)
    await _born(gateway, device2, dict(OWNER_SENSOR, id="sensor-02"))
    handle2 = await owner.request("sensor-02", "OpenValve", psi=33.5)
    async with asyncio.timeout(10):
        while not (pending := gateway.registry.pending("sensor-02")):
            await asyncio.sleep(0.02)
    [out] = await gateway.handle("sensor-02", "poll", device2.message("poll", b""))
    assert b"33.5" not in out.frame and b"psi" not in out.frame
    body = parse_frame(out.frame).open(record2.secret, "sensor-02", out.channel, uplink=False)
    assert json.loads(body)["args"] == {"psi": 33.5}
    assert pending[0].counter == out.counter
    assert handle2.request_id in out.channel


async def test_a_replayed_st2_frame_is_refused(gateway: Gateway) -> None:
    record = gateway.registry.add("sensor-01", "http")
    device = Device("sensor-01", record.secret)
    await _born(gateway, device, SENSOR)
    message = device.message("reading", {"moisture": 1})
    await gateway.handle("sensor-01", "reading", message)
    with pytest.raises(ReplayError):
        await gateway.handle("sensor-01", "reading", message)


def test_a_registry_from_before_st2_keeps_its_devices_on_st1(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE devices (
            id TEXT PRIMARY KEY, transport TEXT NOT NULL, secret BLOB NOT NULL,
            keys BLOB NOT NULL, created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
            rx_counter INTEGER NOT NULL DEFAULT 0, tx_counter INTEGER NOT NULL DEFAULT 0,
            will_counter INTEGER, description TEXT, online INTEGER NOT NULL DEFAULT 0,
            last_seen REAL, meta TEXT NOT NULL DEFAULT '{}') WITHOUT ROWID;"""
    )
    db.execute(
        "INSERT INTO devices(id, transport, secret, keys, created) VALUES (?, ?, ?, ?, ?)",
        ("sensor-01", "mqtt", bytes(32), bytes(64), 0.0),
    )
    db.commit()
    db.close()
    registry = Registry(path)
    try:
        assert registry.get("sensor-01").protocol == 1
        assert registry.add("sensor-02", "mqtt").protocol == 2
        with pytest.raises(ValueError, match="link version"):
            registry.add("sensor-03", "mqtt", protocol=3)
    finally:
        registry.close()
