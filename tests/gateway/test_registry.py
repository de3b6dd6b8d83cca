"""The device registry on its own: a private file, counters and queues that hold their
limits, and errors that say what is wrong (written against the mutants of
safething_gateway/registry.py that survived the gateway's tests)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from safething.errors import StoreError
from safething_gateway import registry as registry_module
from safething_gateway.protocol import ReplayError, RevokedDeviceError, UnknownDeviceError
from safething_gateway.registry import (
    MAX_PENDING_DOWNLINKS,
    DeviceRecord,
    DownlinkQueueFullError,
    Registry,
    RegistryBusyError,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_registry_and_its_side_files_are_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gateway.db"
    registry = Registry(path)
    registry.add("sensor-01", "http")
    assert _mode(path) == 0o600
    Registry(path).close()  # opened again as it is: nothing to say
    assert "readable by others" not in caplog.text
    # another process keeps the file open, so its -wal and -shm stay; someone (a backup
    # tool, a careless copy) opened all three up: the next start closes them again
    keeper = sqlite3.connect(path)
    keeper.execute("SELECT COUNT(*) FROM devices").fetchone()
    registry.close()
    sides = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    for f in [path, *sides]:
        assert f.exists(), f
        f.chmod(0o644)
    again = Registry(path)
    try:
        assert "had mode 0644, readable by others; set to 0600" in caplog.text
        assert _mode(path) == 0o600
        for f in sides:
            assert _mode(f) == 0o600, f
        assert again.get("sensor-01").device_id == "sensor-01"
    finally:
        again.close()
        keeper.close()


def test_a_file_that_is_not_a_registry(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    with pytest.raises(StoreError, match="not a gateway registry or is damaged"):
        Registry(path)


def test_unknown_devices_and_replays_are_named(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "gateway.db")
    try:
        with pytest.raises(UnknownDeviceError, match="unknown device 'nobody-01'"):
            registry.revoke("nobody-01")
        with pytest.raises(UnknownDeviceError, match="unknown device 'nobody-01'"):
            registry.accept_counter("nobody-01", 1)
        registry.add("sensor-01", "http")
        registry.accept_counter("sensor-01", 7)
        for old in (7, 6, 0):
            with pytest.raises(ReplayError, match=rf"counter {old} .* last accepted \(7\)"):
                registry.accept_counter("sensor-01", old)
        registry.accept_counter("sensor-01", 9)  # gaps are allowed
        assert registry.get("sensor-01").rx_counter == 9
    finally:
        registry.close()


def test_the_downlink_queue_holds_its_limit(tmp_path: Path) -> None:
    assert MAX_PENDING_DOWNLINKS == 256  # docs/gateway.md
    path = tmp_path / "gateway.db"
    registry = Registry(path, max_pending=3)
    registry.add("sensor-01", "http")
    for _ in range(3):
        registry.enqueue("sensor-01", "desired", b"{}")
    with pytest.raises(DownlinkQueueFullError, match=r"has 3 downlinks .* \(the limit is 3\)"):
        registry.enqueue("sensor-01", "desired", b"{}")
    registry.close()
    # a gateway restarted with a smaller limit refuses more while it is over that limit
    smaller = Registry(path, max_pending=2)
    try:
        with pytest.raises(DownlinkQueueFullError, match="has 3 downlinks"):
            smaller.enqueue("sensor-01", "desired", b"{}")
        counters = [d.counter for d in smaller.pending("sensor-01")]
        assert counters == [1, 2, 3]
        assert smaller.ack("sensor-01", 1) is True  # one downlink acknowledged
        assert smaller.ack("sensor-01", 2) is True  # the device has 1 and 2
        assert [d.counter for d in smaller.pending("sensor-01")] == [3]
        assert smaller.ack("sensor-01", 2) is False  # nothing more to drop
        smaller.enqueue("sensor-01", "desired", b"{}")  # under the limit again
    finally:
        smaller.close()


def test_a_write_waits_for_another_process_lock(tmp_path: Path) -> None:
    """Another process (the CLI's ``device revoke``) holds the write lock for a moment:
    the gateway's write waits for it (up to write_timeout), it does not fail at once."""
    path = tmp_path / "gateway.db"
    registry = Registry(path, write_timeout=30.0)
    registry.add("sensor-01", "http")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    locked = threading.Event()
    release = threading.Timer(0.3, lambda: (other.execute("ROLLBACK"), locked.set()))
    release.start()
    try:
        registry.set_online("sensor-01", True)  # blocks until the other lock is gone
        assert locked.is_set()
        assert registry.get("sensor-01").online
    finally:
        release.join()
        other.close()
        registry.close()


def test_records_say_what_they_are(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "private" / "gateway.db")
    try:
        assert _mode(tmp_path / "private") == 0o700  # the directory it made is private too
        first = registry.add("sensor-01", "http")
        assert first.linked is True
        assert len(first.secret) == 32  # the link secret a new device gets (docs/protocol.md)
        assert registry.add("valve-001", "mqtt").linked is True
        assert registry.add("adopted-01", "adopted").linked is False  # its adapter acts
        with pytest.raises(ValueError, match="'sensor-01' is already provisioned"):
            registry.add("sensor-01", "coap")
        with pytest.raises(ValueError, match="unknown transport 'zigbee'"):
            registry.add("sensor-02", "zigbee")
        registry.revoke("sensor-01")
        with pytest.raises(RevokedDeviceError, match="'sensor-01' is revoked"):
            registry.get("sensor-01")
        assert registry.get("sensor-01", allow_revoked=True).revoked is True
        assert registry.get("valve-001").revoked is False
        assert registry.get("valve-001").meta == {}  # no meta: an empty one, not null
        assert registry.add("meta-0001", "http", meta={"room": "attic"}).meta == {"room": "attic"}
        # the gateway reads from its worker thread as well as from the event loop's
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.append(registry.get("valve-001").transport))
        reader.start()
        reader.join()
        assert seen == ["mqtt"]
    finally:
        registry.close()


