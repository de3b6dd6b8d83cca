"""A separate process that holds the store (the SQLite file, or a login to the NATS
server) and no key of the thing or its owner."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safething.net import Identity
from safething.store.nats_testing import NatsServer, unique_bucket
from safething.things import ActionRequest, Thing

from .conftest import garden_description

ATTACKER = textwrap.dedent(
    """
    import asyncio, json, sys
    from safething.errors import AccessDeniedError
    from safething.net import Client, Identity
    from safething.store import open_store
    from safething.things import ThingClient

    async def main(url):
        report = {}
        async with await open_store(url) as store:
            raw = b"".join(r.value for r in await store.scan(""))
            report["plaintext_in_store"] = b"correct-horse" in raw
            try:
                await ThingClient(Client(store)).read("garden-01", "secret_code")
                report["read"] = "plaintext"
            except AccessDeniedError as e:
                report["read"] = "denied: " + str(e)
            # the attacker can sign with a key of its own, nothing more
            async with ThingClient(Client(store, Identity.generate())) as c:
                handle = await c.request("garden-01", "Reboot", timeout=10)
                status = await handle.wait()
                report["request"] = [status.state, status.message]
        print(json.dumps(report))

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.fixture(params=["sqlite", "nats"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/vault.db"
    server: NatsServer = request.getfixturevalue("nats_single")
    return f"{server.url}?bucket={unique_bucket()}"


async def test_a_process_with_only_the_store(url: str) -> None:
    owner, device = Identity.generate(), Identity.generate()
    ran: list[str] = []

    async with Thing(garden_description(), identity=device, owner=owner.public, store=url) as t:

        @t.action("Reboot")
        async def reboot(request: ActionRequest) -> str:
            ran.append(request.request_id)
            return "rebooting"

        await t.register()
        await t.publish()
        await t.set("secret_code", "correct-horse")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ATTACKER,
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["plaintext_in_store"] is False
    assert report["read"].startswith("denied: ")
    assert report["request"][0] == "rejected"
    assert "owner access" in report["request"][1]
    assert ran == []
