"""Shared by every test: a private trust-state directory per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from safething.store.nats_testing import NatsCluster, NatsServer, nats_cluster, nats_server


@pytest.fixture(autouse=True)
def _private_trust_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Things keep their trust state in files; never in the developer's home."""
    path = tmp_path_factory.mktemp("trust")
    monkeypatch.setenv("SAFETHING_TRUST_DIR", str(path))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only when asked for (``pytest -m slow``), never in CI."""
    if "slow" in str(config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_single(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    """One nats-server for the whole run, started when a test first asks for it; each
    test takes its own bucket (``safething.store.nats_testing.unique_bucket``)."""
    async with nats_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_r3(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsCluster]:
    """A 3-node JetStream cluster for the whole run; each test takes its own bucket."""
    async with nats_cluster(tmp_path_factory.mktemp("nats-cluster")) as cluster:
        yield cluster
