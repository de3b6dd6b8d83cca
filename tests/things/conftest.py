from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import (
    Action,
    Attribute,
    Param,
    Thing,
    ThingClient,
    ThingDescription,
    Topic,
)


def garden_description(thing_id: str = "garden-01", history: int = 8) -> ThingDescription:
    return ThingDescription(
        thing_id,
        title="Gardening device",
        attributes=[
            Attribute(
                "moisture",
                "number",
                unit="%",
                minimum=0,
                maximum=100,
                dynamic=True,
                history=history,
            ),
            Attribute("valve", "enum", choices=["open", "closed"], dynamic=True),
            Attribute("target", "number", minimum=0, maximum=100, dynamic=True, writable=True),
            Attribute("secret_code", "string", dynamic=True, access="owner"),
            Attribute("group_note", "string", dynamic=True, access="group"),
            Attribute("model", "string", value="GD-1"),
        ],
        topics=[Topic("VeryDryAlarm", "number", history=history), Topic("VeryWetAlarm")],
        actions=[
            Action(
                "OpenValve",
                params=[Param("psi", "number", minimum=0, maximum=100, default=30)],
                output="object",
            ),
            Action("CloseValve"),
            Action("Reboot", access="owner", output="string"),
            Action(
                "Water",
                access="group",
                params=[Param("litres", "number", minimum=0)],
                output="number",
            ),
            Action("SelfTest", access="thing", output="string"),
        ],
    )


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with await open_store("memory://") as s:
        yield s


@pytest.fixture
def owner() -> Identity:
    return Identity.generate("owner")


@pytest.fixture
def device() -> Identity:
    return Identity.generate("device")


@pytest.fixture
async def garden(store: Store, owner: Identity, device: Identity) -> AsyncIterator[Thing]:
    async with Thing(garden_description(), identity=device, owner=owner.public, store=store) as t:
        await t.register()
        yield t


@pytest.fixture
async def stranger(store: Store) -> AsyncIterator[ThingClient]:
    async with ThingClient(Client(store, Identity.generate("stranger"))) as c:
        yield c


@pytest.fixture
async def owner_client(store: Store, owner: Identity) -> AsyncIterator[ThingClient]:
    async with ThingClient(Client(store, owner)) as c:
        yield c
