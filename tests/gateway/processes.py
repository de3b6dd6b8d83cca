"""``safething gateway`` processes for the tests that need several of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from safething.net import Identity
from safething.store.nats_server import NatsServer, free_ports
from safething_gateway.device_clients import DeviceLink
from safething_gateway.registry import Registry

from .conftest import SENSOR


class GatewayProcess:
    """``python -m safething gateway --config <dir>/gateway.toml`` with one transport."""

    def __init__(self, root: Path, store_url: str, transport: str, *, extra: str = "") -> None:
        self.root = root
        self.transport = transport
        root.mkdir()
        Identity.generate(f"owner-{root.name}").save(root / "owner.json")
        self.registry_path = root / "gateway.db"
        enabled = {t: str(t == transport).lower() for t in ("mqtt", "coap", "http")}
        (root / "gateway.toml").write_text(
            f"""
[gateway]
store = "{store_url}"
registry = "{self.registry_path}"
identity = "{root / "owner.json"}"
log_format = "json"
[mqtt]
enabled = {enabled["mqtt"]}
start_broker = true
port = 0
[coap]
enabled = {enabled["coap"]}
port = 0
[http]
enabled = {enabled["http"]}
port = 0
{extra}
"""
        )
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = root / "stderr.log"

    def provision(self, device_id: str) -> bytes:
        """A registry entry, written before the gateway process opens the registry."""
        registry = Registry(self.registry_path)
        try:
            return registry.add(device_id, self.transport).secret
        finally:
            registry.close()

    async def start(self) -> int:
        """Start the process; the port its bridge serves on."""
        with self.stderr.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "safething",
                "gateway",
                "--config",
                str(self.root / "gateway.toml"),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                # the tree under test first, then what the caller put on the path (a
                # worktree's gateway/ before an installed copy of the package)
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p
                    ),
                },
            )
        assert self.process.stdout is not None
        async with asyncio.timeout(60):
            while line := (await self.process.stdout.readline()).decode():
                if line.startswith(f"serving {self.transport}://"):
                    return int(line.split()[1].rsplit(":", 1)[1].split("/")[0])
        raise AssertionError(f"gateway {self.root.name} did not start:\n{self.log()}")

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]

    async def stop(self) -> int | None:
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            return None


@contextlib.asynccontextmanager
async def running(*gateways: GatewayProcess) -> AsyncIterator[list[int]]:
    try:
        yield list(await asyncio.gather(*(g.start() for g in gateways)))
    finally:
        codes = await asyncio.gather(*(g.stop() for g in gateways))
        for gateway, code in zip(gateways, codes, strict=True):
            assert code == 0, f"gateway {gateway.root.name} ended with {code}:\n{gateway.log()}"
            assert "Traceback" not in gateway.log(), gateway.log()


def link(device_id: str, secret: bytes, ran: list[tuple[str, dict[str, Any]]]) -> DeviceLink:
    """A device of :data:`SENSOR` that records the actions it runs in ``ran``."""
    device = DeviceLink(device_id, secret, {**SENSOR, "id": device_id})

    def run(action: str, args: dict[str, Any]) -> None:
        ran.append((action, args))

    device.on_action = run
    return device


def hub_and_site(root: Path, transport: str) -> tuple[NatsServer, GatewayProcess, int]:
    """A hub nats-server that takes leaf nodes (not started yet) and a gateway whose
    ``[leaf]`` runs the site's server as a leaf of it (JetStream domain ``site1``, store
    bucket ``site1``); and the port the site's server takes clients on."""
    leaf_port, site_port = free_ports(2)
    hub = NatsServer(
        root / "hub",
        name="hub",
        domain="hub",
        extra_config=f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}",
    )
    site = GatewayProcess(
        root / "site",
        "",  # the store is the leaf server's
        transport,
        extra=f"""
[leaf]
enabled = true
hub = "nats-leaf://127.0.0.1:{leaf_port}"
domain = "site1"
port = {site_port}
""",
    )
    return hub, site, site_port
