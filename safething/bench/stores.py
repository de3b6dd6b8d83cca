"""The things API on each store backend, side by side in one run: the embedded
SQLite file, one NATS JetStream server and a 3-node JetStream cluster (R3).

Both NATS set-ups run on loopback, started by :mod:`safething.store.nats_testing`
from the binary the ``nats`` extra installs; without it only SQLite is measured
and a ``stores_nats_skipped`` metric says why.

Metrics, ``<store>`` one of ``sqlite``, ``nats``, ``nats_r3``:

``stores_notify_latency_<store>_*``
    ``thing.notify()`` -> a :class:`~safething.things.ThingClient`
    subscription's ``async for`` yields it (same process; on NATS the
    subscription is a JetStream consumer, so this is a round trip through
    the server).
``stores_signed_writes_<store>``
    ``thing.set()`` (a signed, versioned entry, compare-and-set in the store)
    one after the other with a subscriber consuming: writes per second.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from safething.bench._things_child import TICK
from safething.bench.common import background, latency_params, sqlite_url
from safething.bench.runner import BenchContext, GroupFunc, Metric, latency_metrics, rate_metric
from safething.bench.things import (
    _arrivals,
    _bench_thing,
    _notify_latencies,
    _Sizes,
    _sizes,
    _update_rounds,
)
from safething.net import Client, Identity
from safething.store import Store, open_store
from safething.things import ThingClient

__all__ = ["GROUPS", "stores_group"]


async def _notify(store: Store, owner: Identity, sizes: _Sizes) -> list[float]:

    async with _bench_thing("bench-notify", owner, store) as thing:
        await thing.register()
        async with ThingClient(Client(store, Identity.generate("bench-subscriber"))) as client:
            arrivals = _arrivals(time.perf_counter_ns)
            async with (
                client.subscribe(thing.id, topic=TICK) as sub,
                background(arrivals.receive(sub, sizes.total), "bench-stores-receiver") as receiver,
            ):
                latencies = await _notify_latencies(thing, arrivals, sizes, receiver)
                await receiver
    return latencies


async def _measure(name: str, url: str, sizes: _Sizes) -> list[Metric]:
    owner = Identity.generate("bench-owner")
    async with await open_store(url) as store:
        notify_ms = await _notify(store, owner, sizes)
        seconds, _received, _drain, _lost = await _update_rounds(store, owner, sizes)
    params = latency_params(sizes, sizes.gap_s, clock="perf_counter", store_url=url)
    metrics = latency_metrics(
        f"stores_notify_latency_{name}",
        notify_ms,
        params={**params, "send": "Thing.notify", "receive": "ThingClient.subscribe(topic=...)"},
        layer="store",
    )
    metrics.append(
        rate_metric(
            f"stores_signed_writes_{name}",
            sizes.updates,
            seconds,
            "writes/s",
            params={"write": "Thing.set (signed entry, compare-and-set)", "store_url": url},
        )
    )
    return metrics


@contextlib.asynccontextmanager
async def _nats_urls(ctx: BenchContext) -> AsyncIterator[dict[str, str]]:
    from safething.store.nats_testing import nats_cluster, nats_server

    async with (
        nats_server(ctx.workdir / "nats") as server,
        nats_cluster(ctx.workdir / "nats-cluster") as cluster,
    ):
        yield {
            "nats": f"{server.url}?bucket=bench",
            "nats_r3": f"{cluster.url}?bucket=bench&replicas=3",
        }


async def stores_group(ctx: BenchContext) -> list[Metric]:
    """SQLite, NATS single, NATS R3: the same measurements on each, in one run."""
    sizes = _sizes(ctx)
    metrics = await _measure("sqlite", sqlite_url(ctx.workdir / "stores.db"), sizes)
    try:
        from safething.store.nats_testing import server_binary

        server_binary()
    except (ImportError, FileNotFoundError, RuntimeError) as e:
        from safething.bench.runner import metric

        metrics.append(metric("stores_nats_skipped", 1.0, "flag", reason=str(e)))
        return metrics
    async with _nats_urls(ctx) as urls:
        for name, url in urls.items():
            metrics += await _measure(name, url, sizes)
    return metrics


GROUPS: dict[str, GroupFunc] = {"stores": stores_group}
