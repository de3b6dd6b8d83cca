"""The gateway core, driven exactly as a bridge drives it (transport-free)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import ThingClient, ThingDescription
from safething_gateway import core
from safething_gateway.core import Gateway
from safething_gateway.protocol import (
    BadMacError,
    BadMessageError,
    PayloadError,
    RateLimitedError,
    ReplayError,
    RevokedDeviceError,
    TooLargeError,
    UnknownChannelError,
    UnknownDeviceError,
    parse_frame,
)
from safething_gateway.registry import Registry

from .conftest import SENSOR, Device, tamper


@pytest.fixture
def device(gateway: Gateway) -> Device:
    record = gateway.registry.add("sensor-01", "http")
    return Device("sensor-01", record.secret)


async def test_birth_reading_event_reach_a_subscriber(
    gateway: Gateway, device: Device, store: Store
) -> None:
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    things = ThingClient(Client(store))
    assert await things.status("sensor-01") == "published"
    async with things.subscribe("sensor-01", topic="VeryDryAlarm") as sub:
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 12}))
        await gateway.handle(
            "sensor-01", "event/VeryDryAlarm", device.message("event/VeryDryAlarm", 12)
        )
        async with asyncio.timeout(5):
            note = await anext(aiter(sub))
    assert note.value == 12.0
    assert (await things.read("sensor-01", "moisture")).value == 12.0
    assert gateway.metrics.get("safething_gateway_messages_in_total", transport="") == 3


@pytest.mark.parametrize(
    ("progress", "shown"), [(50, 50.0), (10**400, None)], ids=["progress", "no-float-holds-it"]
)
async def test_action_forwarded_and_answered_by_polling(
    gateway: Gateway, device: Device, store: Store, progress: int, shown: float | None
) -> None:
    """A device polls for the request, runs it and reports; a progress no float holds
    (JSON carries any integer) is shown as none, the action still ends done."""
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    things = ThingClient(Client(store, __import__("safething").Identity.generate()))
    handle = await things.request("sensor-01", "OpenValve", psi=40)
    async with asyncio.timeout(5):
        while True:
            down = await gateway.handle("sensor-01", "poll", device.message("poll", {}))
            if down:
                break
            await asyncio.sleep(0.02)
    assert down[0].channel == f"action/{handle.request_id}"  # the MAC covers it
    msg = parse_frame(down[0].frame)
    assert msg.counter == down[0].counter
    request = json.loads(msg.open(device.secret, "sensor-01", down[0].channel, uplink=False))
    assert request["action"] == "OpenValve"
    assert request["args"] == {"psi": 40.0}
    await gateway.handle("sensor-01", "ack", device.message("ack", {"down": msg.counter}))
    rid = request["id"]
    await gateway.handle(
        "sensor-01",
        f"result/{rid}",
        device.message(f"result/{rid}", {"state": "running", "progress": progress}),
    )
    await gateway.handle(
        "sensor-01",
        f"result/{rid}",
        device.message(f"result/{rid}", {"state": "done", "result": None}),
    )
    assert (await handle.wait(5)).state == "done"
    assert [s.progress for s in handle.history if s.state == "running"][-1] == shown
    assert gateway.registry.pending("sensor-01") == []
    assert gateway.registry.buffer_depth() == 0  # only readings and events are journaled
    await things.close()


async def test_rejections(gateway: Gateway, device: Device) -> None:
    good = device.message("birth", {"description": SENSOR})
    await gateway.handle("sensor-01", "birth", good)
    with pytest.raises(ReplayError, match="not above"):
        await gateway.handle("sensor-01", "birth", good)
    forged = device.message("reading", {"moisture": 1})
    with pytest.raises(BadMacError):
        await gateway.handle("sensor-01", "reading", tamper(forged))
    with pytest.raises(BadMacError):  # a valid message moved to another channel
        await gateway.handle("sensor-01", "event/VeryDryAlarm", device.message("reading", 5))
    with pytest.raises(BadMacError):  # an unknown device is answered like a wrong MAC
        await gateway.handle("nobody-01", "reading", device.message("reading", {}))
    with pytest.raises(UnknownChannelError):
        await gateway.handle("sensor-01", "launch", device.message("launch", {}))
    with pytest.raises(BadMessageError):
        await gateway.handle("sensor-01", "reading", b"moisture=12")
    with pytest.raises(TooLargeError):
        await gateway.handle("sensor-01", "reading", b"x" * 20_000)
    with pytest.raises(PayloadError, match="not valid JSON"):
        await gateway.handle("sensor-01", "reading", device.message("reading", b"{nope"))
    # the body is sealed (ST2), so is the reason: the device's reply does not quote the
    # values (a broker or sniffer would read it); the cause, for the gateway log, does
    with pytest.raises(PayloadError) as refused:
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": "wet"}))
    assert "wet" not in str(refused.value) and "moisture" not in str(refused.value)
    assert "moisture" in str(refused.value.__cause__)
    with pytest.raises(PayloadError) as refused:
        await gateway.handle("sensor-01", "reading", device.message("reading", {"colour": 1}))
    assert "colour" in str(refused.value.__cause__)
    gateway.registry.revoke("sensor-01")
    with pytest.raises(RevokedDeviceError):
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 1}))
    rejected = {
        labels: v for (name, labels), v in gateway.metrics.counters.items() if "rejected" in name
    }
    assert sum(rejected.values()) == 11


async def test_rate_limit_per_device(
    gateway: Gateway, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the gateway's clock stands still: on a loaded machine these messages may take long
    # enough to earn a token
    monkeypatch.setattr(core, "time", SimpleNamespace(time=time.time, monotonic=lambda: 1000.0))
    gateway.rate, gateway.burst = 1.0, 3
    other = Device("sensor-02", gateway.registry.add("sensor-02", "http").secret)
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    for _ in range(2):
        await gateway.handle("sensor-01", "poll", device.message("poll", {}))
    with pytest.raises(RateLimitedError):
        await gateway.handle("sensor-01", "poll", device.message("poll", {}))
    # the flooding device has used its bucket up; the other device has its own
    for _ in range(3):
        await gateway.handle("sensor-02", "poll", other.message("poll", {}))
    with pytest.raises(RateLimitedError):
        await gateway.handle("sensor-02", "poll", other.message("poll", {}))


async def test_revocation_drops_the_queued_downlinks(gateway: Gateway, device: Device) -> None:
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    await gateway.send("sensor-01", "desired", {"target": 5})
    await gateway.send("sensor-01", "desired", {"target": 6})
    assert len(gateway.registry.pending("sensor-01")) == 2  # queued, not yet fetched
    gateway.registry.revoke("sensor-01")
    assert gateway.registry.pending("sensor-01") == []
    assert gateway.registry.queue_depth() == 0
    with pytest.raises(RevokedDeviceError):  # nor can it poll for them any more
        await gateway.handle("sensor-01", "poll", device.message("poll", {}))


@pytest.mark.parametrize("call", ["enqueue", "enqueue_once"])
async def test_a_downlink_racing_a_revocation_is_not_queued(
    gateway: Gateway, device: Device, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """Another process revokes the device after the gateway looked it up and before its
    downlink (a desired value, or an action request) is queued: the queue's transaction
    refuses it, so nothing waits for a revoked device."""
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    cli = Registry(gateway.registry.path)  # the other process's registry on the same file
    queue = getattr(gateway.registry, call)

    def revoked_first(*args: Any, **kwargs: Any) -> Any:
        cli.revoke("sensor-01")
        return queue(*args, **kwargs)

    monkeypatch.setattr(gateway.registry, call, revoked_first)
    send = (
        gateway.send("sensor-01", "desired", {"target": 5})
        if call == "enqueue"
        else gateway._send_once("sensor-01", "action/OpenValve", {}, expires=time.time() + 60)
    )
    try:
        with pytest.raises(RevokedDeviceError):
            await send
    finally:
        cli.close()
    assert gateway.registry.pending("sensor-01") == []
    assert gateway.registry.queue_depth() == 0


async def test_a_reading_racing_a_revocation_is_refused(
    gateway: Gateway, device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway looks a device up in the registry's cache of recent rows; another
    process (``safething device revoke``) revokes the device after that look-up and
    before the counter is spent. The counter's transaction refuses it: nothing stored."""
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 1}))
    assert gateway.registry.cached("sensor-01") is not None  # its row is cached, not revoked
    cli = Registry(gateway.registry.path)  # the other process's registry on the same file
    accept = gateway.registry.accept

    def revoked_first(*args: Any, **kwargs: Any) -> int | None:
        cli.revoke("sensor-01")
        return accept(*args, **kwargs)

    monkeypatch.setattr(gateway.registry, "accept", revoked_first)
    try:
        with pytest.raises(RevokedDeviceError):
            await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 2}))
        assert cli.find("sensor-01").revoked  # type: ignore[union-attr]
    finally:
        cli.close()
    things = ThingClient(Client(gateway.store))
    reading = await things.read("sensor-01", "moisture")
    assert (reading.seq, reading.value) == (1, 1.0)  # the second reading was not stored
    assert gateway.registry.buffered() == []  # nor journaled for later
    monkeypatch.undo()
    with pytest.raises(RevokedDeviceError):  # and the next one is refused at once
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 3}))
    assert gateway.registry.cached("sensor-01").revoked  # type: ignore[union-attr]


