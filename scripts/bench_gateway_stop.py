"""How long a gateway on NATS takes to stop cleanly with many online devices: on its way
out it writes "offline, gateway stopped" into every device's thing (a signed entry each).

    .venv/bin/python scripts/bench_gateway_stop.py [--devices 500] [--url nats://...]

Starts a nats-server on loopback (unless ``--url`` names one), births ``--devices`` HTTP
devices into one gateway (in groups, not timed), then times ``Gateway.close()`` and
reads a few devices' availability back, verified. Prints one JSON object: ``devices``,
``births_s`` (births per second), ``stop_s``, ``offline_per_s`` and the load average at
the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from safething.net import Client, Identity
from safething.store import open_store
from safething.store.nats_testing import nats_server
from safething.things import ThingClient
from safething_gateway.core import Gateway
from safething_gateway.protocol import frame
from safething_gateway.registry import Registry

SENSOR: dict[str, Any] = {
    "format": 1,
    "title": "Soil sensor",
    "attributes": [{"name": "moisture", "type": "number", "dynamic": True}],
    "actions": [{"name": "OpenValve", "params": [{"name": "psi", "type": "number"}]}],
}


async def run(devices: int, url: str | None, workdir: Path) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            server = await stack.enter_async_context(nats_server(workdir / "nats"))
            url = f"{server.url}?bucket=stop{secrets.token_hex(3)}"
        store = await open_store(url)
        stack.push_async_callback(store.close)
        registry = Registry(workdir / "gateway.db")
        stack.callback(registry.close)
        gateway = Gateway(store=store, registry=registry, owner=Identity.generate("owner"))
        await gateway.start()
        ids = [f"dev-{i:05d}" for i in range(devices)]
        secrets_by_id = {d: registry.add(d, "http").secret for d in ids}

        async def birth(device_id: str) -> None:
            body = json.dumps({"description": {**SENSOR, "id": device_id}}).encode()
            message = frame(secrets_by_id[device_id], device_id, "birth", 1, body, uplink=True)
            await gateway.handle(device_id, "birth", message)

        began = time.monotonic()
        for start in range(0, devices, 16):
            await asyncio.gather(*(birth(d) for d in ids[start : start + 16]))
        births_s = devices / (time.monotonic() - began)
        online = sum(1 for d in ids if gateway.liveness.online(d))
        load_start = os.getloadavg()[0]
        began = time.monotonic()
        await gateway.close()
        stop_s = time.monotonic() - began
        load_end = os.getloadavg()[0]
        reader = ThingClient(Client(store, Identity.generate("reader")))
        sample = ids[:: max(1, devices // 10)]
        offline = 0
        for device_id in sample:
            live = await reader.availability(device_id)
            offline += (live.online, live.reason) == (False, "gateway stopped")
        return {
            "devices": devices,
            "online_before_stop": online,
            "births_s": round(births_s, 1),
            "stop_s": round(stop_s, 2),
            "offline_per_s": round(online / stop_s, 1),
            "sample_offline_verified": f"{offline}/{len(sample)}",
            "load_start": load_start,
            "load_end": load_end,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--url", default=None, help="a nats:// store URL (default: own server)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="safething-stop-") as tmp:
        result = asyncio.run(run(args.devices, args.url, Path(tmp)))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
