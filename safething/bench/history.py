"""Benchmarks of archived history (:mod:`safething.things.history`) on the SQLite store.

One group, ``history``. A thing with one numeric attribute archives 30 days
at one reading a minute (43,200 readings) through the thing's own archivist
(:class:`~safething.things.history.Archive`, the code path ``Thing.set``
uses when the ring is full), with the readings' times spread over the last
30 days, for two ring sizes: the default (32 values, so 32-reading segments)
and the largest (500). Then a fresh reader answers the 30-day query.

Metrics (``<ring>`` is ``ring32`` or ``ring500``):

``history_bytes_per_reading_<ring>``
    bytes the store holds for the archive (segment chunks plus the history
    MD's index records) divided by the readings archived.
``history_query_30d_all_<ring>_p50_ms`` / ``_p99_ms`` / ``_max_ms``
    ``ThingClient.history(since=30 days ago)``: every point, each segment's
    hash and signature verified, by a new reader each time.
``history_query_30d_500buckets_<ring>_*``
    the same query downsampled to 500 buckets (``every=`` 30 days / 500).
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from safething.bench.common import PERCENTILES, STORE_SETTINGS, sqlite_url
from safething.bench.runner import BenchContext, GroupFunc, Metric, latency_metrics, metric
from safething.net import Client, Identity
from safething.store import open_store
from safething.things import Attribute, Thing, ThingClient, ThingDescription
from safething.things.history import DAY_S

__all__ = ["GROUPS", "history_group"]

_DAYS = 30
_EVERY_S = 60.0


def _description(thing_id: str, ring: int) -> ThingDescription:
    return ThingDescription(
        thing_id,
        title="history bench",
        attributes=[Attribute("t", "number", dynamic=True, history=ring)],
    )


async def _fill(url: str, thing_id: str, ring: int, days: float) -> tuple[int, float]:
    """Archive ``days`` of one reading a minute; returns (readings, now)."""
    now = time.time()
    count = int(days * DAY_S / _EVERY_S)
    rng = random.Random(7)
    value = 20.0
    async with Thing(
        _description(thing_id, ring),
        identity=Identity.generate(),
        store=url,
        heartbeat=None,
        retention_days=_DAYS + 1,
    ) as thing:
        await thing.register()
        archive = thing._archive
        [stream] = archive._streams.values()
        start = now - count * _EVERY_S
        for n in range(1, count + 1):
            value = round(min(35.0, max(5.0, value + rng.uniform(-0.3, 0.3))), 1)
            stream.pending.append((n, start + n * _EVERY_S, value))
            if len(stream.pending) >= ring:
                await archive.flush(stream)
        if stream.pending:
            await archive.flush(stream)
    return count, now


def _stored_bytes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (chunks,) = conn.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM chunks").fetchone()
    return int(chunks)


async def _index_bytes(url: str, thing_id: str) -> int:
    from safething.things.layout import ThingAddresses

    a = ThingAddresses.of(thing_id).history
    async with await open_store(url) as store:
        md = Client(store).md(a.name, a.tag)
        _, size = await md.usage()
    return int(size)


async def history_group(ctx: BenchContext) -> list[Metric]:
    days = _DAYS if not ctx.quick else 1.0
    queries = ctx.size(30, 3)
    results: list[Metric] = []
    for ring in (32, 500):
        db = ctx.workdir / f"history-{ring}.db"
        url = sqlite_url(db)
        thing_id = f"history-bench-{ring}"
        count, now = await _fill(url, thing_id, ring, days)
        chunk_bytes = _stored_bytes(db)
        index_bytes = await _index_bytes(url, thing_id)
        params = {
            "days": days,
            "readings": count,
            "reading_every_s": _EVERY_S,
            "ring": ring,
            "segment_bytes": chunk_bytes,
            "index_bytes": index_bytes,
            "store": STORE_SETTINGS,
        }
        results.append(
            metric(
                f"history_bytes_per_reading_ring{ring}",
                round((chunk_bytes + index_bytes) / count, 2),
                "bytes",
                params=params,
            )
        )
        since = now - days * DAY_S - 60
        every = days * DAY_S / 500
        all_ms: list[float] = []
        bucket_ms: list[float] = []
        async with await open_store(url) as store:
            for _ in range(queries):
                async with ThingClient(Client(store)) as reader:
                    t0 = time.perf_counter()
                    points = await reader.history(thing_id, "t", since=since)
                    all_ms.append((time.perf_counter() - t0) * 1000)
                if len(points) != count:
                    raise RuntimeError(f"history returned {len(points)} of {count} readings")
                async with ThingClient(Client(store)) as reader:
                    t0 = time.perf_counter()
                    buckets = await reader.history(thing_id, "t", since=since, every=every)
                    bucket_ms.append((time.perf_counter() - t0) * 1000)
                if not 0 < len(buckets) <= 501:
                    raise RuntimeError(f"downsampling gave {len(buckets)} buckets")
        qparams = {**params, "percentiles": PERCENTILES, "queries": queries}
        results += latency_metrics(f"history_query_30d_all_ring{ring}", all_ms, params=qparams)
        results += latency_metrics(
            f"history_query_30d_500buckets_ring{ring}", bucket_ms, params=qparams
        )
    return results


GROUPS: dict[str, GroupFunc] = {"history": history_group}