async def test_a_device_cannot_claim_another_things_id(gateway: Gateway, device: Device) -> None:
    other = Device("sensor-02", gateway.registry.add("sensor-02", "http").secret)
    squat = {**SENSOR, "id": "sensor-02", "title": "not yours"}
    with pytest.raises(PayloadError) as refused:
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": squat}))
    assert "not the device id" in str(refused.value.__cause__)
    assert "sensor-02" not in gateway.things
    # the real owner of the id registers it afterwards, with its own description
    mine = {**SENSOR, "id": "sensor-02", "title": "Soil sensor 2"}
    await gateway.handle("sensor-02", "birth", other.message("birth", {"description": mine}))
    things = ThingClient(Client(gateway.store))
    assert await things.status("sensor-02") == "published"
    assert (await things.describe("sensor-02")).title == "Soil sensor 2"


@pytest.mark.parametrize(
    "description",
    [
        {k: v for k, v in SENSOR.items() if k != "id"},  # no id
        {**SENSOR, "attributes": "moisture"},  # not an object of attributes
        {**SENSOR, "id": 7},
    ],
)
async def test_a_birth_whose_description_does_not_parse_is_refused_and_spends_nothing(
    gateway: Gateway, device: Device, description: dict[str, object]
) -> None:
    """A broken device's birth: refused as a bad payload (the detail in the log, as the
    body was sealed), no thing made, no counter spent: the same counter with a good
    description is accepted."""
    birth = "".join(list("birth"))  # as a bridge cuts it out of a path or a topic
    with pytest.raises(PayloadError) as refused:
        await gateway.handle(
            "sensor-01", birth, device.message("birth", {"description": description})
        )
    assert "bad description" in str(refused.value.__cause__)
    assert "sensor-01" not in gateway.things
    good = device.message("birth", {"description": SENSOR}, counter=device.counter)
    await gateway.handle("sensor-01", birth, good)
    assert await ThingClient(Client(gateway.store)).status("sensor-01") == "published"


