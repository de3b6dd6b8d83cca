from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from safething.errors import (
    AccessDeniedError,
    ActionFailedError,
    LimitExceededError,
    NoSuchDataError,
    ThingError,
)
from safething.net import Client, Identity
from safething.net.records import EntryRecord
from safething.net.trust import TrustState
from safething.store import Store, Write, open_store
from safething.things import (
    ActionRequest,
    Attribute,
    Notification,
    Thing,
    ThingClient,
    ThingDescription,
    Topic,
    UnknownFieldError,
    ValueTypeError,
)
from safething.things.layout import ThingAddresses
from safething.things.values import loads

from .conftest import garden_description

ADDR_OUTBOX = ThingAddresses.of("garden-01").outbox


async def test_lifecycle(garden: Thing, stranger: ThingClient) -> None:
    assert garden.status == "registered"
    assert await stranger.status("garden-01") == "registered"
    await garden.publish()
    assert await stranger.status("garden-01") == "published"
    await garden.disable()
    assert await stranger.status("garden-01") == "disabled"
    await garden.set("moisture", 40)  # data stays writable and readable
    assert (await stranger.read("garden-01", "moisture")).value == 40.0
    assert (await stranger.read("garden-01", "model")).value == "GD-1"
    assert (await stranger.describe("garden-01")).title == "Gardening device"


async def test_unregistered_and_unknown(
    store: Store, device: Identity, stranger: ThingClient
) -> None:
    async with Thing(garden_description("garden-99"), identity=device, store=store) as t:
        with pytest.raises(ThingError, match="register"):
            await t.set("moisture", 1)
    with pytest.raises(NoSuchDataError, match="no thing 'nothing-here'"):
        await stranger.read("nothing-here", "moisture")


async def test_thing_id_taken_by_another_identity(store: Store, garden: Thing) -> None:
    async with Thing(garden_description(), identity=Identity.generate(), store=store) as impostor:
        with pytest.raises(ThingError, match="taken by another identity"):
            await impostor.register()


async def test_typed_values_are_checked(garden: Thing) -> None:
    with pytest.raises(ValueTypeError, match="attribute 'moisture'"):
        await garden.set("moisture", "wet")
    with pytest.raises(ValueTypeError, match="between 0 and 100"):
        await garden.set("moisture", 140)
    with pytest.raises(ValueTypeError):
        await garden.set("valve", "ajar")
    with pytest.raises(UnknownFieldError, match="no attribute 'colour'"):
        await garden.set("colour", 1)
    with pytest.raises(ValueError, match="static"):
        await garden.set("model", "GD-2")
    with pytest.raises(ValueTypeError):
        await garden.notify("VeryDryAlarm", "very")


async def test_history_ring_wraps(garden: Thing, stranger: ThingClient) -> None:
    for i in range(20):
        assert await garden.set("moisture", float(i)) == i + 1
    history = await stranger.history("garden-01", "moisture")
    assert [r.seq for r in history] == list(range(13, 21))
    assert [r.value for r in history] == [float(i) for i in range(12, 20)]
    assert (await stranger.read("garden-01", "moisture")).seq == 20
    for i in range(11):
        await garden.notify("VeryDryAlarm", float(i))
    events = await stranger.events("garden-01", "VeryDryAlarm")
    assert [e.seq for e in events] == list(range(4, 12))
    count, _ = await garden._md("thing").usage()
    assert count < 60  # bounded, however long it runs


async def test_rerregister_keeps_history(store: Store, owner: Identity, device: Identity) -> None:
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        await t.publish()
        await t.set("moisture", 10)
        await t.notify("VeryDryAlarm", 1.0)
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        assert t.status == "published"
        assert await t.set("moisture", 11) == 2
        assert await t.notify("VeryDryAlarm", 2.0) == 2
    # registered again with a changed description: readers get the new one
    async with Thing(
        garden_description(history=16), identity=device, owner=owner, store=store
    ) as t:
        await t.register()
        described = await ThingClient(Client(store)).describe("garden-01")
        assert described.attribute("moisture").history == 16
    async with Thing(garden_description(history=4), identity=device, owner=owner, store=store) as t:
        await t.register()
        described = await ThingClient(Client(store)).describe("garden-01")
        assert described.attribute("moisture").history == 4


