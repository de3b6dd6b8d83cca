"""SQLite backend: separate OS processes, crashes, damaged files, options."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from safething.errors import LimitExceededError, StoreError, StoreURLError
from safething.store import Change, Quota, Record, Write, open_store
from safething.store.sqlite import SCHEMA_VERSION, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("_sqlite_child.py")
TIMEOUT = 10.0


def url_for(path: Path) -> str:
    return f"sqlite://{path}"


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """Start ``_sqlite_child.py`` with ``args`` in a fresh interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(TIMEOUT * 3):
        _, err = await process.communicate()
    assert process.returncode == 0, err.decode()


# --- several processes ------------------------------------------------------------


async def test_watch_receives_changes_from_another_process(tmp_path: Path) -> None:
    count = 50
    url = url_for(tmp_path / "vault.db")
    async with await open_store(url) as store, store.watch("x.") as watch:
        child = await spawn("write", url, str(count))
        received: list[tuple[Change, float]] = []
        async with asyncio.timeout(TIMEOUT * 3):
            async for change in watch:
                received.append((change, time.time()))
                if len(received) == count:
                    break
        await finish(child)
        for i, (change, arrived) in enumerate(received):
            index, _, written = change.value.partition(b":")  # type: ignore[union-attr]
            assert (change.key, int(index)) == (f"x.{i}", i)
            assert arrived - float(written) < 2.0, "a change took seconds to arrive"
            assert await store.get(change.key) == Record(change.key, change.value, change.revision)  # type: ignore[arg-type]
        revisions = [c.revision for c, _ in received]
        assert revisions == sorted(set(revisions))


async def test_processes_racing_on_a_new_file_lose_no_update(tmp_path: Path) -> None:
    # The children also race to create the file and its schema.
    url = url_for(tmp_path / "new" / "vault.db")
    children = [await spawn("incr", url, "counter", "40") for _ in range(4)]
    for child in children:
        await finish(child)
    async with await open_store(url) as store:
        record = await store.get("counter")
        assert record is not None
        assert int(record.value) == 4 * 40
        assert (await store.info()).revision == record.revision == 4 * 40


# --- crashes ----------------------------------------------------------------------


@pytest.mark.parametrize(("synchronous", "writers"), [("normal", 1), ("full", 1), ("normal", 8)])
async def test_acknowledged_writes_survive_sigkill(
    tmp_path: Path, synchronous: str, writers: int
) -> None:
    """What a commit acknowledged survives a SIGKILL; with eight writers at once, the
    commits made in a turn of the loop are one transaction, each acknowledged only
    once that transaction is committed."""
    path = tmp_path / "vault.db"
    url = f"{url_for(path)}?synchronous={synchronous}"
    child = await spawn("ack", url, str(writers))
    assert child.stdout is not None
    acked: dict[str, int] = {}
    async with asyncio.timeout(TIMEOUT * 3):
        while len(acked) < 400:
            line = await child.stdout.readline()
            assert line, (await child.stderr.read()).decode()  # type: ignore[union-attr]
            key, revision = line.decode().split()
            acked[key] = int(revision)
    child.send_signal(signal.SIGKILL)
    rest, _ = await child.communicate()  # what it printed before dying was acknowledged too
    for line in rest.decode().splitlines():
        parts = line.split()
        if len(parts) == 2:  # the last line may be cut short by the kill
            acked[parts[0]] = int(parts[1])
    assert child.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    async with await open_store(url_for(path)) as store:
        for key, revision in acked.items():
            assert await store.get(key) == Record(key, key.encode(), revision)
        info = await store.info()
        assert info.revision >= max(acked.values())
        after = await store.put("ack.after", b"still works")
        assert after > info.revision


async def _read_acks(child: asyncio.subprocess.Process, acked: dict[str, int], n: int) -> None:
    assert child.stdout is not None
    target = len(acked) + n
    while len(acked) < target:
        line = await child.stdout.readline()
        assert line, (await child.stderr.read()).decode()  # type: ignore[union-attr]
        key, revision = line.decode().split()
        acked[key] = int(revision)


ROUNDS = 12


