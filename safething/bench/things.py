"""Benchmarks of the things API on the SQLite store, next to the 2017 design it replaces.

One group, ``things``, so that every ratio divides two figures of one run.
Every thing is the gardening device of :func:`bench_description` (20
attributes, a ``Tick`` topic whose payload is a clock stamp) with a fresh
identity, in ``sqlite:///<workdir>/things.db`` with the store's defaults
(WAL, ``synchronous=NORMAL``). What each metric means and how it is measured
is written up in ``docs/benchmarks.md``.

Metrics:

``things_notify_latency_inprocess_*``
    ``thing.notify()`` -> a :class:`~safething.things.ThingClient`
    subscription's ``async for`` yields it (same process).
``things_notify_callback_latency_inprocess_*``
    the same, delivered to a stored subscription's callback
    (``Thing.subscribe(..., callback=)``).
``things_notify_latency_xproc_*``
    a child process notifies, this one's ``ThingClient`` subscription receives.
``things_action_roundtrip_*``
    ``await (await client.request(...)).result()`` against a trivial handler.
``things_attribute_update_rate``
    ``thing.set()`` one after the other, with a subscriber verifying every update
    (``params.received`` and ``params.lost_to_ring`` per round say it did).
``things_ed25519_sign_verify_rate``, ``things_attribute_update_vs_crypto_limit_ratio``
    the crypto limit (one ed25519 sign + verify, one core) measured just before the
    update rounds, and the update rate as a share of it.
``original_poll_notify_latency_*``, ``original_blob_update_rate``
    the 2017 design, emulated on the same store: a poller reading one signed
    JSON blob per thing every 5 s; every change rewrites the whole blob.
``things_notify_latency_vs_original_poll_ratio``, ``things_update_rate_vs_original_blob_ratio``
    how the two designs compare in this run.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safething.bench._things_child import TICK, bench_description
from safething.bench.common import (
    DELIVERY_TIMEOUT_S,
    PERCENTILES,
    STORE_SETTINGS,
    Arrivals,
    Sampling,
    background,
    by_name,
    latency_params,
    paced_latencies,
    run_stamping_child,
    sqlite_url,
    with_p_target,
)
from safething.bench.crypto import limit_ratio, sign_verify_rate
from safething.bench.runner import (
    BenchContext,
    GroupFunc,
    Metric,
    latency_metrics,
    percentile,
    rate_metric,
    ratio_metric,
)
from safething.net import Client, Identity, PublicSignKey, SigningKey
from safething.store import Store, open_store
from safething.things import ActionRequest, Notification, Subscription, Thing, ThingClient
from safething.things.thing import _OUTBOX_KEEP as OUTBOX_KEEP

__all__ = ["GROUPS", "bench_description", "things_group"]

NOTIFY_P50_TARGET_MS = 2.0
"""Issue target: p50 of ``notify()`` -> subscriber, in one process."""
XPROC_P99_TARGET_MS = 50.0
"""Issue target: p99 of ``notify()`` -> subscriber, across processes."""
ACTION_P50_TARGET_MS = 3.0
"""Issue target: p50 of an action round trip, request to result."""
UPDATE_VS_CRYPTO_TARGET = 0.5
"""Issue target: ``things_attribute_update_rate`` at least half the crypto limit
(ed25519 sign + verify pairs per second on one core) measured in the same run."""
ORIGINAL_POLL_PERIOD_S = 5.0
"""The 2017 SAFEthing polled the network at this fixed period."""

_SIGNATURE_LEN = 64
_BLOB_KEY = "bench.original.thing"
_POLL_SEED = 2017
"""Seed of the poll offsets: the same schedule in every run."""


@dataclass(frozen=True, slots=True)
class _Sizes(Sampling):
    gap_s: float
    """In-process: pause after each delivery before the next notify or request."""
    xproc_gap_s: float
    """Cross-process: pause between the child's notifies."""
    updates: int
    """Updates per round, for both update rates."""
    rounds: int
    """Each rate is measured this many times; the median is reported."""
    poll_period_s: float
    """Period of the emulated 2017 poller (5 s; 0.5 s in a quick run)."""
    poll_events: int
    """Changes the emulated poller has to detect (one per period). An odd count, so
    that the nearest-rank p50 is the middle sample."""


