from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from safething.net import Client, Identity
from safething.store import Store, open_store


@pytest.fixture
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture
def bob() -> Identity:
    return Identity.generate("bob")


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    async with await open_store("memory://") as s:
        yield s


@pytest.fixture
def client(store: Store, alice: Identity) -> Client:
    return Client(store, alice)
