"""Fixtures for the store tests: one store per backend, on fresh tmp paths."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from safething.store import Store, open_store
from safething.store.nats import site_write_mapping
from safething.store.nats_testing import NatsCluster, NatsServer, free_port, unique_bucket

OpenPeer = Callable[[], Awaitable[Store]]

BACKENDS = ["memory", "sqlite", "nats", "nats-r3"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store of each backend (NATS: a fresh bucket on a shared server)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "nats":
        server: NatsServer = request.getfixturevalue("nats_single")
        return f"{server.url}?bucket={unique_bucket()}"
    if request.param == "nats-r3":
        cluster: NatsCluster = request.getfixturevalue("nats_r3")
        return f"{cluster.url}?bucket={unique_bucket()}&replicas=3"
    return f"sqlite://{tmp_path / 'vault.db'}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, empty store; closed after the test."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def open_peer(store: Store, store_url: str) -> AsyncIterator[OpenPeer]:
    """Open another store object on the same data, as a second process would.

    For SQLite a separate opening of the same file (own connections, own
    writer thread), for NATS another connection to the same bucket;
    ``memory://`` cannot be shared, so it is the same object.
    """
    peers: list[Store] = []

    async def open_one() -> Store:
        if store_url.startswith("memory"):
            return store
        peer = await open_store(store_url)
        peers.append(peer)
        return peer

    try:
        yield open_one
    finally:
        for peer in peers:
            await peer.close()


def hub_and_site(directory: Path) -> tuple[NatsServer, NatsServer]:
    """A hub that takes leaf nodes and a site's server (JetStream domain ``site1``), a
    leaf of it configured as a gateway's leaf server is (it maps writes from the hub
    into its streams); neither started yet."""
    leaf_port = free_port()
    hub = NatsServer(
        directory,
        name="hub",
        domain="hub",
        extra_config=f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}",
    )
    site = NatsServer(
        directory,
        name="site1",
        domain="site1",
        extra_config=(
            f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{leaf_port}" }} ] }}\n'
            + site_write_mapping("site1")
        ),
    )
    return hub, site
