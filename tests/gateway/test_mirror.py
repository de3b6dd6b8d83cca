"""The plain-JSON MQTT mirror on a real Mosquitto, with a real SQLite vault."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import Thing, ThingClient
from safething_gateway.mirror import JsonMirror
from safething_gateway.registry import Registry
from safething_gateway.testing import Mosquitto
from tests.things.conftest import garden_description

from .test_adoption import Probe, broker, probe, running

__all__ = ["broker", "probe"]  # fixtures used here

PREFIX = "safething-json"


@pytest.fixture
async def vault(tmp_path: Path) -> AsyncIterator[Store]:
    async with await open_store(f"sqlite://{tmp_path}/vault.db") as s:
        yield s


async def _until(probe: Probe, topic: str, payload: bytes) -> None:
    """Messages on ``topic`` until one says ``payload`` (earlier states may come first)."""
    while (await probe.expect(topic))[0] != payload:
        pass


async def _expect_json(probe: Probe, topic: str) -> tuple[dict[str, object], bool]:
    payload, retain = await probe.expect(topic)
    return json.loads(payload), retain


async def test_verified_public_readings_and_availability_are_mirrored(
    vault: Store, registry: Registry, broker: Mosquitto, probe: Probe
) -> None:
    owner = Identity.generate()
    await probe.subscribe(f"{PREFIX}/#")
    spy = Probe(broker.port)  # keeps every message the mirror sends
    await spy.subscribe(f"{PREFIX}/#")
    mirror = JsonMirror("127.0.0.1", broker.port, prefix=PREFIX, rescan=0.05)
    # the gateway's owner owns the thing too: the mirror must still leave Owner data out
    async with running(vault, registry, mirror, owner=owner):
        async with Thing(
            garden_description(), identity=Identity.generate(), owner=owner, store=vault
        ) as thing:
            await thing.register()
            await _until(probe, f"{PREFIX}/garden-01/availability", b"online")
            await thing.set("secret_code", "correct-horse")  # Owner access: never mirrored
            await thing.set("moisture", 41.5)
            doc, _ = await _expect_json(probe, f"{PREFIX}/garden-01/properties/moisture")
            assert doc["value"] == 41.5 and doc["seq"] == 1
            await thing.notify("VeryDryAlarm", 12.0)
            doc, _ = await _expect_json(probe, f"{PREFIX}/garden-01/events/VeryDryAlarm")
            assert doc["data"] == 12.0
            late = Probe(broker.port)  # a tool that starts later gets the retained state
            try:
                await late.subscribe(f"{PREFIX}/garden-01/properties/moisture")
                doc, retain = await _expect_json(late, f"{PREFIX}/garden-01/properties/moisture")
                assert retain and doc["value"] == 41.5
            finally:
                late.close()
        # the thing stopped: its availability follows
        await _until(probe, f"{PREFIX}/garden-01/availability", b"offline")
    await _until(probe, f"{PREFIX}/$gateway", b"offline")  # the mirror says goodbye
    # read up to the mirror's last message, not what is queued after close: a network
    # thread behind the probe's would lose the tail, and with it what is looked for here
    seen = await spy.until(f"{PREFIX}/$gateway", b"offline")
    spy.close()
    assert any(t.endswith("/properties/moisture") for t, _, _ in seen)  # the spy saw it all
    assert not any("secret_code" in t or b"correct-horse" in p for t, p, _ in seen)


async def test_the_mirror_takes_no_commands(
    vault: Store, registry: Registry, broker: Mosquitto, probe: Probe
) -> None:
    """Someone with a broker login publishes under the mirror's prefix: the thing and
    every verified reader are unaffected, and the next verified value replaces it."""
    owner = Identity.generate()
    await probe.subscribe(f"{PREFIX}/#")
    mirror = JsonMirror("127.0.0.1", broker.port, prefix=PREFIX, rescan=0.05)
    async with (
        running(vault, registry, mirror),
        Thing(
            garden_description(), identity=Identity.generate(), owner=owner, store=vault
        ) as thing,
    ):
        await thing.register()
        await thing.set("target", 10.0)
        await probe.expect(f"{PREFIX}/garden-01/properties/target")
        forged = json.dumps({"value": 99.0, "t": 0, "seq": 999})
        for topic in ("properties/target", "properties/target/set", "actions/OpenValve"):
            await probe.publish(f"{PREFIX}/garden-01/{topic}", forged, retain=True)
            payload, _ = await probe.expect(f"{PREFIX}/garden-01/{topic}")
            assert payload == forged.encode()  # the input arrived at the broker
        await asyncio.sleep(0.5)  # time for a (wrong) reaction, after the input arrived
        reader = ThingClient(Client(vault))
        assert (await reader.read("garden-01", "target")).value == 10.0
        inbox = await thing._md("inbox").entries()
        assert inbox == {}  # no desired value, no request
        await thing.set("target", 11.0)
        doc, _ = await _expect_json(probe, f"{PREFIX}/garden-01/properties/target")
        assert doc["value"] == 11.0


def test_prefix_is_checked() -> None:
    with pytest.raises(ValueError, match="wildcards"):
        JsonMirror("127.0.0.1", 1, prefix="a/#")


def test_the_mirror_login_may_only_write_its_tree(tmp_path: Path) -> None:
    from safething_gateway.mosquitto import MosquittoAuth

    auth = MosquittoAuth(tmp_path / "passwd", tmp_path / "acl")
    auth.add_gateway_user("gw", mirror=True, mirror_prefix="pub-json")
    assert sorted(auth.users()) == ["gw", "gw-json-mirror"]
    acl = (tmp_path / "acl").read_text()
    rules = acl.split("user gw-json-mirror\n", 1)[1].split("\n\n", 1)[0].strip().splitlines()
    assert [r for r in rules if r.startswith("topic")] == ["topic write pub-json/#"]
    auth.add_gateway_user("gw")  # the mirror turned off: its login goes
    assert auth.users() == ["gw"]