async def test_no_device_claims_an_id_that_sorts_before_its_own(gateway: Gateway) -> None:
    """The other direction of the squat above: sensor-09 claims sensor-01's id."""
    squatter = Device("sensor-09", gateway.registry.add("sensor-09", "http").secret)
    squat = {**SENSOR, "id": "sensor-01", "title": "not yours"}
    with pytest.raises(PayloadError) as refused:
        await gateway.handle(
            "sensor-09", "birth", squatter.message("birth", {"description": squat})
        )
    assert "not the device id" in str(refused.value.__cause__)
    assert "sensor-01" not in gateway.things


async def test_a_replay_after_the_registry_is_reopened_is_refused(tmp_path: Path) -> None:
    owner = Identity.generate("owner")
    async with await open_store("memory://") as store:
        registry = Registry(tmp_path / "gateway.db")
        device = Device("sensor-01", registry.add("sensor-01", "http").secret)
        birth = device.message("birth", {"description": SENSOR})
        last = device.message("reading", {"moisture": 3})
        async with Gateway(store=store, registry=registry, owner=owner) as gateway:
            await gateway.start()
            await gateway.handle("sensor-01", "birth", birth)
            await gateway.handle("sensor-01", "reading", last)
        registry.close()
        registry = Registry(tmp_path / "gateway.db")  # the gateway restarts
        try:
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()
                for channel, replayed in (("reading", last), ("birth", birth)):
                    with pytest.raises(ReplayError, match="not above the last accepted"):
                        await gateway.handle("sensor-01", channel, replayed)
                # the device's next message is served: the counters were kept, not lost
                await gateway.handle(
                    "sensor-01", "reading", device.message("reading", {"moisture": 4})
                )
                things = ThingClient(Client(store))
                assert (await things.read("sensor-01", "moisture")).value == 4.0
        finally:
            registry.close()


