from __future__ import annotations

import dataclasses
import logging

import pytest

from safething.errors import NoSuchDataError, PermissionDeniedError
from safething.net import TAG_THING, Client, Identity, XorName
from safething.store import Store
from safething.things import Attribute, Thing, ThingClient, ThingDescription
from safething.things.admin import set_status
from safething.things.discovery import ThingSummary, list_things
from safething.things.layout import ThingAddresses
from safething.things.values import dumps

from .conftest import garden_description


def lamp_description(thing_id: str = "lamp-0001") -> ThingDescription:
    return ThingDescription(
        thing_id,
        title="Porch Lamp",
        attributes=[Attribute("brightness", "number", dynamic=True)],
    )


async def test_lists_every_thing_and_skips_other_mds(
    store: Store,
    garden: Thing,
    owner: Identity,
    device: Identity,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Thing(lamp_description(), identity=device, owner=owner, store=store) as lamp:
        await lamp.register()
        await lamp.publish()
    client = Client(store, owner)
    plain = await client.create_md(XorName.of("just-an-md"), TAG_THING)
    await plain.put("hello", "world")
    private = await client.create_md(XorName.of("a-private-md"), TAG_THING, private=True)
    await private.put("desc", "secret")
    junk = await client.create_md(XorName.of("junk-desc"), TAG_THING)
    await junk.put("desc", b"\xff\xfe not cbor")
    elsewhere = await client.create_md(XorName.of("copied-desc"), TAG_THING)
    await elsewhere.put("desc", dumps(garden.description.to_dict()))
    await client.create_md(ThingAddresses.of("half-thing").thing.name, TAG_THING)

    with caplog.at_level(logging.DEBUG, logger="safething.things"):
        things = await list_things(Client(store))
    assert [t.id for t in things] == ["garden-01", "lamp-0001"]
    garden_summary, lamp_summary = things
    assert garden_summary.title == "Gardening device"
    assert garden_summary.status == "registered"
    assert garden_summary.attributes[:2] == ("moisture", "valve")
    assert garden_summary.topics == ("VeryDryAlarm", "VeryWetAlarm")
    assert "OpenValve" in garden_summary.actions
    assert lamp_summary.availability in ("online", "offline")
    assert lamp_summary.last_seen is not None
    assert dataclasses.replace(lamp_summary, availability="unknown", last_seen=None) == (
        ThingSummary("lamp-0001", "Porch Lamp", "published", ("brightness",))
    )
    assert lamp_summary.to_dict()["attributes"] == ["brightness"]
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "private" in skipped
    assert "malformed description" in skipped
    assert "lives elsewhere" in skipped


async def test_status_and_search_filters(
    store: Store, garden: Thing, owner: Identity, device: Identity
) -> None:
    async with Thing(lamp_description(), identity=device, owner=owner, store=store) as lamp:
        await lamp.register()
        await lamp.publish()
    client = Client(store)

    async def ids(**kwargs: object) -> list[str]:
        return [t.id for t in await list_things(client, **kwargs)]  # type: ignore[arg-type]

    assert await ids(status="published") == ["lamp-0001"]
    assert await ids(status="registered") == ["garden-01"]
    assert await ids(status=["registered", "published"]) == ["garden-01", "lamp-0001"]
    assert await ids(status="disabled") == []
    assert await ids(search="porch") == ["lamp-0001"]  # title, any case
    assert await ids(search="GARDEN-") == ["garden-01"]  # id
    assert await ids(search="openvalve") == ["garden-01"]  # action
    assert await ids(search="drYalarm") == ["garden-01"]  # topic
    assert await ids(search="bright") == ["lamp-0001"]  # attribute
    assert await ids(search="e", status="published") == ["lamp-0001"]
    assert await ids(search="nothing like it") == []
    with pytest.raises(ValueError, match="unknown thing status 'running'"):
        await list_things(client, status="running")


async def test_empty_store(store: Store) -> None:
    assert await list_things(Client(store)) == []


def test_summary_validates_itself() -> None:
    with pytest.raises(ValueError, match="unknown thing status"):
        ThingSummary("x-0001", "X", "asleep")
    with pytest.raises(TypeError, match="list of names"):
        ThingSummary("x-0001", "X", "published", "moisture")  # type: ignore[arg-type]


async def test_owner_sets_the_status(
    store: Store, garden: Thing, owner: Identity, device: Identity, stranger: ThingClient
) -> None:
    assert await set_status(Client(store, owner), "garden-01", "published") == "registered"
    assert await stranger.status("garden-01") == "published"
    assert [t.id for t in await list_things(Client(store), status="published")] == ["garden-01"]
    assert await set_status(Client(store, owner), "garden-01", "disabled") == "published"
    assert await stranger.status("garden-01") == "disabled"
    assert await set_status(Client(store, device), "garden-01", "published") == "disabled"
    assert await stranger.status("garden-01") == "published"


async def test_set_status_refusals(store: Store, garden: Thing, owner: Identity) -> None:
    with pytest.raises(PermissionDeniedError, match="only the owner"):
        await set_status(Client(store, Identity.generate()), "garden-01", "disabled")
    with pytest.raises(NoSuchDataError, match="no thing 'garden-99'"):
        await set_status(Client(store, owner), "garden-99", "published")
    with pytest.raises(ValueError, match="unknown thing status"):
        await set_status(Client(store, owner), "garden-01", "on")
    with pytest.raises(PermissionDeniedError, match="no identity"):
        await set_status(Client(store), "garden-01", "published")
    assert garden.status == "registered"


async def test_list_sees_a_thing_registered_later(
    store: Store, owner: Identity, device: Identity
) -> None:
    client = Client(store)
    assert await list_things(client) == []
    async with Thing(garden_description("garden-77"), identity=device, store=store) as t:
        await t.register()
    assert [s.id for s in await list_things(client)] == ["garden-77"]