def _sizes(ctx: BenchContext) -> _Sizes:
    return _Sizes(
        samples=ctx.size(300, 20),
        warmup=ctx.size(5, 2),
        gap_s=0.002,
        xproc_gap_s=ctx.size(5, 2) / 1000,
        updates=ctx.size(1_000, 100),
        rounds=ctx.size(3, 1),
        poll_period_s=ORIGINAL_POLL_PERIOD_S if not ctx.quick else ORIGINAL_POLL_PERIOD_S / 10,
        poll_events=ctx.size(5, 3),
    )


def _bench_thing(name: str, owner: Identity, store: Store) -> Thing:
    """A new thing ``name`` of :func:`bench_description`, with an identity of its own."""
    return Thing(
        bench_description(name), identity=Identity.generate(name), owner=owner, store=store
    )


# --- waiting for deliveries ----------------------------------------------------------


def _tick(note: Notification) -> tuple[int, int]:
    """``(seq, stamp)`` of a ``Tick`` event."""
    if not isinstance(note.value, int):
        raise TypeError(f"a {TICK} event carries a stamp, got {note.value!r}")
    return note.seq, note.value


def _arrivals(clock: Callable[[], int]) -> Arrivals[Notification]:
    """Latencies of ``Tick`` events by sequence number, recorded by whoever receives them."""
    return Arrivals(clock, _tick, item="event", source="the subscription")


async def _notify_latencies(
    thing: Thing,
    arrivals: Arrivals[Notification],
    sizes: _Sizes,
    receiver: asyncio.Task[Any] | None,
) -> list[float]:
    """Notify one stamped event at a time; each waits for its delivery, then a short gap."""

    async def send(_: int) -> int:
        return await thing.notify(TICK, time.perf_counter_ns())

    return await paced_latencies(send, arrivals, sizes, sizes.gap_s, receiver)


# --- things_notify_latency_inprocess, things_notify_callback_latency_inprocess ---------------


async def _notify_inprocess(
    store: Store, owner: Identity, sizes: _Sizes
) -> tuple[list[float], list[float]]:
    """``(ThingClient subscription ms, stored subscription callback ms)``."""
    total = sizes.total
    async with _bench_thing("bench-notify", owner, store) as thing:
        await thing.register()

        async with ThingClient(Client(store, Identity.generate("bench-subscriber"))) as client:
            arrivals = _arrivals(time.perf_counter_ns)
            async with (
                client.subscribe(thing.id, topic=TICK) as sub,
                background(
                    arrivals.receive(sub, total), "safething-bench-things-receiver"
                ) as receiver,
            ):
                client_ms = await _notify_latencies(thing, arrivals, sizes, receiver)
                await receiver

        async with _bench_thing("bench-controller", owner, store) as controller:
            await controller.register()
            arrivals = _arrivals(time.perf_counter_ns)
            stored = await controller.subscribe(thing.id, topic=TICK, callback=arrivals.record)
            callback_ms = await _notify_latencies(thing, arrivals, sizes, stored.task)
            await controller.unsubscribe(stored)
    return client_ms, callback_ms


# --- things_notify_latency_xproc --------------------------------------------------------


async def _notify_xproc(
    store: Store, url: str, owner: Identity, workdir: Path, sizes: _Sizes
) -> list[float]:
    """A child process notifies ``Tick`` events; this process's subscription receives them."""
    total = sizes.total
    identity = Identity.generate("bench-xproc")
    identity_file = identity.save(workdir / "xproc-thing.identity")
    description = bench_description("bench-xproc")
    async with Thing(description, identity=identity, owner=owner, store=store) as thing:
        await thing.register()  # the child starts the same thing again and notifies

    arrivals = _arrivals(time.monotonic_ns)
    async with (
        ThingClient(Client(store, Identity.generate("bench-xproc-subscriber"))) as client,
        client.subscribe(description.id, topic=TICK) as sub,
    ):
        await run_stamping_child(
            "safething.bench._things_child",
            [
                "--url",
                url,
                "--identity",
                str(identity_file),
                "--owner",
                json.dumps(owner.public.to_dict()),
                "--thing-id",
                description.id,
            ],
            lambda: arrivals.receive(sub, total),
            received=lambda: len(arrivals.ms),
            total=total,
            gap_s=sizes.xproc_gap_s,
            what="cross-process notify",
            sender="the notifying process",
            items="events",
            name="safething-bench-things-xproc",
        )
    seqs = sorted(arrivals.ms)
    if len(seqs) != total or seqs != list(range(seqs[0], seqs[0] + total)):
        raise RuntimeError(f"cross-process notify: events {seqs} are not {total} in a row")
    return [arrivals.ms[s] for s in seqs[sizes.warmup :]]