async def test_register_with_publish_writes_the_new_thing_in_one_commit(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    commits: list[int] = []
    commit = store.commit

    async def counted(writes: Sequence[Write], **options: Any) -> list[int | Exception]:
        commits.append(len(writes))
        return await commit(writes, **options)

    store.commit = counted  # type: ignore[method-assign]
    new = Thing(garden_description(), identity=device, owner=owner, store=store, heartbeat=None)
    async with new as t:
        await t.register(publish=True)
        # The four MD headers in one commit, then the key list, three level keys, the
        # description and the status in another: a reader never sees half a thing.
        assert commits == [4, 6]
        assert t.status == "published"
        assert await stranger.status("garden-01") == "published"
        # The thing's own view (not read back from the store) opens its own data.
        await t.set("secret_code", "1234")
        assert (await t.things.read("garden-01", "secret_code")).value == "1234"
        assert (await t.things.view("garden-01")).status == "published"
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        await t.disable()
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register(publish=True)  # publishes a registered thing, not a disabled one
        assert t.status == "disabled"


async def test_a_reading_and_a_registration_are_signed_once_per_commit(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    """Issue 14: the entries of one commit share one signature (a reading's sequence
    pointer and history slot; the six entries a new thing writes), read back verified."""
    from safething.net.keys import SigningKey

    signed: list[bytes] = []
    sign = SigningKey.sign

    def counted(key: SigningKey, message: bytes) -> bytes:
        signed.append(message)
        return sign(key, message)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SigningKey, "sign", counted)
        new = Thing(garden_description(), identity=device, owner=owner, store=store, heartbeat=None)
        async with new as t:
            await t.register(publish=True)
            entries = [m for m in signed if m.startswith(b"safething/md-")]
            assert [m.split(b"\0")[0] for m in entries].count(b"safething/md-batch/v1") == 1
            assert b"safething/md-entry/v1" not in [m.split(b"\0")[0] for m in entries]
            signed.clear()
            await t.set("moisture", 41)
            assert len(signed) == 1 and signed[0].startswith(b"safething/md-batch/v1\0")
    assert (await stranger.read("garden-01", "moisture")).value == 41.0
    address = ThingAddresses.of("garden-01").thing
    groups: dict[bytes, list[bytes]] = {}
    for raw in await store.scan(address.entry_prefix):
        record = EntryRecord.from_bytes(raw.value, address, None)
        groups.setdefault(record.signature, []).append(record.stored_key)
    assert sorted(sorted(g) for g in groups.values()) == [
        [b"a/moisture", b"ah/moisture/1"],  # the reading's pointer and history slot
        [b"desc", b"k/group", b"k/owner", b"k/thing", b"keys", b"status"],
    ]


async def test_register_with_publish_publishes_a_thing_registered_before(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        assert t.status == "registered"
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register(publish=True)  # its status read back from the store: registered
        assert t.status == "published"
    assert await stranger.status("garden-01") == "published"


def _record_states(store: Store) -> list[str]:
    """The states the thing writes to the outbox, in the order of its commits."""
    states: list[str] = []
    commit = store.commit

    async def recorded(writes: Sequence[Write], **options: Any) -> list[int | Exception]:
        for w in writes:
            if w.key.startswith(ADDR_OUTBOX.prefix) and w.value is not None:
                record = EntryRecord.from_bytes(w.value, ADDR_OUTBOX, None)
                states.append(str(loads(record.stored_value or b"", "state")["s"]))
        return await commit(writes, **options)

    store.commit = recorded  # type: ignore[method-assign]
    return states


async def test_a_slow_handler_is_accepted_then_running_then_done(
    store: Store, garden: Thing, owner_client: ThingClient
) -> None:
    """Each state of a request still at work is written, in order: a watcher that
    reads the outbox between two writes sees *accepted* before *running*."""
    states = _record_states(store)
    release = asyncio.Event()

    async def slow(request: ActionRequest) -> None:
        await release.wait()

    garden.on_action("CloseValve", slow)
    await garden.publish()
    handle = await owner_client.request("garden-01", "CloseValve", timeout=60)
    async with asyncio.timeout(30):
        while "running" not in states:
            await asyncio.sleep(0.01)
    release.set()
    assert (await handle.wait(30)).state == "done"
    assert states == ["accepted", "running", "done"]


async def test_progress_never_takes_a_request_back_to_accepted(
    store: Store, garden: Thing, owner_client: ThingClient
) -> None:
    states = _record_states(store)

    async def reporting(request: ActionRequest) -> None:
        await asyncio.sleep(0)
        for percent in (25, 50, 75):
            await request.progress(percent)

    garden.on_action("CloseValve", reporting)
    await garden.publish()
    handle = await owner_client.request("garden-01", "CloseValve", timeout=60)
    assert (await handle.wait(30)).state == "done"
    # accepted once, first; then running (one per report, and maybe the thing's own)
    assert states[0] == "accepted" and states[-1] == "done"
    assert set(states[1:-1]) == {"running"} and len(states) >= 5


async def test_two_writers_lose_no_update(store: Store, owner: Identity, device: Identity) -> None:
    async with (
        Thing(garden_description(history=50), identity=device, owner=owner, store=store) as a,
        Thing(garden_description(history=50), identity=device, owner=owner, store=store) as b,
    ):
        await a.register()
        await b.register()

        async def burst(t: Thing, base: float) -> list[int]:
            return [await t.notify("VeryDryAlarm", base + i) for i in range(20)]

        seqs_a, seqs_b = await asyncio.gather(burst(a, 0), burst(b, 100))
        assert sorted(seqs_a + seqs_b) == list(range(1, 41))  # no sequence number reused
        events = await ThingClient(Client(store)).events("garden-01", "VeryDryAlarm")
        assert len(events) == 40
        assert {e.value for e in events} == {float(i) for i in range(20)} | {
            100.0 + i for i in range(20)
        }


async def test_description_budget(store: Store, device: Identity) -> None:
    big = ThingDescription(
        "huge-thing",
        attributes=[Attribute(f"a{i}", "number", dynamic=True, history=300) for i in range(4)],
    )
    async with Thing(big, identity=device, store=store) as t:
        with pytest.raises(LimitExceededError, match="shorten"):
            await t.register()


async def test_the_entry_budget_counts_every_entry_the_thing_writes(
    store: Store, device: Identity
) -> None:
    """The budget checked at registration counts every entry the thing's MD can hold:
    with its history rings full and its availability written, the MD holds the budget
    less the subscriptions it has room for. (The availability record was not counted:
    a thing at the bound could not write its last entry.)"""
    from safething.things.thing import _MAX_SUBSCRIPTIONS

    desc = ThingDescription(
        "budget-thing",
        attributes=[Attribute("level", "number", dynamic=True, history=3)],
        topics=[Topic("Alarm", "number", history=2)],
    )
    async with Thing(desc, identity=device, store=store) as t:
        await t.register(publish=True)
        for i in range(5):
            await t.set("level", float(i))
            await t.notify("Alarm", float(i))
        await t.set_availability(True)
        entries = await t._md("thing").entries()
        assert len(entries) == t._budget() - _MAX_SUBSCRIPTIONS


@pytest.mark.parametrize("over", [0, 1])
async def test_a_thing_at_the_entry_bound_registers_one_over_it_does_not(
    store: Store, device: Identity, over: int
) -> None:
    """A description needing exactly the entries an MD holds registers; one more is
    refused with the reason."""
    from safething.net.records import MAX_ENTRIES

    def ring(history: int) -> ThingDescription:  # a ring holds at most 500
        rings = [("big", 500), ("more", history)]
        return ThingDescription(
            "budget-thing",
            attributes=[Attribute(n, "number", dynamic=True, history=h) for n, h in rings],
        )

    one = Thing(ring(1), identity=device, store=store)._budget()
    async with Thing(ring(1 + MAX_ENTRIES - one + over), identity=device, store=store) as t:
        assert t._budget() == MAX_ENTRIES + over
        if over:
            with pytest.raises(LimitExceededError, match="shorten"):
                await t.register()
        else:
            await t.register()


async def test_wot_export_of_a_registered_thing(garden: Thing, stranger: ThingClient) -> None:
    from safething.things import to_thing_description

    td = to_thing_description(await stranger.describe("garden-01"))
    assert set(td["actions"]) == {"OpenValve", "CloseValve", "Reboot", "Water", "SelfTest"}
    assert "moisture" in td["properties"]


# --- subscriptions ----------------------------------------------------------------


async def collect(sub: object, n: int, timeout: float = 5) -> list[Notification]:
    got: list[Notification] = []
    async with asyncio.timeout(timeout):
        async for note in sub:  # type: ignore[attr-defined]
            got.append(note)
            if len(got) == n:
                break
    return got


async def test_subscription_is_pushed_and_filtered(garden: Thing, stranger: ThingClient) -> None:
    async with stranger.subscribe("garden-01", attribute="moisture", filter="lt:20") as sub:
        for v in (50, 15, 60, 10):
            await garden.set("moisture", v)
        got = await collect(sub, 2)
    assert [n.value for n in got] == [15.0, 10.0]
    assert [n.seq for n in got] == [2, 4]
    assert got[0].kind == "attribute"


@contextlib.asynccontextmanager
async def _garden_on_sqlite(path: Path) -> AsyncIterator[tuple[Thing, ThingClient]]:
    """The garden and a reader on a SQLite store, whose change feed gives a key's latest
    value only (the memory store's feed keeps every value)."""
    async with (
        await open_store(f"sqlite://{path}/things.db") as store,
        Thing(
            garden_description(),
            identity=Identity.generate(),
            owner=Identity.generate(),
            store=store,
            trust=TrustState(),
        ) as garden,
        ThingClient(Client(store, Identity.generate("reader"))) as reader,
    ):
        await garden.register()
        yield garden, reader


async def test_an_attribute_subscriber_gets_every_value_even_when_it_reads_late(
    tmp_path: Path,
) -> None:
    """Values written faster than the subscriber reads are all delivered, in order: the
    subscription follows the attribute's history ring, not only its latest value."""
    async with (
        _garden_on_sqlite(tmp_path) as (garden, reader),
        reader.subscribe("garden-01", attribute="moisture") as sub,
    ):
        for v in range(6):  # the ring keeps 8: nothing is overwritten before it reads
            await garden.set("moisture", float(v))
        got = await collect(sub, 6)
        assert sub.lost == 0
    assert [n.value for n in got] == [float(v) for v in range(6)]
    assert [n.seq for n in got] == list(range(1, 7))


async def test_an_attribute_subscriber_counts_values_lost_to_the_ring(tmp_path: Path) -> None:
    async with (
        _garden_on_sqlite(tmp_path) as (garden, reader),
        reader.subscribe("garden-01", attribute="moisture") as sub,
    ):
        for v in range(11):  # the ring keeps 8: values 1..3 are overwritten unread
            await garden.set("moisture", float(v))
        got = await collect(sub, 8)
        assert sub.lost == 3
    assert [n.seq for n in got] == list(range(4, 12))


async def test_deadband_subscription(garden: Thing, stranger: ThingClient) -> None:
    async with stranger.subscribe("garden-01", attribute="moisture", filter="deadband:5") as sub:
        for v in (50, 52, 54, 56, 57, 40):
            await garden.set("moisture", v)
            await asyncio.sleep(0.01)  # deadband compares every value: let each arrive
        got = await collect(sub, 3)
    assert [n.value for n in got] == [50.0, 56.0, 40.0]


async def test_topic_catch_up_in_order_without_duplicates(
    garden: Thing, stranger: ThingClient
) -> None:
    async with stranger.subscribe("garden-01", topic="VeryDryAlarm") as sub:
        await garden.notify("VeryDryAlarm", 1.0)
        first = await collect(sub, 1)
        last = sub.last
    # offline: three events happen
    for v in (2.0, 3.0, 4.0):
        await garden.notify("VeryDryAlarm", v)
    async with stranger.subscribe("garden-01", topic="VeryDryAlarm", after=last) as sub:
        await garden.notify("VeryDryAlarm", 5.0)
        rest = await collect(sub, 4)
        assert sub.lost == 0
    assert [n.value for n in first + rest] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [n.seq for n in first + rest] == [1, 2, 3, 4, 5]


async def test_catch_up_reports_events_lost_to_the_ring(
    garden: Thing, stranger: ThingClient
) -> None:
    for i in range(12):  # history is 8: events 1..4 are gone
        await garden.notify("VeryDryAlarm", float(i))
    async with stranger.subscribe("garden-01", topic="VeryDryAlarm", after=0) as sub:
        got = await collect(sub, 8)
        assert sub.lost == 4
    assert [n.seq for n in got] == list(range(5, 13))


async def test_stored_subscription_resumes_after_restart(
    store: Store, garden: Thing, owner: Identity
) -> None:
    controller_id = Identity.generate()
    desc = ThingDescription("controller-01")
    received: list[float] = []
    got_one = asyncio.Event()

    def on_alarm(note: Notification) -> None:
        received.append(note.value)
        got_one.set()

    async with Thing(desc, identity=controller_id, store=store) as ctl:
        await ctl.register()
        await ctl.subscribe("garden-01", topic="VeryDryAlarm", callback=on_alarm)
        await garden.notify("VeryDryAlarm", 1.0)
        async with asyncio.timeout(5):
            await got_one.wait()
        assert len(await ctl.stored_subscriptions()) == 1
    # the controller is down; the garden keeps alarming
    await garden.notify("VeryDryAlarm", 2.0)
    await garden.notify("VeryDryAlarm", 3.0)
    async with Thing(desc, identity=controller_id, store=store) as ctl:
        await ctl.register()
        got_one.clear()
        await ctl.subscribe("garden-01", topic="VeryDryAlarm", callback=on_alarm)
        await garden.notify("VeryDryAlarm", 4.0)
        async with asyncio.timeout(5):
            while len(received) < 4:
                await asyncio.sleep(0.01)
    assert received == [1.0, 2.0, 3.0, 4.0]


# --- actions ----------------------------------------------------------------------


async def test_action_done_with_progress(garden: Thing, stranger: ThingClient) -> None:
    @garden.action("OpenValve")
    async def open_valve(request: ActionRequest) -> dict[str, object]:
        await request.progress(50, "half open")
        return {"psi": request.args["psi"]}

    await garden.publish()
    handle = await stranger.request("garden-01", "OpenValve", psi=45)
    assert await handle.result(timeout=5) == {"psi": 45.0}
    states = [s.state for s in handle.history]
    assert states[0] == "requested"
    assert states[-1] == "done"
    assert "accepted" in states
    assert any(s.progress == 50 and s.message == "half open" for s in handle.history)
    default = await stranger.request("garden-01", "OpenValve")
    assert await default.result(timeout=5) == {"psi": 30.0}


async def test_action_failed(garden: Thing, stranger: ThingClient) -> None:
    @garden.action("CloseValve")
    async def close_valve(request: ActionRequest) -> None:
        raise RuntimeError("valve stuck")

    await garden.publish()
    handle = await stranger.request("garden-01", "CloseValve")
    with pytest.raises(ActionFailedError, match="valve stuck") as info:
        await handle.result(timeout=5)
    assert info.value.state == "failed"


async def test_action_rejections(garden: Thing, stranger: ThingClient) -> None:
    garden.on_action("OpenValve", lambda request: {"ok": True})
    with pytest.raises(ValueTypeError, match="psi"):  # checked before sending
        await stranger.request("garden-01", "OpenValve", psi=500)
    with pytest.raises(UnknownFieldError, match="Fly"):
        await stranger.request("garden-01", "Fly")
    await garden.disable()
    handle = await stranger.request("garden-01", "OpenValve")
    status = await handle.wait(5)
    assert status.state == "rejected"
    assert "disabled" in status.message


async def test_bad_arguments_injected_past_the_client_are_rejected(
    garden: Thing, stranger: ThingClient
) -> None:
    garden.on_action("OpenValve", lambda request: {"ok": True})
    await garden.publish()
    view = await stranger.view("garden-01")
    import time

    from safething.things.values import dumps

    await view.inbox.insert(
        "r/handcrafted1",
        dumps(
            {
                "a": "OpenValve",
                "args": {"psi": "lots"},
                "t": time.time(),
                "exp": time.time() + 30,
                "enc": b"",
            }
        ),
    )
    outbox = view.outbox
    async with asyncio.timeout(5):
        while True:
            try:
                from safething.things.values import loads

                doc = loads(await outbox.get_value("r/handcrafted1"), "state")
                if doc["s"] == "rejected":
                    break
            except NoSuchDataError:
                pass
            await asyncio.sleep(0.01)
    assert "psi" in doc["m"]


@pytest.mark.parametrize(
    "sealed", [b"garbage", 5, None], ids=["does-not-unseal", "not-bytes", "not-cbor"]
)
async def test_sealed_arguments_that_do_not_open_are_rejected(
    garden: Thing, stranger: ThingClient, sealed: Any
) -> None:
    """Arguments sealed to the thing (``x``) that it cannot open or read: the request is
    answered *rejected* (its requester is not left waiting), whatever the failure."""
    import time

    from safething.things.values import dumps

    garden.on_action("OpenValve", lambda request: {"ok": True})
    await garden.publish()
    view = await stranger.view("garden-01")
    if sealed is None:  # opens, but holds no CBOR
        sealed = garden.identity.public_encryption_key.seal(b"\xff\xff")
    now = time.time()
    request = {"a": "OpenValve", "x": sealed, "t": now, "exp": now + 30, "enc": b""}
    await view.inbox.insert("r/handcrafted2", dumps(request))
    async with asyncio.timeout(5):
        while True:
            with contextlib.suppress(NoSuchDataError):
                doc = loads(await view.outbox.get_value("r/handcrafted2"), "state")
                if doc["s"] == "rejected":
                    break
            await asyncio.sleep(0.01)


async def test_action_timed_out_and_cancelled(garden: Thing, stranger: ThingClient) -> None:
    started = asyncio.Event()

    @garden.action("CloseValve")
    async def slow(request: ActionRequest) -> None:
        started.set()
        await asyncio.sleep(30)

    await garden.publish()
    handle = await stranger.request("garden-01", "CloseValve", timeout=0.3)
    status = await handle.wait()
    assert status.state == "timed_out"
    started.clear()
    handle = await stranger.request("garden-01", "CloseValve")
    async with asyncio.timeout(5):
        await started.wait()
    status = await handle.cancel()
    assert status.state == "cancelled"
    async with asyncio.timeout(5):  # both handlers were really stopped
        while garden._running:
            await asyncio.sleep(0.01)


async def test_a_handler_that_times_out_itself_ends_timed_out(
    garden: Thing, stranger: ThingClient
) -> None:
    """The thing itself writes *timed out* (not *failed*) when its handler's own wait
    runs out: the requester sees why, without a deadline of its own."""

    @garden.action("CloseValve")
    async def stuck(request: ActionRequest) -> None:
        raise TimeoutError("the valve did not answer")

    await garden.publish()
    handle = await stranger.request("garden-01", "CloseValve")
    status = await handle.wait()
    assert (status.state, status.message) == ("timed_out", "the valve did not answer")


async def test_requests_are_durable_while_the_thing_is_offline(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        await t.publish()
    handle = await stranger.request("garden-01", "OpenValve", psi=10)  # nobody serves it
    await asyncio.sleep(0.05)
    assert handle.state == "requested"
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        t.on_action("OpenValve", lambda request: {"psi": request.args["psi"]})
        await t.register()
        assert await handle.result(timeout=5) == {"psi": 10.0}


async def test_registered_thing_holds_requests_until_published(
    garden: Thing, stranger: ThingClient
) -> None:
    garden.on_action("CloseValve", lambda request: None)
    handle = await stranger.request("garden-01", "CloseValve")
    await asyncio.sleep(0.05)
    assert handle.state == "requested"
    await garden.publish()
    assert (await handle.wait(5)).state == "done"


# --- access types -----------------------------------------------------------------


async def test_a_group_key_record_deleted_from_the_store_leaves_the_thing_writing(
    store: Store, garden: Thing
) -> None:
    """The store deletes the thing's group key record (raw, no signature asked): the
    thing keeps the group key it holds and its group-level writes go on (readers need
    the record back to read them: the owner rewrites it)."""
    await garden.set("group_note", "before")
    await store.delete(garden._md("thing").address.entry_key(b"k/group"))
    held = garden._ring.keys_of("group")
    await garden.set("group_note", "after")  # no NoSuchEntryError out of the write
    assert garden._ring.keys_of("group") == held  # the key it held, still in use


async def test_owner_access(
    garden: Thing, stranger: ThingClient, owner_client: ThingClient
) -> None:
    await garden.set("secret_code", "4711")
    assert (await owner_client.read("garden-01", "secret_code")).value == "4711"
    with pytest.raises(AccessDeniedError, match="encrypted for other readers"):
        await stranger.read("garden-01", "secret_code")
    garden.on_action("Reboot", lambda request: "rebooting")
    await garden.publish()
    denied = await (await stranger.request("garden-01", "Reboot")).wait(5)
    assert denied.state == "rejected"
    assert "owner access" in denied.message
    assert await (await owner_client.request("garden-01", "Reboot")).result(5) == "rebooting"


async def test_thing_access(garden: Thing, owner_client: ThingClient) -> None:
    garden.on_action("SelfTest", lambda request: "ok")
    await garden.publish()
    assert (await (await owner_client.request("garden-01", "SelfTest")).wait(5)).state == "rejected"
    assert await (await garden.request("garden-01", "SelfTest")).result(5) == "ok"


async def test_group_access_and_removal(
    store: Store, garden: Thing, owner: Identity, stranger: ThingClient
) -> None:
    from safething.things import ThingOwner

    alice = Identity.generate("alice")
    admin = ThingOwner(Client(store, owner), "garden-01")
    await admin.add_member(alice.public)
    async with ThingClient(Client(store, alice)) as member:
        await garden.set("group_note", "before")
        assert (await member.read("garden-01", "group_note")).value == "before"
        garden.on_action("Water", lambda request: request.args["litres"])
        await garden.publish()
        assert await (await member.request("garden-01", "Water", litres=2)).result(5) == 2.0
        refused = await (await stranger.request("garden-01", "Water", litres=2)).wait(5)
        assert refused.state == "rejected"
        with pytest.raises(AccessDeniedError):
            await stranger.read("garden-01", "group_note")

        await admin.remove_member(alice.public_sign_key)
        await garden.set("group_note", "after")
        # alice keeps no key for data written after her removal, even with fresh keys
        fresh = ThingClient(Client(store, alice))
        with pytest.raises(AccessDeniedError):
            await fresh.read("garden-01", "group_note")
        again = await (await fresh.request("garden-01", "Water", litres=1)).wait(5)
        assert again.state == "rejected"
        await fresh.close()
    async with ThingClient(Client(store, owner)) as o:
        assert (await o.read("garden-01", "group_note")).value == "after"


async def test_a_group_action_of_a_thing_without_a_group_is_rejected(
    garden: Thing, stranger: ThingClient, owner_client: ThingClient
) -> None:
    """Before its owner adds a member there is no group MD: a stranger's Group action
    ends *rejected* (not dropped without an answer); the owner's runs."""
    garden.on_action("Water", lambda request: 1.0)
    await garden.publish()
    with pytest.raises(ActionFailedError, match="access denied"):
        await (await stranger.request("garden-01", "Water", litres=1)).result(30)
    assert await (await owner_client.request("garden-01", "Water", litres=1)).result(30) == 1.0


async def test_a_store_only_attacker(store: Store, garden: Thing) -> None:
    """Holds the store and nothing else: sees ciphertext, cannot get a request run."""
    ran: list[str] = []
    garden.on_action("Reboot", lambda request: ran.append("reboot"))
    garden.on_action("CloseValve", lambda request: ran.append("close"))
    await garden.publish()
    await garden.set("secret_code", "correct-horse")
    raw = b"".join(r.value for r in await store.scan(""))
    assert b"correct-horse" not in raw
    # inject a request record with a signature of its own key (any key it can make)
    mallory = Client(store, Identity.generate("mallory"))
    async with ThingClient(mallory) as m:
        status = await (await m.request("garden-01", "Reboot")).wait(5)
    assert status.state == "rejected"  # it arrived, and was refused
    assert ran == []
    # Forged records (the owner's request replayed, edited or fabricated) are
    # tests/things/test_forged_requests.py: there the thing is shown to see each one.


async def test_owner_changes_the_status_of_a_running_thing(
    store: Store, garden: Thing, owner: Identity, stranger: ThingClient
) -> None:
    from safething.things.values import dumps

    garden.on_action("CloseValve", lambda request: None)
    md = Client(store, owner).md(garden.addresses.thing.name, garden.addresses.thing.tag)
    await md.put("status", dumps({"s": "published", "t": 0.0}))
    assert (await (await stranger.request("garden-01", "CloseValve")).wait(5)).state == "done"
    assert garden.status == "published"
    await md.put("status", dumps({"s": "disabled", "t": 0.0}))
    async with asyncio.timeout(5):
        while garden.status != "disabled":
            await asyncio.sleep(0.01)
    assert (await (await stranger.request("garden-01", "CloseValve")).wait(5)).state == "rejected"


@pytest.mark.parametrize("disabled", [False, True])
async def test_a_status_the_owner_sets_as_the_thing_starts_is_followed(
    store: Store, owner: Identity, device: Identity, disabled: bool
) -> None:
    """The owner's status written just after register() returned (before the thing's
    status watch ran) is followed: it was missed until a restart on a memory store."""
    from safething.things.values import dumps

    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        if disabled:
            await t.disable()
        md = Client(store, owner).md(t.addresses.thing.name, t.addresses.thing.tag)
        await md.put("status", dumps({"s": "published", "t": 0.0}))
        async with asyncio.timeout(5):
            while t.status != "published":
                await asyncio.sleep(0.01)


async def test_a_thing_restarted_on_its_own_status_refuses_and_rewrites_nothing(
    tmp_path: Path, store: Store, owner: Identity, device: Identity
) -> None:
    """The store holds exactly the status the thing trusts: no refusal counted, the
    record not written again."""
    path = tmp_path / "thing.trust.db"
    garden = garden_description()
    async with Thing(garden, identity=device, owner=owner, store=store, trust=path) as t:
        await t.register()
        await t.disable()
    key = ThingAddresses.of("garden-01").thing.entry_key(b"status")
    before = await store.get(key)
    async with Thing(garden, identity=device, owner=owner, store=store, trust=path) as t:
        await t.register()
        assert t.status == "disabled"
        await asyncio.sleep(0.05)  # (its status watch has read the status once more)
        assert t.client.tampered_count == 0
    after = await store.get(key)
    assert before is not None and after is not None and after.revision == before.revision


async def test_a_status_trusted_by_an_earlier_release_is_kept_and_followed(
    tmp_path: Path, store: Store, owner: Identity, device: Identity
) -> None:
    """An earlier release kept the trusted status alone (no version, no decision time):
    a thing restarted on such a trust file keeps it and follows the owner's next one."""
    from safething.things.values import dumps

    path = tmp_path / "thing.trust.db"
    garden = garden_description()
    async with Thing(garden, identity=device, owner=owner, store=store, trust=path) as t:
        await t.register()
        await t.disable()
    state = TrustState.open(path)
    assert state.value("status/garden-01") not in (None, b"disabled")
    state.set_value("status/garden-01", b"disabled")
    state.sync()
    state.close()
    async with Thing(garden, identity=device, owner=owner, store=store, trust=path) as t:
        await t.register()
        assert t.status == t.status_trusted() == "disabled"
        md = Client(store, owner).md(t.addresses.thing.name, t.addresses.thing.tag)
        await md.put("status", dumps({"s": "published", "t": 0.0}))
        async with asyncio.timeout(5):
            while t.status != "published":
                await asyncio.sleep(0.01)
        assert t.status_trusted() == "published"


async def test_desired_values_wait_for_a_sleepy_thing(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        await t.publish()
    # the device sleeps; someone sets a new target (and a bad one)
    await stranger.set_desired("garden-01", "target", 55)
    with pytest.raises(ValueTypeError, match="target"):
        await stranger.set_desired("garden-01", "target", 500)
    with pytest.raises(ValueError, match="not writable"):
        await stranger.set_desired("garden-01", "moisture", 5)
    applied: list[float] = []
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        t.on_desired("target", applied.append)
        await t.register()  # wakes up and catches up
        async with asyncio.timeout(5):
            while not applied:
                await asyncio.sleep(0.01)
        assert applied == [55.0]
        reading = await stranger.read("garden-01", "target")
        assert reading.value == 55.0
        # a refused desired value leaves the reported one alone
        t.on_desired("target", lambda v: (_ for _ in ()).throw(ValueError("too wet")))
        await stranger.set_desired("garden-01", "target", 90)
        await asyncio.sleep(0.1)
        assert (await stranger.read("garden-01", "target")).value == 55.0
        inbox = (await stranger.view("garden-01")).inbox
        assert await inbox.entries() == {}  # processed and purged either way


async def test_thing_expires_requests_it_finds_too_late(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    from safething.things.values import loads

    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        await t.register()
        await t.publish()
    handle = await stranger.request("garden-01", "CloseValve", timeout=0.05)
    assert (await handle.wait()).state == "timed_out"  # the requester gave up
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        ran: list[object] = []
        t.on_action("CloseValve", ran.append)
        await t.register()
        outbox = (await stranger.view("garden-01")).outbox
        async with asyncio.timeout(5):
            while True:
                try:
                    doc = loads(await outbox.get_value(f"r/{handle.request_id}"), "state")
                    break
                except NoSuchDataError:
                    await asyncio.sleep(0.01)
        assert doc["s"] in ("timed_out", "cancelled")
        assert ran == []


async def test_two_writers_of_one_attribute(
    store: Store, owner: Identity, device: Identity
) -> None:
    desc = garden_description(history=50)
    async with (
        Thing(desc, identity=device, owner=owner, store=store) as a,
        Thing(desc, identity=device, owner=owner, store=store) as b,
    ):
        await a.register()
        await b.register()
        seqs = await asyncio.gather(
            *(t.set("moisture", float(i)) for i in range(15) for t in (a, b))
        )
        assert sorted(seqs) == list(range(1, 31))
        history = await ThingClient(Client(store)).history("garden-01", "moisture")
        assert [r.seq for r in history] == list(range(1, 31))


async def test_a_request_interrupted_by_shutdown_is_served_after_restart(
    store: Store, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    started = asyncio.Event()

    async def slow(request: ActionRequest) -> None:
        started.set()
        await asyncio.sleep(30)

    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        t.on_action("CloseValve", slow)
        await t.register()
        await t.publish()
        handle = await stranger.request("garden-01", "CloseValve", timeout=30)
        async with asyncio.timeout(5):
            await started.wait()
            # *accepted* is written once the handler is still at work after its first step
            while handle.state not in ("accepted", "running"):
                await asyncio.sleep(0.01)
    # the thing stopped mid-action: the request was not failed, it waits
    assert handle.state in ("accepted", "running")
    async with Thing(garden_description(), identity=device, owner=owner, store=store) as t:
        t.on_action("CloseValve", lambda request: None)
        await t.register()
        assert (await handle.wait(5)).state == "done"


async def test_running_is_reported_for_a_handler_that_takes_time(
    garden: Thing, stranger: ThingClient
) -> None:
    release = asyncio.Event()

    async def slow(request: ActionRequest) -> None:
        await release.wait()

    garden.on_action("CloseValve", slow)
    garden.on_action("OpenValve", lambda request: {"quick": True})
    await garden.publish()
    handle = await stranger.request("garden-01", "CloseValve")
    async with asyncio.timeout(5):
        async for status in handle.states():
            if status.state == "running":
                break
    release.set()
    assert (await handle.wait(5)).state == "done"
    quick = await stranger.request("garden-01", "OpenValve")
    assert await quick.result(5) == {"quick": True}  # done without a separate running write


async def test_a_thing_closed_by_a_cancelled_caller_closes_completely() -> None:
    """Its owner (the gateway's sweep, say) cancelled during the close: the close goes
    on to its end (its tasks ended, its store closed), then the cancellation is raised
    (tests/test_resource.py: swallowed, the gateway hung at stop)."""
    thing = Thing(garden_description(), identity=Identity.generate(), store="memory://")
    await thing.start()
    ended: list[str] = []

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.05)
            ended.append("thing-task")

    thing._tasks.spawn(slow_to_end(), "slow")
    await asyncio.sleep(0)
    closing = asyncio.create_task(thing.close())
    await asyncio.sleep(0.01)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert ended == ["thing-task"]
    assert thing._own_store and thing._store._closed  # type: ignore[attr-defined]
