"""A bound on running custodial things (safething_gateway.core, "A bound on running
things").

At most ``max_things`` custodial things of linked devices run; the gateway closes
those quiet longest (for ``close_after`` seconds at least, and idle), and they are
restored on demand as after a restart. These tests show the bound holds and closes
the quiet longest, that closing loses nothing (readings in order, a request written
into a closed thing's inbox served once, the availability unchanged), that a busy
thing is not closed, that a message or an inbox write while a thing closes is served,
that a closed thing's trust state refuses a rollback the attacker makes while it is
closed, and that closed things do not stay in memory as frozen cycles.
"""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import ThingClient, ThingDescription
from safething.things.layout import ThingAddresses
from safething_gateway.config import ConfigError, load_config
from safething_gateway.core import Gateway, OutboundDownlink
from safething_gateway.protocol import parse_frame
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device

QUIET = 0.05
"""``close_after`` of these tests: a thing quiet that long may be closed."""


async def _until(check: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(20):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within 20 s: {what}") from None


class Site:
    """A gateway on an SQLite store and registry files, and its devices."""

    def __init__(self, tmp_path: Path, store: Store) -> None:
        self.store = store
        self.owner = Identity.generate("owner")
        self.registry = Registry(tmp_path / "gateway.db")
        self.devices: dict[str, Device] = {}
        self.requester = ThingClient(Client(store, self.owner))

    def gateway(self, **kwargs: Any) -> Gateway:
        kwargs.setdefault("close_after", QUIET)
        return Gateway(store=self.store, registry=self.registry, owner=self.owner, **kwargs)

    @staticmethod
    async def start(gw: Gateway, *, sweeping: bool = False) -> None:
        """Start ``gw``; without its sweep task unless ``sweeping`` (the test calls
        :meth:`Gateway.close_quiet_things` itself, at the moments it chooses)."""
        await gw.start()
        if not sweeping:
            assert gw._sweep_task is not None
            gw._sweep_task.cancel()

    async def born(self, gw: Gateway, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            device_id = f"sensor-{len(self.devices):02d}"
            device = Device(device_id, self.registry.add(device_id, "http").secret)
            self.devices[device_id] = device
            birth = device.message("birth", {"description": {**SENSOR, "id": device_id}})
            await gw.handle(device_id, "birth", birth)
            ids.append(device_id)
        return ids

    async def say(
        self, gw: Gateway, device_id: str, channel: str, body: Any
    ) -> list[OutboundDownlink]:
        return await gw.handle(device_id, channel, self.devices[device_id].message(channel, body))

    async def close(self) -> None:
        await self.requester.close()
        self.registry.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with await open_store(f"sqlite:///{tmp_path}/vault.db") as store:
        s = Site(tmp_path, store)
        try:
            yield s
        finally:
            await s.close()


async def _quiet() -> None:
    await asyncio.sleep(QUIET * 2)


async def test_at_most_max_things_run_and_the_quiet_longest_are_closed(site: Site) -> None:
    async with site.gateway(max_things=3) as gw:
        await site.start(gw)
        ids = await site.born(gw, 5)
        for device_id in ids[:2]:  # 0 and 1 speak last: 2, 3, 4 are the quiet longest
            await site.say(gw, device_id, "reading", {"moisture": 10})
        await _quiet()
        assert await gw.close_quiet_things() == 2
        assert sorted(gw.things) == ["sensor-00", "sensor-01", "sensor-04"]
        assert gw.metrics.get("safething_gateway_things_closed_total") == 2
        assert "safething_gateway_things_running 3.0" in gw.metrics.render()
        await _quiet()
        assert await gw.close_quiet_things() == 0  # at the bound: nothing more closed
        # Two more speak: they are restored, and the two quiet longest closed.
        for device_id in ("sensor-02", "sensor-03"):
            await site.say(gw, device_id, "reading", {"moisture": 20})
        assert len(gw.things) == 5
        assert gw.metrics.get("safething_gateway_things_restored_total") == 2
        await _quiet()
        assert await gw.close_quiet_things() == 2
        assert sorted(gw.things) == ["sensor-01", "sensor-02", "sensor-03"]


async def test_the_sweep_task_keeps_the_bound(site: Site) -> None:
    async with site.gateway(max_things=2) as gw:
        await site.start(gw, sweeping=True)
        await site.born(gw, 4)
        await site.say(gw, "sensor-00", "reading", {"moisture": 1})
        await _until(lambda: len(gw.things) == 2, "the sweep closes two things")
        assert sorted(gw.things) == ["sensor-00", "sensor-03"]


async def test_a_thing_not_quiet_long_enough_is_not_closed(site: Site) -> None:
    """By default every thing, just born or not, is kept ``close_after`` seconds at least,
    over the bound or not: devices that speak again soon after their birth (a load right
    after a birth storm) are not restored each once for nothing."""
    async with site.gateway(max_things=1, close_after=30.0) as gw:
        await site.start(gw)
        ids = await site.born(gw, 3)
        assert await gw.close_quiet_things() == 0
        await site.say(gw, ids[0], "reading", {"moisture": 10})
        assert await gw.close_quiet_things() == 0
        assert sorted(gw.things) == ids
        assert gw.metrics.get("safething_gateway_things_closed_total") == 0


async def test_with_close_births_only_things_running_since_their_birth_close_early(
    site: Site,
) -> None:
    """With ``close_births``, a thing restored by its device's message is still kept
    ``close_after`` seconds at least (a device that speaks often is not restored in a
    loop); only the things running since their birth are closed before."""
    async with site.gateway(max_things=1, close_after=30.0, close_births=True) as gw:
        await site.start(gw)
        ids = await site.born(gw, 3)
        assert await gw.close_quiet_things() == 2  # running since their birth
        assert list(gw.things) == ids[2:]
        for device_id in ids[:2]:  # restored: spoke a moment ago
            await site.say(gw, device_id, "reading", {"moisture": 10})
        assert len(gw.things) == 3
        assert await gw.close_quiet_things() == 1  # the one running since its birth
        assert sorted(gw.things) == ids[:2]
        assert await gw.close_quiet_things() == 0
        assert sorted(gw.things) == ids[:2]


async def test_things_running_since_their_birth_are_closed_over_the_bound_at_once(
    site: Site,
) -> None:
    """A birth storm (every device back after a power cut): the things born go over the
    bound within close_after, yet the bound holds, the quiet longest closed first. A
    device that spoke after its birth is quieter than one just born (its reading is the
    firmware's pattern: birth, then a reading at once)."""
    async with site.gateway(max_things=2, close_after=30.0, close_births=True) as gw:
        await site.start(gw)
        ids = await site.born(gw, 5)
        await site.say(gw, ids[0], "reading", {"moisture": 1})  # 0 spoke last
        assert await gw.close_quiet_things() == 3
        assert sorted(gw.things) == [ids[0], ids[4]]
        assert gw.metrics.get("safething_gateway_things_closed_total") == 3
        # a closed one's next message restores it, its reading stored
        await site.say(gw, ids[1], "reading", {"moisture": 2})
        assert (await site.requester.read(ids[1], "moisture")).value == 2
        assert await gw.close_quiet_things() == 1  # the quiet longest born: 4, not 0
        assert sorted(gw.things) == [ids[0], ids[1]]


async def test_the_sweep_keeps_the_bound_through_a_birth_storm(site: Site) -> None:
    """Ten devices come back one after the other, each with its birth and then a reading
    at once (the firmware's start), close_after far off: the sweep task keeps the running
    things at the bound, and every reading is stored."""
    async with site.gateway(max_things=3, close_after=30.0, close_births=True) as gw:
        await site.start(gw, sweeping=True)
        ids = []
        for _ in range(10):
            (device_id,) = await site.born(gw, 1)
            await site.say(gw, device_id, "reading", {"moisture": 7})
            ids.append(device_id)
        await _until(lambda: len(gw.things) == 3, "the sweep closes seven things")
        for device_id in ids:
            assert (await site.requester.read(device_id, "moisture")).value == 7


async def test_a_closed_things_readings_go_on_in_order_none_lost(site: Site) -> None:
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        seen: list[tuple[int, Any]] = []
        async with site.requester.subscribe(device_id, attribute="moisture", after=0) as sub:

            async def follow() -> None:
                async for note in sub:
                    seen.append((note.seq, note.value))

            follower = asyncio.get_running_loop().create_task(follow())
            try:
                for value in range(1, 4):
                    await site.say(gw, device_id, "reading", {"moisture": value})
                await site.say(gw, other, "reading", {"moisture": 50})
                await _quiet()
                await site.say(gw, other, "reading", {"moisture": 51})
                assert await gw.close_quiet_things() == 1
                assert device_id not in gw.things
                for value in range(4, 7):  # its next readings restore it
                    await site.say(gw, device_id, "reading", {"moisture": value})
                assert device_id in gw.things
                await _until(lambda: len(seen) >= 6, "six readings delivered")
            finally:
                follower.cancel()
        assert seen == [(n, n) for n in range(1, 7)]
        assert (await site.requester.read(device_id, "moisture")).value == 6


async def _poll(site: Site, gw: Gateway, device_id: str) -> list[OutboundDownlink]:
    async with asyncio.timeout(20):
        while not (down := await site.say(gw, device_id, "poll", {})):
            await asyncio.sleep(0.02)
    return down


async def _serve_action(site: Site, gw: Gateway, device_id: str, down: OutboundDownlink) -> str:
    device = site.devices[device_id]
    request = json.loads(
        parse_frame(down.frame).open(device.secret, device_id, down.channel, uplink=False)
    )
    await site.say(gw, device_id, "ack", {"down": down.counter})
    rid = str(request["id"])
    await site.say(gw, device_id, f"result/{rid}", {"state": "done", "result": None})
    return rid


async def test_a_request_into_a_closed_things_inbox_is_served_once(site: Site) -> None:
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 1})
        assert await gw.close_quiet_things() == 1
        assert device_id not in gw.things
        handle = await site.requester.request(device_id, "OpenValve", psi=40)
        await _until(lambda: device_id in gw.things, "the inbox write restores the thing")
        down = await _poll(site, gw, device_id)
        assert [d.channel for d in down] == [f"action/{handle.request_id}"]
        await _serve_action(site, gw, device_id, down[0])
        assert (await handle.wait(20)).state == "done"
        # Closed again and woken again (by a reading): the request is not run twice.
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 2})
        assert await gw.close_quiet_things() == 1
        assert device_id not in gw.things
        assert await site.say(gw, device_id, "poll", {}) == []
        await asyncio.sleep(0.3)
        assert await site.say(gw, device_id, "poll", {}) == []
        assert handle.state == "done"