# --- things_action_roundtrip ------------------------------------------------------------


async def _action_roundtrips(store: Store, owner: Identity, sizes: _Sizes) -> list[float]:
    """``await (await client.request(...)).result()``, one request at a time (ms).

    Every request's latency, warm-up included, in order.
    """
    latencies: list[float] = []
    async with _bench_thing("bench-action", owner, store) as thing:

        @thing.action("CloseValve")
        async def close_valve(request: ActionRequest) -> None:
            return None

        await thing.register()
        await thing.publish()
        async with ThingClient(Client(store, Identity.generate("bench-requester"))) as client:
            await client.view(thing.id)  # the description, read once, as any client would
            for _ in range(sizes.total):
                started = time.perf_counter_ns()
                handle = await client.request(thing.id, "CloseValve")
                await handle.result(timeout=DELIVERY_TIMEOUT_S)
                latencies.append((time.perf_counter_ns() - started) / 1e6)
                await asyncio.sleep(sizes.gap_s)
    return latencies


def _action_phases(latencies: Sequence[float], warmup: int) -> dict[str, object]:
    """p50 of the requests before the thing's outbox is full and after (it then trims)."""
    phases: dict[str, object] = {}
    numbered = list(enumerate(latencies, start=1))[warmup:]
    for label, kept in (
        (f"requests {warmup + 1}-{OUTBOX_KEEP}", [ms for n, ms in numbered if n <= OUTBOX_KEEP]),
        (f"requests {OUTBOX_KEEP + 1}-", [ms for n, ms in numbered if n > OUTBOX_KEEP]),
    ):
        if kept:
            phases[label] = {"samples": len(kept), "p50_ms": round(percentile(kept, 50), 4)}
    return phases


# --- things_attribute_update_rate -------------------------------------------------------


@dataclass
class _Counter:
    received: int = 0
    last_seq: int = 0


async def _count(sub: Subscription, counter: _Counter, changed: asyncio.Event) -> None:
    async for note in sub:
        counter.received += 1
        counter.last_seq = note.seq
        changed.set()


async def _update_rounds(
    store: Store, owner: Identity, sizes: _Sizes
) -> tuple[list[float], list[int], list[float], list[int]]:
    """``thing.set()`` awaited one by one with a subscriber consuming.

    Returns per round: the seconds the sets took, how many notifications the
    subscriber received (each one verified), the ms from the last ``set()``
    returning to the subscriber having its notification, and how many values
    the subscriber lost to the ring (overwritten before it read them).
    """
    seconds: list[float] = []
    received: list[int] = []
    drain_ms: list[float] = []
    lost: list[int] = []
    async with _bench_thing("bench-update", owner, store) as thing:
        await thing.register()
        async with (
            ThingClient(Client(store, Identity.generate("bench-update-subscriber"))) as client,
            client.subscribe(thing.id, attribute="moisture") as sub,
        ):
            counter = _Counter()
            changed = asyncio.Event()
            async with background(
                _count(sub, counter, changed), "safething-bench-things-update-consumer"
            ) as consumer:
                for _ in range(sizes.rounds):
                    before, lost_before = counter.received, sub.lost
                    started = time.perf_counter()
                    last = 0
                    for i in range(sizes.updates):
                        last = await thing.set("moisture", float(i % 101))
                    done = time.perf_counter()
                    seconds.append(done - started)
                    async with asyncio.timeout(DELIVERY_TIMEOUT_S):
                        while counter.last_seq < last:
                            if consumer.done():
                                consumer.result()
                                raise RuntimeError("the attribute subscription ended")
                            changed.clear()
                            await changed.wait()
                    drain_ms.append((time.perf_counter() - done) * 1000)
                    received.append(counter.received - before)
                    lost.append(sub.lost - lost_before)
    return seconds, received, drain_ms, lost


# --- the 2017 design: one signed JSON blob per thing, polled ---------------------------------


