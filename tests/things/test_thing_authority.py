"""Only the thing and its owner change its description and status.

Anyone else (here a stranger who can write to the store) writes the records
straight into the store, signed with its own key at the next version, as a
malicious client would: the thing itself and every reader refuse them and count
them as tampered; the thing goes on with what it and its owner wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import pytest

from safething.errors import (
    NoSuchEntryError,
    PermissionDeniedError,
    SafeThingError,
    TamperedDataError,
)
from safething.net import Action, Client, Identity
from safething.net.records import EntryRecord
from safething.store import Store
from safething.things import Thing, ThingClient, layout
from safething.things.values import dumps, loads


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def _status_or_none(reader: ThingClient) -> str | None:
    """The status a new reader finds, None while it finds none it accepts."""
    try:
        return await reader.status("garden-01")
    except (SafeThingError, ValueError):
        return None


async def _until_async(read: Callable[[], Awaitable[object]], expected: object) -> None:
    async with asyncio.timeout(30):
        while await read() != expected:
            await asyncio.sleep(0.01)


async def _forge(
    store: Store, garden: Thing, signer: Identity, key: bytes, value: bytes, *, ahead: int = 1
) -> None:
    """Write ``key`` of the thing's MD at the next version (``ahead=0``: at the stored
    one, a fork), signed by ``signer``."""
    address = garden.addresses.thing
    current = await Client(store).md(address.name, address.tag).get(key)
    record = EntryRecord.create(
        address,
        signer=signer.sign_key,
        stored_key=key,
        sealed_key=None,
        stored_value=value,
        version=current.version + ahead,
    )
    await store.put(address.entry_key(key), record.to_bytes())


async def test_a_stranger_cannot_disable_the_thing(store: Store, garden: Thing) -> None:
    await garden.publish()
    mallory = Identity.generate("mallory")
    address = garden.addresses.thing
    # through the API: refused before anything is written
    with pytest.raises(PermissionDeniedError):
        await (
            Client(store, mallory)
            .md(address.name, address.tag)
            .put("status", dumps({"s": "disabled", "t": 0.0}))
        )
    # straight into the store, signed by its own key
    tampered = garden.client.tampered_count
    await _forge(store, garden, mallory, layout.STATUS, dumps({"s": "disabled", "t": 0.0}))
    await _until(lambda: garden.client.tampered_count > tampered)  # the thing saw it
    assert garden.status == "published"
    async with ThingClient(Client(store, Identity.generate())) as anyone:
        # a reader that never saw the genuine status refuses the forged one, never
        # reports it
        with pytest.raises(TamperedDataError, match="lacks update permission"):
            await anyone.status("garden-01")


async def test_a_stranger_cannot_rewrite_the_description(store: Store, garden: Thing) -> None:
    await garden.publish()
    mallory = Identity.generate("mallory")
    doc = garden.description.to_dict()
    doc["title"] = "Send your password here"
    await _forge(store, garden, mallory, layout.DESC, dumps(doc))
    async with ThingClient(Client(store)) as reader:
        with pytest.raises(TamperedDataError, match="lacks update permission"):
            await reader.describe("garden-01")
        assert reader.client.tampered_count == 1


async def test_the_owner_can_and_the_thing_follows(
    store: Store, garden: Thing, owner: Identity
) -> None:
    """The same write, signed by the owner, is accepted: the refusals above are about
    the signer, not the way the record was written."""
    await garden.publish()
    await _forge(store, garden, owner, layout.STATUS, dumps({"s": "disabled", "t": 0.0}))
    await _until(lambda: garden.status == "disabled")
    async with ThingClient(Client(store)) as anyone:
        assert await anyone.status("garden-01") == "disabled"


async def _final_state(store: Store, garden: Thing, rid: str) -> dict[str, object]:
    """The outbox state the thing writes for ``rid``, once it is final."""
    outbox = garden.addresses.outbox
    reader = Client(store).md(outbox.name, outbox.tag)
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(NoSuchEntryError):
                state = loads((await reader.get(f"r/{rid}")).value or b"", "state")
                if state["s"] in ("done", "rejected", "failed"):
                    return state
            await asyncio.sleep(0.01)


async def test_a_writer_the_owner_granted_by_mistake_cannot_set_the_status(
    store: Store, garden: Thing, owner: Identity
) -> None:
    """Update rights on the thing's MD, granted by mistake, let a key write a status
    that verifies; the thing still follows only its owner's status (and its own), and
    goes on following the owner's."""
    ran: list[str] = []
    garden.on_action("CloseValve", lambda request: ran.append(request.request_id))
    await garden.publish()
    await _forge(store, garden, owner, layout.STATUS, dumps({"s": "disabled", "t": 1.0}))
    await _until(lambda: garden.status == "disabled")
    mallory = Identity.generate("mallory")
    address = garden.addresses.thing
    granted = Client(store, owner).md(address.name, address.tag)
    await granted.set_permissions(mallory.public_sign_key, Action.UPDATE)
    written = await (
        Client(store, mallory)
        .md(address.name, address.tag)
        .put(layout.STATUS, dumps({"s": "published", "t": 2.0}))
    )
    # the thing verified it (its trust state holds that version) ...
    status_key = address.entry_key(layout.STATUS)
    await _until(lambda: garden.trust.entry_version(status_key) >= written.version)
    # ... and stays disabled: a request sent afterwards is rejected, never run
    inbox = garden.addresses.inbox
    now = time.time()
    rid = "0123456789abcdef"
    await (
        Client(store, Identity.generate())
        .md(inbox.name, inbox.tag)
        .insert(f"r/{rid}", dumps({"a": "CloseValve", "t": now, "exp": now + 60}))
    )
    state = await _final_state(store, garden, rid)
    assert state["s"] == "rejected" and "disabled" in str(state["m"])
    assert garden.status == "disabled" and ran == []
    # the thing wrote its status back over the stray one: a new reader sees it again
    back = await Client(store).md(address.name, address.tag).get(layout.STATUS)
    assert back.version > written.version and back.signer == garden.identity.public_sign_key
    async with ThingClient(Client(store, Identity.generate())) as anyone:
        assert await anyone.status("garden-01") == "disabled"
    # the owner's next status is followed
    await _forge(store, garden, owner, layout.STATUS, dumps({"s": "published", "t": 3.0}))
    await _until(lambda: garden.status == "published")