async def test_a_busy_thing_is_not_closed(site: Site) -> None:
    """A request in hand (forwarded, its result awaited) keeps its thing running, however
    long it is quiet; once it is done, the thing may be closed."""
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        handle = await site.requester.request(device_id, "OpenValve", psi=40)
        down = await _poll(site, gw, device_id)
        await site.say(gw, device_id, "ack", {"down": down[0].counter})
        await site.say(gw, other, "reading", {"moisture": 1})
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 2})
        await _quiet()
        # device_id is the quiet longest, but busy: the next one is closed
        assert await gw.close_quiet_things() == 1
        assert list(gw.things) == [device_id]
        rid = handle.request_id
        await site.say(gw, device_id, f"result/{rid}", {"state": "done", "result": None})
        assert (await handle.wait(20)).state == "done"
        await _until(lambda: gw.things[device_id].idle(), "the request ends")
        await site.say(gw, other, "reading", {"moisture": 3})
        await _quiet()
        assert await gw.close_quiet_things() == 1
        assert list(gw.things) == [other]


async def test_a_thing_is_not_closed_while_a_message_of_its_device_is_in_hand(
    site: Site,
) -> None:
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 1})
        gw._in_hand[device_id] = 1  # as _handle holds it while it acts for the device
        assert await gw.close_quiet_things() == 0
        del gw._in_hand[device_id]
        assert await gw.close_quiet_things() == 1


