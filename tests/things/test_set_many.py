"""Thing.set_many: a reading of several attributes is one signed, atomic commit."""

from __future__ import annotations

from typing import Any

import pytest

from safething.errors import SafeThingError, TamperedDataError
from safething.net import Identity
from safething.net.trust import HeaderState
from safething.store import Store
from safething.things import Thing, ThingClient


def count_commits(store: Store) -> list[int]:
    """Count the store's commits (a spy on the real memory store; it still commits)."""
    calls: list[int] = []
    real = store.commit

    async def commit(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await real(*args, **kwargs)

    store.commit = commit  # type: ignore[method-assign]
    return calls


async def test_several_attributes_in_one_commit(
    garden: Thing, store: Store, stranger: ThingClient
) -> None:
    await garden.publish()
    await garden.set("moisture", 10)
    commits = count_commits(store)
    seqs = await garden.set_many({"moisture": 41.5, "valve": "open"})
    assert seqs == {"moisture": 2, "valve": 1}
    assert len(commits) == 1
    assert (await stranger.read(garden.id, "moisture")).value == 41.5
    assert (await stranger.read(garden.id, "valve")).value == "open"
    history = await stranger.history(garden.id, attribute="moisture")
    assert [r.value for r in history] == [10, 41.5]


async def test_one_bad_value_writes_nothing(
    garden: Thing, store: Store, stranger: ThingClient
) -> None:
    await garden.publish()
    await garden.set("valve", "closed")
    commits = count_commits(store)
    with pytest.raises((ValueError, SafeThingError)):
        await garden.set_many({"valve": "open", "moisture": 250})
    assert commits == []
    assert (await stranger.read(garden.id, "valve")).value == "closed"
    with pytest.raises(ValueError, match="static"):
        await garden.set_many({"valve": "open", "model": "GD-2"})
    with pytest.raises(ValueError, match="at least one"):
        await garden.set_many({})


async def test_a_concurrent_writer_is_not_overwritten(garden: Thing, store: Store) -> None:
    """Two things objects of one identity race on the same pointers: every value keeps
    its own sequence number (the compare-and-set covers each attribute)."""
    await garden.publish()
    async with Thing(
        garden.description, identity=garden.identity, owner=garden.owner, store=store
    ) as twin:
        await twin.register()
        a = await garden.set_many({"moisture": 1, "valve": "open"})
        b = await twin.set_many({"moisture": 2, "valve": "closed"})
        c = await garden.set_many({"moisture": 3, "valve": "open"})
    assert (a["moisture"], b["moisture"], c["moisture"]) == (1, 2, 3)
    assert (a["valve"], b["valve"], c["valve"]) == (1, 2, 3)


async def test_a_kept_handle_still_refuses_a_trust_state_naming_other_owners(
    garden: Thing, store: Store
) -> None:
    """The thing keeps its MD handle across writes; each write still checks that the
    owners its client trusts are the pinned ones (thing and owner), as a new handle is
    checked when it is made."""
    await garden.set("moisture", 10)
    md = garden._md("thing")
    assert garden._md("thing") is md  # kept, not made again
    trusted = garden.trust.header(md.address.header_key)
    assert trusted is not None
    stranger = Identity.generate("not-the-owner").public_sign_key.value
    garden.trust.set_header(
        md.address.header_key,
        HeaderState(frozenset({stranger}), trusted.version, trusted.raw),
    )
    with pytest.raises(TamperedDataError, match="not the ones given"):
        await garden.set("moisture", 11)