async def test_last_will_counter_is_accepted_once(gateway: Gateway, device: Device) -> None:
    will = device.message("state", {"online": False})  # counter 1, kept by the broker
    await gateway.handle("sensor-01", "state", device.message("state", {"online": True, "will": 1}))
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    # the channel as a bridge has it: cut out of a topic at run time (an equal string,
    # not the literal's object)
    state = "".join(list("state"))
    await gateway.handle("sensor-01", state, will)  # the broker publishes it later
    assert gateway.registry.get("sensor-01").online is False
    with pytest.raises(ReplayError):
        await gateway.handle("sensor-01", state, will)
    things = ThingClient(Client(gateway.store))
    live = await things.availability("sensor-01")
    assert (live.online, live.reason) == (False, "last will")
    await gateway.handle("sensor-01", "state", device.message("state", {"online": True}))
    # a device that says it goes offline, with a fresh counter, is no last will
    await gateway.handle("sensor-01", state, device.message("state", {"online": False}))
    live = await things.availability("sensor-01")
    assert (live.online, live.reason) == (False, "said offline")
    old = device.message("state", {"online": False}, counter=device.counter - 1)
    with pytest.raises(ReplayError):  # and an older one is refused like any replay
        await gateway.handle("sensor-01", state, old)
    # a device that announces its will's counter (9) and then sends a state saying online
    # with that counter: an ordinary message (it spends the counter), not the will
    await gateway.handle("sensor-01", state, device.message("state", {"online": True, "will": 9}))
    await gateway.handle("sensor-01", state, device.message("state", {"online": True}, counter=9))
    assert gateway.registry.get("sensor-01").rx_counter == 9
    assert gateway.registry.buffer_depth() == 0  # a state is not journaled as data


async def test_the_wills_counter_is_no_last_will_on_another_channel(
    gateway: Gateway, device: Device
) -> None:
    """A message at the will's counter saying offline on any channel but ``state`` is no
    last will: past the last accepted counter it is refused as a replay, and the will
    itself, published later by the broker, still counts once."""
    will = device.message("state", {"online": False})  # counter 1, kept by the broker
    await gateway.handle("sensor-01", "state", device.message("state", {"online": True, "will": 1}))
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    for channel in ("reading", "event/alarm"):
        at_will = device.message(channel, {"online": False}, counter=1)
        with pytest.raises(ReplayError, match="not above the last accepted"):
            await gateway.handle("sensor-01", "".join(list(channel)), at_will)
    assert gateway.registry.get("sensor-01").online is True
    await gateway.handle("sensor-01", "".join(list("state")), will)
    assert gateway.registry.get("sensor-01").online is False


async def test_a_last_will_is_accepted_at_counters_past_256(
    gateway: Gateway, device: Device
) -> None:
    """A device long in service: its counters are large numbers (not objects CPython
    shares), and its last will still counts once."""
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    device.counter = 70_000
    will = device.message("state", {"online": False})  # reserved for the broker
    online = {"online": True, "will": device.counter}
    await gateway.handle("sensor-01", "state", device.message("state", online))
    await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": 5}))
    state = "".join(list("state"))  # as a bridge cuts it out of a topic
    await gateway.handle("sensor-01", state, will)  # the broker publishes it later
    assert gateway.registry.get("sensor-01").online is False
    with pytest.raises(ReplayError):
        await gateway.handle("sensor-01", state, will)


async def test_an_st1_devices_refusal_says_why(gateway: Gateway) -> None:
    """ST1 bodies travel in clear, so may the reason a body is refused; an ST2 body's
    reason stays in the gateway log (test_rejections)."""
    device = Device("sensor-01", gateway.registry.add("sensor-01", "http", protocol=1).secret)
    device.version = 1
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    with pytest.raises(PayloadError, match="moisture"):
        await gateway.handle("sensor-01", "reading", device.message("reading", {"moisture": "wet"}))


@pytest.mark.parametrize(
    ("channel", "body"),
    [
        ("reading", {}),
        ("reading", [1, 2]),
        ("result/r-1", {"state": "requested"}),
        ("result/r-1", ["done"]),
        ("ack", {"down": "1"}),
        ("state", {"will": 1}),
    ],
)
async def test_bodies_the_link_cannot_use_spend_no_counter(
    gateway: Gateway, device: Device, channel: str, body: object
) -> None:
    """The fields the link itself uses are checked before the counter is spent: the device
    may send the same counter again with a good body."""
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    cut = "".join(list(channel))  # as a bridge cuts it out of a path or a topic
    with pytest.raises(PayloadError):
        await gateway.handle("sensor-01", cut, device.message(channel, body))
    assert gateway.registry.get("sensor-01").rx_counter == device.counter - 1
    good = device.message("reading", {"moisture": 3}, counter=device.counter)
    await gateway.handle("sensor-01", "reading", good)