async def test_an_adopted_devices_thing_is_never_closed(site: Site) -> None:
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        record = site.registry.add("adopted-01", "adopted")
        desc = ThingDescription.from_dict({**SENSOR, "id": "adopted-01"})
        await gw.custodial_thing(record, desc)
        await site.born(gw, 1)
        await _quiet()
        assert await gw.close_quiet_things() == 0  # one linked thing: within the bound
        assert "adopted-01" in gw.things


async def test_a_message_and_an_inbox_write_while_a_thing_closes_are_served(
    site: Site,
) -> None:
    """The close takes a while (made slow here, after the thing has stopped): a reading
    and a request meanwhile wait for it, then the thing is restored once; the reading is
    stored once, the request served once."""
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        await site.say(gw, device_id, "reading", {"moisture": 1})
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 2})
        thing = gw.things[device_id]
        real_close = thing.close
        closing = asyncio.Event()

        async def slow_close() -> None:
            await real_close()
            closing.set()
            await asyncio.sleep(0.3)

        thing.close = slow_close  # type: ignore[method-assign]
        sweep = asyncio.get_running_loop().create_task(gw.close_quiet_things())
        await closing.wait()
        handle = await site.requester.request(device_id, "OpenValve", psi=40)
        await site.say(gw, device_id, "reading", {"moisture": 3})
        assert await sweep == 1
        assert device_id in gw.things and gw.things[device_id] is not thing
        assert (await site.requester.read(device_id, "moisture")).seq == 2
        down = await _poll(site, gw, device_id)
        assert [d.channel for d in down] == [f"action/{handle.request_id}"]
        await _serve_action(site, gw, device_id, down[0])
        assert (await handle.wait(20)).state == "done"
        assert site.registry.pending(device_id) == []


