"""From the hub, a site's store is reachable through the leaf connection: a store opened
at the hub with ``domain=<site's domain>`` uses the site's streams (the JetStream API of
that domain; writes go to the site, where they are compare-and-set). A thing at the hub
requests an action of a thing running at the site and follows it to its end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from safething.errors import ConflictError, StoreError
from safething.net import Client, Identity
from safething.store import Change, open_store
from safething.store.nats_testing import unique_bucket
from safething.things import ActionRequest, Thing, ThingClient, ThingDescription

from .conftest import hub_and_site

VALVE = {
    "format": 1,
    "id": "valve-site1",
    "title": "Valve",
    "attributes": [{"name": "open", "type": "boolean", "dynamic": True}],
    "actions": [{"name": "Open", "params": [{"name": "psi", "type": "number", "default": 30}]}],
}


async def test_a_thing_at_the_hub_drives_a_thing_at_a_site(tmp_path: Path) -> None:
    hub, site = hub_and_site(tmp_path)
    await hub.start()
    await site.start()
    bucket = unique_bucket()
    at_site = await open_store(f"{site.url}?bucket={bucket}")
    owner = Identity.generate("owner")
    valve = Thing(
        ThingDescription.from_dict(VALVE),
        identity=Identity.generate("valve"),
        owner=owner.public,
        store=at_site,
        heartbeat=None,
        trust=tmp_path / "trust.db",
    )
    ran: list[float] = []
    try:
        async with valve:

            @valve.action("Open")
            async def open_valve(request: ActionRequest) -> None:
                ran.append(request.args["psi"])

            await valve.register()
            await valve.publish()
            async with asyncio.timeout(60):  # the leaf connection is up
                while True:
                    try:
                        at_hub = await open_store(
                            f"{hub.url}?bucket={bucket}&domain=site1&timeout=5"
                        )
                        break
                    except StoreError:
                        await asyncio.sleep(0.2)
            try:
                # the store contract holds through the leaf connection
                revision = await at_hub.put("probe.x", b"from the hub")
                assert (await at_site.get("probe.x")) is not None
                with pytest.raises(ConflictError):
                    await at_hub.create("probe.x", b"again")
                async with at_hub.watch("probe.") as feed:
                    later = await at_site.put("probe.y", b"from the site")
                    async with asyncio.timeout(30):
                        assert await anext(aiter(feed)) == Change(
                            "probe.y", b"from the site", later
                        )
                assert later > revision

                controller = ThingClient(Client(at_hub, Identity.generate("hub-controller")))
                async with controller:
                    assert await controller.status("valve-site1") == "published"
                    handle = await controller.request("valve-site1", "Open", psi=12, timeout=60)
                    status = await handle.wait(60)
                assert status.state == "done", status
                assert ran == [12.0]
            finally:
                await at_hub.close()
    finally:
        await at_site.close()
        await site.stop()
        await hub.stop()
