"""Issue 8: a store-only attacker gains nothing.

The attacker holds the SQLite vault file (it writes through the raw store
API, under any key) and a key pair of its own; it may run SAFEthing's own
code with that key. It never holds the thing's, the owner's or a member's
key. Every test restarts the thing or the reader in between, as a real
attacker would wait for a reboot. Each attack must be refused with
``TamperedDataError`` (or a sibling), counted, and the owner's flows must
keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from safething.errors import (
    AccessDeniedError,
    ActionFailedError,
    ConflictError,
    NoSuchEntryError,
    StoreError,
    TamperedDataError,
)
from safething.net import Action, Client, Entry, Identity, MDAddress, MDHeader, SecretKey
from safething.net.records import EntryRecord
from safething.net.trust import TrustState
from safething.store import Record, Store, open_store
from safething.things import (
    ActionRequest,
    ActionStatus,
    Thing,
    ThingClient,
    ThingDescription,
    ThingOwner,
)
from safething.things.access import make_key_record
from safething.things.admin import set_status
from safething.things.layout import CLOCK_SKEW_S, ThingAddresses
from safething.things.layout import MAX_REQUEST_LIFETIME_S as MAX_LIFETIME
from safething.things.values import dumps, loads

from .conftest import garden_description

THING = "garden-01"
ADDR = ThingAddresses.of(THING)
STATUS_KEY = ADDR.thing.entry_key(b"status")
TIMEOUT = 30.0  # an upper bound on waiting for something that must happen; never reached when green


async def until(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait (bounded, only to avoid a hang) until ``check()`` is true."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)


class Attacker:
    """Raw store access plus a key pair of its own."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.me = Identity.generate("mallory")

    async def version_of(self, address: MDAddress, key: bytes) -> int:
        record = await self.store.get(address.entry_key(key))
        if record is None:
            return -1
        return EntryRecord.from_bytes(record.value, address, key).version

    async def sign_entry(self, address: MDAddress, key: bytes, value: bytes | None) -> None:
        """An entry signed by the attacker's key, one version above the stored one."""
        record = EntryRecord.create(
            address,
            signer=self.me.sign_key,
            stored_key=key,
            sealed_key=None,
            stored_value=value,
            version=await self.version_of(address, key) + 1,
        )
        await self.store.put(address.entry_key(key), record.to_bytes())

    async def co_owner_header(self, address: MDAddress) -> None:
        """The real owners plus the attacker's key, next version, signed by the attacker."""
        raw = await self.store.get(address.header_key)
        assert raw is not None
        header = MDHeader.from_bytes(raw.value, address)
        forged = MDHeader.create(
            address,
            signer=self.me.sign_key,
            owners=(*header.owners, self.me.public_sign_key),
            permissions=header.permissions,
            version=header.version + 1,
            private=header.private,
        )
        await self.store.put(address.header_key, forged.to_bytes())

    async def snapshot(self, prefix: str) -> list[Record]:
        return await self.store.scan(prefix)

    async def restore(self, records: list[Record]) -> None:
        for record in records:
            await self.store.put(record.key, record.value)


def _thing(device: Identity, owner: Identity, url: str) -> Thing:
    return Thing(garden_description(), identity=device, owner=owner.public, store=url)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/vault.db"


@pytest.fixture
def owner() -> Identity:
    return Identity.generate("owner")


@pytest.fixture
def device() -> Identity:
    return Identity.generate("device")


# --- 1. co-owner header ------------------------------------------------------------


async def test_co_owner_header_and_the_entries_it_would_authorise(
    url: str, tmp_path: Path, owner: Identity, device: Identity
) -> None:
    ran: list[str] = []
    owner_trust = TrustState.open(tmp_path / "owner.trust.db")
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("Reboot", lambda request: ran.append(request.request_id) or "ok")
        await t.register()
        await t.publish()
        await t.set("secret_code", "correct-horse")
        await t.set("moisture", 40.0)
        owner_things = ThingClient(Client(store, owner, trust=owner_trust))
        assert (await owner_things.read(THING, "secret_code")).value == "correct-horse"

        mallory = Attacker(store)
        await mallory.co_owner_header(ADDR.thing)
        # with the forged header, everything below would verify under the attacker's key
        await mallory.sign_entry(ADDR.thing, b"a/moisture", b"forged")
        chosen = Identity.generate("mallory-chosen-key").encryption_key
        from safething.net import SecretKey

        key = SecretKey.generate()
        readers = [owner.public, device.public, mallory.me.public]
        for level in ("group", "owner"):
            await mallory.sign_entry(
                ADDR.thing, f"k/{level}".encode(), make_key_record(9, key, readers)
            )
        keys_doc = {"thing": device.public.to_dict(), "owner": mallory.me.public.to_dict()}
        await mallory.sign_entry(ADDR.thing, b"keys", dumps(keys_doc))
        del chosen

        # the running thing keeps its keys: Group data is not encrypted under the chosen key
        before = t.client.tampered_count
        await t.set("group_note", "for the group only")
        assert t.client.tampered_count > before

        # the owner (who verified the thing before) refuses the header and every forged entry
        owner_client = owner_things.client
        counted = owner_client.tampered_count
        with pytest.raises(TamperedDataError):
            await owner_things.view(THING, refresh=True)
        assert owner_client.tampered_count > counted
        # a fresh reader with no trust state at all refuses it too (owners != keys)
        with pytest.raises(TamperedDataError):
            await ThingClient(Client(store)).view(THING, refresh=True)

    # restart: the thing restores its header, level keys and key list from what it trusts
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("Reboot", lambda request: ran.append(request.request_id) or "ok")
        await t.register()
        assert t.client.tampered_count > 0
        await t.set("secret_code", "correct-horse-2")
        raw = b"".join(r.value for r in await store.scan(""))
        assert b"correct-horse" not in raw
        # the attacker's key opens nothing
        async with ThingClient(Client(store, mallory.me)) as spy:
            with pytest.raises((AccessDeniedError, TamperedDataError)):
                await spy.read(THING, "secret_code")
            with pytest.raises((AccessDeniedError, TamperedDataError)):
                await spy.read(THING, "group_note")
        # the owner's flows keep working: read, Owner action (arguments sealed to the thing)
        async with ThingClient(Client(store, owner, trust=owner_trust)) as mine:
            assert (await mine.read(THING, "secret_code")).value == "correct-horse-2"
            with pytest.raises(TamperedDataError):  # the forged reading: refused, not shown
                await mine.read(THING, "moisture")
            await t.set("moisture", 41.0)  # the thing's next reading replaces it
            assert (await mine.read(THING, "moisture")).value == 41.0
            assert [r.value for r in await mine.history(THING, "moisture")] == [40.0, 41.0]
            assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
        # a new reader accepts the repaired header (owners match the key list again)
        async with ThingClient(Client(store)) as fresh:
            assert (await fresh.read(THING, "moisture")).value == 41.0
    assert len(ran) == 1
    owner_trust.close()


async def test_reader_pinned_to_the_owner_refuses_a_header_it_did_not_sign(
    url: str, owner: Identity
) -> None:
    async with await open_store(url) as store:
        client = Client(store, owner)
        md = await client.create_md(ADDR.group.name, ADDR.group.tag)
        await md.put("m/x", b"member")
        mallory = Attacker(store)
        await mallory.co_owner_header(ADDR.group)
        await mallory.sign_entry(ADDR.group, b"m/y", b"forged member")
        fresh = Client(store)
        pinned = fresh.md(ADDR.group.name, ADDR.group.tag, owner=owner.public_sign_key)
        with pytest.raises(TamperedDataError, match="not by the pinned owner"):
            await pinned.entries()
        assert fresh.tampered_count == 1
        # the owner repairs it; the pinned reader then reads only what the owner signed
        assert await md.repair_header()
        entries = await pinned.entries(skip_tampered=True)
        assert set(entries) == {b"m/x"}
        assert fresh.tampered_count == 2  # m/y: the attacker holds no permission


# --- 2. replayed command -----------------------------------------------------------


async def _captured_request(
    store: Store, things: ThingClient, action: str, release: asyncio.Event
) -> tuple[str, bytes]:
    """The owner asks; the attacker copies the inbox record, then ``release`` lets the
    thing's handler (which waits for it, see ``_held_recorder``) end. The thing purges
    the record once the handler ends: a handler that returned at once could have it
    purged before the copy (the copy then never came and this waited its bound out)."""
    handle = await things.request(THING, action)
    key = ADDR.inbox.entry_key(f"r/{handle.request_id}".encode())
    copied: list[bytes] = []

    async def copy() -> bool:  # bounded: a store's replica may lag its own write
        stored = await store.get(key)
        if stored is not None:
            copied.append(stored.value)
        return stored is not None

    await until(copy, "the attacker copied the request's record")
    release.set()
    assert await handle.result(TIMEOUT) == "ok"
    return key, copied[0]


@contextlib.asynccontextmanager
async def _serving(
    url: str,
    owner: Identity,
    device: Identity,
    reboot: Callable[[ActionRequest], Any],
    *,
    resume: bool = False,
) -> AsyncIterator[tuple[Store, Thing, ThingClient]]:
    """The store, a published thing serving ``Reboot`` with ``reboot``, the owner's client."""
    async with (
        await open_store(url) as store,
        _thing(device, owner, url) as t,
        ThingClient(Client(store, owner)) as mine,
    ):
        t.on_action("Reboot", reboot, resume=resume)
        await t.register()
        await t.publish()
        yield store, t, mine


def _held_recorder(ran: list[str], release: asyncio.Event) -> Callable[[ActionRequest], Any]:
    """A handler that records the ids of the requests it runs and ends once ``release``
    is set (by ``_captured_request`` once it copied the request's record)."""

    async def handler(request: ActionRequest) -> str:
        ran.append(request.request_id)
        await release.wait()
        return "ok"

    return handler