async def test_a_request_its_closing_thing_took_but_did_not_serve_is_served(
    site: Site,
) -> None:
    """A write into the inbox that the closing thing's branch of the shared watch took,
    but that the thing did not act on (cancelled by the close): the gateway looks at the
    inbox once the thing has closed, and brings it back at once to serve it."""
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        thing = gw.things[device_id]
        delivered: list[bytes] = []

        async def cut_short(entry: Any) -> None:  # as a close that cancels it would
            delivered.append(entry.key)

        thing._on_inbox = cut_short  # type: ignore[method-assign]
        handle = await site.requester.request(device_id, "OpenValve", psi=40)
        await _until(lambda: bool(delivered), "the request reaches the running thing")
        await site.say(gw, other, "reading", {"moisture": 1})
        await _quiet()
        assert await gw.close_quiet_things() == 1
        assert device_id in gw.things and gw.things[device_id] is not thing
        down = await _poll(site, gw, device_id)
        assert [d.channel for d in down] == [f"action/{handle.request_id}"]
        await _serve_action(site, gw, device_id, down[0])
        assert (await handle.wait(20)).state == "done"


async def test_closing_a_thing_does_not_change_its_availability(site: Site) -> None:
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        before = await site.requester.availability(device_id)
        assert before.online is True
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 1})
        assert await gw.close_quiet_things() == 1
        assert await site.requester.availability(device_id) == before
        await site.say(gw, device_id, "reading", {"moisture": 2})  # restored
        assert device_id in gw.things
        assert await site.requester.availability(device_id) == before  # nothing written
        # closed again, then its birth again (a reboot): restored as it was, nothing written
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 3})
        await _quiet()
        assert await gw.close_quiet_things() == 1
        assert device_id not in gw.things
        doc = {**SENSOR, "id": device_id}
        await site.say(gw, device_id, "birth", {"description": doc})
        assert device_id in gw.things
        assert await site.requester.availability(device_id) == before


