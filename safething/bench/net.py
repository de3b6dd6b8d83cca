"""Benchmarks of the data-network layer: signed MutableData on the SQLite store.

Every group opens its stores as ``sqlite:///<workdir>/<name>.db`` with the
default settings (WAL, ``synchronous=NORMAL``) and compares against plain
``sqlite3`` with the same pragmas in the same run. Rates are the median of
three rounds (every round in ``params.round_rates``); latencies are
percentiles over every sample after a few named warm-up writes. What each
metric means and how it is measured is written up in ``docs/benchmarks.md``.

Groups:

``net.write``
    ``md_signed_write_rate``, ``sqlite_raw_insert_rate``,
    ``md_private_write_rate`` and their ratios.
``net.read``
    ``md_verified_read_rate``, ``md_verified_scan_rate``,
    ``sqlite_raw_read_rate``, ``sqlite_raw_scan_rate`` and their ratios.
``net.watch.inprocess``
    ``watch_latency_inprocess_*`` (store change feed) and
    ``md_watch_latency_inprocess_*`` (verified MD entry feed).
``net.watch.xproc``
    ``watch_latency_xproc_*`` and ``md_watch_latency_xproc_*``: a child
    process writes, this one watches.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from safething.bench._xproc_writer import decode_stamp, encode_stamp
from safething.bench.common import (
    STORE_SETTINGS,
    Arrivals,
    Sampling,
    background,
    latency_params,
    paced_latencies,
    run_stamping_child,
    sqlite_url,
    with_p_target,
    with_target,
)
from safething.bench.runner import (
    BenchContext,
    GroupFunc,
    Metric,
    latency_metrics,
    rate_metric,
    ratio_metric,
)
from safething.net import MAX_ENTRIES, TAG_THING, Client, Identity, MutableData, XorName
from safething.net.trust import TrustState
from safething.store import Store, open_store

__all__ = ["GROUPS", "read_rates", "watch_inprocess", "watch_xproc", "write_rates"]

WRITE_TARGET_PER_S = 8_000.0
"""Issue target: signed, stored and verified entry writes per second (2 cores)."""
XPROC_P99_TARGET_MS = 50.0
"""Issue target: p99 of the change feed across processes."""
INPROCESS_P50_TARGET_MS = 5.0
"""Our reading of the issue's "a few ms" for the in-process p50."""


@dataclass(frozen=True, slots=True)
class _Sizes(Sampling):
    entries: int
    """N: entries written or read per rate metric."""
    batch: int
    """Entries per ``put_many`` call, rows per raw transaction."""
    value_bytes: int
    """Size of each entry's value (before signing and encoding)."""
    rounds: int
    """Each rate is measured this many times; the median is reported."""
    gap_s: float
    """In-process: pause after each delivered change before the next write."""
    xproc_gap_s: float
    """Cross-process: pause between the child's writes."""


def _sizes(ctx: BenchContext) -> _Sizes:
    return _Sizes(
        entries=ctx.size(20_000, 1_000),
        batch=ctx.size(500, 250),
        value_bytes=100,
        rounds=ctx.size(3, 1),
        samples=ctx.size(300, 20),
        warmup=ctx.size(5, 2),
        gap_s=0.002,
        xproc_gap_s=ctx.size(5, 2) / 1000,
    )