async def test_replayed_command_runs_once(url: str, owner: Identity, device: Identity) -> None:
    ran: list[str] = []
    release = asyncio.Event()
    reboot = _held_recorder(ran, release)

    async with await open_store(url) as store:
        mallory = Attacker(store)
        async with _thing(device, owner, url) as t, ThingClient(Client(store, owner)) as mine:
            t.on_action("Reboot", reboot)
            closed: list[str] = []
            t.on_action("CloseValve", lambda request: closed.append(request.request_id))
            await t.register()
            await t.publish()
            key, value = await _captured_request(store, mine, "Reboot", release)
            assert len(ran) == 1
            # 201 requests of its own (the old memory of processed ids held 200)
            async with ThingClient(Client(store, mallory.me)) as junk:
                for _ in range(201):
                    await junk.request(THING, "CloseValve")
            await until(lambda: len(closed) == 201, "junk served")
            await until(lambda: _inbox_empty(store), "junk purged")
            refused = t.refused_count
            await store.put(key, value)  # the replay
            await until(lambda: t.refused_count == refused + 1, "replay refused")
            await until(lambda: _gone(store, key), "the replayed record purged")
            assert ran and len(ran) == 1
        # after a restart of the thing
        async with _thing(device, owner, url) as t:
            t.on_action("Reboot", reboot)
            await t.register()
            tampered = t.client.tampered_count
            await store.put(key, value)
            await until(lambda: t.refused_count == 1, "replay after restart refused")
            assert t.client.tampered_count == tampered + 1
            assert len(ran) == 1
            # the owner's next request still runs
            async with ThingClient(Client(store, owner)) as mine:
                assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
            assert len(ran) == 2


async def test_the_same_request_record_written_back_again_and_again_is_refused_each_time(
    url: str, owner: Identity, device: Identity
) -> None:
    """A store-only attacker writes one request record the thing ran (and purged) back
    three times, each after the thing purged the one before: each write is refused,
    counted and purged (no mark or verified digest kept from the last write passes the
    next one over), and the request ran once. (An attacker's write that lands between
    the thing's count of a refusal and its purge is deleted by that purge unread: nothing
    runs and nothing stays, but it is not counted.)"""
    ran: list[str] = []
    release = asyncio.Event()

    async def reboot(request: ActionRequest) -> str:
        ran.append(request.request_id)
        await release.wait()  # the record stays in the inbox until the attacker copied it
        return "ok"

    async with _serving(url, owner, device, reboot) as (store, t, mine):
        handle = await mine.request(THING, "Reboot")
        key = ADDR.inbox.entry_key(f"r/{handle.request_id}".encode())
        await until(lambda: len(ran) == 1, "the request runs")
        record = await store.get(key)
        assert record is not None
        value = record.value
        release.set()
        assert await handle.result(TIMEOUT) == "ok"
        await until(lambda: _gone(store, key), "the request purged once it ran")
        for n in range(1, 4):
            await store.put(key, value)
            await until(lambda n=n: t.refused_count == n, f"replay {n} refused")
            await until(lambda: _gone(store, key), f"replay {n} purged")
        assert len(ran) == 1


async def test_a_replay_delivered_again_while_its_refusal_is_purged_is_counted_once(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replayed record handed to the thing twice at once: the inbox feed delivers the
    attacker's write, and an inbox scan (here asked for by a handler registered again;
    a store repeating a change notification does the same) delivers it once more while
    the thing is still refusing the first delivery, its purge not yet in the store (a
    slow commit, held here). The second delivery is passed over, not refused and counted
    as a second attack; the scan after the refusal finds the record purged. The request
    ran once, before the thing restarted; the replay comes after the restart."""
    ran: list[str] = []
    release = asyncio.Event()
    reboot = _held_recorder(ran, release)
    async with _serving(url, owner, device, reboot) as (store, _, mine):
        key, value = await _captured_request(store, mine, "Reboot", release)
        await until(lambda: _gone(store, key), "the served request purged")
    async with _serving(url, owner, device, reboot) as (store, t, mine):
        await until(lambda: _inbox_empty(store), "nothing waiting in the inbox")
        purging = asyncio.Event()  # the thing's purge of the replayed record has begun
        purge_goes = asyncio.Event()
        thing_store = t.client.store
        delete = thing_store.delete

        async def held_delete(k: str, revision: int | None = None) -> int:
            if k == key and not purging.is_set():
                purging.set()  # the first purge of the record waits; any other goes through
                await purge_goes.wait()
            return await delete(k, revision)

        started: list[int] = []
        ended: list[int] = []
        on_inbox = t._on_inbox

        async def counted_delivery(entry: Entry) -> None:
            ours = ADDR.inbox.entry_key(entry.key) == key
            if ours:
                started.append(1)
            try:
                await on_inbox(entry)
            finally:
                if ours:
                    ended.append(1)

        monkeypatch.setattr(thing_store, "delete", held_delete)
        monkeypatch.setattr(t, "_on_inbox", counted_delivery)
        refused, tampered = t.refused_count, t.client.tampered_count
        await store.put(key, value)  # the replay, through the raw store
        async with asyncio.timeout(TIMEOUT):
            await purging.wait()  # refused and counted; its purge held
        assert t.refused_count == refused + 1
        t.on_action("Reboot", reboot)  # registering a handler rescans the inbox
        # a second delivery of the record (the scan's, or the first scan after publish()
        # racing the feed) arrived while the purge was held and was dealt with
        await until(
            lambda: len(started) >= 2 and len(ended) == len(started) - 1, "a second delivery"
        )
        purge_goes.set()
        await until(lambda: _gone(store, key), "the replayed record purged")
        await until(lambda: len(ended) == len(started) and t.idle(), "the refusal ended")
        assert t.refused_count == refused + 1  # one write, one refusal
        assert t.client.tampered_count == tampered + 1
        assert len(ran) == 1
        # and the owner's next request runs
        assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
        assert len(ran) == 2


async def test_a_request_delivered_again_after_it_ran_and_was_purged_does_not_run(
    url: str, owner: Identity, device: Identity
) -> None:
    """The inbox scan and the inbox feed (or a store repeating a change notification)
    may hand the thing a request once more after it ran and its record was purged: it is
    not run again, and, since nothing was stored again, not counted as an attack."""
    ran: list[str] = []
    release = asyncio.Event()
    async with _serving(url, owner, device, _held_recorder(ran, release)) as (store, t, mine):
        key, value = await _captured_request(store, mine, "Reboot", release)
        await until(lambda: _gone(store, key), "the served request purged")
        await until(lambda: not t._running, "the served request's task ended")
        record = EntryRecord.from_bytes(value, ADDR.inbox, None)
        again = Entry(record.stored_key, record.stored_value, record.version, record.signer)
        await t._on_inbox(again)  # the late second delivery
        assert not t._running  # nothing started
        assert t.refused_count == 0
        assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
        assert len(ran) == 2


async def test_a_request_refused_while_disabled_never_runs_when_replayed_later(
    url: str, owner: Identity, device: Identity
) -> None:
    """A request the thing refused is remembered as processed until it could expire,
    like one it ran: replayed after the owner publishes the thing again and the thing
    restarts, it is refused, not run."""
    ran: list[str] = []

    def close(request: ActionRequest) -> str:
        ran.append(request.request_id)
        return "ok"

    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.disable()
        # while the thing is down the owner asks; the attacker copies the waiting record
        async with ThingClient(Client(store, owner)) as mine:
            handle = await mine.request(THING, "CloseValve", timeout=3600)
            key = ADDR.inbox.entry_key(f"r/{handle.request_id}".encode())
            stored = await store.get(key)
            assert stored is not None
            value = stored.value
            async with _thing(device, owner, url) as t:
                t.on_action("CloseValve", close)
                await t.register()
                assert (await handle.wait(TIMEOUT)).state == "rejected"
                await until(lambda: _gone(store, key), "the refused request purged")
                # kept as long as any request can live, not for ever
                t.trust.sync()
                assert t.trust.path is not None
                with contextlib.closing(sqlite3.connect(t.trust.path)) as db:
                    (kept,) = db.execute(
                        "SELECT expires FROM processed WHERE id = ?", (handle.request_id,)
                    ).fetchone()
                assert abs(kept - (time.time() + MAX_LIFETIME)) < 600
                await t.publish()
        async with _thing(device, owner, url) as t:
            t.on_action("CloseValve", close)
            await t.register()
            assert t.status == "published"
            await store.put(key, value)  # the replay, within the request's hour
            await until(lambda: t.refused_count == 1, "replay refused")
            await until(lambda: _gone(store, key), "the replayed record purged")
            assert ran == []


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"a": "OpenValve", "args": {"psi": 1}, "t": 0.0}, "no issue time or expiry"),
        ({"a": "OpenValve", "args": {"psi": 1}}, "no issue time or expiry"),
        (
            {"a": "OpenValve", "args": {"psi": 1}, "t": "now", "exp": 1e12},
            "no issue time or expiry",
        ),
        ({"a": "OpenValve", "args": {"psi": 1}, "t": None, "exp": None}, "no issue time"),
        ("huge-expiry", "no issue time or expiry"),
        ("huge-issue", "no issue time or expiry"),
        ("far", "too far ahead"),
        ("long", "too far ahead"),
        ("future", "too far ahead"),
        ("old", "before this thing's trust state began"),
    ],
)
async def test_requests_without_a_bounded_expiry_never_run(
    url: str, owner: Identity, device: Identity, doc: Any, reason: str
) -> None:
    ran: list[str] = []
    now = time.time()
    if doc == "far":
        doc = {"a": "OpenValve", "args": {"psi": 1}, "t": now, "exp": now + 400 * 24 * 3600}
    elif doc == "huge-expiry":  # CBOR carries any integer; no float holds this one
        doc = {"a": "OpenValve", "args": {"psi": 1}, "t": now, "exp": 10**400}
    elif doc == "huge-issue":
        doc = {"a": "OpenValve", "args": {"psi": 1}, "t": -(10**400), "exp": now + 60}
    elif doc == "old":  # issued before the thing's trust state existed (a fresh Pi)
        doc = {"a": "OpenValve", "args": {"psi": 1}, "t": now - 3600, "exp": now + 3600}
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("OpenValve", lambda request: ran.append(request.request_id) or {})
        await t.register()
        await t.publish()
        issued = time.time()  # after the trust state began: only the lifetime is wrong
        if doc == "long":  # valid 24 h and 60 s, expiring less than 24 h + skew from now
            doc = {"a": "OpenValve", "t": issued, "exp": issued + MAX_LIFETIME + 60}
        elif doc == "future":  # a lifetime of one minute, issued two days ahead
            doc = {
                "a": "OpenValve",
                "t": issued + 2 * MAX_LIFETIME,
                "exp": issued + 2 * MAX_LIFETIME + 60,
            }
        mallory = Client(store, Identity.generate())
        inbox = mallory.md(ADDR.inbox.name, ADDR.inbox.tag)
        rid = secrets.token_hex(8)
        async with ThingClient(mallory) as c:
            view = await c.view(THING)
            state_feed = view.outbox.watch(prefixes=(f"r/{rid}".encode(),))
            await inbox.insert(f"r/{rid}", dumps(doc))
            async with asyncio.timeout(TIMEOUT):
                async for entry in state_feed:
                    state = loads(entry.value or b"", "state")
                    break
            await state_feed.close()
        assert state["s"] == "rejected"
        assert reason in state["m"]
        assert t.refused_count == 1
        assert ran == []


@pytest.mark.parametrize("ahead", [0.0, 60.0])
async def test_a_request_valid_for_exactly_the_longest_lifetime_runs(
    url: str, owner: Identity, device: Identity, ahead: float
) -> None:
    """The bound is 24 h inclusive: a request valid that long runs (and one a minute
    longer is refused, above), also from a requester whose clock is a minute ahead of
    the thing's (within the allowed skew)."""
    ran: list[str] = []
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("OpenValve", lambda request: ran.append(request.request_id) or {})
        await t.register()
        await t.publish()
        inbox = Client(store, Identity.generate()).md(ADDR.inbox.name, ADDR.inbox.tag)
        rid = secrets.token_hex(8)
        issued = time.time() + ahead
        doc = {"a": "OpenValve", "t": issued, "exp": issued + MAX_LIFETIME}
        await inbox.insert(f"r/{rid}", dumps(doc))
        await until(lambda: ran == [rid], "the request ran")
        assert t.refused_count == 0