async def _hold_worker(registry: Registry) -> tuple[asyncio.Future[None], threading.Event]:
    """The registry's worker thread kept busy (calls made now queue behind it) until
    the event returned is set; the future is that call's."""
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(10)

    first = asyncio.ensure_future(registry.call(hold))
    await asyncio.to_thread(busy.wait, 10)
    return first, release


async def test_calls_waiting_together_commit_together_each_on_its_own(tmp_path: Path) -> None:
    """Group commit: calls queued while the worker thread is busy run in one transaction,
    each in its own savepoint. One that fails halfway (its counter spent, then its
    description refused) leaves nothing behind and gets its own error; the others are
    committed and answered."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        for i in range(4):
            registry.add(f"sensor-0{i}", "mqtt")
        batches: list[int] = []
        commit_batch = registry._commit_batch

        def counting(calls: list[Any]) -> list[tuple[bool, Any]]:
            batches.append(len(calls))
            return commit_batch(calls)

        registry._commit_batch = counting  # type: ignore[method-assign]
        first, release = await _hold_worker(registry)
        calls = [
            registry.call(registry.accept, "sensor-00", 5, journal=("reading", b'{"m":1}', "json")),
            registry.call(registry.accept, "sensor-01", 7, description={"bad": object()}),
            registry.call(registry.accept, "sensor-02", 3),
            registry.call(registry.accept, "sensor-03", 0),  # not above 0: a replay
            # it reads back what it wrote, not committed yet (an adopter provisioning)
            registry.call(registry.add, "adopted-01", "adopted"),
        ]
        waiting = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.05)
        release.set()
        await first
        journaled, bad, plain, replay, added = await asyncio.gather(
            *waiting, return_exceptions=True
        )
        assert batches == [1, 5]  # hold(), then the five queued behind it in one commit
        assert isinstance(added, DeviceRecord) and added.device_id == "adopted-01"
        assert registry.get("adopted-01").transport == "adopted"
        assert isinstance(journaled, int)
        assert [u.id for u in registry.buffered()] == [journaled]
        assert isinstance(bad, TypeError)
        assert plain is None
        assert isinstance(replay, ReplayError)
        assert registry.get("sensor-00").rx_counter == 5
        assert registry.get("sensor-01").rx_counter == 0  # rolled back with its call
        assert registry.get("sensor-02").rx_counter == 3
        assert registry.get("sensor-03").rx_counter == 0
        # the next call after the batch is answered too (the worker thread was let go)
        await registry.call(registry.accept, "sensor-01", 8)
        assert registry.get("sensor-01").rx_counter == 8
    finally:
        registry.close()


async def test_calls_made_in_one_turn_of_the_loop_are_one_group_in_order(
    tmp_path: Path,
) -> None:
    """Calls made during one turn of the event loop go to the worker thread together at
    its end, even when the thread could have run between them (here each caller
    releases the GIL first, as a read on the loop does): one group commit, run in the
    order they were made (a device's counters, each above the one before), a replay
    among them refused alone, each answered once committed (another connection reads
    it then)."""
    path = tmp_path / "gateway.db"
    registry = Registry(path)
    other = sqlite3.connect(path)
    try:
        registry.add("sensor-01", "mqtt")
        batches: list[int] = []
        commit_batch = registry._commit_batch

        def counting(calls: list[Any]) -> list[tuple[bool, Any]]:
            batches.append(len(calls))
            return commit_batch(calls)

        registry._commit_batch = counting  # type: ignore[method-assign]
        counters = [1, 2, 3, 4, 2, 5, 6, 7]  # the fifth is a replay

        async def spend(counter: int) -> int:
            # the GIL is free meanwhile: the worker thread could take what waits
            time.sleep(0.002)  # noqa: ASYNC251
            await registry.call(registry.accept_counter, "sensor-01", counter)
            (seen,) = other.execute(
                "SELECT rx_counter FROM devices WHERE id = 'sensor-01'"
            ).fetchone()
            return int(seen)

        outcomes = await asyncio.gather(*(spend(c) for c in counters), return_exceptions=True)
        assert batches == [8]
        assert isinstance(outcomes[4], ReplayError)
        assert all(seen == 7 for i, seen in enumerate(outcomes) if i != 4)
        assert registry.get("sensor-01").rx_counter == 7
    finally:
        other.close()
        registry.close()


async def test_a_group_commit_that_cannot_lock_fails_every_call_as_busy(tmp_path: Path) -> None:
    """Another process holds the write lock past write_timeout: every call of the batch
    is told the registry is busy (the bridge keeps its message and tries again), and
    nothing of theirs is written."""
    path = tmp_path / "gateway.db"
    registry = Registry(path, write_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        registry.add("sensor-01", "mqtt")
        registry.add("sensor-02", "mqtt")
        first, release = await _hold_worker(registry)
        waiting = [
            asyncio.ensure_future(registry.call(registry.accept, f"sensor-0{i}", 4)) for i in (1, 2)
        ]
        await asyncio.sleep(0.05)
        other.execute("BEGIN IMMEDIATE")
        release.set()
        await first
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        other.execute("ROLLBACK")
        # raised to each caller, not handed back as a result
        assert all(isinstance(w.exception(), RegistryBusyError) for w in waiting), outcomes
        assert [registry.get(f"sensor-0{i}").rx_counter for i in (1, 2)] == [0, 0]
    finally:
        other.close()
        registry.close()


async def test_a_caller_cancelled_in_a_group_commit_leaves_the_others_their_results(
    tmp_path: Path,
) -> None:
    """A bridge task cancelled while its call waits in a batch (its call is made all
    the same) does not leave the callers after it in that batch waiting for ever."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        for i in (1, 2, 3):
            registry.add(f"sensor-0{i}", "mqtt")
        first, release = await _hold_worker(registry)
        waiting = [
            asyncio.ensure_future(registry.call(registry.accept, f"sensor-0{i}", 4))
            for i in (1, 2, 3)
        ]
        await asyncio.sleep(0)  # all three queued, behind hold()
        waiting[0].cancel()
        release.set()
        await first
        async with asyncio.timeout(30):  # an upper bound: never reached when green
            await asyncio.gather(*waiting[1:])
        assert [registry.get(f"sensor-0{i}").rx_counter for i in (1, 2, 3)] == [4, 4, 4]
    finally:
        registry.close()


def test_the_devices_a_bridge_delivers_to_after_it_connects(tmp_path: Path) -> None:
    """Only devices of that transport, believed online, not revoked, with a downlink
    queued; and the online count for the gauge, without deriving anyone's keys."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        for device_id, transport in (
            ("waits-01", "mqtt"),
            ("nothing-01", "mqtt"),
            ("asleep-01", "mqtt"),
            ("coap-01", "coap"),
            ("revoked-01", "mqtt"),
        ):
            registry.add(device_id, transport)
            if device_id != "asleep-01":
                registry.set_online(device_id, True)
            if device_id != "nothing-01":
                registry.enqueue(device_id, "desired", b"{}")
        registry.revoke("revoked-01")
        assert registry.waiting("mqtt") == ["waits-01"]
        assert registry.waiting("coap") == ["coap-01"]
        assert registry.online("mqtt") == 2
        registry.ack("waits-01", registry.pending("waits-01")[0].counter)
        assert registry.waiting("mqtt") == []
    finally:
        registry.close()


def test_the_announced_last_will_counter_is_taken_once(tmp_path: Path) -> None:
    """The will's counter a device announced is taken once, and no other counter: the
    gateway reads it before it takes it, so two deliveries of the will at once (the
    broker's and a replay) both get this far, and only the first may count as the will."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        assert registry.use_will("sensor-01", 5) is False  # none announced
        registry.set_will("sensor-01", 5)
        assert registry.use_will("sensor-01", 6) is False  # not the announced counter
        assert registry.get("sensor-01").will_counter == 5
        assert registry.use_will("sensor-01", 5) is True
        assert registry.get("sensor-01").will_counter is None
        assert registry.use_will("sensor-01", 5) is False  # taken already
        assert registry.use_will("nobody-01", 5) is False
    finally:
        registry.close()


def test_a_revoked_device_spends_no_counter_whatever_was_cached(tmp_path: Path) -> None:
    """The counter's transaction itself refuses a revoked device: ``accept`` raises
    RevokedDeviceError (not a replay, nothing spent) and a pending last will is not used."""
    registry = Registry(tmp_path / "gateway.db")
    cli = Registry(tmp_path / "gateway.db")  # another process: ``safething device revoke``
    try:
        registry.add("sensor-01", "mqtt")
        registry.set_will("sensor-01", 9)
        assert registry.cached("sensor-01").revoked is False  # type: ignore[union-attr]
        cli.revoke("sensor-01")
        assert registry.cached("sensor-01").revoked is False  # type: ignore[union-attr]
        assert registry.use_will("sensor-01", 9) is False
        with pytest.raises(RevokedDeviceError, match="'sensor-01' is revoked"):
            registry.accept("sensor-01", 5, journal=("reading", b"{}", "json"))
        with pytest.raises(RevokedDeviceError):
            registry.accept_counter("sensor-01", 6)
        record = registry.get("sensor-01", allow_revoked=True)
        assert (record.rx_counter, record.will_counter) == (0, 9)
        assert registry.buffered() == []
        # the refusal dropped the stale row: the next look-up reads the revocation
        assert registry.cached("sensor-01").revoked is True  # type: ignore[union-attr]
    finally:
        cli.close()
        registry.close()


async def test_the_cached_row_follows_what_this_registry_commits(tmp_path: Path) -> None:
    """A row this registry changes is read again (each change, alone or in a group
    commit); an accepted counter is kept in the cached row; a row read while a change
    was committed is not kept."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        registry.add("sensor-02", "mqtt")

        def cached() -> DeviceRecord:
            record = registry.cached("sensor-01")
            assert record is not None
            return record

        assert cached() is cached()  # one read, then the same row
        changes: list[tuple[Any, ...]] = [
            (registry.set_description, "sensor-01", {"id": "sensor-01"}),
            (registry.set_will, "sensor-01", 4),
            (registry.use_will, "sensor-01", 4),
            (registry.set_online, "sensor-01", True),
            (registry.set_meta, "sensor-01", {"room": "attic"}),
            (registry.set_online, "sensor-01", False),
            (functools.partial(registry.set_born, registered=False), "sensor-01"),
        ]
        for change in changes:
            before = cached()
            change[0](*change[1:])
            assert cached() is not before, change
        assert cached().description == {"id": "sensor-01"}
        assert cached().meta == {"room": "attic"}
        assert cached().online and cached().will_counter is None
        # in a group commit (calls queued behind a busy worker), read again once committed
        before = cached()
        first, release = await _hold_worker(registry)
        waiting = [
            asyncio.ensure_future(registry.call(registry.set_will, "sensor-01", 11)),
            asyncio.ensure_future(registry.call(registry.accept, "sensor-02", 1)),
            asyncio.ensure_future(
                registry.call(registry.accept, "sensor-01", 2, description={"id": "x"})
            ),
        ]
        await asyncio.sleep(0.05)
        release.set()
        await first
        await asyncio.gather(*waiting)
        assert cached() is not before
        assert (cached().will_counter, cached().description) == (11, {"id": "x"})
        # counted: the cached row has the counter (and never goes back)
        registry.accept_counter("sensor-01", 7)
        before = cached()
        registry.counted("sensor-01", 7)
        registry.counted("sensor-01", 3)
        assert cached() == dataclasses.replace(before, rx_counter=7)  # every other field kept
        before = cached()
        registry.mark_registered("sensor-01")
        assert cached() is not before
        # a change committed while the row is read: that row is not kept
        find = registry.find

        def changed_meanwhile(device_id: str) -> DeviceRecord | None:
            record = find(device_id)
            registry.set_meta(device_id, {"room": "cellar"})
            return record

        registry.revoke("sensor-02")
        registry.find = changed_meanwhile  # type: ignore[method-assign]
        assert registry.cached("sensor-02").meta == {}  # type: ignore[union-attr]
        registry.find = find  # type: ignore[method-assign]
        assert registry.cached("sensor-02").meta == {"room": "cellar"}  # type: ignore[union-attr]
        assert registry.cached("sensor-02").revoked  # type: ignore[union-attr]
    finally:
        registry.close()


def test_the_cache_keeps_the_rows_used_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "CACHED_DEVICES", 2)
    registry = Registry(tmp_path / "gateway.db")
    try:
        for i in range(3):
            registry.add(f"sensor-0{i}", "mqtt")
        a = registry.cached("sensor-00")
        registry.cached("sensor-01")
        registry.counted("sensor-00", 0)  # used again: sensor-01 is now the oldest
        registry.cached("sensor-02")
        assert list(registry._cache) == ["sensor-00", "sensor-02"]
        assert registry.cached("sensor-00") is a
    finally:
        registry.close()


async def test_calls_after_close_fail_at_once(tmp_path: Path) -> None:
    """A write a bridge makes while the gateway closes the registry fails at once, the
    second as the first: none waits for ever for a worker thread that is gone."""
    registry = Registry(tmp_path / "gateway.db")
    registry.add("sensor-01", "mqtt")
    registry.close()
    for _ in range(2):
        async with asyncio.timeout(10):  # an upper bound: never reached when green
            with pytest.raises(RuntimeError):
                await registry.call(registry.accept_counter, "sensor-01", 1)


@contextlib.asynccontextmanager
async def _mid_group_commit(
    registry: Registry, fn: Callable[..., Any], *args: Any
) -> AsyncIterator[threading.Event]:
    """Inside: one group commit has run ``fn(*args)`` and is held open, not committed
    (by a call queued after it that waits for the event yielded); at the end it is let
    go, and committed."""
    in_batch, release = threading.Event(), threading.Event()

    def hold() -> None:
        in_batch.set()
        release.wait(30)

    first, release_first = await _hold_worker(registry)
    batch = [
        asyncio.ensure_future(registry.call(fn, *args)),
        asyncio.ensure_future(registry.call(hold)),
    ]
    await asyncio.sleep(0.05)  # both queued behind the first hold: one batch
    release_first.set()
    await first
    try:
        assert await asyncio.to_thread(in_batch.wait, 10)
        yield release
    finally:
        release.set()
    await asyncio.gather(*batch)


async def test_a_read_during_a_group_commit_neither_waits_for_it_nor_sees_it(
    tmp_path: Path,
) -> None:
    """While the worker thread runs a group commit (which may wait up to write_timeout for
    another process's lock), a read from the event loop's thread goes on at once, on the
    read connection: it sees what was committed, not the batch's writes so far."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        async with _mid_group_commit(registry, registry.accept_counter, "sensor-01", 4) as release:
            read: list[int] = []
            reader = threading.Thread(
                target=lambda: read.append(registry.get("sensor-01").rx_counter), daemon=True
            )
            reader.start()
            reader.join(10)  # at once, unless it waits for the batch (released below)
            assert read == [0], "the read waited for the group commit, or saw its write"
            # and on the event loop's own thread (a thread started before the worker)
            timer = threading.Timer(10, release.set)  # lets a read that waits go on
            timer.start()
            on_loop = registry.get("sensor-01").rx_counter
            timer.cancel()
            assert not release.is_set(), "the loop's read waited for the group commit"
            assert on_loop == 0
        assert registry.get("sensor-01").rx_counter == 4
    finally:
        registry.close()


async def test_a_group_commit_whose_transaction_fails_leaves_the_file_unlocked(
    tmp_path: Path,
) -> None:
    """The transaction of a group commit fails itself (here a call releases the batch's
    savepoint, as an I/O error on the file would end it): every call of the batch gets
    the error, nothing of theirs is kept, and the registry does not keep the
    transaction open, holding the file's write lock (the CLI's ``device revoke`` would
    wait for it) until its next write."""
    path = tmp_path / "gateway.db"
    registry = Registry(path)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        registry.add("sensor-01", "mqtt")
        first, release = await _hold_worker(registry)
        waiting = [
            asyncio.ensure_future(registry.call(registry.accept_counter, "sensor-01", 4)),
            asyncio.ensure_future(
                registry.call(lambda: registry._db.execute("RELEASE registry_call"))
            ),
        ]
        await asyncio.sleep(0.05)  # both queued behind hold(): one batch
        release.set()
        await first
        await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(w.exception(), StoreError) for w in waiting)
        assert registry.get("sensor-01").rx_counter == 0
        other.execute("BEGIN IMMEDIATE")  # the write lock is free (timeout=0: no wait)
        other.execute("ROLLBACK")
        await registry.call(registry.accept_counter, "sensor-01", 5)
        assert registry.get("sensor-01").rx_counter == 5
    finally:
        other.close()
        registry.close()


async def test_a_call_the_file_refuses_in_a_group_commit_fails_alone(tmp_path: Path) -> None:
    """One call of a group commit meets an error of SQLite itself (here a statement on a
    table that does not exist, standing in for an I/O error): that call gets a
    StoreError and only its savepoint is rolled back; the calls before and after it
    in the batch are committed."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        registry.add("sensor-02", "mqtt")

        def refused() -> None:
            with registry._writing() as db:
                db.execute("UPDATE no_such_table SET x = 1")

        first, release = await _hold_worker(registry)
        waiting = [
            asyncio.ensure_future(registry.call(registry.accept_counter, "sensor-01", 4)),
            asyncio.ensure_future(registry.call(refused)),
            asyncio.ensure_future(registry.call(registry.accept_counter, "sensor-02", 5)),
        ]
        await asyncio.sleep(0.05)  # all three queued behind hold(): one batch
        release.set()
        await first
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert outcomes[0] is None and outcomes[2] is None, outcomes
        assert isinstance(outcomes[1], StoreError) and "no_such_table" in str(outcomes[1])
        assert [registry.get(f"sensor-0{i}").rx_counter for i in (1, 2)] == [4, 5]
    finally:
        registry.close()


def test_buffered_uplinks_are_named_by_their_ids(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        ids = [registry.buffer("sensor-01", "reading", b'{"m":%d}' % i, "json") for i in (1, 2)]
        assert ids == [u.id for u in registry.buffered()] and 0 not in ids
        registry.unbuffer(ids[:1])
        assert [u.body for u in registry.buffered()] == [b'{"m":2}']
        assert registry.buffer_depth() == 1
    finally:
        registry.close()


def test_the_waits_are_the_documented_ones(tmp_path: Path) -> None:
    """A write waits 2 s for another process's lock (then RegistryBusyError: 503, the
    MQTT message kept), a read at most 0.2 s (WAL reads do not wait for writers)."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        assert registry.write_timeout == 2.0
        assert registry._db.execute("PRAGMA busy_timeout").fetchone() == (2000,)
        assert registry._rdb.execute("PRAGMA busy_timeout").fetchone() == (200,)
    finally:
        registry.close()
    registry = Registry(tmp_path / "gateway.db", write_timeout=0.25, read_timeout=0.05)
    try:
        assert registry._db.execute("PRAGMA busy_timeout").fetchone() == (250,)
        assert registry._rdb.execute("PRAGMA busy_timeout").fetchone() == (50,)
    finally:
        registry.close()


def test_a_description_set_alone_is_registered_unless_said(tmp_path: Path) -> None:
    """An adapter that sets an adopted device's description has registered its thing;
    the gateway says when a birth's thing is not in the store yet."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("plug-01", "adopted")
        registry.add("sensor-01", "mqtt")
        registry.set_description("plug-01", {"id": "plug-01"})
        registry.set_description("sensor-01", {"id": "sensor-01"}, registered=False)
        assert registry.born() == {"plug-01": ("adopted", True), "sensor-01": ("mqtt", False)}
    finally:
        registry.close()


async def test_a_row_read_during_a_group_commit_is_not_kept_past_it(tmp_path: Path) -> None:
    """The event loop looks a device up while a group commit that changes its row has
    not committed yet: it gets the committed row (right then), and once the batch is
    committed the next look-up reads the change, not that row."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        async with _mid_group_commit(registry, registry.set_meta, "sensor-01", {"room": "attic"}):
            meanwhile = registry.cached("sensor-01")
            assert meanwhile is not None and meanwhile.meta == {}  # not committed yet
        assert registry.cached("sensor-01").meta == {"room": "attic"}  # type: ignore[union-attr]
    finally:
        registry.close()


def test_a_row_read_while_a_birth_commits_is_not_kept_past_it(tmp_path: Path) -> None:
    """A birth's description is written in the transaction that spends its counter (one
    call, no group commit); the event loop looks the device up while that transaction
    has not committed yet (here: at the moment the registry drops the cached row). It
    gets the row as committed then, and once the birth is committed the next look-up
    reads the description, not that row."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        assert registry.cached("sensor-01").description is None  # type: ignore[union-attr]
        forget = registry._forget

        def looked_up_meanwhile(device_id: str) -> None:
            forget(device_id)
            registry.cached(device_id)  # the loop's look-up, at that instant

        registry._forget = looked_up_meanwhile  # type: ignore[method-assign]
        registry.accept("sensor-01", 1, description={"id": "sensor-01"})
        registry._forget = forget  # type: ignore[method-assign]
        record = registry.cached("sensor-01")
        assert record is not None and record.description == {"id": "sensor-01"}
        assert record.rx_counter == 1
    finally:
        registry.close()


async def test_a_change_made_alone_after_a_group_commit_is_read_at_once(tmp_path: Path) -> None:
    """The worker thread that ran a group commit then runs a call alone: that call's
    change is committed at once, so the cached row is dropped at once too (not kept
    until the next group commit)."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        first, release = await _hold_worker(registry)
        batch = [
            asyncio.ensure_future(registry.call(registry.set_will, "sensor-01", i)) for i in (3, 4)
        ]
        await asyncio.sleep(0.05)  # both queued behind hold(): one batch
        release.set()
        await first
        await asyncio.gather(*batch)
        assert registry.cached("sensor-01").will_counter == 4  # type: ignore[union-attr]
        await registry.call(registry.set_meta, "sensor-01", {"room": "attic"})  # alone
        assert registry.cached("sensor-01").meta == {"room": "attic"}  # type: ignore[union-attr]
    finally:
        registry.close()


def test_the_cache_holds_the_documented_number_of_rows() -> None:
    assert registry_module.CACHED_DEVICES == 16_384  # docs/benchmarks.md: about 4 KB each


def test_ten_thousand_devices_speaking_in_turn_stay_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway is sized for 10,000 devices: each speaking in turn, the second round
    reads no device row again (with a cache smaller than that, every look-up did)."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-00000", "mqtt")
        others = [f"sensor-{i:05d}" for i in range(1, 10_000)]
        with registry._writing() as db:  # copies of the first row: 10,000 adds are slow
            db.executemany(
                "INSERT INTO devices(id, transport, secret, keys, created, meta, protocol) "
                "SELECT ?, transport, secret, keys, created, meta, protocol FROM devices "
                "WHERE id = 'sensor-00000'",
                [(device_id,) for device_id in others],
            )
        everyone = ["sensor-00000", *others]
        first = [registry.cached(device_id) for device_id in everyone]
        reads: list[str] = []
        find = registry.find
        monkeypatch.setattr(
            registry, "find", lambda device_id: reads.append(device_id) or find(device_id)
        )
        again = [registry.cached(device_id) for device_id in everyone]
        assert reads == []
        assert all(a is b and a is not None for a, b in zip(first, again, strict=True))
    finally:
        registry.close()