def _value(index: int, size: int) -> bytes:
    """A ``size``-byte value that differs per entry."""
    return (b"%09d;" % index * (size // 10 + 1))[:size]


# --- workload ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Workload:
    """N entries split into batches, each batch for one MD."""

    batches: list[tuple[int, dict[bytes, bytes]]]
    """``(md index, {key: value})`` per ``put_many`` call, in write order."""
    mds: int
    """How many MDs the entries need."""
    per_md: int
    """Entries per MD (at most ``MAX_ENTRIES``)."""

    @property
    def entries(self) -> int:
        return sum(len(items) for _, items in self.batches)


def _workload(sizes: _Sizes) -> _Workload:
    if sizes.batch > MAX_ENTRIES:
        raise ValueError(f"a batch of {sizes.batch} exceeds the {MAX_ENTRIES}-entry MD limit")
    per_md = (MAX_ENTRIES // sizes.batch) * sizes.batch
    batches: list[tuple[int, dict[bytes, bytes]]] = []
    for start in range(0, sizes.entries, sizes.batch):
        stop = min(start + sizes.batch, sizes.entries)
        items = {b"reading-%07d" % i: _value(i, sizes.value_bytes) for i in range(start, stop)}
        batches.append((start // per_md, items))
    return _Workload(batches, mds=batches[-1][0] + 1, per_md=per_md)


def _write_params(sizes: _Sizes, work: _Workload) -> dict[str, object]:
    return {
        "entries": work.entries,
        "batch": sizes.batch,
        "value_bytes": sizes.value_bytes,
        "mds": work.mds,
        "entries_per_md": work.per_md,
        "store": STORE_SETTINGS,
    }


def _raw_params(sizes: _Sizes, how: str) -> dict[str, object]:
    return {
        "rows": sizes.entries,
        "batch": sizes.batch,
        "value_bytes": sizes.value_bytes,
        "how": how,
        "store": f"plain sqlite3 table, same pragmas ({STORE_SETTINGS})",
    }


async def _create_mds(
    client: Client, label: str, count: int, *, private: bool = False
) -> list[MutableData]:
    return [
        await client.create_md(XorName.of(f"bench-{label}-{i}"), TAG_THING, private=private)
        for i in range(count)
    ]


async def _put_all(mds: Sequence[MutableData], work: _Workload) -> float:
    """Write every batch with ``put_many``, one call at a time; the seconds it took."""
    started = time.perf_counter()
    for md_index, items in work.batches:
        # put_many takes str keys and values too; Mapping is invariant in its key type.
        await mds[md_index].put_many(cast("dict[bytes | str, bytes | str]", items))
    return time.perf_counter() - started


# --- plain sqlite3, the baseline ----------------------------------------------------


def _raw_connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A plain connection with the store's pragmas: WAL, synchronous=NORMAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{path}: sqlite refused WAL mode ({mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    if create:
        conn.execute(
            "CREATE TABLE raw (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID"
        )
    return conn


def _raw_rows(mds: Sequence[MutableData], work: _Workload) -> list[list[tuple[str, bytes]]]:
    """The workload as raw rows, keyed like the store keys of the MD entries."""
    return [
        [(mds[i].address.entry_key(k), v) for k, v in items.items()] for i, items in work.batches
    ]


def _raw_insert(conn: sqlite3.Connection, batches: Sequence[Sequence[tuple[str, bytes]]]) -> float:
    """One transaction per batch; the seconds it took."""
    started = time.perf_counter()
    for rows in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO raw (key, value) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
    return time.perf_counter() - started


def _raw_read(conn: sqlite3.Connection, keys: Sequence[str]) -> float:
    """``SELECT`` each key by primary key, one by one; the seconds it took."""
    sql = "SELECT value FROM raw WHERE key = ?"
    started = time.perf_counter()
    for key in keys:
        if conn.execute(sql, (key,)).fetchone() is None:
            raise RuntimeError(f"raw row {key} is missing")
    return time.perf_counter() - started


def _raw_scan(conn: sqlite3.Connection, prefixes: Sequence[str]) -> tuple[int, float]:
    """Read every row under each prefix (a key range); ``(rows, seconds)``."""
    sql = "SELECT key, value FROM raw WHERE key >= ? AND key < ? ORDER BY key"
    started = time.perf_counter()
    rows = 0
    for prefix in prefixes:
        rows += len(conn.execute(sql, (prefix, prefix[:-1] + "/")).fetchall())
    return rows, time.perf_counter() - started


# --- net.write ----------------------------------------------------------------------


async def _timed_md_writes(
    path: Path, identity: Identity, work: _Workload, *, private: bool, trust: Path | None = None
) -> tuple[list[MutableData], float]:
    """A new store at ``path``, its MDs created (not timed), then every batch written;
    with ``trust``, the writer keeps its trust state in that (new) file."""
    state = TrustState.open(trust) if trust is not None else TrustState()
    try:
        async with await open_store(sqlite_url(path)) as store:
            label = "private" if private else "signed"
            client = Client(store, identity, trust=state)
            mds = await _create_mds(client, label, work.mds, private=private)
            started = time.perf_counter()
            await _put_all(mds, work)
            state.sync()  # the last changes are written too, inside the timing
            return mds, time.perf_counter() - started
    finally:
        state.close()


def _timed_raw_inserts(path: Path, rows: Sequence[Sequence[tuple[str, bytes]]]) -> float:
    conn = _raw_connect(path, create=True)
    try:
        return _raw_insert(conn, rows)
    finally:
        conn.close()


async def write_rates(ctx: BenchContext) -> list[Metric]:
    """Signed public and private MD entry writes against raw sqlite inserts.

    Each round writes the whole workload three ways, each into a new file:
    signed public MDs, plain sqlite rows, private MDs. Rates are the median
    of the rounds.
    """
    sizes = _sizes(ctx)
    work = _workload(sizes)
    params = _write_params(sizes, work)
    identity = Identity.generate("bench-writer")
    signed_s: list[float] = []
    durable_s: list[float] = []
    raw_s: list[float] = []
    private_s: list[float] = []
    raw_count = 0
    for r in range(sizes.rounds):
        mds, seconds = await _timed_md_writes(
            ctx.workdir / f"signed-{r}.db", identity, work, private=False
        )
        signed_s.append(seconds)
        _, seconds = await _timed_md_writes(
            ctx.workdir / f"durable-{r}.db",
            identity,
            work,
            private=False,
            trust=ctx.workdir / f"durable-{r}.trust.db",
        )
        durable_s.append(seconds)
        rows = _raw_rows(mds, work)
        raw_count = sum(len(batch) for batch in rows)
        raw_s.append(_timed_raw_inserts(ctx.workdir / f"raw-{r}.db", rows))
        _, seconds = await _timed_md_writes(
            ctx.workdir / f"private-{r}.db", identity, work, private=True
        )
        private_s.append(seconds)

    signed = with_target(
        rate_metric("md_signed_write_rate", work.entries, signed_s, "entries/s", params=params),
        ">=",
        WRITE_TARGET_PER_S,
    )
    raw = rate_metric(
        "sqlite_raw_insert_rate",
        raw_count,
        raw_s,
        "rows/s",
        params=_raw_params(sizes, "one transaction per batch"),
    )
    private = rate_metric(
        "md_private_write_rate", work.entries, private_s, "entries/s", params=params
    )
    durable = rate_metric(
        "md_signed_write_rate_durable_trust",
        work.entries,
        durable_s,
        "entries/s",
        params={**params, "trust": "TrustState file (issue 8): every entry version kept"},
    )
    return [
        signed,
        durable,
        raw,
        ratio_metric("md_signed_write_vs_raw_insert_ratio", signed, raw),
        ratio_metric("md_signed_write_durable_trust_vs_raw_insert_ratio", durable, raw),
        ratio_metric("md_signed_write_durable_vs_memory_trust_ratio", durable, signed),
        private,
        ratio_metric("md_private_vs_signed_write_ratio", private, signed),
    ]


# --- net.read -----------------------------------------------------------------------


async def read_rates(ctx: BenchContext) -> list[Metric]:
    """Verified point reads and scans by a fresh client against raw sqlite reads.

    The data is written once (not timed); each round then reads it all four
    ways, each MD read with a new client. Rates are the median of the rounds.
    """
    sizes = _sizes(ctx)
    work = _workload(sizes)
    params = _write_params(sizes, work)
    identity = Identity.generate("bench-writer")
    order = [(i, key) for i, items in work.batches for key in items]
    random.Random(20261121).shuffle(order)
    fresh = "a new read-only Client per round: nothing verified or pinned before"
    get_params = {**params, "order": "shuffled, same order for both sides", "client": fresh}
    scan_params = {**params, "order": "one MD after the other", "client": fresh}
    read_s: list[float] = []
    durable_read_s: list[float] = []
    scan_s: list[float] = []
    raw_read_s: list[float] = []
    raw_scan_s: list[float] = []

    async with await open_store(sqlite_url(ctx.workdir / "read.db")) as store:
        mds = await _create_mds(Client(store, identity), "read", work.mds)
        await _put_all(mds, work)  # setup, not timed
        raw_keys = [mds[i].address.entry_key(key) for i, key in order]
        prefixes = [md.address.entry_prefix for md in mds]
        # Like the store: a writing connection stays open, a second one reads.
        writer = _raw_connect(ctx.workdir / "raw.db", create=True)
        reader = _raw_connect(ctx.workdir / "raw.db", create=False)
        try:
            _raw_insert(writer, _raw_rows(mds, work))  # setup, not timed
            for r in range(sizes.rounds):
                read_s.append(await _verified_gets(store, mds, order))
                durable_read_s.append(
                    await _verified_gets(
                        store, mds, order, trust=ctx.workdir / f"read-{r}.trust.db"
                    )
                )
                scanned, seconds = await _verified_scans(store, mds)
                if scanned != work.entries:
                    raise RuntimeError(f"a scan returned {scanned} of {work.entries} entries")
                scan_s.append(seconds)
                raw_read_s.append(_raw_read(reader, raw_keys))
                raw_scanned, seconds = _raw_scan(reader, prefixes)
                if raw_scanned != work.entries:
                    raise RuntimeError(f"a raw scan returned {raw_scanned} of {work.entries} rows")
                raw_scan_s.append(seconds)
        finally:
            reader.close()
            writer.close()

    read = rate_metric("md_verified_read_rate", len(order), read_s, "entries/s", params=get_params)
    durable_read = rate_metric(
        "md_verified_read_rate_durable_trust",
        len(order),
        durable_read_s,
        "entries/s",
        params={**get_params, "trust": "a new TrustState file per round: every version is new"},
    )
    scan = rate_metric(
        "md_verified_scan_rate", work.entries, scan_s, "entries/s", params=scan_params
    )
    raw_read = rate_metric(
        "sqlite_raw_read_rate",
        len(raw_keys),
        raw_read_s,
        "rows/s",
        params=_raw_params(sizes, "SELECT by primary key, shuffled, same order as the MD reads"),
    )
    raw_scan = rate_metric(
        "sqlite_raw_scan_rate",
        work.entries,
        raw_scan_s,
        "rows/s",
        params=_raw_params(sizes, "SELECT of each MD's key range, one after the other"),
    )
    return [
        read,
        durable_read,
        scan,
        raw_read,
        raw_scan,
        ratio_metric("md_verified_read_vs_raw_read_ratio", read, raw_read),
        ratio_metric("md_verified_read_durable_trust_vs_raw_read_ratio", durable_read, raw_read),
        ratio_metric("md_verified_read_durable_vs_memory_trust_ratio", durable_read, read),
        ratio_metric("md_verified_scan_vs_raw_read_ratio", scan, raw_read),
        ratio_metric("md_verified_scan_vs_raw_scan_ratio", scan, raw_scan),
    ]


async def _verified_gets(
    store: Store,
    mds: Sequence[MutableData],
    order: Sequence[tuple[int, bytes]],
    *,
    trust: Path | None = None,
) -> float:
    """``MutableData.get`` of every key by a new read-only client; the seconds it took.
    With ``trust``, the client keeps what it verified in that new trust-state file."""
    state = TrustState.open(trust) if trust is not None else TrustState()
    try:
        reader = Client(store, trust=state)
        handles = [reader.md(md.address.name, md.address.tag) for md in mds]
        started = time.perf_counter()
        for md_index, key in order:
            await handles[md_index].get(key)
        state.sync()
        return time.perf_counter() - started
    finally:
        state.close()


async def _verified_scans(store: Store, mds: Sequence[MutableData]) -> tuple[int, float]:
    """``MutableData.entries()`` of every MD by a new read-only client; ``(entries, seconds)``."""
    reader = Client(store)
    handles = [reader.md(md.address.name, md.address.tag) for md in mds]
    started = time.perf_counter()
    count = 0
    for handle in handles:
        count += len(await handle.entries())
    return count, time.perf_counter() - started


# --- latency sampling -------------------------------------------------------------------


def _arrivals(clock: Callable[[], int]) -> Arrivals[bytes | None]:
    return Arrivals(clock, decode_stamp, item="change", source="the watch")


async def _collect(
    values: AsyncGenerator[bytes | None, None], arrivals: Arrivals[bytes | None], total: int
) -> None:
    """Record each stamped value until ``total`` arrived, then close ``values``."""
    async with contextlib.aclosing(values):
        await arrivals.receive(values, total)


async def _inprocess_latencies(
    values: AsyncGenerator[bytes | None, None],
    write: Callable[[int, bytes], Awaitable[object]],
    sizes: _Sizes,
) -> list[float]:
    """Write stamped values one at a time; each waits for delivery, then a short gap."""
    arrivals = _arrivals(time.perf_counter_ns)

    async def send(i: int) -> int:
        await write(i, encode_stamp(i, time.perf_counter_ns()))
        return i

    async with background(
        _collect(values, arrivals, sizes.total), "safething-bench-watch-consumer"
    ) as consumer:
        latencies = await paced_latencies(send, arrivals, sizes, sizes.gap_s, consumer)
        await consumer
    return latencies


# --- net.watch.inprocess ---------------------------------------------------------------


async def watch_inprocess(ctx: BenchContext) -> list[Metric]:
    """Change feed latency inside one process: write call -> watcher's ``__anext__`` returns."""
    sizes = _sizes(ctx)
    identity = Identity.generate("bench-writer")
    async with await open_store(sqlite_url(ctx.workdir / "watch.db")) as store:
        prefix = "bench.watch."

        def put(i: int, value: bytes) -> Awaitable[int]:
            return store.create(f"{prefix}{i}", value)

        async with store.watch(prefix) as changes:
            store_ms = await _inprocess_latencies((c.value async for c in changes), put, sizes)

        writer = await Client(store, identity).create_md(XorName.of("bench-watch"), TAG_THING)
        watched = Client(store).md(writer.address.name, TAG_THING, owner=identity.public_sign_key)

        def insert(i: int, value: bytes) -> Awaitable[object]:
            return writer.insert(f"s{i}", value)

        async with watched.watch() as entries:
            md_ms = await _inprocess_latencies((e.value async for e in entries), insert, sizes)

    store_params = latency_params(
        sizes, sizes.gap_s, write="Store.create", watch="Store.watch", clock="perf_counter"
    )
    md_params = latency_params(
        sizes,
        sizes.gap_s,
        write="MutableData.insert (header read, sign, commit)",
        watch="MutableData.watch (verifies each entry)",
        clock="perf_counter",
    )
    return [
        *with_p_target(
            latency_metrics(
                "watch_latency_inprocess", store_ms, params=store_params, layer="store"
            ),
            "p50",
            "<",
            INPROCESS_P50_TARGET_MS,
        ),
        *with_p_target(
            latency_metrics("md_watch_latency_inprocess", md_ms, params=md_params, layer="md"),
            "p50",
            "<",
            INPROCESS_P50_TARGET_MS,
        ),
    ]


# --- net.watch.xproc ----------------------------------------------------------------


async def _xproc_latencies(
    values: AsyncGenerator[bytes | None, None], url: str, mode_args: Sequence[str], sizes: _Sizes
) -> list[float]:
    """Start the writer child; collect its stamped changes from ``values``."""
    total = sizes.total
    arrivals = _arrivals(time.monotonic_ns)
    await run_stamping_child(
        "safething.bench._xproc_writer",
        ["--url", url, *mode_args],
        lambda: _collect(values, arrivals, total),
        received=lambda: len(arrivals.ms),
        total=total,
        gap_s=sizes.xproc_gap_s,
        what="cross-process watch",
        sender="the writer process",
        items="changes",
        name="safething-bench-xproc",
    )
    return [arrivals.ms[i] for i in range(sizes.warmup, total)]


async def watch_xproc(ctx: BenchContext) -> list[Metric]:
    """Change feed latency across processes: a child writes, this process watches."""
    sizes = _sizes(ctx)
    url = sqlite_url(ctx.workdir / "xproc.db")
    identity = Identity.generate("bench-xproc-writer")
    identity_file = identity.save(ctx.workdir / "writer.identity")
    async with await open_store(url) as store:
        prefix = "bench.xproc."
        async with store.watch(prefix) as changes:
            store_ms = await _xproc_latencies(
                (c.value async for c in changes), url, ["store", "--prefix", prefix], sizes
            )

        md = await Client(store, identity).create_md(XorName.of("bench-xproc"), TAG_THING)
        watched = Client(store).md(md.address.name, TAG_THING, owner=identity.public_sign_key)
        md_args = [
            "md",
            "--identity",
            str(identity_file),
            "--name",
            md.address.name.hex(),
            "--tag",
            str(TAG_THING),
        ]
        async with watched.watch() as entries:
            md_ms = await _xproc_latencies((e.value async for e in entries), url, md_args, sizes)

    wake = "AF_UNIX datagram doorbell per commit (sqlite store notify directory)"
    store_params = latency_params(
        sizes,
        sizes.xproc_gap_s,
        write="child process: Store.create",
        watch="Store.watch",
        clock="monotonic_ns across processes",
        wake_up=wake,
    )
    md_params = latency_params(
        sizes,
        sizes.xproc_gap_s,
        write="child process: MutableData.insert (header read, sign, commit)",
        watch="MutableData.watch (verifies each entry)",
        clock="monotonic_ns across processes",
        wake_up=wake,
    )
    return [
        *with_p_target(
            latency_metrics("watch_latency_xproc", store_ms, params=store_params, layer="store"),
            "p99",
            "<",
            XPROC_P99_TARGET_MS,
        ),
        *with_p_target(
            latency_metrics("md_watch_latency_xproc", md_ms, params=md_params, layer="md"),
            "p99",
            "<",
            XPROC_P99_TARGET_MS,
        ),
    ]


GROUPS: dict[str, GroupFunc] = {
    "net.write": write_rates,
    "net.read": read_rates,
    "net.watch.inprocess": watch_inprocess,
    "net.watch.xproc": watch_xproc,
}
"""Metric groups of this module, in run order (registered in ``runner.GROUP_MODULES``)."""