async def test_two_stores_in_one_process_others_touching_the_file_and_sigkill(
    tmp_path: Path,
) -> None:
    # Issue 8, attack 5: a second store object on the same file used to open and close
    # a descriptor on it, which dropped every POSIX lock of the process; another process
    # opening and closing the file then deleted the WAL the first kept committing into.
    path = tmp_path / "vault.db"
    url = url_for(path)
    acked: dict[str, int] = {}
    for round_ in range(ROUNDS):
        child = await spawn("two", url, str(round_))
        async with asyncio.timeout(TIMEOUT * 3):
            await _read_acks(child, acked, 20)  # both store objects are open and writing
            for _ in range(2):
                await finish(await spawn("touch", url))
            await _read_acks(child, acked, 20)  # it kept committing after the others left
        child.send_signal(signal.SIGKILL)
        rest, _ = await child.communicate()
        for line in rest.decode().splitlines():
            parts = line.split()
            if len(parts) == 2:
                acked[parts[0]] = int(parts[1])
        assert child.returncode == -signal.SIGKILL
        async with await open_store(url) as store:
            missing = [
                k for k, r in acked.items() if await store.get(k) != Record(k, k.encode(), r)
            ]
        assert not missing, (
            f"round {round_}: {len(missing)} of {len(acked)} acknowledged writes lost"
        )
    assert len(acked) >= ROUNDS * 41


# --- files and URLs ---------------------------------------------------------------


async def test_corrupt_file_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not a SAFEthing store or is damaged") as info:
        await open_store(url_for(path))
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="some other program"):
        await open_store(url_for(path))


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)):
        pass
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this SAFEthing"):
        await open_store(url_for(path))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("colour=blue", "unknown option 'colour'"),
        ("synchronous=sometimes", "synchronous=normal or synchronous=full"),
        ("busy_timeout=soon", "milliseconds"),
    ],
)
async def test_bad_url_options(tmp_path: Path, query: str, message: str) -> None:
    with pytest.raises(StoreURLError, match=message):
        await open_store(f"{url_for(tmp_path / 'vault.db')}?{query}")
    assert not (tmp_path / "vault.db").exists()


async def test_options_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    async with await open_store(f"{url_for(path)}?synchronous=FULL&busy_timeout=2000") as store:
        revision = await store.put("k", b"v")
    async with await open_store(url_for(path)) as store:
        assert await store.get("k") == Record("k", b"v", revision)
        assert await store.put("k2", b"w") > revision


async def test_files_and_directories_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "vault.db"
    async with await open_store(url_for(path)) as store, store.watch("a."):
        for directory in (path.parent, path.parent.parent, Path(f"{path}.notify")):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = await store.info()
        assert info.file_bytes is not None
        assert info.file_bytes >= path.stat().st_size


async def test_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "vault.db").mkdir()
    with pytest.raises(StoreError, match="cannot open store file"):
        await open_store(url_for(tmp_path / "vault.db"))


# --- the change feed's machinery --------------------------------------------------


def sockets(notify: Path) -> list[Path]:
    return sorted(notify.glob("*.sock"))


def leave_stale_socket(notify: Path) -> Path:
    """A socket file nobody is bound to, as a crashed process leaves behind."""
    notify.mkdir(mode=0o700, exist_ok=True)
    stale = notify / "1-deadbeef.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()
    return stale


async def test_watch_socket_lives_as_long_as_the_watches(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    notify = Path(f"{path}.notify")
    async with await open_store(url_for(path)) as store:
        first = store.watch("a.")
        second = store.watch("b.")
        assert len(sockets(notify)) == 1
        await first.close()
        assert len(sockets(notify)) == 1
        await second.close()
        assert sockets(notify) == []
        store.watch("c.")
        assert len(sockets(notify)) == 1
    assert sockets(notify) == []


async def test_sockets_of_dead_processes_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)) as store:
        stale = leave_stale_socket(Path(f"{path}.notify"))
        assert sockets(stale.parent) == [stale]
        await store.put("a", b"1")
        assert sockets(stale.parent) == []