def _initial_blob(thing_id: str) -> dict[str, Any]:
    """The whole thing as the 2017 SAFEthing kept it: metadata and every attribute."""
    description = bench_description(thing_id)
    attributes: dict[str, Any] = {}
    for attribute in description.attributes:
        doc = attribute.to_dict()
        if attribute.dynamic:
            doc["value"] = attribute.schema.default
        attributes[attribute.name] = doc
    attributes["moisture"]["value"] = 0.0
    return {
        "id": thing_id,
        "title": description.title,
        "status": "published",
        "topics": [t.to_dict() for t in description.topics],
        "actions": [a.to_dict() for a in description.actions],
        "attributes": attributes,
        "seq": 0,
        "updated": time.time(),
    }


def _sign_blob(key: SigningKey, doc: dict[str, Any]) -> bytes:
    """One ed25519 signature over the whole JSON blob, then the blob."""
    blob = json.dumps(doc, separators=(",", ":")).encode()
    return key.sign(blob) + blob


class _OriginalThing:
    """The 2017 write path: read the blob, change one field, write it all back (CAS)."""

    def __init__(self, store: Store, key: SigningKey) -> None:
        self.store = store
        self.key = key

    async def create(self, thing_id: str) -> int:
        data = _sign_blob(self.key, _initial_blob(thing_id))
        await self.store.create(_BLOB_KEY, data)
        return len(data)

    async def set(self, attribute: str, value: Any) -> None:
        # The writer does not verify its own blob again (this favours the original).
        record = await self.store.get(_BLOB_KEY)
        if record is None:
            raise RuntimeError("the original thing's blob is missing")
        doc = json.loads(record.value[_SIGNATURE_LEN:])
        doc["attributes"][attribute]["value"] = value
        doc["seq"] += 1
        doc["updated"] = time.time()
        await self.store.update(_BLOB_KEY, _sign_blob(self.key, doc), record.revision)


async def _read_original(store: Store, signer: PublicSignKey, attribute: str) -> Any:
    """What the 2017 poller did each period: fetch the blob, verify it, parse it."""
    record = await store.get(_BLOB_KEY)
    if record is None:
        raise RuntimeError("the original thing's blob is missing")
    signature, blob = record.value[:_SIGNATURE_LEN], record.value[_SIGNATURE_LEN:]
    if not signer.verify(blob, signature):
        raise RuntimeError("the original thing's blob has a bad signature")
    return json.loads(blob)["attributes"][attribute]["value"]


async def _blob_update_rounds(original: _OriginalThing, sizes: _Sizes) -> list[float]:
    """The seconds each round of ``sizes.updates`` blob rewrites took."""
    seconds: list[float] = []
    for _ in range(sizes.rounds):
        started = time.perf_counter()
        for i in range(sizes.updates):
            await original.set("moisture", float(i % 101))
        seconds.append(time.perf_counter() - started)
    return seconds


@dataclass(frozen=True, slots=True)
class _PollRun:
    latencies_ms: list[float]
    """Per change, in order: the poll that saw it minus the stamp before the write."""
    offsets_ms: list[float]
    """Where in its period each change was made (planned)."""
    read_ms: list[float]
    """Every poll's read: fetch, verify, parse."""
    polls: int
    """Polls made."""


class _Poller:
    """The 2017 subscriber: wakes on a fixed schedule, reads the blob, compares one value."""

    def __init__(self, original: _OriginalThing, period: float, first_poll: float) -> None:
        self.original = original
        self.period = period
        self.first_poll = first_poll
        """``loop.time()`` of poll 0; poll ``k`` is due at ``first_poll + k * period``."""
        self.polls = 0
        """Polls completed."""
        self.read_ns: list[int] = []
        self.seen: dict[float, tuple[int, int]] = {}
        """New value -> (index of the poll that saw it, ``perf_counter_ns`` at its end)."""
        self.polled = asyncio.Condition()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        signer = self.original.key.public
        last = await _read_original(self.original.store, signer, "moisture")
        while True:
            due = self.first_poll + self.polls * self.period
            await asyncio.sleep(max(0.0, due - loop.time()))
            started = time.perf_counter_ns()
            value = await _read_original(self.original.store, signer, "moisture")
            ended = time.perf_counter_ns()
            self.read_ns.append(ended - started)
            if value != last:
                self.seen[value] = (self.polls, ended)
                last = value
            async with self.polled:
                self.polls += 1
                self.polled.notify_all()

    async def wait(self, done: Callable[[], bool], task: asyncio.Task[None]) -> None:
        """Until ``done()`` after a poll; raises what the poller task raised."""
        async with asyncio.timeout(3 * self.period + DELIVERY_TIMEOUT_S), self.polled:
            await self.polled.wait_for(lambda: done() or task.done())
        if task.done():
            task.result()
            raise RuntimeError("the poller stopped")


