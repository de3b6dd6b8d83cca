"""Availability: online/offline and last seen, written by the thing, checked by every reader."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from safething.errors import MalformedRecordError, TamperedDataError, ThingOfflineError
from safething.net import Action, Client, Identity
from safething.store import Store, open_store
from safething.things import ActionRequest, Availability, Thing, ThingClient
from safething.things.availability import LIVE, live_record
from safething.things.layout import ThingAddresses
from safething.things.values import dumps

from .conftest import garden_description


async def test_online_while_running_offline_when_stopped(
    store: Store, owner: Identity, stranger: ThingClient
) -> None:
    device = Identity.generate()
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        live = await stranger.availability("garden-01")
        assert (live.online, live.state) == (True, "online")
        assert live.last_seen is not None and abs(live.last_seen - time.time()) < 60
        async with stranger.follow_availability("garden-01") as watch:
            first = await anext(watch)
            assert first.online is True
            await t.close()
            second = await asyncio.wait_for(anext(watch), 10)
    assert (second.online, second.reason) == (False, "stopped")
    assert (await stranger.availability("garden-01")).state == "offline"


async def test_a_thing_registering_again_is_online_again(
    store: Store, owner: Identity, stranger: ThingClient
) -> None:
    """A thing registered before (its MDs exist: it registers the long way, reading them
    back) says again that it is online, after the "stopped" of its last run."""
    device = Identity.generate()
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
    assert (await stranger.availability("garden-01")).reason == "stopped"
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        live = await stranger.availability("garden-01")
        assert (live.online, live.state) == (True, "online")


async def test_request_to_an_offline_thing_says_so_at_once(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        await t.publish()
    # the thing is stopped: refused at once when asked ...
    with pytest.raises(ThingOfflineError, match=r"offline .*stopped"):
        await stranger.request("garden-01", "OpenValve", queue_if_offline=False)
    # ... or queued, and the handle says so at once
    handle = await stranger.request("garden-01", "OpenValve", timeout=30)
    assert handle.offline and handle.state == "requested"
    assert "queued until it returns" in handle.status.message
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:

        @t.action("OpenValve")
        async def open_valve(request: ActionRequest) -> dict[str, float]:
            return {"psi": request.args["psi"]}

        await t.register()
        assert await handle.result(timeout=10) == {"psi": 30.0}


KILLED_THING = textwrap.dedent(
    """
    import asyncio, sys
    from safething.net import Identity
    from safething.things import Thing
    from tests.things.conftest import garden_description

    async def main(url, owner_path):
        owner = Identity.load(owner_path)
        async with Thing(garden_description(), identity=Identity.generate(), owner=owner,
                         store=url, heartbeat=0.3) as t:
            await t.register()
            print("online", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_a_killed_thing_turns_offline_when_its_heartbeats_stop(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/vault.db"
    owner = Identity.generate()
    owner.save(tmp_path / "owner.json")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_THING,
        url,
        str(tmp_path / "owner.json"),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.strip() == b"online"
        async with await open_store(url) as store, ThingClient(Client(store)) as reader:
            async with reader.follow_availability("garden-01") as watch:
                assert (await anext(watch)).online is True
                child.send_signal(signal.SIGKILL)  # no chance to say goodbye
                await asyncio.wait_for(child.wait(), 30)
                gone: Availability = await asyncio.wait_for(anext(watch), 30)
            assert (gone.online, gone.reason) == (False, "no heartbeat")
            assert (await reader.availability("garden-01")).online is False
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_availability_from_anyone_else_is_refused(
    garden: Thing, store: Store, owner: Identity, stranger: ThingClient
) -> None:
    """An identity with write access to the thing MD (granted by mistake) still cannot
    say the thing is online or offline."""
    intruder = Identity.generate("intruder")
    address = ThingAddresses.of("garden-01").thing
    await (
        Client(store, owner)
        .md(address.name, address.tag)
        .set_permissions(intruder.public_sign_key, Action.UPDATE)
    )
    md = Client(store, intruder).md(address.name, address.tag)
    await md.put(LIVE, live_record(online=False, since=time.time(), heartbeat=None))
    with pytest.raises(TamperedDataError, match="neither the thing nor its owner"):
        await stranger.availability("garden-01")


async def test_unknown_for_a_thing_that_never_said(
    store: Store, owner: Identity, stranger: ThingClient
) -> None:
    async with Thing(
        garden_description(), identity=Identity.generate(), owner=owner, store=store, heartbeat=None
    ) as t:
        await t.register()
        assert (await stranger.availability("garden-01")).state == "unknown"
        await t.set_availability(False, reason="last will")
        live = await stranger.availability("garden-01")
        assert (live.state, live.reason) == ("offline", "last will")
        await t.set_availability(True)
        assert (await stranger.availability("garden-01")).online is True
    with pytest.raises(ValueError, match="heartbeat"):
        Thing(garden_description(), identity=Identity.generate(), heartbeat=0)


@pytest.mark.parametrize("field", ["t", "since", "hb"])
async def test_an_availability_record_with_a_time_no_float_holds_is_malformed(
    garden: Thing, store: Store, owner: Identity, stranger: ThingClient, field: str
) -> None:
    """The owner's key writes a ``live`` record with an integer too large for a float
    (CBOR carries any integer) as its time, since or heartbeat: readers get
    ``MalformedRecordError``, not an ``OverflowError`` from the arithmetic on it."""
    address = ThingAddresses.of("garden-01").thing
    doc = {"s": "online", "t": time.time(), "since": time.time(), "hb": 30.0, field: 10**400}
    await Client(store, owner).md(address.name, address.tag).put(LIVE, dumps(doc))
    with pytest.raises(MalformedRecordError, match="malformed availability record"):
        await stranger.availability("garden-01")