async def _interrupted_and_restarted(
    url: str, owner: Identity, device: Identity, *, resume: bool | None
) -> tuple[str, ActionStatus, list[tuple[str, bool]]]:
    """A request whose handler is still at work when the thing shuts down; the thing
    comes back with the same handler registered (``resume=None``: with the
    ``@thing.action`` decorator and its default). Returns the request's id, its final
    state and each call of the handler (request id, ``resumed``)."""
    started = asyncio.Event()
    seen: list[tuple[str, bool]] = []

    def serve(t: Thing, handler: Callable[[ActionRequest], Any]) -> None:
        if resume is None:
            t.action("CloseValve")(handler)
        else:
            t.on_action("CloseValve", handler, resume=resume)

    async def slow(request: ActionRequest) -> None:
        seen.append((request.request_id, request.resumed))
        started.set()
        await asyncio.sleep(60)

    async with await open_store(url) as store, ThingClient(Client(store, owner)) as mine:
        async with _thing(device, owner, url) as t:
            serve(t, slow)
            await t.register()
            await t.publish()
            handle = await mine.request(THING, "CloseValve", timeout=60)
            async with asyncio.timeout(TIMEOUT):
                await started.wait()
        async with _thing(device, owner, url) as t:
            serve(t, lambda request: seen.append((request.request_id, request.resumed)))
            t.on_action("Reboot", lambda request: "ok")
            await t.register()
            status = await handle.wait(TIMEOUT)
            # one more request served: whatever the thing did with the first is done
            assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
    return handle.request_id, status, seen


@pytest.mark.parametrize("resume", [False, None], ids=["on_action", "decorator"])
async def test_a_request_interrupted_by_shutdown_does_not_run_again(
    url: str, owner: Identity, device: Identity, resume: bool | None
) -> None:
    """Also with the ``@thing.action`` decorator's default (not resumable)."""
    rid, status, seen = await _interrupted_and_restarted(url, owner, device, resume=resume)
    assert status.state == "failed"
    assert "not run again" in status.message
    assert seen == [(rid, False)]


async def test_a_resumable_handler_gets_an_interrupted_request_again(
    url: str, owner: Identity, device: Identity
) -> None:
    """With ``resume=True`` a request interrupted by a shutdown is handed to the handler
    again after the restart, marked ``resumed`` (and only then)."""
    rid, status, seen = await _interrupted_and_restarted(url, owner, device, resume=True)
    assert status.state == "done"
    assert seen == [(rid, False), (rid, True)]


async def test_a_state_written_by_another_key_does_not_resume_a_request(
    url: str, owner: Identity, device: Identity
) -> None:
    """Only the thing's own *accepted* state marks a request as interrupted: a key the
    owner granted write access to the outbox by mistake writes one over a finished
    request of a ``resume=True`` action and replays the request; it is refused as a
    replay, not run again."""
    ran: list[str] = []
    release = asyncio.Event()
    reboot = _held_recorder(ran, release)
    async with _serving(url, owner, device, reboot, resume=True) as (store, t, mine):
        key, value = await _captured_request(store, mine, "Reboot", release)
        rid = EntryRecord.from_bytes(value, ADDR.inbox, None).stored_key.decode()[2:]
        mallory = Identity.generate("mallory")
        outbox = ADDR.outbox
        await (
            Client(store, owner)
            .md(outbox.name, outbox.tag)
            .set_permissions(mallory.public_sign_key, Action.UPDATE)
        )
        await (
            Client(store, mallory)
            .md(outbox.name, outbox.tag)
            .put(f"r/{rid}", dumps({"s": "accepted", "t": time.time()}))
        )
        await until(lambda: _gone(store, key), "the served request purged")
        await store.put(key, value)  # the replay
        await until(lambda: t.refused_count == 1, "replay refused")
        assert ran == [rid]


async def test_a_processed_request_id_is_kept_until_its_expiry_and_the_skew(
    url: str, owner: Identity, device: Identity
) -> None:
    """The thing's trust file keeps a request id it ran until the request's expiry plus
    the allowed clock skew: a replay until then is refused, and the file does not grow
    with ids that can no longer be replayed."""
    release = asyncio.Event()
    async with _serving(url, owner, device, _held_recorder([], release)) as (store, t, mine):
        _, value = await _captured_request(store, mine, "Reboot", release)
        record = EntryRecord.from_bytes(value, ADDR.inbox, None)
        rid = record.stored_key.decode().removeprefix("r/")
        expires = loads(record.stored_value or b"", "request")["exp"]
        t.trust.sync()
        assert t.trust.path is not None
        with contextlib.closing(sqlite3.connect(t.trust.path)) as db:
            (kept,) = db.execute("SELECT expires FROM processed WHERE id = ?", (rid,)).fetchone()
        assert kept == pytest.approx(expires + CLOCK_SKEW_S)


# --- 3. rollback across a restart --------------------------------------------------


async def test_rollback_of_group_membership_key_epoch_and_status(
    url: str, owner: Identity, device: Identity
) -> None:
    member = Identity.generate("member")
    done: list[str] = []
    async with await open_store(url) as store:
        mallory = Attacker(store)
        owner_client = Client(store, owner)
        async with _thing(device, owner, url) as t:
            t.on_action("Water", lambda request: done.append(request.request_id) or 1.0)
            await t.register()
            await t.publish()
            await ThingOwner(owner_client, THING).add_member(member.public)
            async with ThingClient(Client(store, member)) as m:
                assert await (await m.request(THING, "Water", litres=1)).result(TIMEOUT) == 1.0
            # the attacker keeps copies of what it may want to serve again later
            group_then = await mallory.snapshot(ADDR.group.prefix)
            keys_then = [
                r
                for r in await mallory.snapshot(ADDR.thing.entry_prefix)
                if r.key == ADDR.thing.entry_key(b"k/group")
            ]
            status_then = [
                r
                for r in await mallory.snapshot(ADDR.thing.entry_prefix)
                if r.key == ADDR.thing.entry_key(b"status")
            ]
            await ThingOwner(owner_client, THING).remove_member(member.public_sign_key)
            await t.set("group_note", "after removal 1")  # the thing learns the new epoch
            async with ThingClient(Client(store, member)) as m:
                with pytest.raises(ActionFailedError, match="access denied"):
                    await (await m.request(THING, "Water", litres=1)).result(TIMEOUT)
            await set_status(owner_client, THING, "disabled")
            await until(lambda: t.status == "disabled", "thing disabled")
        # while the thing is down, the store goes back to the older, validly signed records
        await mallory.restore(group_then + keys_then + status_then)
        async with _thing(device, owner, url) as t:
            t.on_action("Water", lambda request: done.append(request.request_id) or 1.0)
            await t.register()
            assert t.status == "disabled"  # not "published" again
            assert t.client.tampered_count >= 1
            await set_status(owner_client, THING, "published")
            await until(lambda: t.status == "published", "owner publishes again")
            await mallory.restore(group_then)  # and once more while it runs
            await t.set("group_note", "after removal 2")
            async with ThingClient(Client(store, member)) as m:
                with pytest.raises(ActionFailedError, match="access denied"):
                    await (await m.request(THING, "Water", litres=1)).result(TIMEOUT)
                for _ in range(2):
                    with pytest.raises((AccessDeniedError, TamperedDataError)):
                        await m.read(THING, "group_note")
                    await mallory.restore(keys_then)
            assert len(done) == 1
            # the thing's next Group write puts the newest key record back; the owner
            # still reads Group data and runs Group actions
            await t.set("group_note", "after removal 3")
            async with ThingClient(Client(store, owner)) as mine:
                assert (await mine.read(THING, "group_note")).value == "after removal 3"
                assert await (await mine.request(THING, "Water", litres=2)).result(TIMEOUT) == 1.0
            assert len(done) == 2