async def _poll_latencies(original: _OriginalThing, sizes: _Sizes) -> _PollRun:
    """A poller wakes every ``poll_period_s`` on a fixed schedule and compares one value.

    Each change is written at a random offset inside the period after the
    poll that saw the previous change (stratified: change ``i`` of ``n``
    gets an offset in ``[i/n, (i+1)/n)`` of the period, in shuffled order,
    so a few changes cover the whole period). Its latency runs from just
    before the blob rewrite to the end of the poll that sees the new value.
    """
    loop = asyncio.get_running_loop()
    period = sizes.poll_period_s
    n = sizes.poll_events
    rng = random.Random(_POLL_SEED)
    offsets = [(i + rng.random()) / n * period for i in range(n)]
    rng.shuffle(offsets)
    poller = _Poller(original, period, loop.time() + sizes.gap_s)
    latencies: list[float] = []
    after_poll = 0  # the next change goes into the period after this poll
    value = 0.0

    def poll_passed() -> bool:
        return poller.polls > after_poll

    def value_seen() -> bool:
        return value in poller.seen

    async with background(poller.run(), "safething-bench-original-poller") as task:
        for i, offset in enumerate(offsets):
            await poller.wait(poll_passed, task)
            due = poller.first_poll + after_poll * period + offset
            await asyncio.sleep(max(0.0, due - loop.time()))
            value = 50.5 + i  # the rate rounds wrote whole numbers: every change is new
            stamp = time.perf_counter_ns()
            await original.set("moisture", value)
            await poller.wait(value_seen, task)
            after_poll, detected = poller.seen[value]
            latencies.append((detected - stamp) / 1e6)
    return _PollRun(
        latencies_ms=latencies,
        offsets_ms=[round(o * 1000, 1) for o in offsets],
        read_ms=[ns / 1e6 for ns in poller.read_ns],
        polls=len(poller.read_ns),
    )


# --- the group ------------------------------------------------------------------------