async def test_a_closed_things_device_goes_offline_after_its_silence_and_at_stop(
    site: Site,
) -> None:
    """Offline after ``offline_after`` seconds, and "gateway stopped", are written for a
    device whose thing is closed, as for a running one."""
    async with site.gateway(max_things=1, offline_after=0.5) as gw:
        await site.start(gw)
        device_id, other, third = await site.born(gw, 3)
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 1})
        await site.say(gw, third, "reading", {"moisture": 1})
        await _quiet()
        assert await gw.close_quiet_things() == 2
        assert device_id not in gw.things
        await asyncio.sleep(0.6)
        await site.say(gw, third, "reading", {"moisture": 2})  # third has spoken since
        await gw.liveness.sweep()  # (its task may have done it already)
        gone = await site.requester.availability(device_id)
        assert (gone.online, gone.reason) == (False, "inactive")
        assert device_id not in gw.things  # written without restoring it
        await site.say(gw, device_id, "reading", {"moisture": 2})  # back: online again
        assert (await site.requester.availability(device_id)).online is True
        await site.say(gw, third, "reading", {"moisture": 3})
        await _quiet()
        assert await gw.close_quiet_things() == 1
        assert list(gw.things) == [third]  # device_id closed again, online
    for thing_id in (device_id, third):
        stopped = await site.requester.availability(thing_id)
        assert (stopped.online, stopped.reason) == (False, "gateway stopped"), thing_id
    assert (await site.requester.availability(other)).reason == "inactive"


async def test_a_rollback_made_while_its_thing_is_closed_is_refused(site: Site) -> None:
    """The attacker holding the store rolls the thing's sequence pointer back to an old,
    correctly signed record while the thing is closed. The thing restored by the next
    reading refuses it (its trust state was written when it closed) and does not reuse
    the sequence number: a reader sees the new reading after the old ones."""
    async with site.gateway(max_things=1, close_after=0.005) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        pointer = ThingAddresses.of(device_id).thing.entry_key(b"a/moisture")
        await site.say(gw, device_id, "reading", {"moisture": 1})
        old = await site.store.get(pointer)
        assert old is not None and old.value is not None
        await site.say(gw, device_id, "reading", {"moisture": 2})
        await site.say(gw, device_id, "reading", {"moisture": 3})
        await asyncio.sleep(0.006)
        await site.say(gw, other, "reading", {"moisture": 1})
        # closed before the trust state's batch of entry marks (50 ms) is written
        assert await gw.close_quiet_things() == 1
        # The attacker's raw write: the record of seq 1, correctly signed, put back.
        await site.store.put(pointer, old.value)
        await site.say(gw, device_id, "reading", {"moisture": 4})
        thing = gw.things[device_id]
        assert thing.client.tampered_count >= 1  # refused and counted
        latest = await site.requester.read(device_id, "moisture")
        assert (latest.seq, latest.value) == (4, 4)
        history = await site.requester.history(device_id, attribute="moisture")
        assert [(r.seq, r.value) for r in history] == [(1, 1), (2, 2), (3, 3), (4, 4)]


