"""A site's own nats-server is a leaf node of a hub, with its own JetStream domain. The
site's store lives on the site; the hub sources (copies) the site's record stream.
With the hub down, the site keeps taking writes and its watchers keep seeing them;
with the hub back, the hub has every record, in the site's order."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import nats

from safething.store import Change, open_store
from safething.store.nats_testing import NatsServer

from .conftest import hub_and_site


async def hub_copy(hub: NatsServer, count: int) -> list[tuple[str, bytes]]:
    """The first ``count`` messages of the hub's ``SITES`` stream, once it has them."""
    client = await nats.connect(hub.url)
    try:
        async with asyncio.timeout(60):
            while True:
                reply = await client.request("$JS.API.STREAM.INFO.SITES", b"", timeout=5)
                if json.loads(reply.data)["state"]["messages"] >= count:
                    break
                await asyncio.sleep(0.2)
        copied = []
        for seq in range(1, count + 1):
            reply = await client.request(
                "$JS.API.STREAM.MSG.GET.SITES", json.dumps({"seq": seq}).encode(), timeout=5
            )
            message = json.loads(reply.data)["message"]
            copied.append((message["subject"], base64.b64decode(message.get("data", ""))))
        return copied
    finally:
        await client.close()


async def test_a_site_keeps_working_while_the_hub_is_down(tmp_path: Path) -> None:
    hub, site = hub_and_site(tmp_path)
    await hub.start()
    await site.start()
    store = await open_store(f"{site.url}?bucket=s1")
    written: list[tuple[str, bytes]] = []
    try:
        async with store.watch("r.") as feed:
            for i in range(5):
                written.append((f"r.{i}", f"reading {i}".encode()))
                await store.put(*written[-1])
            client = await nats.connect(hub.url)
            config = {
                "name": "SITES",
                "storage": "file",
                "sources": [{"name": "KV_s1", "external": {"api": "$JS.site1.API"}}],
            }
            reply = await client.request(
                "$JS.API.STREAM.CREATE.SITES", json.dumps(config).encode(), timeout=10
            )
            assert "error" not in json.loads(reply.data), reply.data
            await client.close()
            assert [(s.removeprefix("$KV.s1."), d) for s, d in await hub_copy(hub, 5)] == written

            await hub.kill()  # the hub is unreachable: the site goes on
            for i in range(5, 10):
                written.append((f"r.{i}", f"reading {i}".encode()))
                await store.put(*written[-1])
            seen: list[Change] = []
            async with asyncio.timeout(30):
                async for change in feed:
                    seen.append(change)
                    if len(seen) == 10:
                        break
            assert [(c.key, c.value) for c in seen] == written

            await hub.start()  # back: the hub catches up, in order
            copied = await hub_copy(hub, 10)
        assert [(s.removeprefix("$KV.s1."), d) for s, d in copied] == written
    finally:
        await store.close()
        await site.stop()
        await hub.stop()