async def _published_then_disabled(
    store: Store, owner: Identity, owner_client: Client, device: Identity, url: str
) -> Record:
    """A thing registered and published, then disabled by its owner (with
    ``owner_client``, which has seen that), and down: the store record of its
    *published* status, kept by the attacker."""
    async with _thing(device, owner, url) as t:
        await t.register()
        await t.publish()
        published = await store.get(STATUS_KEY)
        await set_status(owner_client, THING, "disabled")
        await until(lambda: t.status == "disabled", "thing disabled")
    assert published is not None
    return published


async def test_a_status_at_a_forked_version_does_not_undo_the_owners_last_status(
    url: str, owner: Identity, device: Identity
) -> None:
    """The store hides the thing's own write of its status from the owner, so that both
    sign a status at one version; then it serves the thing's (older decision) again.

    The owner disables the thing; while it is down the store serves the older
    *published* record; the restarted thing refuses it and writes *disabled* back one
    version up. The store hides that write from the owner too (the older record again),
    so the owner's *published* lands at the same version. Served again, the thing's own
    record must not disable the thing, running or restarted: at one version the later
    decision wins."""
    async with await open_store(url) as store:
        mallory = Attacker(store)
        owner_client = Client(store, owner)
        published_then = await _published_then_disabled(store, owner, owner_client, device, url)
        await mallory.restore([published_then])
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "disabled"
            repaired = await store.get(STATUS_KEY)
            assert repaired is not None and repaired.value != published_then.value
            await mallory.restore([published_then])  # the owner never sees the repair
            await set_status(owner_client, THING, "published")
            await until(lambda: t.status == "published", "owner publishes again")
            version = await mallory.version_of(ADDR.thing, b"status")
            fork = EntryRecord.from_bytes(repaired.value, ADDR.thing, b"status").version
            assert fork == version  # the owner's record and the thing's, at one version
            tampered = t.client.tampered_count
            await mallory.restore([repaired])
            await until(
                lambda: t.client.tampered_count > tampered or t.status != "published",
                "the thing refuses it, or takes it",
            )
            assert t.status == "published"
            async with ThingClient(Client(store)) as anyone:  # and writes its status back

                async def written_back() -> bool:
                    return await mallory.version_of(ADDR.thing, b"status") > version

                await until(written_back, "the thing writes its status back")
                assert await anyone.status(THING) == "published"
            await mallory.restore([repaired])  # the store serves it again
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "published"
        async with ThingClient(Client(store)) as anyone:  # and the store was repaired
            assert await anyone.status(THING) == "published"


async def test_a_status_the_store_held_back_still_wins_over_the_things_repair(
    url: str, owner: Identity, device: Identity
) -> None:
    """The owner publishes a thing that is down and disabled; the store holds that back
    and serves an older record, which the restarted thing refuses and repairs with its
    trusted *disabled*, at the version of the owner's record. Served at last, the owner's
    later decision wins: the repair kept the time *disabled* was decided, not its own."""
    async with await open_store(url) as store:
        mallory = Attacker(store)
        owner_client = Client(store, owner)
        published_then = await _published_then_disabled(store, owner, owner_client, device, url)
        await set_status(owner_client, THING, "published")
        held_back = await store.get(STATUS_KEY)
        assert held_back is not None
        version = await mallory.version_of(ADDR.thing, b"status")
        await mallory.restore([published_then])
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "disabled"  # it never saw the owner's record
            assert await mallory.version_of(ADDR.thing, b"status") == version  # a fork
            tampered = t.client.tampered_count
            await mallory.restore([held_back])
            await until(
                lambda: t.status == "published" or t.client.tampered_count > tampered,
                "the thing takes it, or refuses it",
            )
            assert t.status == "published"