async def test_counter_fields_go_up_to_2_63_minus_1(gateway: Gateway, device: Device) -> None:
    """The counters a body names (an ack's downlink, the last will's) are those of the
    link: 0 to 2^63-1, both ends included, and no further."""
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    await gateway.handle("sensor-01", "ack", device.message("ack", {"down": 2**63 - 1}))
    will = {"online": True, "will": 2**63 - 1}
    await gateway.handle("sensor-01", "state", device.message("state", will))
    assert gateway.registry.get("sensor-01").will_counter == 2**63 - 1
    for channel, body in (("ack", {"down": 2**63}), ("state", {"online": True, "will": 2**63})):
        with pytest.raises(PayloadError):
            await gateway.handle("sensor-01", channel, device.message(channel, body))


async def test_devices_of_one_model_share_their_description_parsed_once(
    gateway: Gateway, device: Device
) -> None:
    """Devices of one model send one description but for their ids: parsed once, each
    thing gets it with its own id (and a title that defaults to it, its own); an id the
    description refuses is refused as before."""
    model = {k: v for k, v in SENSOR.items() if k != "title"}
    others = {
        device_id: Device(device_id, gateway.registry.add(device_id, "http").secret)
        for device_id in ("sensor-02", "sensor-03")
    }
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": model}))
    mine = {**model, "id": "sensor-02"}
    other = others["sensor-02"]
    await gateway.handle("sensor-02", "birth", other.message("birth", {"description": mine}))
    first, second = gateway.things["sensor-01"].description, gateway.things["sensor-02"].description
    assert second.attributes is first.attributes and second.actions is first.actions
    assert second == ThingDescription.from_dict(mine)
    assert (second.id, second.title, first.title) == ("sensor-02", "sensor-02", "sensor-01")
    # what the registry keeps is each one's own description, as a parse of it gives it
    for device_id, sent in (("sensor-01", {**model, "id": "sensor-01"}), ("sensor-02", mine)):
        kept = gateway.registry.get(device_id).description
        assert kept == ThingDescription.from_dict(sent).to_dict()
        assert list(kept or ()) == list(ThingDescription.from_dict(sent).to_dict())
    things = ThingClient(Client(gateway.store))
    assert (await things.describe("sensor-02")).title == "sensor-02"
    # the model's parts, but an id no description may have: refused, nothing spent
    third = others["sensor-03"]
    bad = {**model, "id": "s3"}
    with pytest.raises(PayloadError) as refused:
        await gateway.handle("sensor-03", "birth", third.message("birth", {"description": bad}))
    assert "bad description" in str(refused.value.__cause__)
    assert "invalid thing id" in str(refused.value.__cause__)
    assert "sensor-03" not in gateway.things


async def test_a_birth_is_two_store_commits(
    gateway: Gateway, device: Device, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new device's thing: its four MDs in one commit, then everything else (key list,
    level keys, description, status *published*, availability *online*) in one more."""
    commits: list[list[str]] = []
    commit = store.commit

    async def counted(writes: Any, **kwargs: Any) -> Any:
        commits.append([w.key for w in writes])
        return await commit(writes, **kwargs)

    monkeypatch.setattr(store, "commit", counted)
    await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
    assert len(commits) == 2
    assert [len(keys) for keys in commits] == [4, 7]
    things = ThingClient(Client(store, Identity.generate()))
    assert await things.status("sensor-01") == "published"
    assert (await things.availability("sensor-01")).online is True


async def test_each_journal_entry_is_dropped_once_with_many_readings_in_flight(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings of many devices at once: every journal entry is dropped, and by one
    call only (each call named every entry still waiting for its own call before)."""
    devices = [
        Device(f"sensor-{i:02d}", gateway.registry.add(f"sensor-{i:02d}", "http").secret)
        for i in range(12)
    ]
    for d in devices:
        message = d.message("birth", {"description": {**SENSOR, "id": d.device_id}})
        await gateway.handle(d.device_id, "birth", message)
    dropped: list[int] = []
    unbuffer = gateway.registry.unbuffer

    def counted(ids: list[int]) -> None:
        dropped.extend(ids)
        unbuffer(ids)

    monkeypatch.setattr(gateway.registry, "unbuffer", counted)

    async def send(d: Device) -> None:
        for j in range(5):
            message = d.message("reading", {"moisture": j})
            await gateway.handle(d.device_id, "reading", message)

    await asyncio.gather(*(send(d) for d in devices))
    assert len(dropped) == len(set(dropped)) == 60
    assert gateway.registry.buffer_depth() == 0