async def test_a_quota_counts_what_another_connection_wrote_since(tmp_path: Path) -> None:
    """The writer keeps each quota prefix's usage from one commit to the next only while
    no other connection commits to the file: records another process wrote meanwhile
    count (here a foreign writer's raw record, then one a second store committed)."""
    path = tmp_path / "vault.db"
    quota = Quota("q.", max_count=3, max_bytes=1000)
    async with await open_store(url_for(path)) as store:
        await store.create("q.a", b"1", quota=quota)
        await store.create("q.b", b"2", quota=quota)  # usage kept: 2 records
        write_without_wake_up(path, "q.c")
        with pytest.raises(LimitExceededError) as info:
            await store.create("q.d", b"4", quota=quota)
        assert (info.value.limit, info.value.actual) == (3, 4)
        await store.delete("q.c")
        await store.create("q.d", b"4", quota=quota)  # usage kept: 3 records
        async with await open_store(url_for(path)) as other:
            await other.delete("q.a")
        await store.create("q.e", b"5", quota=quota)  # the delete made room
        assert await store.usage("q.") == (3, 3)


def write_without_wake_up(path: Path, key: str) -> int:
    """Commit a change the way a foreign writer would: plain sqlite3, no datagram."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        seq = conn.execute("INSERT INTO changes (key, deleted) VALUES (?, 0)", (key,)).lastrowid
        conn.execute("INSERT INTO records (key, value, rev) VALUES (?, x'01', ?)", (key, seq))
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert seq is not None
    return seq


async def test_safety_net_finds_changes_nobody_announced(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)) as store, store.watch("quiet.") as watch:
        waiting = asyncio.create_task(watch.__anext__(), name="waiting-watcher")
        await asyncio.sleep(0.05)
        assert not waiting.done()
        seq = write_without_wake_up(path, "quiet.x")
        async with asyncio.timeout(TIMEOUT):
            change = await waiting
        assert change == Change("quiet.x", b"\x01", seq)


async def test_the_safety_net_reads_only_what_others_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit of a store wakes the store's watches itself; its safety net (for a
    lost doorbell) wakes them only for the changes other connections committed, also
    those committed between two of its own commits. A busy gateway's safety net read
    and walked every key the gateway had written in the last second."""
    import safething.store.sqlite

    monkeypatch.setattr(safething.store.sqlite, "_SAFETY_NET_S", 3600.0)  # looks by hand
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)) as store, store.watch("w.") as watch:
        assert isinstance(store, SQLiteStore)
        woken: list[list[str]] = []
        wake_for = store._watches.wake_for
        looking = False

        def recorded(keys: Iterable[str]) -> None:
            keys = list(keys)
            if looking:
                woken.append(keys)
            wake_for(keys)

        monkeypatch.setattr(store._watches, "wake_for", recorded)

        def look() -> list[list[str]]:
            nonlocal looking
            assert store._net is not None
            store._net.cancel()
            woken.clear()
            looking = True
            try:
                store._safety_net()
            finally:
                looking = False
            return list(woken)

        for i in range(5):
            await store.create(f"w.a{i}", b"1")  # a transaction each
        foreign = write_without_wake_up(path, "w.foreign")
        await asyncio.gather(*(store.create(f"w.b{i}", b"2") for i in range(5)))  # one
        assert look() == [["w.foreign"]]
        assert look() == []
        await store.create("w.c", b"3")
        later = write_without_wake_up(path, "w.later")
        assert look() == [["w.later"]]
        async with asyncio.timeout(TIMEOUT):
            got = [await anext(watch) for _ in range(13)]
        assert [c.key for c in got] == [
            *(f"w.a{i}" for i in range(5)),
            "w.foreign",
            *(f"w.b{i}" for i in range(5)),
            "w.c",
            "w.later",
        ]
        assert (got[5].revision, got[12].revision) == (foreign, later)