@pytest.mark.parametrize(
    "malformed", [b"\xff", dumps(["disabled"]), dumps({"t": 1.0}), dumps({"s": "bogus", "t": 1.0})]
)
async def test_a_malformed_status_is_passed_over(
    store: Store, garden: Thing, owner: Identity, malformed: bytes
) -> None:
    """A status record that verifies but is not a status (not CBOR, not a map, no "s",
    an unknown one) is ignored; the thing goes on following the owner's next status."""
    await garden.publish()
    await _forge(store, garden, owner, layout.STATUS, malformed)
    async with ThingClient(Client(store)) as anyone:  # written back over it
        await _until_async(lambda: _status_or_none(anyone), "published")
    await _forge(store, garden, owner, layout.STATUS, dumps({"s": "disabled", "t": 1.0}))
    await _until(lambda: garden.status == "disabled")


@pytest.mark.parametrize("decided", ["soon", None, float("nan"), [1]])
async def test_a_status_whose_decision_time_is_no_number_counts_as_decided_at_0(
    store: Store, garden: Thing, owner: Identity, device: Identity, decided: object
) -> None:
    """The owner's status with a decision time that is no number is followed (decided at
    0: at its version, any other decision is later), also by the thing restarted on it."""
    await garden.publish()
    await _forge(store, garden, owner, layout.STATUS, dumps({"s": "disabled", "t": decided}))
    await _until(lambda: garden.status == "disabled")
    async with Thing(garden.description, identity=device, owner=owner, store=store) as again:
        await again.register()
        assert again.status == "disabled"


async def test_a_later_decision_at_the_version_of_one_without_a_time_is_followed(
    store: Store, garden: Thing, owner: Identity
) -> None:
    """The owner's status without a usable decision time (NaN) counts as decided at 0; a
    record at that same version decided later (a fork the store made of two of the
    owner's writes) is the later decision and is followed. (Were NaN kept as the decision
    time, no record would compare as later than it, and the thing would refuse them all
    at that version.)"""
    await garden.publish()
    await _forge(store, garden, owner, layout.STATUS, dumps({"s": "disabled", "t": float("nan")}))
    await _until(lambda: garden.status == "disabled")
    later = dumps({"s": "published", "t": 2.0})
    await _forge(store, garden, owner, layout.STATUS, later, ahead=0)
    await _until(lambda: garden.status == "published")


async def test_a_deleted_status_is_passed_over(
    store: Store, garden: Thing, owner: Identity
) -> None:
    """The owner deletes the status record: the thing keeps its status and follows the
    owner's next one."""
    await garden.publish()
    address = garden.addresses.thing
    md = Client(store, owner).md(address.name, address.tag)
    await md.delete(layout.STATUS)
    async with ThingClient(Client(store)) as anyone:  # written back over the deletion
        await _until_async(lambda: _status_or_none(anyone), "published")
    await md.put(layout.STATUS, dumps({"s": "disabled", "t": 1.0}))
    await _until(lambda: garden.status == "disabled")