async def test_availability_of_a_bridged_device(store: Store, registry: Registry) -> None:
    """Online on its messages, offline after a silence (CoAP/HTTP devices), and a request
    to it says so at once."""
    async with Gateway(
        store=store, registry=registry, owner=Identity.generate("owner"), offline_after=0.3
    ) as gateway:
        await gateway.start()
        record = gateway.registry.add("sensor-01", "http")
        device = Device("sensor-01", record.secret)
        await gateway.handle("sensor-01", "birth", device.message("birth", {"description": SENSOR}))
        things = ThingClient(Client(store, Identity.generate()))
        assert (await things.availability("sensor-01")).online is True
        async with things.follow_availability("sensor-01") as watch:
            assert (await anext(watch)).online is True
            async with asyncio.timeout(30):
                while gateway.liveness.online("sensor-01"):
                    await gateway.liveness.sweep()
                    await asyncio.sleep(0.05)
                gone = await anext(watch)
        assert (gone.online, gone.reason) == (False, "inactive")
        handle = await things.request("sensor-01", "OpenValve", psi=40)
        assert handle.offline and "offline" in handle.status.message
        # the gateway's thing accepts it for the device and says why it waits
        async with asyncio.timeout(30):
            async for status in handle.states():
                if status.message.startswith("the device") or status.final:
                    break
        assert (status.state, status.message) == (
            "running",
            "the device is offline; queued until it returns",
        )
        await gateway.handle("sensor-01", "poll", device.message("poll", {}))
        assert (await things.availability("sensor-01")).online is True
    # the gateway stopped: nobody vouches for its devices any more
    live = await ThingClient(Client(store)).availability("sensor-01")
    assert (live.online, live.reason) == (False, "gateway stopped")


def test_names_with_a_trailing_newline_are_refused() -> None:
    from safething_gateway.protocol import check_channel, check_device_id

    with pytest.raises(UnknownDeviceError):
        check_device_id("sensor-01\n")
    with pytest.raises(UnknownChannelError):
        check_channel("event/Alarm\n")


async def test_an_action_the_device_has_is_not_sent_again_after_a_gateway_restart(
    tmp_path: Path,
) -> None:
    """The gateway dies after the device took an action and before its result: the resumed
    request waits for that result and never hands the device the action a second time
    (a device would run it again: the new downlink has a new counter)."""
    owner = Identity.generate("owner")
    async with await open_store("memory://") as store:
        registry = Registry(tmp_path / "gateway.db")
        device = Device("sensor-01", registry.add("sensor-01", "http").secret)
        requester = ThingClient(Client(store, owner))
        try:
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()
                birth = device.message("birth", {"description": SENSOR})
                await gateway.handle("sensor-01", "birth", birth)
                handle = await requester.request("sensor-01", "OpenValve", psi=40)
                async with asyncio.timeout(10):
                    while not (
                        down := await gateway.handle(
                            "sensor-01", "poll", device.message("poll", {})
                        )
                    ):
                        await asyncio.sleep(0.02)
                assert down[0].channel == f"action/{handle.request_id}"
                ack = device.message("ack", {"down": down[0].counter})
                await gateway.handle("sensor-01", "ack", ack)  # the device runs it now
            registry.close()
            registry = Registry(tmp_path / "gateway.db")  # the gateway restarts
            async with Gateway(store=store, registry=registry, owner=owner) as gateway:
                await gateway.start()
                key = ("sensor-01", handle.request_id)
                async with asyncio.timeout(10):
                    while key not in gateway._waiting:  # the request was resumed
                        await asyncio.sleep(0.02)
                again = await gateway.handle("sensor-01", "poll", device.message("poll", {}))
                assert [d.channel for d in again] == []
                rid = handle.request_id
                result = device.message(f"result/{rid}", {"state": "done", "result": None})
                await gateway.handle("sensor-01", f"result/{rid}", result)
                assert (await handle.wait(10)).state == "done"
        finally:
            await requester.close()
            registry.close()