async def test_idle_watches_share_one_safety_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway holds thousands of watches. While nothing changes none of them re-reads
    the log (the store's one safety net looks for all of them); a change nobody
    announced wakes only the watch it is for."""
    import safething.store.sqlite

    monkeypatch.setattr(safething.store.sqlite, "_SAFETY_NET_S", 0.02)
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)) as store:
        assert isinstance(store, safething.store.sqlite.SQLiteStore)
        watches = [store.watch(f"w{i}.") for i in range(100)]
        waiting = [
            asyncio.create_task(w.__anext__(), name=f"waiting-watcher-{i}")
            for i, w in enumerate(watches)
        ]
        await asyncio.sleep(0.05)  # every watch has read the log once and waits
        feeds: list[str] = []
        feed = store._feed

        def counted(
            prefix: str, after: int, glob: str | None = None
        ) -> tuple[list[Change], int, bool]:
            feeds.append(prefix)
            return feed(prefix, after, glob)

        monkeypatch.setattr(store, "_feed", counted)
        await asyncio.sleep(0.3)  # about 15 looks of the safety net
        assert feeds == []
        seq = write_without_wake_up(path, "w7.x")
        async with asyncio.timeout(TIMEOUT):
            change = await waiting[7]
        assert change == Change("w7.x", b"\x01", seq)
        assert set(feeds) == {"w7."}
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        for w in watches:
            await w.close()


async def test_a_pattern_watch_is_not_woken_by_the_other_keys_under_its_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway's things share one watch of every status entry (``md.27417.*.e.<status>``)
    while their readings go to the same MDs: a commit wakes that watch only if it wrote
    a matching key, and its reads take only the matching changes from the log. It still
    gets every matching change, in order, written here or by another process."""
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)) as store:
        assert isinstance(store, SQLiteStore)
        reads: list[list[str]] = []
        feed = store._feed

        def counted(
            prefix: str, after: int, glob: str | None = None
        ) -> tuple[list[Change], int, bool]:
            changes, seen, last = feed(prefix, after, glob)
            reads.append([c.key for c in changes])
            return changes, seen, last

        monkeypatch.setattr(store, "_feed", counted)
        async with store.watch_pattern("p.*.s") as watch:
            first = asyncio.create_task(watch.__anext__())
            await asyncio.sleep(0.05)  # it has read the log once and waits
            before = len(reads)
            for i in range(40):
                await store.put(f"p.{i}.t", b"a reading")
                await store.put(f"p.{i}.s.x", b"deeper")
            await asyncio.sleep(0.05)
            assert len(reads) == before  # not woken by any of them
            r1 = await store.put("p.a.s", b"1")
            async with asyncio.timeout(TIMEOUT):
                assert await first == Change("p.a.s", b"1", r1)
            assert reads[-1] == ["p.a.s"]  # the 80 other changes were not read
            seq = write_without_wake_up(path, "p.b.s")  # another process, no doorbell
            async with asyncio.timeout(TIMEOUT):
                assert await watch.__anext__() == Change("p.b.s", b"\x01", seq)
            # GLOB's * spans dots; the pattern's does not
            await store.put("p.c.d.s", b"two tokens")
            r2 = await store.put("p.c.s", b"2")
            async with asyncio.timeout(TIMEOUT):
                assert await watch.__anext__() == Change("p.c.s", b"2", r2)


async def test_watch_on_a_long_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safething.store.sqlite

    # only the socket can wake the watch within TIMEOUT: the safety net is an hour away
    monkeypatch.setattr(safething.store.sqlite, "_SAFETY_NET_S", 3600.0)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = deep / "vault.db"
    assert len(str(path)) > 110  # too long for a plain AF_UNIX address
    async with (
        await open_store(url_for(path)) as store,
        await open_store(url_for(path)) as peer,
        store.watch("l.") as watch,
    ):
        waiting = asyncio.create_task(watch.__anext__(), name="waiting-watcher")
        await asyncio.sleep(0.05)
        revision = await peer.put("l.x", b"1")
        async with asyncio.timeout(TIMEOUT):
            change = await waiting
        assert change == Change("l.x", b"1", revision)


@pytest.mark.parametrize("long_path", [False, True])
async def test_a_watcher_that_starts_later_is_rung_at_the_next_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, long_path: bool
) -> None:
    """The writer keeps its notify directory open and its listing cached: a watcher of
    another store that starts after its first commits (also in a directory removed and
    made anew meanwhile) is woken by the next commit, not by the safety net."""
    import shutil

    import safething.store.sqlite

    monkeypatch.setattr(safething.store.sqlite, "_SAFETY_NET_S", 3600.0)
    base = tmp_path / ("d" * 60) / ("e" * 60) if long_path else tmp_path
    path = base / "vault.db"
    notify = Path(f"{path}.notify")
    async with await open_store(url_for(path)) as writer:
        await writer.put("w.a", b"0")  # no directory yet
        for round_ in range(3):
            async with await open_store(url_for(path)) as peer, peer.watch("w.") as watch:
                waiting = asyncio.create_task(watch.__anext__(), name="waiting-watcher")
                await asyncio.sleep(0.05)
                revision = await writer.put("w.a", b"%d" % round_)
                async with asyncio.timeout(TIMEOUT):
                    assert await waiting == Change("w.a", b"%d" % round_, revision)
            await writer.put("w.b", b"between")  # rung while nobody listens
            if round_ == 1:
                shutil.rmtree(notify)