def test_a_call_that_fails_halfway_before_any_group_commit_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A registry that has not run a group commit yet: a call that fails halfway (its
    counter spent, then its description refused) is rolled back whole, so the counter
    is not spent without the birth it belongs to."""
    registry = Registry(tmp_path / "gateway.db")
    try:
        registry.add("sensor-01", "mqtt")
        with pytest.raises(TypeError):
            registry.accept("sensor-01", 7, description={"bad": object()})
        assert registry.get("sensor-01").rx_counter == 0
        registry.accept("sensor-01", 7, description={"id": "sensor-01"})
        assert registry.get("sensor-01").description == {"id": "sensor-01"}
    finally:
        registry.close()


def test_a_registry_locked_by_another_process_as_it_opens_is_busy_not_damaged(
    tmp_path: Path,
) -> None:
    """Another process (an admin's sqlite3 shell, a second gateway) holds the file's lock
    while the registry opens: busy (try again), never 'damaged'; it opens once the lock
    is gone."""
    path = tmp_path / "gateway.db"
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(RegistryBusyError, match="locked"):
            Registry(path, write_timeout=0.1)
    finally:
        other.close()
    Registry(path).close()


def test_a_read_of_a_registry_altered_under_it_is_a_store_error(tmp_path: Path) -> None:
    """Another process renames the devices table away (a damaged or meddled-with file):
    each read is a StoreError (a 503, the message kept), never sqlite3's own error; the
    reads work again once the table is back."""
    path = tmp_path / "gateway.db"
    registry = Registry(path)
    try:
        registry.add("sensor-01", "mqtt")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("ALTER TABLE devices RENAME TO elsewhere")
            with pytest.raises(StoreError, match="no such table"):
                registry.devices()
            other.execute("ALTER TABLE elsewhere RENAME TO devices")
        finally:
            other.close()
        assert [d.device_id for d in registry.devices()] == ["sensor-01"]
    finally:
        registry.close()


async def test_a_lone_call_is_made_on_the_loop_and_never_waits_for_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading's ``accept`` alone in its turn of the loop, with the worker idle, is made
    on the loop (no crossing to the worker and back). Another process holding the
    file's write lock does not make the loop wait (here 0.5 s; write_timeout 3 s): the
    call goes to the worker, which waits for the lock, and is made once it is free."""
    path = tmp_path / "gateway.db"
    threads: list[int] = []
    accept = Registry.accept

    @functools.wraps(accept)
    def where(registry: Registry, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return accept(registry, *args, **kwargs)

    monkeypatch.setattr(Registry, "accept", where)
    registry = Registry(path, write_timeout=3.0)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        registry.add("sensor-01", "mqtt")
        await registry.call(registry.accept, "sensor-01", 1)
        assert threads == [threading.get_ident()]
        other.execute("BEGIN IMMEDIATE")
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, other.execute, "COMMIT")
        started = loop.time()
        made = asyncio.ensure_future(registry.call(registry.accept, "sensor-01", 2))
        last, stall = loop.time(), 0.0
        while not made.done():
            await asyncio.sleep(0.005)
            now = loop.time()
            stall, last = max(stall, now - last), now
        await made
        assert loop.time() - started >= 0.45  # it did wait for the lock: on the worker
        assert stall < 0.25, stall
        assert threads[-1] != threading.get_ident()
        assert registry.get("sensor-01").rx_counter == 2
    finally:
        other.close()
        registry.close()


async def test_lone_calls_on_the_loop_change_the_lock_and_checkpoint_settings_once(
    tmp_path: Path,
) -> None:
    """Calls made on the loop one after the other set the write connection's busy
    timeout and checkpoint threshold for the loop once, not around each call (four
    ``PRAGMA``s a call before); any other write sets the configured ones back first
    (it waits for other processes' locks: test_a_lone_call_is_made_on_the_loop_...)."""
    registry = Registry(tmp_path / "gateway.db", write_timeout=3.0)
    statements: list[str] = []
    try:
        registry.add("sensor-01", "mqtt")
        registry._db.set_trace_callback(statements.append)
        for counter in range(1, 6):
            uplink = await registry.call(
                registry.accept, "sensor-01", counter, journal=("reading", b"{}", "json")
            )
            assert uplink is not None
            await registry.call(registry.unbuffer, [uplink])
        pragmas = [s for s in statements if s.startswith("PRAGMA")]
        assert pragmas == ["PRAGMA busy_timeout = 0", "PRAGMA wal_autocheckpoint = 0"]
        assert sum(s == "BEGIN IMMEDIATE" for s in statements) == 5  # all on the loop
        statements.clear()
        registry.set_online("sensor-01", True)  # a plain write, here on the loop's thread
        assert statements[:2] == [
            "PRAGMA busy_timeout = 3000",
            f"PRAGMA wal_autocheckpoint = {registry._autocheckpoint}",
        ]
        assert registry.get("sensor-01").rx_counter == 5
    finally:
        registry.close()