async def test_closed_things_are_freed_though_frozen(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Things are frozen (``gc.freeze()``) to keep them out of full collections, and
    frozen cycles are never collected: a closed thing holds none (its archivist refers
    to it weakly), so it is freed when its last reference goes, with no collection."""
    import safething_gateway.core

    monkeypatch.setattr(safething_gateway.core, "_FREEZE_EVERY", 2)
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        ids = await site.born(gw, 3)
        assert gw._unfrozen == 1 and gc.get_freeze_count() > 0  # two of them frozen
        gone = [weakref.ref(gw.things[device_id]) for device_id in ids[:2]]
        await _quiet()
        await site.say(gw, ids[2], "reading", {"moisture": 1})
        gc.disable()  # (no collection at all: freed by their reference counts alone)
        try:
            assert await gw.close_quiet_things() == 2
            await asyncio.sleep(0.05)  # the closed things' tasks have ended
            assert [ref() for ref in gone] == [None, None]
        finally:
            gc.enable()
    gc.unfreeze()


async def test_the_sweep_collects_cycles_of_closed_frozen_things_now_and_then(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle through a closed thing (none is known: made here) frozen with it is
    collected by the sweep after every _COLLECT_EVERY things closed."""
    import safething_gateway.core

    monkeypatch.setattr(safething_gateway.core, "_FREEZE_EVERY", 2)
    monkeypatch.setattr(safething_gateway.core, "_COLLECT_EVERY", 2)
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        ids = await site.born(gw, 3)
        for device_id in ids[:2]:
            gw.things[device_id].__dict__["cycle"] = [gw.things[device_id]]
        gone = [weakref.ref(gw.things[device_id]) for device_id in ids[:2]]
        gc.freeze()
        await _quiet()
        await site.say(gw, ids[2], "reading", {"moisture": 1})
        assert await gw.close_quiet_things() == 2
        await asyncio.sleep(0.05)
        gc.collect()
        assert all(ref() is not None for ref in gone)  # frozen: no collection finds them
        assert await gw.close_quiet_things() == 0  # collects them
        assert [ref() for ref in gone] == [None, None]
    gc.unfreeze()


async def test_the_gateway_sets_the_collectors_thresholds_while_it_runs(site: Site) -> None:
    """A running gateway's process collects its youngest generation after
    ``gc_threshold[0]`` more objects, not Python's 700 (GC_THRESHOLD); they are put back
    when it closes, unless something changed them meanwhile; ``None`` leaves them."""
    from safething_gateway.core import GC_THRESHOLD

    before = gc.get_threshold()
    assert GC_THRESHOLD[0] > before[0]
    try:
        async with site.gateway() as gw:
            await site.start(gw)
            assert gc.get_threshold() == GC_THRESHOLD
        assert gc.get_threshold() == before
        async with site.gateway(gc_threshold=(1234, 5, 6)) as gw:
            await site.start(gw)
            assert gc.get_threshold() == (1234, 5, 6)
            gc.set_threshold(4321, 5, 6)  # changed since: left so
        assert gc.get_threshold() == (4321, 5, 6)
        gc.set_threshold(*before)
        async with site.gateway(gc_threshold=None) as gw:
            await site.start(gw)
            assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
    gc.unfreeze()


def test_the_settings_refuse_bad_values_with_a_clear_error(tmp_path: Path) -> None:
    for kwargs, said in (
        ({"max_things": 0}, "max_things must be a whole number >= 1"),
        ({"max_things": 2.5}, "max_things must be a whole number >= 1"),
        ({"max_things": True}, "max_things must be a whole number >= 1"),
        ({"close_after": 0}, "close_after must be a number of seconds > 0"),
        ({"close_after": float("inf")}, "close_after must be a number of seconds > 0"),
        ({"close_after": "60"}, "close_after must be a number of seconds > 0"),
    ):
        with pytest.raises(ValueError, match=said):
            Gateway(store=None, registry=None, owner=None, **kwargs)  # type: ignore[arg-type]
    for line, said in (
        ("max_things = 0", "gateway.max_things must be >= 1"),
        ("max_things = -5", "gateway.max_things must be >= 1"),
        ('max_things = "many"', r"\[gateway\] max_things must be a int, got str"),
        ("max_things = 1.5", r"\[gateway\] max_things must be a int, got float"),
        ("close_after = 0", "gateway.close_after must be > 0 seconds"),
        ("close_after = -1.0", "gateway.close_after must be > 0 seconds"),
        ("close_after = inf", "gateway.close_after must be > 0 seconds"),
        ("close_after = nan", "gateway.close_after must be > 0 seconds"),
    ):
        path = tmp_path / "gateway.toml"
        path.write_text(f"[gateway]\n{line}\n")
        path.chmod(0o600)
        with pytest.raises(ConfigError, match=said):
            load_config(path)
    path.write_text("[gateway]\nmax_things = 500\nclose_after = 120\n")
    config = load_config(path)
    assert (config.gateway.max_things, config.gateway.close_after) == (500, 120.0)


async def test_closing_racing_readings_requests_and_polls_loses_and_repeats_nothing(
    site: Site,
) -> None:
    """Six devices speak at once, each some readings with an action request in the
    middle, while a sweep closes every quiet thing it may (two may run, quiet 10 ms)
    as fast as it can: every reading is stored once, in order, and every request is
    handed to its device once and ends done."""
    import random

    rng = random.Random(14)
    async with site.gateway(max_things=2, close_after=0.01) as gw:
        await site.start(gw)
        ids = await site.born(gw, 6)
        closed = 0
        stop = asyncio.Event()

        async def sweep() -> None:
            nonlocal closed
            while not stop.is_set():
                closed += await gw.close_quiet_things()
                await asyncio.sleep(0.002)

        async def device(device_id: str) -> None:
            handle = None
            handed: list[str] = []
            for value in range(1, 16):
                await site.say(gw, device_id, "reading", {"moisture": value})
                await asyncio.sleep(rng.uniform(0, 0.03))
                if value == 5:
                    handle = await site.requester.request(device_id, "OpenValve", psi=value)
                if handle is not None and handle.state not in ("done",):
                    for down in await site.say(gw, device_id, "poll", {}):
                        handed.append(down.channel)
                        await _serve_action(site, gw, device_id, down)
            assert handle is not None
            async with asyncio.timeout(20):
                while (await handle.wait(0.2)).state != "done":
                    for down in await site.say(gw, device_id, "poll", {}):
                        handed.append(down.channel)
                        await _serve_action(site, gw, device_id, down)
            assert handed == [f"action/{handle.request_id}"], (device_id, handed)

        sweeper = asyncio.get_running_loop().create_task(sweep())
        try:
            await asyncio.gather(*(device(device_id) for device_id in ids))
        finally:
            stop.set()
            await sweeper
        assert closed >= 6  # the things were closed and restored many times
        for device_id in ids:
            history = await site.requester.history(device_id, attribute="moisture")
            assert [(r.seq, r.value) for r in history] == [(n, n) for n in range(1, 16)]
            assert site.registry.pending(device_id) == []


async def test_a_thing_is_never_restored_twice_at_once(site: Site) -> None:
    """The device's restore lock is kept while anyone waits for it: one who comes after
    its holder has left, while another still waits, waits too (with the lock dropped at
    that moment, it took a second lock and restored the thing a second time, leaving
    one running that nobody would close)."""
    async with site.gateway(max_things=1) as gw:
        await site.start(gw)
        device_id, other = await site.born(gw, 2)
        await _quiet()
        await site.say(gw, other, "reading", {"moisture": 1})
        assert await gw.close_quiet_things() == 1
        record = site.registry.find(device_id)
        assert record is not None
        restores = 0
        restore = gw._restore

        async def counted(record: Any) -> None:
            nonlocal restores
            restores += 1
            await restore(record)

        gw._restore = counted  # type: ignore[method-assign]
        release = asyncio.Event()

        async def hold() -> None:
            async with gw._device_lock(device_id):
                await release.wait()

        loop = asyncio.get_running_loop()
        holder = loop.create_task(hold())
        await asyncio.sleep(0)
        first = loop.create_task(gw._ensure_thing(record))
        await asyncio.sleep(0)  # waits for the lock
        release.set()
        await holder
        second = loop.create_task(gw._ensure_thing(record))
        await asyncio.gather(first, second)
        assert restores == 1
        assert device_id in gw.things and not gw._restoring


async def test_a_close_cancelled_midway_closes_every_thing_then_passes_it_on(site: Site) -> None:
    """Gateway.close cancelled by its caller (a stop with a time limit) at any point: it
    used to swallow a cancellation that came while it waited for its own tasks, and to
    stop with things left running when one came while it closed a thing."""
    for turns in range(1, 17, 3):  # (at 0 the close has not begun: nothing to do)
        async with site.gateway() as gw:
            await site.start(gw)
            await site.born(gw, 3)
            things = list(gw.things.values())
            tasks = [gw._flush_task, gw._liveness_task, gw._inbox_task]
            closing = asyncio.create_task(gw.close())
            for _ in range(turns):
                await asyncio.sleep(0)
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert gw.things == {}, turns
            assert [len(thing._tasks) for thing in things] == [0, 0, 0], turns
            assert all(task is None or task.done() for task in tasks), turns