@pytest.mark.parametrize("long_path", [False, True])
def test_the_doorbell_finds_a_directory_renamed_away_and_made_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, long_path: bool
) -> None:
    """A listener in a new directory at the path is rung once the path is looked up
    again (``_LOOK_NS`` after the last look; the old directory, renamed, still has
    its living listener and its mtime)."""
    import safething.store.sqlite as sqlite_store

    base = tmp_path / ("d" * 60) / ("e" * 60) if long_path else tmp_path
    base.mkdir(parents=True, exist_ok=True)
    notify = base / "vault.db.notify"

    def listener(directory: Path, name: str) -> socket.socket:
        directory.mkdir(mode=0o700, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        where, dirfd = sqlite_store._socket_base(directory)  # /proc/self/fd/<fd> if long
        sock.bind(f"{where}/{name}")
        if dirfd is not None:
            os.close(dirfd)
        sock.setblocking(False)
        return sock

    def rung(sock: socket.socket) -> bool:
        try:
            return sock.recv(64) == b"!"
        except BlockingIOError:
            return False

    doorbell = sqlite_store._Doorbell(notify)
    first = listener(notify, "1-a.sock")
    try:
        doorbell.ring(None)
        assert rung(first)
        notify.rename(base / "moved")
        second = listener(notify, "2-b.sock")
        monkeypatch.setattr(sqlite_store, "_LOOK_NS", 0)
        doorbell.ring(None)
        assert rung(second)
        second.close()
    finally:
        first.close()
        doorbell.close()


async def test_second_opening_sees_the_same_revisions(tmp_path: Path) -> None:
    url = url_for(tmp_path / "vault.db")
    async with await open_store(url) as first, await open_store(url) as second:
        a = await first.put("s.a", b"1")
        b = await second.put("s.b", b"2")
        c = await first.put("s.c", b"3")
        assert a < b < c
        assert await second.get("s.c") == Record("s.c", b"3", c)
        assert isinstance(first, SQLiteStore)
        assert (await second.info()).revision == c


async def test_watch_polls_when_no_socket_can_be_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object) -> None:
        raise OSError("no AF_UNIX here")

    monkeypatch.setattr("safething.store.sqlite._Listener", refuse)
    url = url_for(tmp_path / "vault.db")
    async with (
        await open_store(url) as store,
        await open_store(url) as peer,
        store.watch("p.") as watch,
    ):
        waiting = asyncio.create_task(watch.__anext__(), name="waiting-watcher")
        await asyncio.sleep(0.05)
        revision = await peer.put("p.x", b"1")
        async with asyncio.timeout(TIMEOUT):
            assert await waiting == Change("p.x", b"1", revision)
    assert "watches poll every" in caplog.text


async def test_refused_writes_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    """A refused write (a key that exists, a quota) is an outcome of the commit, kept
    without the traceback whose frames would hold it in a cycle: a gateway restoring a
    thing meets four (its MDs exist), and cycles frozen by ``gc.freeze()`` are never
    collected."""
    import gc

    from safething.store import Write

    async with await open_store(f"sqlite:///{tmp_path}/s.db") as store:
        await store.put("k.taken", b"1")
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                outcomes = await store.commit([Write("k.taken", b"2", 0), Write("k.new", b"3")])
                assert type(outcomes[0]).__name__ == "ConflictError"
                del outcomes
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert "ConflictError" not in left and "frame" not in left, left


# --- group commit -----------------------------------------------------------------