async def test_the_owners_status_landing_while_the_thing_writes_a_refused_one_back_is_kept(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store serves the running thing its own older status record at a forked
    version; the thing refuses it and writes its trusted status back. The owner's next
    decision lands in between (after the refusal, before the write-back's commit): the
    write-back must leave it, and the thing follow it. (It did not: the write-back's
    retry wrote the older decision one version above the owner's, which the thing then
    never took; the slow property test timed out waiting for it.)"""
    landed = asyncio.Event()
    async with await open_store(url) as store, await open_store(url) as own:
        mallory = Attacker(store)
        owner_client = Client(store, owner)
        async with Thing(garden_description(), identity=device, owner=owner.public, store=own) as t:
            await t.register()
            await set_status(owner_client, THING, "published")
            await until(lambda: t.status == "published", "owner publishes")
            owners = await store.get(STATUS_KEY)
            await t.disable()
            thing_disabled = await store.get(STATUS_KEY)
            assert owners is not None and thing_disabled is not None
            await mallory.restore([owners])  # the owner never sees the thing's disable
            await set_status(owner_client, THING, "published")
            await until(lambda: t.status == "published", "owner publishes at the same version")
            version = await mallory.version_of(ADDR.thing, b"status")
            fork = EntryRecord.from_bytes(thing_disabled.value, ADDR.thing, b"status").version
            assert fork == version
            real_commit = own.commit

            async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
                if not landed.is_set() and any(w.key == STATUS_KEY for w in writes):
                    landed.set()  # the thing is writing its status back: the owner first
                    await set_status(owner_client, THING, "disabled")
                return await real_commit(writes, **kwargs)

            monkeypatch.setattr(own, "commit", commit)
            await mallory.restore([thing_disabled])  # refused: decided before the owner's

            async def settled() -> bool:
                written_over = await mallory.version_of(ADDR.thing, b"status") > version + 1
                return t.status == "disabled" or written_over

            await until(landed.is_set, "the thing writes its status back")
            await until(settled, "the thing follows the owner, or writes over it")
            assert t.status == "disabled"
            assert await mallory.version_of(ADDR.thing, b"status") == version + 1
        async with ThingClient(Client(store)) as anyone:
            assert await anyone.status(THING) == "disabled"
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "disabled"


async def test_the_owners_status_landing_while_the_thing_registers_is_kept(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store serves the restarting thing the *published* record from before its
    owner disabled it; the thing refuses it and writes *disabled* back. The owner
    publishes the thing again in between (after the refusal, before the write-back's
    commit): the write-back must leave that, and the thing start published."""
    landed = asyncio.Event()
    async with await open_store(url) as store, await open_store(url) as own:
        mallory = Attacker(store)
        owner_client = Client(store, owner)
        published_then = await _published_then_disabled(store, owner, owner_client, device, url)
        newest = await store.get(STATUS_KEY)
        assert newest is not None
        await mallory.restore([published_then])
        real_commit = own.commit

        async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
            if not landed.is_set() and any(w.key == STATUS_KEY for w in writes):
                landed.set()  # the thing writes its status back: the owner's decision first
                await mallory.restore([newest])
                await set_status(owner_client, THING, "published")
            return await real_commit(writes, **kwargs)

        monkeypatch.setattr(own, "commit", commit)
        async with Thing(garden_description(), identity=device, owner=owner.public, store=own) as t:
            await t.register()
            assert landed.is_set()
            assert t.status == "published"
        async with ThingClient(Client(store)) as anyone:
            assert await anyone.status(THING) == "published"


@pytest.mark.parametrize("readings", [0, 3])
async def test_a_deleted_sequence_pointer_does_not_reuse_a_sequence_number(
    url: str, owner: Identity, device: Identity, readings: int
) -> None:
    """While the thing is down its owner's key deletes the attribute's sequence pointer
    (a signed tombstone; or there was never a reading). The restarted thing numbers its
    next reading after the last one in its ring (1 when there is none), never reusing a
    number, and the reading is written."""
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register(publish=True)
            for i in range(readings):
                await t.set("moisture", float(i))
        if readings:
            await Client(store, owner).md(ADDR.thing.name, ADDR.thing.tag).delete(b"a/moisture")
        async with _thing(device, owner, url) as t:
            await t.register()
            assert await t.set("moisture", 50.0) == readings + 1
        async with ThingClient(Client(store)) as reader:
            latest = await reader.read(THING, "moisture")
            assert (latest.seq, latest.value) == (readings + 1, 50.0)


@pytest.mark.parametrize("level", ["owner", "group"])
async def test_a_deleted_level_key_record_is_written_back(
    url: str, owner: Identity, device: Identity, level: str
) -> None:
    """While the thing is down, its owner's key deletes one of its level key records (a
    signed tombstone). The restarted thing keeps the key it trusts and writes the record
    back, so that the owner and the group's members still read what the thing writes at
    that level (a record left deleted: nobody but the thing could read it)."""
    member = Identity.generate("member")
    attribute = {"owner": "secret_code", "group": "group_note"}[level]
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register(publish=True)
            await ThingOwner(Client(store, owner), THING).add_member(member.public)
            await t.set("group_note", "before")  # the thing takes the record naming the member
        md = Client(store, owner).md(ADDR.thing.name, ADDR.thing.tag)
        await md.delete(f"k/{level}".encode())
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.set(attribute, "after the deletion")
        assert (await md.get(f"k/{level}".encode())).value is not None
        readers = [owner] if level == "owner" else [owner, member]
        for who in readers:
            async with ThingClient(Client(store, who)) as reader:
                assert (await reader.read(THING, attribute)).value == "after the deletion"


async def test_a_store_error_while_the_thing_writes_its_status_back_does_not_end_its_watch(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running thing refuses a status record a key granted by mistake wrote, and its
    write-back fails with a store error: the thing keeps its status and goes on following
    its owner's next one."""
    failed = asyncio.Event()
    async with await open_store(url) as store, await open_store(url) as own:
        owner_client = Client(store, owner)
        async with Thing(garden_description(), identity=device, owner=owner.public, store=own) as t:
            await t.register(publish=True)
            real_commit = own.commit

            async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
                if not failed.is_set() and any(w.key == STATUS_KEY for w in writes):
                    failed.set()
                    raise StoreError("the store is gone (for this write)")
                return await real_commit(writes, **kwargs)

            monkeypatch.setattr(own, "commit", commit)
            mistake = Identity.generate("mistake")
            md = owner_client.md(ADDR.thing.name, ADDR.thing.tag)
            await md.set_permissions(mistake.public_sign_key, Action.UPDATE)
            stray = dumps({"s": "disabled", "t": time.time()})
            await Client(store, mistake).md(ADDR.thing.name, ADDR.thing.tag).put(b"status", stray)
            await until(failed.is_set, "the thing tries to write its status back")
            assert t.status == "published"
            await set_status(owner_client, THING, "disabled")
            await until(lambda: t.status == "disabled", "the thing follows its owner")


@pytest.mark.parametrize("while_running", [True, False], ids=["running", "at-registration"])
async def test_a_members_removal_landing_while_the_thing_writes_its_group_key_back_is_kept(
    url: str,
    owner: Identity,
    device: Identity,
    monkeypatch: pytest.MonkeyPatch,
    while_running: bool,
) -> None:
    """The store serves the thing an older group key record (rolled back); the thing
    refuses it and writes the record it trusts back. The owner's removal of a member (a
    new key epoch) lands in between, after the refusal and before the write-back's
    commit: the write-back must leave it, and the thing take the new epoch, so that the
    removed member cannot read Group data written afterwards. (The write-back wrote the
    older epoch one version above the owner's record; the thing kept encrypting under a
    key the removed member holds.)"""
    member, other = Identity.generate("member"), Identity.generate("other")
    group_key = ADDR.thing.entry_key(b"k/group")
    landed = asyncio.Event()
    async with await open_store(url) as store, await open_store(url) as own:
        mallory = Attacker(store)
        group = ThingOwner(Client(store, owner), THING)
        async with Thing(garden_description(), identity=device, owner=owner.public, store=own) as t:
            await t.register(publish=True)
            await group.add_member(member.public)
            await group.add_member(other.public)
            older = await store.get(group_key)
            await group.remove_member(other.public_sign_key)  # epoch 1
            await t.set("group_note", "learns epoch 1")
        assert older is not None
        real_commit = own.commit

        async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
            if not landed.is_set() and any(w.key == group_key for w in writes):
                landed.set()  # the thing writes its group key back: the owner's removal first
                await mallory.restore(newest)  # (the owner is served the newest record)
                await group.remove_member(member.public_sign_key)  # epoch 2
            return await real_commit(writes, **kwargs)

        newest = [r for r in await mallory.snapshot(ADDR.thing.entry_prefix) if r.key == group_key]
        thing = Thing(garden_description(), identity=device, owner=owner.public, store=own)
        async with thing as t:
            if while_running:
                await t.register()
            await mallory.restore([older])  # the rolled-back record, epoch 0, served ...
            monkeypatch.setattr(own, "commit", commit)
            if not while_running:
                await t.register()  # ... at the restart
            await t.set("group_note", "after the removal")
            assert landed.is_set()
            async with ThingClient(Client(store, member)) as m:
                with pytest.raises((AccessDeniedError, TamperedDataError)):
                    await m.read(THING, "group_note")
            async with ThingClient(Client(store, owner)) as mine:
                assert (await mine.read(THING, "group_note")).value == "after the removal"


@pytest.mark.parametrize("served_while_running", [True, False])
async def test_a_group_key_record_at_a_forked_version_does_not_bring_back_a_removed_members_key(
    url: str, owner: Identity, device: Identity, served_while_running: bool
) -> None:
    """The store makes the thing repair its group key record (an older one served) and
    hides that repair from the owner, whose removal of a member then lands at the same
    version; it serves the thing's repair (the removed member's key epoch) again, while
    the thing runs and across its restart. The thing must never go back to that epoch:
    Group data written after the removal stays unreadable to the removed member."""
    member = Identity.generate("member")
    k_group = ADDR.thing.entry_key(b"k/group")
    async with await open_store(url) as store:
        mallory = Attacker(store)
        owner_client = Client(store, owner)
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.publish()
            first = await store.get(k_group)
            await ThingOwner(owner_client, THING).add_member(member.public)
            with_member = await store.get(k_group)
            await t.set("group_note", "while a member")
            assert first is not None and with_member is not None
            await mallory.restore([first])  # older: the thing refuses it and repairs it
            await t.set("group_note", "still a member")
            repaired = await store.get(k_group)
            assert repaired is not None and repaired.value != with_member.value
            await mallory.restore([with_member])  # the owner never sees the repair
            await ThingOwner(owner_client, THING).remove_member(member.public_sign_key)
            removal = await store.get(k_group)
            assert removal is not None
            version = EntryRecord.from_bytes(removal.value, ADDR.thing, b"k/group").version
            fork = EntryRecord.from_bytes(repaired.value, ADDR.thing, b"k/group").version
            assert fork == version  # the thing's repair and the owner's removal
            await t.set("group_note", "after removal 1")  # the thing learns the new epoch
            if served_while_running:  # (the thing then writes the newer one back)
                await mallory.restore([repaired])
                await t.set("group_note", "after removal 2")
        async with ThingClient(Client(store, member)) as m:
            with pytest.raises((AccessDeniedError, TamperedDataError)):
                await m.read(THING, "group_note")
        for n in (3, 4):  # restarted twice: the first restart must not trust it either
            await mallory.restore([repaired])
            async with _thing(device, owner, url) as t:
                await t.register()
                await t.set("group_note", f"after removal {n}")
            async with ThingClient(Client(store, member)) as m:
                with pytest.raises((AccessDeniedError, TamperedDataError)):
                    await m.read(THING, "group_note")
            async with ThingClient(Client(store, owner)) as mine:
                assert (await mine.read(THING, "group_note")).value == f"after removal {n}"


async def test_a_member_entry_written_by_another_key_makes_no_member(
    url: str, owner: Identity, device: Identity
) -> None:
    """Group members count only when the owner wrote them: a key the owner granted
    inserts into the group MD by mistake adds itself; its Group action is rejected."""
    ran: list[str] = []
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("Water", lambda request: ran.append(request.request_id) or 1.0)
        await t.register()
        await t.publish()
        owner_client = Client(store, owner)
        await ThingOwner(owner_client, THING).add_member(Identity.generate("member").public)
        mallory = Identity.generate("mallory")
        group = ADDR.group
        md = owner_client.md(group.name, group.tag)
        await md.set_permissions(mallory.public_sign_key, Action.INSERT)
        own = Client(store, mallory).md(group.name, group.tag)
        await own.insert(f"m/{mallory.public_sign_key.hex()}", b"member")
        async with ThingClient(Client(store, mallory)) as m:
            with pytest.raises(ActionFailedError, match="access denied"):
                await (await m.request(THING, "Water", litres=1)).result(TIMEOUT)
        assert ran == []


async def test_a_status_the_store_drops_is_written_back_as_trusted(
    url: str, owner: Identity, device: Identity
) -> None:
    """While a disabled thing is down the store drops its status record: after the
    restart the thing is still disabled (not *registered* again) and writes that back."""
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.publish()
            await t.disable()
        await store.delete(STATUS_KEY)
        assert await store.get(STATUS_KEY) is None
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "disabled"
        async with ThingClient(Client(store)) as anyone:
            assert await anyone.status(THING) == "disabled"


async def test_a_status_by_a_writer_the_owner_granted_by_mistake_is_not_taken_at_a_restart(
    url: str, owner: Identity, device: Identity
) -> None:
    """The owner grants a key update rights on the thing's MD by mistake; while the
    disabled thing is down that key writes *published* (it verifies: the key may
    write). The restarted thing keeps *disabled*, as the running thing does (see
    test_thing_authority), and writes it back above the stray record."""
    ran: list[str] = []
    async with await open_store(url) as store:
        owner_client = Client(store, owner)
        await _published_then_disabled(store, owner, owner_client, device, url)
        mistake = Identity.generate("mistake")
        md = owner_client.md(ADDR.thing.name, ADDR.thing.tag)
        await md.set_permissions(mistake.public_sign_key, Action.UPDATE)
        stray = await (
            Client(store, mistake)
            .md(ADDR.thing.name, ADDR.thing.tag)
            .put(b"status", dumps({"s": "published", "t": time.time()}))
        )
        async with _thing(device, owner, url) as t:
            t.on_action("CloseValve", lambda request: ran.append(request.request_id))
            await t.register()
            assert t.status == "disabled"
            back = await Client(store).md(ADDR.thing.name, ADDR.thing.tag).get(b"status")
            assert back.version > stray.version and back.signer == device.public_sign_key
            async with ThingClient(Client(store, Identity.generate())) as anyone:
                assert await anyone.status(THING) == "disabled"
                handle = await anyone.request(THING, "CloseValve")
                with pytest.raises(ActionFailedError, match="disabled"):
                    await handle.result(TIMEOUT)
        assert ran == []


async def test_a_key_list_and_description_a_key_granted_by_mistake_rewrote_are_rewritten(
    url: str, owner: Identity, device: Identity
) -> None:
    """While the thing is down, a key the owner granted update rights on its MD by
    mistake writes its key list and description again, the same bytes signed by itself.
    Readers refuse them (only the thing signs its key list; only the thing or its owner
    its description); the restarted thing writes both again, and readers find it."""
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register(publish=True)
        mistake = Identity.generate("mistake")
        md = Client(store, owner).md(ADDR.thing.name, ADDR.thing.tag)
        await md.set_permissions(mistake.public_sign_key, Action.UPDATE)
        forger = Client(store, mistake).md(ADDR.thing.name, ADDR.thing.tag)
        for key in (b"keys", b"desc"):
            await forger.put(key, await md.get_value(key))
        async with ThingClient(Client(store)) as reader:
            with pytest.raises(TamperedDataError, match="signed by"):
                await reader.status(THING)
        async with _thing(device, owner, url) as t:
            await t.register()
        async with ThingClient(Client(store)) as reader:
            assert await reader.status(THING) == "published"


@pytest.mark.parametrize("forged", ["keys", "k/group"])
async def test_a_key_granted_by_mistake_cannot_get_the_group_key_through_the_owner(
    url: str, owner: Identity, device: Identity, forged: str
) -> None:
    """A key the owner granted update rights on the thing's MD by mistake writes a key
    list naming itself as the thing, or a group key record of its own (a key it chose,
    sealed to the owner). The owner's next change of the group (a member removed, one
    added) must not seal the group key to it, nor adopt its key: refused, counted,
    nothing written; a Group value written afterwards stays unreadable to it."""
    member = Identity.generate("member")
    mistake = Identity.generate("mistake")
    async with await open_store(url) as store:
        owner_client = Client(store, owner)
        group = ThingOwner(owner_client, THING)
        async with _thing(device, owner, url) as t:
            await t.register(publish=True)
            await group.add_member(member.public)
            md = owner_client.md(ADDR.thing.name, ADDR.thing.tag)
            await md.set_permissions(mistake.public_sign_key, Action.UPDATE)
            forger = Client(store, mistake).md(ADDR.thing.name, ADDR.thing.tag)
            if forged == "keys":
                doc = loads(await md.get_value(b"keys"), "keys")
                doc["thing"] = mistake.public.to_dict()
                await forger.put(b"keys", dumps(doc))
            else:
                chosen = SecretKey.generate()
                await forger.put(b"k/group", make_key_record(7, chosen, [owner.public]))
            before = await store.get(ADDR.thing.entry_key(b"k/group"))
            with pytest.raises(TamperedDataError):
                await group.remove_member(member.public_sign_key)
            with pytest.raises(TamperedDataError):
                await group.add_member(Identity.generate("other").public)
            assert owner_client.tampered_count >= 2
            assert await store.get(ADDR.thing.entry_key(b"k/group")) == before
            await t.set("group_note", "after the mistake")
            async with ThingClient(Client(store, mistake)) as theirs:
                with pytest.raises((AccessDeniedError, TamperedDataError)):
                    await theirs.read(THING, "group_note")


async def test_a_writer_the_owner_granted_by_mistake_cannot_forge_a_reading(
    url: str, owner: Identity, device: Identity
) -> None:
    """The owner grants a key write rights on the thing's MD by mistake. While the thing
    is down, that key writes a reading as the thing would (the pointer and a ring slot,
    sequence number far ahead): it verifies (the key may write), yet no reader takes it
    for the thing's (read, ring, history; refused, counted), and the restarted thing
    neither takes its sequence number nor archives it under its own signature. A
    reading it writes while the thing runs is not notified to a subscriber."""
    forged_value = 99.0
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register(publish=True)
            for i in range(3):
                await t.set("moisture", float(i))
        mistake = Identity.generate("mistake")
        owner_md = Client(store, owner).md(ADDR.thing.name, ADDR.thing.tag)
        await owner_md.set_permissions(mistake.public_sign_key, Action.UPDATE | Action.INSERT)
        forger = Client(store, mistake).md(ADDR.thing.name, ADDR.thing.tag)

        async def forge(seq: int) -> None:
            forged = dumps({"n": seq, "t": time.time(), "v": forged_value})
            await forger.put(b"a/moisture", forged)
            await forger.put(f"ah/moisture/{seq % 8}", forged)

        await forge(1000)
        async with ThingClient(Client(store)) as reader:
            for read in (
                reader.read(THING, "moisture"),
                reader.history(THING, "moisture"),
                reader.history(THING, "moisture", since=0),
            ):
                with pytest.raises(TamperedDataError, match="not by the thing"):
                    await read
            assert reader.client.tampered_count == 3
        async with _thing(device, owner, url) as t:
            await t.register()
            assert await t.set("moisture", 3.0) == 4  # not 1001
            async with ThingClient(Client(store)) as reader:
                async with reader.subscribe(THING, attribute="moisture") as sub:
                    await forge(5)
                    await t.set("moisture", 4.0)
                    note = await asyncio.wait_for(anext(sub), TIMEOUT)
                    assert (note.seq, note.value) == (5, 4.0)
                    assert note.signer == device.public_sign_key
                for i in range(5, 20):  # the ring wraps twice: archived
                    await t.set("moisture", float(i))
                everything = await reader.history(THING, "moisture", since=0)
                assert [r.value for r in everything] == [float(i) for i in range(20)]


async def test_a_subscription_record_rewritten_by_a_key_granted_by_mistake_replays_nothing(
    url: str, owner: Identity, device: Identity
) -> None:
    """A controller thing keeps a subscription to the garden's alarms. Its owner grants a
    key write rights on the controller's MD by mistake; while the controller is down that
    key rewrites the stored subscription to resume from the start. The restarted
    controller does not get the alarms it handled before again: it goes on from now."""
    received: list[float] = []
    controller = Identity.generate("controller")
    mistake = Identity.generate("mistake")
    ctl_address = ThingAddresses.of("controller-01").thing

    def ctl() -> Thing:
        desc = ThingDescription("controller-01")
        return Thing(desc, identity=controller, owner=owner.public, store=url)

    async with await open_store(url) as store, _thing(device, owner, url) as garden:
        await garden.register(publish=True)
        async with ctl() as c:
            await c.register()
            sub = await c.subscribe(
                THING, topic="VeryDryAlarm", callback=lambda n: received.append(n.value)
            )
            for i in range(3):
                await garden.notify("VeryDryAlarm", float(i))
            await until(lambda: len(received) == 3, "the alarms delivered")
        md = Client(store, owner).md(ctl_address.name, ctl_address.tag)
        await md.set_permissions(mistake.public_sign_key, Action.UPDATE)
        doc = loads(await md.get_value(f"sub/{sub.sid}"), "subscription")
        doc["last"] = 0
        forger = Client(store, mistake).md(ctl_address.name, ctl_address.tag)
        await forger.put(f"sub/{sub.sid}", dumps(doc))
        async with ctl() as c:
            await c.register()
            assert await c.stored_subscriptions() == []  # (none it wrote itself)
            await c.subscribe(
                THING, topic="VeryDryAlarm", callback=lambda n: received.append(n.value)
            )
            await garden.notify("VeryDryAlarm", 3.0)
            await until(lambda: len(received) >= 4, "the next alarm delivered")
            assert [s["id"] for s in await c.stored_subscriptions()] == [sub.sid]
        assert received == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "stored",
    [b"\xff", dumps(["published"]), dumps({"t": 1.0}), dumps({"s": "bogus", "t": 1.0}), None],
    ids=["not-cbor", "not-a-map", "no-status", "unknown-status", "deleted"],
)
async def test_a_status_record_the_thing_cannot_take_does_not_stop_its_restart(
    url: str, owner: Identity, device: Identity, stored: bytes | None
) -> None:
    """While the disabled thing is down its owner's key writes a status record that is
    not one (or deletes it): the thing registers again, keeps *disabled* and writes it
    back, as the running thing passes such a record over."""
    async with await open_store(url) as store:
        owner_client = Client(store, owner)
        await _published_then_disabled(store, owner, owner_client, device, url)
        md = owner_client.md(ADDR.thing.name, ADDR.thing.tag)
        if stored is None:
            await md.delete(b"status")
        else:
            await md.put(b"status", stored)
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "disabled"
        async with ThingClient(Client(store)) as anyone:
            assert await anyone.status(THING) == "disabled"


async def test_a_store_wiped_while_the_thing_was_down_gets_back_what_the_thing_trusts(
    tmp_path: Path, owner: Identity, device: Identity
) -> None:
    """The store loses everything (or is swapped for an empty one) while a disabled thing
    is down; its trust state, kept beside its identity, does not. The thing creates its
    MDs again and writes back what it trusts: still disabled, with its own level keys,
    not a fresh status and fresh keys (a thing new to the store and to its trust state
    takes a short way that reads nothing back; this one must not)."""
    trust = tmp_path / "device.trust.db"
    levels = ("thing", "owner", "group")

    def thing(url: str) -> Thing:
        return Thing(
            garden_description(), identity=device, owner=owner.public, store=url, trust=trust
        )

    async with thing(f"sqlite://{tmp_path}/one.db") as t:
        await t.register(publish=True)
        await t.disable()
        kept = {level: t.trust.value(f"level/{THING}/{level}") for level in levels}
    assert all(kept.values())
    wiped = f"sqlite://{tmp_path}/two.db"
    async with thing(wiped) as t:
        await t.register(publish=True)
        assert t.status == "disabled"
        assert {level: t.trust.value(f"level/{THING}/{level}") for level in levels} == kept
    async with await open_store(wiped) as store:
        assert await ThingClient(Client(store)).status(THING) == "disabled"
        md = Client(store).md(ADDR.thing.name, ADDR.thing.tag)
        for level, record in kept.items():
            assert await md.get_value(f"k/{level}") == record


@pytest.mark.parametrize("publish", [True, False])
async def test_a_new_thing_whose_mds_are_written_to_meanwhile_takes_the_long_way(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch, publish: bool
) -> None:
    """The owner writes the group key into a new thing's MD between its creation and the
    thing's first commit (which writes its entries as new, reading nothing): that commit
    is refused, nothing of it written, and the thing registers the long way, learning
    the owner's key, published only if asked."""
    secret = SecretKey.generate()
    record = make_key_record(0, secret, [owner.public, device.public])
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        create_mds = t.client.create_mds

        async def and_the_owner_writes(*args: Any, **kwargs: Any) -> Any:
            created = await create_mds(*args, **kwargs)
            await Client(store, owner).md(ADDR.thing.name, ADDR.thing.tag).insert("k/group", record)
            return created

        monkeypatch.setattr(t.client, "create_mds", and_the_owner_writes)
        await t.register(publish=publish)
        assert t.status == ("published" if publish else "registered")
        assert t.trust.value(f"level/{THING}/group") == record
        md = Client(store).md(ADDR.thing.name, ADDR.thing.tag)
        assert (await md.get("k/group")).version == 0  # the owner's, not overwritten
        assert (await md.get("k/thing")).signer == device.public_sign_key


async def test_a_new_things_status_set_by_the_owner_meanwhile_is_kept(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner disables a new thing between the creation of its MDs and its first
    commit: that commit, which writes the thing's status as new, is refused, and the
    thing registers the long way, keeping the owner's status (not overwriting it)."""
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        create_mds = t.client.create_mds

        async def and_the_owner_disables(*args: Any, **kwargs: Any) -> Any:
            created = await create_mds(*args, **kwargs)
            md = Client(store, owner).md(ADDR.thing.name, ADDR.thing.tag)
            await md.insert("status", dumps({"s": "disabled", "t": time.time()}))
            return created

        monkeypatch.setattr(t.client, "create_mds", and_the_owner_disables)
        await t.register(publish=True)
        assert t.status == "disabled"
        entry = await Client(store).md(ADDR.thing.name, ADDR.thing.tag).get("status")
        assert (entry.version, entry.signer) == (0, owner.public_sign_key)


async def test_a_header_the_store_garbled_is_repaired_at_registration(
    url: str, owner: Identity, device: Identity
) -> None:
    """Garbage in place of the thing MD's header is not "taken by another identity":
    the thing registers, writes its trusted header back, and readers read it again."""
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.set("moisture", 40.0)
        await store.put(ADDR.thing.header_key, b"garbage")
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.set("moisture", 41.0)
        async with ThingClient(Client(store)) as anyone:
            assert (await anyone.read(THING, "moisture")).value == 41.0


async def test_a_request_that_expired_while_the_thing_was_down_never_runs(
    url: str, owner: Identity, device: Identity
) -> None:
    ran: list[str] = []
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.publish()
        inbox = Client(store, Identity.generate()).md(ADDR.inbox.name, ADDR.inbox.tag)
        rid = secrets.token_hex(8)
        issued = time.time()
        await inbox.insert(f"r/{rid}", dumps({"a": "CloseValve", "t": issued, "exp": issued + 1}))
        await until(lambda: time.time() > issued + 1.5, "the request expired")
        async with _thing(device, owner, url) as t:
            t.on_action("CloseValve", lambda request: ran.append(request.request_id))
            await t.register()
            outbox = Client(store).md(ADDR.outbox.name, ADDR.outbox.tag)
            await until(lambda: _has(outbox, f"r/{rid}"), "a state written")
            state = loads((await outbox.get(f"r/{rid}")).value or b"", "state")
        assert state["s"] == "timed_out"
        assert ran == []


async def test_an_owner_action_result_is_not_in_clear_in_the_store(
    url: str, owner: Identity, device: Identity
) -> None:
    result = "secret-result-4711"
    async with _serving(url, owner, device, lambda request: result) as (store, _, mine):
        assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == result
        raw = b"".join(r.value for r in await store.scan(ADDR.outbox.prefix))
        assert raw and result.encode() not in raw


async def test_a_resumable_request_is_accepted_before_its_handler_starts(
    url: str, owner: Identity, device: Identity
) -> None:
    """For ``resume=True`` handlers *accepted* is written before the handler runs, so
    a thing killed inside the handler's first step finds it again after a restart."""
    seen: list[object] = []
    async with (
        await open_store(url) as store,
        _thing(device, owner, url) as t,
        ThingClient(Client(store, owner)) as mine,
    ):
        outbox = Client(store).md(ADDR.outbox.name, ADDR.outbox.tag)

        async def reboot(request: ActionRequest) -> str:
            try:
                entry = await outbox.get(f"r/{request.request_id}")
                seen.append(loads(entry.value or b"", "state")["s"])
            except NoSuchEntryError:
                seen.append(None)
            return "ok"

        t.on_action("Reboot", reboot, resume=True)
        await t.register()
        await t.publish()
        assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
    assert seen == ["accepted"]


async def test_a_cancellation_while_a_resumable_request_is_accepted_never_runs_it(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For ``resume=True`` handlers *accepted* is written before the handler runs. A
    cancellation handed over while that write is under way (by the inbox scan: the feed
    that delivered the request waits on the write) ends the request *cancelled*, and the
    handler never runs. (The write was made before the request's task: the cancellation
    found no task, ended the request, and the handler ran after it.) The thing's own
    store holds the write until the cancellation has been handed over."""
    ran: list[str] = []
    armed, held, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with (
        await open_store(url) as store,
        await open_store(url) as own,
        ThingClient(Client(store, owner)) as mine,
    ):
        real_commit = own.commit

        async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
            outbox = any(w.key.startswith(ADDR.outbox.prefix) for w in writes)
            if outbox and armed.is_set() and not held.is_set():
                held.set()  # the first state written for the request: *accepted*
                await release.wait()
            return await real_commit(writes, **kwargs)

        monkeypatch.setattr(own, "commit", commit)
        async with Thing(garden_description(), identity=device, owner=owner.public, store=own) as t:
            t.on_action("Reboot", lambda request: ran.append(request.request_id), resume=True)
            await t.register()
            await t.publish()
            armed.set()
            handle = await mine.request(THING, "Reboot")
            rid = handle.request_id
            await until(held.is_set, "the thing writes accepted")
            cancel = Entry(f"c/{rid}".encode(), dumps({"t": time.time()}), 0, owner.public_sign_key)
            await t._on_inbox(cancel)  # as the inbox scan hands it over
            release.set()
            assert (await handle.wait(TIMEOUT)).state == "cancelled"
            await until(lambda: rid not in t._running and rid not in t._handling, "ended")
            assert ran == []


async def test_a_level_key_record_written_while_the_thing_registers_is_not_replaced(
    url: str, owner: Identity, device: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thing whose trust state holds no key of its own and which finds no ``k/thing``
    record makes a key and writes its record only if none is there by then: one written
    between its read and its commit (another process of the same thing registering at
    once) is not replaced, and the registration fails instead of leaving two processes
    of the thing with different keys."""
    key = ADDR.thing.entry_key(b"k/thing")
    armed, held = asyncio.Event(), asyncio.Event()
    async with await open_store(url) as store, await open_store(url) as own:
        async with _thing(device, owner, url) as t:
            await t.register()
        theirs = await store.get(key)
        assert theirs is not None
        await store.delete(key)
        real_commit = own.commit

        async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
            if armed.is_set() and not held.is_set() and any(w.key == key for w in writes):
                held.set()
                await store.put(key, theirs.value)  # the other process's record lands
            return await real_commit(writes, **kwargs)

        monkeypatch.setattr(own, "commit", commit)
        fresh = TrustState.open(tmp_path / "fresh-trust.db")
        armed.set()
        async with Thing(
            garden_description(), identity=device, owner=owner.public, store=own, trust=fresh
        ) as again:
            with pytest.raises(ConflictError):
                await again.register()
        assert held.is_set()
        stored = await store.get(key)
        assert stored is not None
        assert stored.value == theirs.value


async def _has(md: Any, key: str) -> bool:
    try:
        await md.get(key)
    except NoSuchEntryError:
        return False
    return True


# --- 4. cancellations ----------------------------------------------------------------


async def test_only_the_requester_or_owner_cancels(
    url: str, owner: Identity, device: Identity
) -> None:
    release = asyncio.Event()

    async def slow(request: ActionRequest) -> None:
        await release.wait()

    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("CloseValve", slow)
        await t.register()
        await t.publish()
        requester = ThingClient(Client(store, Identity.generate("requester")))
        mallory = Client(store, Identity.generate("mallory"))
        inbox = mallory.md(ADDR.inbox.name, ADDR.inbox.tag)
        handle = await requester.request(THING, "CloseValve", timeout=30)
        await until(lambda: handle.request_id in t._running, "running")
        await inbox.insert(f"c/{handle.request_id}", dumps({"t": time.time()}))
        await until(lambda: t.refused_count == 1, "foreign cancellation refused")
        # counted first, then purged (the purge's commit may queue behind the request's states)
        cancel_key = ADDR.inbox.entry_key(f"c/{handle.request_id}".encode())
        await until(lambda: _gone(store, cancel_key), "foreign cancellation purged")
        assert handle.request_id in t._running  # still running
        release.set()
        assert (await handle.wait(TIMEOUT)).state == "done"
        # the requester's own cancellation works
        release.clear()
        second = await requester.request(THING, "CloseValve", timeout=30)
        await until(lambda: second.request_id in t._running, "running")
        assert (await second.cancel()).state == "cancelled"
        # the request and its cancellation are both purged
        await until(lambda: _inbox_empty(store), "request and cancellation purged")
        await requester.close()


async def test_a_cancellation_before_the_requests_task_began_ends_it_cancelled(
    url: str, owner: Identity, device: Identity
) -> None:
    """The inbox scan and the inbox feed may hand the thing a request and, at once, its
    cancellation (both were in the inbox when the scan read it): the request's task is
    made but has not begun when the cancellation comes. It ends *cancelled*, the handler
    never runs, and the request leaves ``_running``; a task cancelled before its first
    step never ran ``_run`` at all, so nothing wrote a final state (the requester timed
    out) and the request stayed in ``_running`` for ever."""
    ran: list[str] = []

    def reboot(request: ActionRequest) -> str:
        ran.append(request.request_id)
        return "ok"

    async with _serving(url, owner, device, reboot) as (store, t, mine):
        rid = secrets.token_hex(8)
        now = time.time()
        signer = owner.public_sign_key
        request = Entry(
            f"r/{rid}".encode(), dumps({"a": "Reboot", "t": now, "exp": now + 30}), 0, signer
        )
        await t._on_inbox(request)  # taken on: its task made, not begun (no await since)
        assert inspect.getcoroutinestate(t._running[rid].get_coro()) == inspect.CORO_CREATED
        await t._on_inbox(Entry(f"c/{rid}".encode(), dumps({"t": now}), 0, signer))
        await until(lambda: rid not in t._running, "the request ended")
        outbox = Client(store).md(ADDR.outbox.name, ADDR.outbox.tag)
        state = await outbox.get(f"r/{rid}")
        assert state.signer == device.public_sign_key
        assert loads(state.value or b"", "state")["s"] == "cancelled"
        assert ran == []
        # the owner's next request runs
        assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
        assert len(ran) == 1


async def test_a_cancellation_during_the_accepted_write_stops_the_handler(
    url: str, owner: Identity, device: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requester cancels at the very moment the thing writes *accepted* (the
    handler's first step done, its task at work): the handler's task is cancelled too,
    not left running behind a request that ends *cancelled*. The thing's own store
    holds that write until the cancellation has reached the thing."""
    started, stopped, held = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow(request: ActionRequest) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # only a cancellation ends it
        finally:
            stopped.set()

    async with await open_store(url) as store, await open_store(url) as own:
        real_commit = own.commit

        async def commit(writes: Any, **kwargs: Any) -> list[int | Exception]:
            outbox = any(w.key.startswith(ADDR.outbox.prefix) for w in writes)
            if outbox and started.is_set() and not held.is_set():
                held.set()  # the first state after the handler began: *accepted*
                await asyncio.Event().wait()  # until the cancellation lands
            return await real_commit(writes, **kwargs)

        monkeypatch.setattr(own, "commit", commit)
        async with Thing(garden_description(), identity=device, owner=owner.public, store=own) as t:
            t.on_action("CloseValve", slow)
            await t.register()
            await t.publish()
            requester = ThingClient(Client(store, Identity.generate("requester")))
            handle = await requester.request(THING, "CloseValve", timeout=60)
            await until(held.is_set, "the thing writes accepted")
            assert (await handle.cancel()).state == "cancelled"
            await until(stopped.is_set, "the handler's task cancelled")
            await until(lambda: handle.request_id not in t._running, "the request ended")
            await requester.close()


@pytest.mark.parametrize("key", ["r/0123456789abcdef", "d/target/0123456789abcdef"])
@pytest.mark.parametrize("value", [[1, 2], "text", 7])
async def test_an_inbox_record_that_is_not_a_map_is_dropped(
    url: str, owner: Identity, device: Identity, key: str, value: object
) -> None:
    """Anyone may insert into a thing's inbox: a request or desired value that is CBOR
    but not a map is dropped (purged), and the thing goes on serving. (A list once
    ended the thing's inbox task: every later request timed out.)"""
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("Reboot", lambda request: "ok")
        await t.register()
        await t.publish()
        inbox = Client(store, Identity.generate("mallory")).md(ADDR.inbox.name, ADDR.inbox.tag)
        await inbox.insert(key, dumps(value))
        await until(lambda: _inbox_empty(store), "the record purged")
        async with ThingClient(Client(store, owner)) as mine:
            assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"


async def test_a_request_for_an_action_the_thing_does_not_have_is_rejected(
    url: str, owner: Identity, device: Identity
) -> None:
    """Anyone may insert a request into the inbox, also one naming an action the thing
    does not describe: it ends *rejected* with the reason (the requester is told), is
    purged, and the thing goes on serving."""
    async with _serving(url, owner, device, lambda request: "ok") as (store, _, mine):
        inbox = Client(store, Identity.generate("stranger")).md(ADDR.inbox.name, ADDR.inbox.tag)
        outbox = Client(store).md(ADDR.outbox.name, ADDR.outbox.tag)
        rid = secrets.token_hex(8)
        now = time.time()
        await inbox.insert(f"r/{rid}", dumps({"a": "SelfDestruct", "t": now, "exp": now + 60}))
        await until(lambda: _has(outbox, f"r/{rid}"), "the request answered")
        state = await outbox.get(f"r/{rid}")
        assert state.signer == device.public_sign_key
        doc = loads(state.value or b"", "state")
        assert doc["s"] == "rejected"
        assert "SelfDestruct" in doc["m"]
        await until(lambda: _inbox_empty(store), "the request purged")
        assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"


async def test_the_things_own_key_may_request_an_owner_action(
    url: str, owner: Identity, device: Identity
) -> None:
    """A request signed by the thing's own key runs whatever the action's access (here
    an Owner action). Its key is compared by value: a request's signer is decoded from
    the record, never the thing's own key object."""
    async with (
        _serving(url, owner, device, lambda request: "ok") as (store, _, _),
        ThingClient(Client(store, device)) as itself,
    ):
        assert await (await itself.request(THING, "Reboot")).result(TIMEOUT) == "ok"


async def test_a_garbled_inbox_record_does_not_stop_the_inbox_scan(
    url: str, owner: Identity, device: Identity
) -> None:
    """The attacker writes garbage under a key of the thing's inbox while the thing is
    down (no valid record: it fails verification). The inbox scan at the next start
    leaves it out, counted as tampered, and the thing serves the owner's requests. (A
    scan that raised on it ended the thing's inbox task: every request timed out.)"""
    async with await open_store(url) as store:
        async with _thing(device, owner, url) as t:
            await t.register()
            await t.publish()
        await store.put(ADDR.inbox.entry_key(b"r/0123456789abcdef"), b"garbage")
        async with _thing(device, owner, url) as t, ThingClient(Client(store, owner)) as mine:
            t.on_action("Reboot", lambda request: "ok")
            await t.register()
            assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"
            assert t.client.tampered_count >= 1


async def test_only_the_requester_or_owner_cancels_a_request_still_waiting(
    url: str, owner: Identity, device: Identity
) -> None:
    """Requests wait in the inbox while the thing is not published: a stranger's
    cancellation of one is refused (the requester is read from the inbox record), the
    requester's ends it *cancelled*, never run."""
    ran: list[str] = []
    async with await open_store(url) as store, _thing(device, owner, url) as t:
        t.on_action("CloseValve", lambda request: ran.append(request.request_id))
        await t.register()  # registered, not published: requests wait
        requester = ThingClient(Client(store, Identity.generate("requester")))
        inbox = Client(store, Identity.generate("mallory")).md(ADDR.inbox.name, ADDR.inbox.tag)
        first = await requester.request(THING, "CloseValve", timeout=60)
        await inbox.insert(f"c/{first.request_id}", dumps({"t": time.time()}))
        await until(lambda: t.refused_count == 1, "foreign cancellation refused")
        cancel_key = ADDR.inbox.entry_key(f"c/{first.request_id}".encode())
        await until(lambda: _gone(store, cancel_key), "foreign cancellation purged")
        second = await requester.request(THING, "CloseValve", timeout=60)
        assert (await second.cancel()).state == "cancelled"
        await t.publish()
        assert (await first.wait(TIMEOUT)).state == "done"
        assert ran == [first.request_id]
        await requester.close()


async def test_cancellations_of_unknown_requests_are_purged_even_after_a_restart(
    url: str, owner: Identity, device: Identity
) -> None:
    async with await open_store(url) as store:
        mallory = Client(store, Identity.generate("mallory"))
        inbox = mallory.md(ADDR.inbox.name, ADDR.inbox.tag)
        async with _thing(device, owner, url) as t:
            t.on_action("Reboot", lambda request: "ok")
            await t.register()
            await t.publish()
            for _ in range(600):
                await inbox.insert(f"c/{secrets.token_hex(8)}", b"\xa0")
            await until(lambda: _inbox_empty(store), "purged while running")
        # more while the thing is down: purged when it comes back
        for _ in range(600):
            await inbox.insert(f"c/{secrets.token_hex(8)}", b"\xa0")
        async with _thing(device, owner, url) as t:
            t.on_action("Reboot", lambda request: "ok")
            await t.register()
            await until(lambda: _inbox_empty(store), "purged after restart")
            async with ThingClient(Client(store, owner)) as mine:
                assert await (await mine.request(THING, "Reboot")).result(TIMEOUT) == "ok"


async def _gone(store: Store, key: str) -> bool:
    return await store.get(key) is None


async def _inbox_empty(store: Store) -> bool:
    count, _ = await store.usage(ADDR.inbox.entry_prefix)
    return count == 0


@pytest.mark.parametrize("while_running", [True, False], ids=["running", "at-registration"])
async def test_a_status_with_a_decision_time_too_large_for_a_float_is_passed_over(
    url: str, owner: Identity, device: Identity, while_running: bool
) -> None:
    """A key the owner granted update rights on the thing's MD by mistake writes a status
    record whose decision time is an integer too large to be a float (CBOR carries any
    integer): the thing passes it over as a stray record (not a crash in its status
    watch or at its registration), keeps its status, writes it back, and readers see it;
    the owner's next status is followed."""
    async with await open_store(url) as store:
        owner_client = Client(store, owner)
        mistake = Identity.generate("mistake")
        md = owner_client.md(ADDR.thing.name, ADDR.thing.tag)
        stray = dumps({"s": "disabled", "t": 10**400})
        async with _thing(device, owner, url) as t:
            await t.register(publish=True)
            await md.set_permissions(mistake.public_sign_key, Action.UPDATE)
            if while_running:
                written = await (
                    Client(store, mistake).md(ADDR.thing.name, ADDR.thing.tag).put(b"status", stray)
                )

                async def written_back() -> bool:
                    back = await Client(store).md(ADDR.thing.name, ADDR.thing.tag).get(b"status")
                    return back.version > written.version and back.signer == device.public_sign_key

                await until(written_back, "the thing writes its status back over the stray one")
                assert t.status == "published"
        if not while_running:
            await Client(store, mistake).md(ADDR.thing.name, ADDR.thing.tag).put(b"status", stray)
        async with _thing(device, owner, url) as t:
            await t.register()
            assert t.status == "published"
            async with ThingClient(Client(store)) as anyone:
                assert await anyone.status(THING) == "published"
            await set_status(owner_client, THING, "disabled")
            await until(lambda: t.status == "disabled", "the thing follows its owner")
