"""Two things in two processes, each with its own connection to one NATS server: the
one here subscribes to the other's alarms and requests its action; the other runs it.
Nothing but the NATS store joins the two processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import NatsServer, unique_bucket
from safething.things import ThingClient

OTHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from safething.net import Identity
    from safething.things import Thing
    from tests.things.conftest import garden_description

    async def main(url):
        async with Thing(garden_description("garden-b"), identity=Identity.generate(),
                         owner=Identity.generate().public, store=url) as thing:
            done = asyncio.Event()

            @thing.action("OpenValve")
            async def open_valve(request):
                done.set()
                return {"psi": request.args["psi"], "pid": os.getpid()}

            await thing.register()
            await thing.publish()
            for level in range(1, 6):
                await thing.notify("VeryDryAlarm", level)
            print("notified", flush=True)
            await asyncio.wait_for(done.wait(), 60)
            await asyncio.sleep(1)  # let the result be written and read

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_thing_drives_a_thing_of_another_process_over_nats(
    nats_single: NatsServer,
) -> None:
    url = f"{nats_single.url}?bucket={unique_bucket()}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OTHER, url, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        async with await open_store(url) as store:
            client = ThingClient(Client(store, Identity.generate("garden-a")))
            async with client:
                # wait until the other thing is on the network
                async with asyncio.timeout(60):
                    while True:
                        try:
                            await client.view("garden-b")
                            break
                        except Exception:
                            await asyncio.sleep(0.1)
                async with client.subscribe("garden-b", topic="VeryDryAlarm", after=0) as alarms:
                    levels: list[object] = []
                    async with asyncio.timeout(60):
                        async for note in alarms:
                            levels.append(note.value)
                            if len(levels) == 5:
                                break
                assert levels == [1, 2, 3, 4, 5]
                handle = await client.request("garden-b", "OpenValve", psi=40, timeout=60)
                result = await handle.result(timeout=60)
        assert result["psi"] == 40
        assert result["pid"] == other.pid  # it ran in the other process
        out, err = await asyncio.wait_for(other.communicate(), 60)
        assert other.returncode == 0, err.decode()
        assert b"notified" in out
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