async def test_commits_made_in_one_turn_of_the_loop_are_one_transaction_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits made during one turn of the event loop go to the writer thread together
    at its end, even when the thread could have run between them (here each caller
    releases the GIL first, as a read on the loop does): one transaction, decided in
    the order they were made, each answered only once committed (another store on the
    file reads it then). One whose writes SQLite fails fails alone (StoreError); the
    others of its group are committed."""
    from safething.store import Write
    from safething.store import sqlite as sqlite_store

    apply = sqlite_store._Batch.apply

    def failing(batch: sqlite_store._Batch, write: Write) -> int:
        if write.key == "o.bad":
            raise sqlite3.OperationalError("disk I/O error")  # as a failing disk would
        return apply(batch, write)

    monkeypatch.setattr(sqlite_store._Batch, "apply", failing)
    url = url_for(tmp_path / "vault.db")
    async with await open_store(url) as store, await open_store(url) as other:
        assert isinstance(store, SQLiteStore)
        groups = _count_groups(store)

        async def write(i: int) -> list[int | Exception]:
            # the GIL is free meanwhile: the writer thread could take what waits
            time.sleep(0.002)  # noqa: ASYNC251
            key = "o.bad" if i == 4 else f"o.{i}"
            try:
                done = await store.commit(
                    [Write("o.last", str(i).encode(), None), Write(key, b"x")]
                )
            except StoreError as e:
                return [e]
            assert await other.get(key) is not None  # committed before it was answered
            return done

        outcomes = await asyncio.gather(*(write(i) for i in range(10)))
        assert groups == [10]
        assert isinstance(outcomes[4][0], StoreError) and "disk I/O error" in str(outcomes[4][0])
        assert await other.get("o.bad") is None
        kept = [o for i, o in enumerate(outcomes) if i != 4]
        assert all(isinstance(r, int) for o in kept for r in o)
        revisions = [o[0] for o in kept]
        assert revisions == sorted(revisions) and len(set(revisions)) == 9  # in order
        assert (await other.get("o.last")).value == b"9"  # type: ignore[union-attr]


def _count_groups(store: SQLiteStore) -> list[int]:
    """The sizes of the groups of jobs the store's writer thread runs from now on, each
    in one transaction, as a list that grows as it runs them."""
    groups: list[int] = []
    run_group = store._writer._run_group

    def counted(group: list[Any]) -> None:
        groups.append(len(group))
        run_group(group)

    store._writer._run_group = counted  # type: ignore[method-assign]
    return groups


def _outcome(result: int | Exception) -> object:
    return result if isinstance(result, int) else type(result).__name__


async def test_commits_grouped_in_one_transaction_are_decided_as_one_after_the_other(
    tmp_path: Path,
) -> None:
    """The writer decides a transaction's jobs in Python, keeping each quota prefix's
    usage as it goes (summed per prefix for the writes under it, rewound when an atomic
    job is refused, kept for the next transaction). Random groups of commits made in one
    turn of the loop (creates, rewrites, some at the same length, deletes, compare-and-
    sets; atomic or not; quotas on nested prefixes, small enough to refuse) get the
    outcomes, records and usage that the memory store gives the same commits one after
    the other."""
    import random

    from safething.store import Write

    rng = random.Random(14)
    keys = [f"{a}.{b}.{c}" for a in "pq" for b in "xy" for c in "123"] + ["p.z", "q"]
    quotas = [
        Quota("p.", max_count=6, max_bytes=40),
        Quota("p.x.", max_count=2, max_bytes=1000),
        Quota("q.y.", max_count=3, max_bytes=9),
        Quota("", max_count=12, max_bytes=70),
    ]
    prefixes = ["", "p.", "p.x.", "p.y.", "q.", "q.x.", "q.y."]
    async with (
        await open_store(url_for(tmp_path / "vault.db")) as store,
        await open_store("memory://") as model,
    ):
        assert isinstance(store, SQLiteStore)
        groups = _count_groups(store)
        refused = 0
        for _ in range(150):
            jobs = []
            for _ in range(rng.randint(1, 8)):
                writes = []
                for _ in range(rng.randint(1, 3)):
                    key = rng.choice(keys)
                    now = await model.get(key)
                    revision = 0 if now is None else now.revision
                    expect = rng.choice([None, None, 0, revision, revision, max(revision - 1, 0)])
                    value = None if rng.random() < 0.2 else bytes(rng.choice([1, 3, 3, 8]))
                    writes.append(Write(key, value, expect, rng.choice([None, *quotas])))
                jobs.append((writes, rng.random() < 0.5))
            got = await asyncio.gather(*(store.commit(w, atomic=a) for w, a in jobs))
            want = [await model.commit(w, atomic=a) for w, a in jobs]
            assert [[_outcome(r) for r in o] for o in got] == [
                [_outcome(r) for r in o] for o in want
            ]
            refused += sum(isinstance(r, LimitExceededError) for o in want for r in o)
            for prefix in prefixes:
                assert await store.usage(prefix) == await model.usage(prefix), prefix
        assert await store.scan("") == await model.scan("")
        assert max(groups) >= 5 and refused >= 20  # groups, and quotas that refused


async def _max_stall(until: asyncio.Future[Any]) -> float:
    """The longest the loop went without running this ticker, until ``until`` is done."""
    loop = asyncio.get_running_loop()
    last, worst = loop.time(), 0.0
    while not until.done():
        await asyncio.sleep(0.005)
        now = loop.time()
        worst, last = max(worst, now - last), now
    return worst


async def test_a_lone_commit_is_made_on_the_loop_and_never_waits_for_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit alone in its turn of the loop, with the writer thread idle, is made on the
    loop (no crossing to the thread and back). Another connection holding the file's
    write lock does not make the loop wait (here 0.5 s, the busy timeout 3 s): the
    commit goes to the thread, which waits for the lock, and is made once it is free."""
    from safething.store import sqlite as sqlite_store

    path = tmp_path / "vault.db"
    threads: list[int] = []
    transaction = sqlite_store._Writer._transaction

    def where(writer: sqlite_store._Writer, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return transaction(writer, *args, **kwargs)

    monkeypatch.setattr(sqlite_store._Writer, "_transaction", where)
    async with await open_store(url_for(path) + "?busy_timeout=3000") as store:
        await store.create("l.a", b"1")
        assert threads == [threading.get_ident()]
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            loop = asyncio.get_running_loop()
            loop.call_later(0.5, other.execute, "COMMIT")
            started = loop.time()
            made = asyncio.ensure_future(store.create("l.b", b"2"))
            stall = await _max_stall(made)
            assert await made > 0
            assert loop.time() - started >= 0.45  # it did wait for the lock: on the thread
            assert stall < 0.25, stall
            assert threads[-1] != threading.get_ident()
        finally:
            other.close()


async def test_a_lone_commit_after_a_burst_is_made_on_the_loop_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst whose commits the writer thread took from its queue together (one
    transaction for several turns' groups), a commit alone in its turn is made on the
    loop again: the thread's answers are counted per job, not per group."""
    from safething.store import sqlite as sqlite_store

    threads: list[int] = []
    transaction = sqlite_store._Writer._transaction

    def where(writer: sqlite_store._Writer, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        time.sleep(0.002)  # (slow enough for the next turns' groups to queue up)
        return transaction(writer, *args, **kwargs)

    monkeypatch.setattr(sqlite_store._Writer, "_transaction", where)
    async with await open_store(url_for(tmp_path / "vault.db")) as store:
        # two commits in one turn (to the thread), then one a turn while it works
        burst = [asyncio.ensure_future(store.put(f"b.{i}", b"x")) for i in range(2)]
        for i in range(2, 40):
            await asyncio.sleep(0)
            burst.append(asyncio.ensure_future(store.put(f"b.{i}", b"x")))
        await asyncio.gather(*burst)
        assert threading.get_ident() not in threads
        assert len(threads) < 39  # the thread merged some turns' groups
        threads.clear()
        for i in range(5):  # alone in their turns, with nothing left in the thread
            await store.put("after", str(i).encode())
        assert threading.get_ident() in threads


async def test_lone_commits_leave_the_checkpoints_to_the_writer_thread(tmp_path: Path) -> None:
    """Commits made on the loop never checkpoint the WAL (its fsyncs would stall the
    loop); every 32nd lone commit goes to the writer thread, whose commit checkpoints
    once the WAL passes SQLite's threshold (1,000 pages): the WAL stays near that size
    (about 4 MB, not the 20 MB these commits write)."""
    path = tmp_path / "vault.db"
    async with await open_store(url_for(path)) as store:
        for i in range(1500):
            await store.put(f"w.{i % 50}", os.urandom(12_000))
        wal = os.stat(f"{path}-wal").st_size
        assert wal < 8_000_000, wal


async def test_a_lone_commit_wakes_the_watches_of_this_process_before_its_caller(
    tmp_path: Path,
) -> None:
    """A commit made on the loop (alone in its turn, the writer idle) wakes the watches
    of this process first: one waiting reads the change before the caller goes on
    (an idle gateway's subscriber before the gateway's steps after the write)."""
    async with await open_store(url_for(tmp_path / "vault.db")) as store:
        order: list[str] = []

        async def follow() -> None:
            async with store.watch("o.") as watch:
                started.set()
                async for change in watch:
                    order.append(change.key)
                    return

        started = asyncio.Event()
        follower = asyncio.ensure_future(follow())
        await started.wait()
        await asyncio.sleep(0.01)  # it waits for a wake-up
        await store.put("o.a", b"1")
        order.append("caller")
        await follower
        assert order == ["o.a", "caller"]


async def test_lone_commits_on_the_loop_change_the_lock_and_checkpoint_settings_once(
    tmp_path: Path,
) -> None:
    """Commits made on the loop one after the other set the connection's busy timeout and
    checkpoint threshold for the loop once, not around each commit (four ``PRAGMA``s a
    commit before); a commit of the writer thread sets the configured ones back (it
    waits for other processes' locks: test_a_lone_commit_is_made_on_the_loop_...)."""
    path = tmp_path / "vault.db"
    statements: list[str] = []
    async with await open_store(url_for(path)) as store:
        assert isinstance(store, SQLiteStore)
        conn = store._writer._conn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        for i in range(5):
            await store.create(f"p.{i}", b"v")
        pragmas = [s for s in statements if s.startswith("PRAGMA") and "data_version" not in s]
        assert pragmas == ["PRAGMA busy_timeout = 0", "PRAGMA wal_autocheckpoint = 0"]
        assert sum(s == "BEGIN IMMEDIATE" for s in statements) == 5  # all five on the loop
        statements.clear()
        await asyncio.gather(store.create("p.x", b"v"), store.create("p.y", b"v"))  # thread
        assert "PRAGMA busy_timeout = 10000" in statements
        assert "PRAGMA busy_timeout = 0" not in statements


async def test_a_lone_commit_reaches_a_watch_of_this_process_without_reading_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch of this process woken by a commit made on the loop takes that commit's
    changes as committed (only those under its prefix, the last write of a key once)
    when they follow its cursor. The log is read after it has yielded them: a commit of
    another connection made before the watch looked is not missed, even with no
    wake-up from it (no doorbell here, and the safety net, a second, set to a minute)."""
    from safething.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_SAFETY_NET_S", 60.0)
    monkeypatch.setattr(sqlite_store._Doorbell, "ring", lambda self, skip: None)
    path = tmp_path / "vault.db"
    reads: list[int] = []
    feed = SQLiteStore._feed

    def counted(store: SQLiteStore, *args: Any) -> Any:
        reads.append(args[1])
        return feed(store, *args)

    monkeypatch.setattr(SQLiteStore, "_feed", counted)
    async with await open_store(url_for(path)) as store, store.watch("h.") as watch:
        other = await open_store(url_for(path))
        try:
            await store.create("h.a", b"1")
            first = await anext(watch)
            assert (first.key, first.value) == ("h.a", b"1")
            before = len(reads)
            revisions = await store.commit(
                [
                    Write("h.b", b"2"),
                    Write("z.c", b"3"),
                    Write("h.b", b"4", expect=None),
                    Write("h.d", None, expect=None),
                ]
            )
            await other.create("h.e", b"5")  # another connection, after it
            async with asyncio.timeout(TIMEOUT):
                change = await anext(watch)
                assert (change.key, change.value, change.revision) == ("h.b", b"4", revisions[2])
                assert len(reads) == before  # taken from the commit, not read back
                change = await anext(watch)  # then the log
                assert (change.key, change.value) == ("h.e", b"5")
            assert len(reads) > before
        finally:
            await other.close()
