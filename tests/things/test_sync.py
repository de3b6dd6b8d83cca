"""The synchronous facade, as a gpiozero script would use it (mock pins are gpiozero's)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from safething.errors import ActionFailedError
from safething.net import Identity
from safething.things import Notification, ThingDescription, Topic, ValueTypeError
from safething.things.sync import SyncThing

from .conftest import garden_description


def test_a_plain_loop_drives_a_thing(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db"
    owner = Identity.generate()
    alarms: list[Notification] = []
    got = threading.Event()
    with (
        SyncThing(garden_description(), identity=Identity.generate(), owner=owner, store=url) as g,
        SyncThing(ThingDescription("controller-01"), identity=Identity.generate(), store=url) as c,
    ):
        valve = []
        g.on_action("OpenValve", lambda request: valve.append(request.args["psi"]) or {"ok": 1})
        c.subscribe(
            "garden-01",
            topic="VeryDryAlarm",
            callback=lambda n: (alarms.append(n), got.set()),
        )
        for v in (50.0, 30.0, 10.0):
            assert g.set("moisture", v) > 0
        g.notify("VeryDryAlarm", 10.0)
        assert got.wait(5)
        assert alarms[0].value == 10.0
        assert c.read("garden-01", "moisture").value == 10.0
        assert c.request("garden-01", "OpenValve", psi=20) == {"ok": 1}
        assert valve == [20.0]
        with pytest.raises(ValueTypeError):
            g.set("moisture", "soggy")
        g.on_action("CloseValve", lambda request: 1 / 0)
        with pytest.raises(ActionFailedError, match="ZeroDivisionError"):
            c.request("garden-01", "CloseValve")
    with pytest.raises(RuntimeError, match="closed"):
        g.set("moisture", 1.0)


def test_closed_threads_do_not_linger(tmp_path: Path) -> None:
    before = threading.active_count()
    thing = SyncThing(
        ThingDescription("lonely-01", topics=[Topic("Ping")]),
        identity=Identity.generate(),
        store=f"sqlite://{tmp_path}/v.db",
    )
    thing.notify("Ping")
    thing.close()
    thing.close()
    assert threading.active_count() <= before
