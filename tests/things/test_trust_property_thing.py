"""Issue 8, property at the thing level: the owner's status changes and requests
interleaved with a store-only attacker (any status record or request record it
ever saw written back) and restarts of the thing.

Invariant: every request runs at most once, and the thing's status is always
the last one the owner set (the attacker's older, validly signed statuses are
refused, before and after a restart). CI runs a few examples; ``-m slow`` more.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from safething.net import Client, Identity
from safething.net.records import EntryRecord
from safething.store import Record, open_store
from safething.things import ActionRequest, Thing, ThingClient
from safething.things.admin import set_status
from safething.things.layout import ThingAddresses
from safething.things.values import loads

from .conftest import garden_description

THING = "garden-01"
ADDR = ThingAddresses.of(THING)
STATUS_KEY = ADDR.thing.entry_key(b"status")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("status"), st.sampled_from(["published", "disabled"])),
        st.tuples(st.just("request")),
        st.tuples(st.just("replay_status"), st.integers(0, 1000)),
        st.tuples(st.just("replay_request"), st.integers(0, 1000)),
        st.tuples(st.just("restart")),
    ),
    min_size=3,
    max_size=12,
)
# ...and the thing setting its own status too: two writers of one record
steps_with_own = st.lists(
    st.one_of(
        st.tuples(st.just("own_status"), st.sampled_from(["published", "disabled"])),
        st.tuples(st.just("status"), st.sampled_from(["published", "disabled"])),
        st.tuples(st.just("replay_status"), st.integers(0, 1000)),
        st.tuples(st.just("restart")),
    ),
    min_size=3,
    max_size=12,
)


def _newest(records: list[Record]) -> str:
    """The status of the newest record written (highest version, then decision time)."""
    marks = []
    for record in records:
        entry = EntryRecord.from_bytes(record.value, ADDR.thing, b"status")
        assert entry.stored_value is not None
        doc = loads(entry.stored_value, "status")
        marks.append((entry.version, float(doc["t"]), str(doc["s"])))
    return max(marks)[2]


# an upper bound on waiting for what must happen; never reached when green (10 s ran out
# once at load 20)
TIMEOUT = 30.0


async def _until(check: object, what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            while not check():  # type: ignore[operator]
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {TIMEOUT:.0f} s: {what}") from None


async def _scenario(ops: list[tuple[object, ...]], directory: Path, *, own: bool = False) -> None:
    """``own``: the thing sets its own status too, so the store can hide one writer's
    records from the other; the expected status is then that of the newest record
    either of them wrote (by version, then decision time), whatever the store serves."""
    url = f"sqlite://{directory}/vault.db"
    owner, device = Identity.generate("owner"), Identity.generate("device")
    runs: dict[str, int] = {}
    statuses: list[Record] = []
    requests: list[Record] = []

    # The thing purges a request from its inbox once it has run; the handler holds each
    # run until the test has copied the request's record (to replay it later): without
    # that, a thing quicker than the test's watch left it only the purge to read (the
    # watch gives a key's value as it is when read).
    release = asyncio.Event()

    async def handler(request: ActionRequest) -> dict[str, int]:
        runs[request.request_id] = runs.get(request.request_id, 0) + 1
        await release.wait()
        return {}

    def new_thing() -> Thing:
        thing = Thing(
            garden_description(),
            identity=device,
            owner=owner.public,
            store=url,
            trust=directory / "thing.trust.db",
        )
        thing.on_action("OpenValve", handler)
        return thing

    async with await open_store(url) as store, ThingClient(Client(store, owner)) as mine:
        thing = new_thing()
        await thing.start()
        try:
            await thing.register()
            await thing.publish()
            expected = "published"
            async with store.watch(ADDR.inbox.prefix) as inbox_feed:
                for op in ops:
                    kind = op[0]
                    if kind == "status" and own:
                        await set_status(mine.client, THING, str(op[1]))
                    elif kind == "status":
                        expected = str(op[1])
                        await set_status(mine.client, THING, expected)
                        await _until(lambda t=thing, e=expected: t.status == e, "status followed")
                    elif kind == "own_status":
                        await (thing.publish() if op[1] == "published" else thing.disable())
                    elif kind == "request":
                        release.clear()
                        copied = {r.key for r in requests}  # replays of these may come first
                        handle = await mine.request(THING, "OpenValve", timeout=30)
                        async with asyncio.timeout(TIMEOUT):
                            change = await anext(inbox_feed)
                            while change.key in copied:
                                change = await anext(inbox_feed)
                        # None: a thing that does not run it (disabled) purged it first
                        if change.value is not None:
                            requests.append(Record(change.key, change.value, change.revision))
                        release.set()
                        await handle.wait(TIMEOUT)
                        gone = False
                        async with asyncio.timeout(TIMEOUT):  # until the thing purged it
                            while not gone:
                                gone = await store.get(change.key) is None
                                await asyncio.sleep(0.01)
                    elif kind == "replay_status" and statuses:
                        record = statuses[int(op[1]) % len(statuses)]  # type: ignore[call-overload]
                        await store.put(record.key, record.value)
                    elif kind == "replay_request" and requests:
                        record = requests[int(op[1]) % len(requests)]  # type: ignore[call-overload]
                        refused = thing.refused_count
                        await store.put(record.key, record.value)
                        await _until(
                            lambda t=thing, r=refused: t.refused_count > r, "replay refused"
                        )
                        # ...and purged: the thing counts a refusal before it purges the
                        # record, and the purge deletes whatever the key holds then. The
                        # attacker's next write of these bytes, landing in between, was
                        # deleted unread (nothing ran, nothing stayed) and never counted:
                        # the wait for its refusal timed out (1 long run in 3).
                        async with asyncio.timeout(TIMEOUT):
                            while await store.get(record.key) is not None:
                                await asyncio.sleep(0.01)
                    elif kind == "restart":
                        await thing.close()
                        thing = new_thing()
                        await thing.start()
                        await thing.register()
                    current = await store.get(STATUS_KEY)
                    if current is not None:
                        statuses.append(current)
                    if own:
                        expected = _newest(statuses)
                        if kind != "replay_status":  # (followed by the thing's watch)
                            await _until(lambda t=thing, e=expected: t.status == e, "followed")
                    assert thing.status == expected, (thing.status, expected)
                    assert all(n == 1 for n in runs.values()), runs
        finally:
            with contextlib.suppress(Exception):
                await thing.close()


def _run(ops: list[tuple[object, ...]], *, own: bool = False) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_scenario(ops, Path(directory), own=own))


# Found by this test: the restarted thing's repair of a replayed status and the owner's
# next status at one version (the store hid the repair from the owner), then the repair
# served again (see test_trust_attacks: a status at a forked version).
FORKED_STATUS = [
    ("status", "published"),
    ("request",),
    ("status", "disabled"),
    ("replay_status", 0),
    ("restart",),
    ("replay_status", 0),
    ("status", "published"),
    ("replay_status", 4),
    ("request",),
]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
@example(FORKED_STATUS)
def test_thing_status_and_requests_survive_a_store_attacker(ops: list[tuple[object, ...]]) -> None:
    _run(ops)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_thing_status_and_requests_survive_a_store_attacker_long(
    ops: list[tuple[object, ...]],
) -> None:
    _run(ops)


# A race found while chasing a timeout of the slow test: the thing refuses its own older
# record at the version of the owner's (a fork) and writes the owner's status back; the
# owner's next status, landing first, was overwritten one version up by that write-back's
# retry, and the wait for it timed out (35 of 76 runs of this example alone, before).
# test_trust_attacks: ..._landing_while_the_thing_writes_a_refused_one_back_is_kept.
WRITTEN_BACK_OVER_THE_OWNER = [
    ("status", "published"),
    ("own_status", "disabled"),
    ("replay_status", 0),
    ("status", "published"),  # at the version of the thing's "disabled"
    ("replay_status", 1),  # the thing's "disabled" again: refused, written back...
    ("status", "disabled"),  # ...while the owner disables it
]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps_with_own)
@example(WRITTEN_BACK_OVER_THE_OWNER)
@example(
    [
        ("status", "published"),
        ("status", "disabled"),
        ("replay_status", 0),
        ("restart",),  # the thing writes "disabled" back: statuses[3]
        ("replay_status", 0),
        ("status", "published"),  # at the version of that write
        ("replay_status", 3),
        ("restart",),
    ]
)
def test_thing_status_of_two_writers_survives_a_store_attacker(
    ops: list[tuple[object, ...]],
) -> None:
    _run(ops, own=True)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps_with_own)
def test_thing_status_of_two_writers_survives_a_store_attacker_long(
    ops: list[tuple[object, ...]],
) -> None:
    _run(ops, own=True)