async def things_group(ctx: BenchContext) -> list[Metric]:
    """Every things metric and the emulated 2017 design, in one run on one store file."""
    sizes = _sizes(ctx)
    url = sqlite_url(ctx.workdir / "things.db")
    owner = Identity.generate("bench-owner")
    async with await open_store(url) as store:
        client_ms, callback_ms = await _notify_inprocess(store, owner, sizes)
        xproc_ms = await _notify_xproc(store, url, owner, ctx.workdir, sizes)
        action_all_ms = await _action_roundtrips(store, owner, sizes)
        crypto = sign_verify_rate(ctx, "things_ed25519_sign_verify_rate")
        update_s, update_received, update_drain_ms, update_lost = await _update_rounds(
            store, owner, sizes
        )
        original = _OriginalThing(store, Identity.generate("bench-original").sign_key)
        blob_bytes = await original.create("bench-original")
        blob_s = await _blob_update_rounds(original, sizes)
        poll = await _poll_latencies(original, sizes)

    inprocess = latency_params(sizes, sizes.gap_s, clock="perf_counter")
    notify = with_p_target(
        latency_metrics(
            "things_notify_latency_inprocess",
            client_ms,
            params={
                **inprocess,
                "send": "Thing.notify (sequence pointer compare-and-set, then history slot)",
                "receive": "ThingClient.subscribe(topic=...) async iteration (verifies entries)",
            },
            layer="things",
        ),
        "p50",
        "<=",
        NOTIFY_P50_TARGET_MS,
    )
    callback = with_p_target(
        latency_metrics(
            "things_notify_callback_latency_inprocess",
            callback_ms,
            params={
                **inprocess,
                "send": "Thing.notify",
                "receive": "stored subscription: Thing.subscribe(topic=..., callback=...); "
                "the subscriber records its position after each callback",
            },
            layer="things",
        ),
        "p50",
        "<=",
        NOTIFY_P50_TARGET_MS,
    )
    xproc = with_p_target(
        latency_metrics(
            "things_notify_latency_xproc",
            xproc_ms,
            params=latency_params(
                sizes,
                sizes.xproc_gap_s,
                clock="monotonic_ns across processes",
                send="child process (own store on the same file): Thing.notify",
                receive="ThingClient.subscribe(topic=...) async iteration",
            ),
            layer="things",
        ),
        "p99",
        "<=",
        XPROC_P99_TARGET_MS,
    )
    action = with_p_target(
        latency_metrics(
            "things_action_roundtrip",
            action_all_ms[sizes.warmup :],
            params=latency_params(
                sizes,
                sizes.gap_s,
                clock="perf_counter",
                action="CloseValve, handler returns None",
                path="request -> accepted -> running -> done -> requester",
                outbox_keep=OUTBOX_KEEP,
                outbox="the thing keeps its last outbox_keep request states; past that, "
                "each finished request trims the oldest",
                p50_by_phase=_action_phases(action_all_ms, sizes.warmup),
            ),
            layer="things",
        ),
        "p50",
        "<=",
        ACTION_P50_TARGET_MS,
    )
    updates = rate_metric(
        "things_attribute_update_rate",
        sizes.updates,
        update_s,
        "updates/s",
        params={
            "call": "await thing.set('moisture', value), one after the other",
            "subscribers": 1,
            "subscriber": "ThingClient.subscribe(attribute='moisture'): every value from the "
            "attribute's history ring, each entry verified (ed25519) before it is yielded",
            "sent": sizes.updates,
            "received": update_received,
            "lost_to_ring": update_lost,
            "drain_ms": [round(ms, 2) for ms in update_drain_ms],
            "attributes": len(bench_description("bench-update").attributes),
            "store": STORE_SETTINGS,
        },
    )
    blob = rate_metric(
        "original_blob_update_rate",
        sizes.updates,
        blob_s,
        "updates/s",
        params={
            "call": "store.get, json.loads, change one field, json.dumps, ed25519 sign, "
            "store.update (compare-and-set), one after the other",
            "blob_bytes": blob_bytes,
            "attributes": len(bench_description("bench-original").attributes),
            "writer_verifies_own_blob": False,
            "subscribers": 0,
            "store": STORE_SETTINGS,
        },
    )
    read_p50 = statistics.median(poll.read_ms)
    original_poll = latency_metrics(
        "original_poll_notify_latency",
        poll.latencies_ms,
        params={
            "period_s": sizes.poll_period_s,
            "quick_period": ctx.quick,
            "events": sizes.poll_events,
            "offsets_ms": poll.offsets_ms,
            "offsets": "stratified random, one change per period, seed 2017",
            "latencies_ms": [round(ms, 3) for ms in poll.latencies_ms],
            "mean_ms": round(statistics.fmean(poll.latencies_ms), 3),
            "expected_ms": round(sizes.poll_period_s * 500 + read_p50, 3),
            "expected": "period / 2 + median read",
            "polls": poll.polls,
            "read_p50_ms": round(read_p50, 4),
            "read": "store.get, ed25519 verify of the blob, json.loads",
            "blob_bytes": blob_bytes,
            "warmup": 0,
            "percentiles": PERCENTILES,
            "store": STORE_SETTINGS,
        },
        layer="original-2017",
    )
    return [
        *notify,
        *callback,
        *xproc,
        *action,
        updates,
        crypto,
        limit_ratio(
            "things_attribute_update_vs_crypto_limit_ratio",
            updates,
            crypto,
            target=UPDATE_VS_CRYPTO_TARGET,
        ),
        *original_poll,
        blob,
        ratio_metric(
            "things_notify_latency_vs_original_poll_ratio",
            by_name(original_poll, "original_poll_notify_latency_p50_ms"),
            by_name(notify, "things_notify_latency_inprocess_p50_ms"),
        ),
        ratio_metric("things_update_rate_vs_original_blob_ratio", updates, blob),
    ]


GROUPS: dict[str, GroupFunc] = {"things": things_group}
"""Metric groups of this module (registered in ``runner.GROUP_MODULES``)."""
