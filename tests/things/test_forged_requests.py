"""A store attacker forges action requests from the owner's genuine one.

The attacker holds the store only: it sees every record as it is written and can
write any bytes, but cannot sign as the owner. Each forged record below would run
an owner-only action if the thing did not check the entry's signature; the test
shows the thing saw every one (it counts it as tampered) and ran only what the
owner asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from safething.net import Client, Identity
from safething.net.records import EntryRecord
from safething.store import Store
from safething.things import ActionRequest, Thing, ThingClient
from safething.things.values import dumps, loads


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("forgery", ["replayed under a new id", "value edited", "fabricated"])
async def test_a_forged_owner_request_is_never_run(
    store: Store, garden: Thing, owner: Identity, forgery: str
) -> None:
    ran: list[str] = []

    def reboot(request: ActionRequest) -> str:
        ran.append(request.request_id)
        return "rebooted"

    garden.on_action("Reboot", reboot)  # owner access only
    await garden.publish()
    inbox = (await ThingClient(Client(store)).view("garden-01")).inbox.address

    # the attacker taps the store and keeps the owner's genuine request record
    async with store.watch(inbox.entry_prefix) as changes:
        owner_things = ThingClient(Client(store, owner))
        handle = await owner_things.request("garden-01", "Reboot")
        async with asyncio.timeout(30):
            genuine = await anext(aiter(changes))
    assert (await handle.wait(30)).state == "done"
    assert ran == [handle.request_id]
    assert genuine.value is not None
    record = EntryRecord.from_bytes(genuine.value, inbox, None)
    assert record.signer == owner.public_sign_key

    rid = "f0rged0000000001"
    stored_key = f"r/{rid}".encode()
    if forgery == "replayed under a new id":  # the owner's bytes, another request id
        forged = dataclasses.replace(record, stored_key=stored_key)
    elif forgery == "value edited":  # same key and signature, the request changed
        assert record.stored_value is not None
        doc = loads(record.stored_value, "request")
        doc["exp"] = float(doc["exp"]) + 3600
        forged = dataclasses.replace(record, stored_key=stored_key, stored_value=dumps(doc))
    else:  # a request of its own, signed with its own key, claiming the owner signed it
        assert record.stored_value is not None
        mallory = Identity.generate("mallory")
        own = EntryRecord.create(
            inbox,
            signer=mallory.sign_key,
            stored_key=stored_key,
            sealed_key=None,
            stored_value=record.stored_value,
            version=0,
        )
        forged = dataclasses.replace(own, signer=owner.public_sign_key)
    tampered = garden.client.tampered_count
    await store.put(inbox.entry_key(stored_key), forged.to_bytes())

    # the thing saw it and refused it ...
    await _until(lambda: garden.client.tampered_count > tampered)
    # ... and keeps serving the owner: a genuine request after the forged one runs
    again = await owner_things.request("garden-01", "Reboot")
    assert (await again.wait(30)).state == "done"
    assert ran == [handle.request_id, again.request_id]
    await owner_things.close()
