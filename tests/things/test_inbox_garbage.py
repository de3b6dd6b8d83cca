"""Records of any shape where an attacker may write them: the thing goes on serving,
readers get refusals.

A stranger inserts a few hundred records under the inbox's prefixes (requests,
cancellations, desired values) and under others: values that are no CBOR, CBOR of any
shape, and request-like maps whose fields hold values of the wrong type, integers no
float holds, NaN and infinities, deep nesting, long strings. Afterwards the thing still
runs an honest request, and none of its tasks ended with an error.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from safething.errors import EntryExistsError, LimitExceededError, SafeThingError
from safething.net import Action, Client, Identity
from safething.store import Store, open_store
from safething.things import Thing, ThingClient
from safething.things.layout import ThingAddresses
from safething.things.values import dumps

from ..hostile import value
from .conftest import garden_description

THING = "garden-01"
RECORDS = 300
_FIELDS = ("a", "args", "t", "exp", "x", "enc", "v", "p", "id", "s")
_NAMES = ("OpenValve", "CloseValve", "Reboot", "Water", "SelfTest", "target", "moisture")


def _value(rng: random.Random) -> Any:
    return value(rng, fields=_FIELDS, words=_NAMES)


def _request_like(rng: random.Random) -> dict[str, Any]:
    """A map with a request's fields, each plausible or of any shape."""
    now = time.time()
    plausible: dict[str, Any] = {
        "a": rng.choice(_NAMES),
        "args": {"psi": rng.choice([1, 200, "1", None])},
        "t": now,
        "exp": now + 60,
        "v": 50,
    }
    doc = {k: (v if rng.random() < 0.6 else _value(rng)) for k, v in plausible.items()}
    if rng.random() < 0.3:
        doc["x"] = _value(rng)
    if rng.random() < 0.3:
        doc["enc"] = _value(rng)
    return doc


def _key(rng: random.Random) -> str:
    prefix = rng.choice(["r/", "r/", "c/", "d/target/", "d/moisture/", "d/nothing/", "d/", "z/"])
    tail = rng.choice(
        [
            secrets.token_hex(8),
            "",
            "../" * 3,
            "\u202e" + secrets.token_hex(2),
            "x" * rng.randint(100, 400),
            secrets.token_hex(8) + "/extra",
        ]
    )
    return prefix + tail


def _record(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randint(0, 300))  # mostly no CBOR at all
    if roll < 0.3:
        return dumps(_value(rng))
    return dumps(_request_like(rng))


@dataclass
class _Garden:
    """A running, published garden thing on a SQLite store, and the requests it ran."""

    store: Store
    thing: Thing
    owner: Identity
    ran: list[str] = field(default_factory=list)

    async def serves_an_honest_request(self) -> None:
        async with ThingClient(Client(self.store, Identity.generate("honest"))) as honest:
            handle = await honest.request(THING, "OpenValve", psi=10)
            status = await handle.wait(30)
        assert status.state == "done", status
        assert handle.request_id in self.ran


@contextlib.asynccontextmanager
async def _garden(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[_Garden]:
    """The garden, running; at the end, no error logged (no task of it failed)."""
    url = f"sqlite://{tmp_path}/vault.db"
    owner, device = Identity.generate("owner"), Identity.generate("device")
    caplog.set_level(logging.ERROR)
    async with (
        await open_store(url) as store,
        Thing(garden_description(), identity=device, owner=owner.public, store=url) as t,
    ):
        garden = _Garden(store, t, owner)
        t.on_action("OpenValve", lambda request: garden.ran.append(request.request_id) or {})
        await t.register(publish=True)
        yield garden
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failed == [], [r.getMessage() for r in failed]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_a_thing_serves_requests_after_any_inbox_garbage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    rng = random.Random(seed)
    inbox = ThingAddresses.of(THING).inbox
    async with _garden(tmp_path, caplog) as garden:
        stranger = Client(garden.store, Identity.generate("stranger")).md(inbox.name, inbox.tag)
        inserted = 0
        for _ in range(RECORDS):
            try:
                await stranger.insert(_key(rng), _record(rng))
            except (LimitExceededError, EntryExistsError):  # refused by the store itself
                continue
            inserted += 1
        assert inserted > RECORDS // 2
        await garden.serves_an_honest_request()


_THING_KEYS = (
    "desc",
    "keys",
    "status",
    "live",
    "k/owner",
    "k/group",
    "k/thing",
    "a/moisture",
    "ah/moisture/0",
    "ah/moisture/1",
    "e/VeryDryAlarm",
    "e/VeryDryAlarm/0",
    "sub/x",
)


async def _read_everything(things: ThingClient) -> None:
    """Each reading call of a client; a refusal is a SafeThingError, nothing else."""
    calls = [
        lambda: things.view(THING, refresh=True),
        lambda: things.status(THING),
        lambda: things.describe(THING),
        lambda: things.read(THING, "moisture"),
        lambda: things.history(THING, "moisture"),
        lambda: things.events(THING, "VeryDryAlarm"),
        lambda: things.event_history(THING, "VeryDryAlarm"),
        lambda: things.availability(THING),
    ]
    for call in calls:
        with contextlib.suppress(SafeThingError):
            await call()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_records_of_any_shape_from_a_key_granted_by_mistake_give_readers_refusals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, seed: int
) -> None:
    """The owner grants a key update and insert rights on the thing's MD by mistake;
    that key writes records of any shape under every key a reader reads. Each reading
    call either answers or raises a SafeThingError (refused, malformed): no other
    exception. The thing goes on serving requests, and none of its tasks failed."""
    rng = random.Random(seed)
    address = ThingAddresses.of(THING).thing
    async with _garden(tmp_path, caplog) as garden:
        store, t = garden.store, garden.thing
        await t.set("moisture", 40.0)
        await t.notify("VeryDryAlarm", 3.0)
        mistake = Identity.generate("mistake")
        rights = Action.UPDATE | Action.INSERT
        await (
            Client(store, garden.owner)
            .md(address.name, address.tag)
            .set_permissions(mistake.public_sign_key, rights)
        )
        forger = Client(store, mistake).md(address.name, address.tag)
        async with ThingClient(Client(store, Identity.generate("reader"))) as reader:
            for _ in range(RECORDS // 3):
                try:
                    await forger.put(rng.choice(_THING_KEYS), _record(rng))
                except LimitExceededError:
                    continue
                await _read_everything(reader)
        await t.register()  # writes its description and key list again (see docs/security.md)
        await garden.serves_an_honest_request()
