"""A SAFEthing: register, publish, set attributes, notify topics, serve actions.

::

    async with Thing(description, identity=me, owner=owner_public) as thing:
        @thing.action("OpenValve")
        async def open_valve(request):
            await request.progress(50, "opening")
            return {"opened": True}

        await thing.register()
        await thing.publish()
        await thing.set("moisture", 41.5)
        await thing.notify("VeryDryAlarm", 12.0)

The thing writes only signed entries into its own MDs (see
:mod:`safething.things.layout`). Requests arrive through the inbox feed,
are checked against the action's access type and typed parameters before a
handler runs, and every state change is written to the outbox where the
requester follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from safething.errors import (
    AccessDeniedError,
    ConflictError,
    LimitExceededError,
    NoSuchDataError,
    NoSuchEntryError,
    ReplayedRequestError,
    SafeThingError,
    TamperedDataError,
    ThingError,
)
from safething.net import (
    ANYONE,
    MAX_ENTRIES,
    Action,
    Client,
    Entry,
    EntryWatch,
    Identity,
    MutableData,
    PublicIdentity,
    PublicSignKey,
    SecretKey,
)
from safething.net.permissions import Grantee, PermissionSet
from safething.net.records import MDHeader
from safething.net.trust import TrustState
from safething.resource import AsyncResource, Tasks, cancel_and_wait, wait_ended
from safething.store import Store, open_store
from safething.things import layout
from safething.things.access import KeyRing, key_record_epoch, make_key_record
from safething.things.availability import DEFAULT_HEARTBEAT_S, LIVE, live_record
from safething.things.client import ActionHandle, Subscription, ThingClient, level_of
from safething.things.description import AccessType, ThingDescription
from safething.things.filters import Filter
from safething.things.history import Archive
from safething.things.layout import ThingAddresses
from safething.things.shared import SharedWatches
from safething.things.states import ActionState
from safething.things.values import (
    STATUSES,
    Notification,
    dumps,
    encode_payload,
    finite,
    loads,
    loads_map,
    read_status,
    status_record,
    unauthorised,
)

__all__ = ["ActionRequest", "StoredSubscription", "Thing"]

log = logging.getLogger("safething.things")

_OUTBOX_KEEP = 200
_MAX_SUBSCRIPTIONS = 64
_FIXED_ENTRIES = 7  # desc, keys, status, k/owner, k/group, k/thing, live

Callback = Callable[[Notification], Awaitable[None] | None]


@dataclass
class ActionRequest:
    """What an action handler receives."""

    request_id: str
    """Unique id of this request."""
    action: str
    """Action name."""
    args: dict[str, Any]
    """Arguments, validated against the action's parameters, defaults filled in."""
    requester: PublicSignKey
    """Key that signed the request."""
    deadline: float
    """Unix time after which the requester stops waiting."""
    resumed: bool = field(default=False, kw_only=True)
    """True when this request was interrupted by a shutdown and is handed to a
    ``resume=True`` handler again."""
    _thing: Thing = field(repr=False)
    _reported: bool = field(default=False, repr=False)
    _accepted: bool = field(default=False, repr=False)
    _accepting: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def progress(self, percent: float | None = None, message: str = "") -> None:
        """Report progress (0..100) and/or a message; the requester sees state *running*."""
        self._reported = True
        await self._thing._accept(self)
        await self._thing._write_state(
            self.request_id, ActionState.RUNNING, progress=percent, message=message
        )


@dataclass
class StoredSubscription:
    """A subscription this thing keeps on the network (entry ``sub/<id>``)."""

    sid: str
    thing_id: str
    kind: str
    name: str
    filter: Filter
    last: int
    callback: Callback | None = None
    task: asyncio.Task[None] | None = None

    def to_record(self) -> bytes:
        return dumps(
            {
                "thing": self.thing_id,
                "kind": self.kind,
                "name": self.name,
                "filter": self.filter.to_dict(),
                "last": self.last,
            }
        )


_WRITE_BACK_TRIES = 8
"""How often a thing reads a refused authority record again when another was written
while it wrote the trusted one back (see :meth:`Thing._write_back`)."""


@dataclass(frozen=True, slots=True)
class _StatusMark:
    """The status a thing trusts, with the version of the record it came in and the
    time of the decision that record carries (``t``, the deciding signer's clock).

    Statuses are ordered by version, then by decision time: two records at one version
    exist only when the store hid one writer's record from the other (each wrote past
    the version it had verified), and the later decision wins on every reader, so a
    store that serves the earlier one again rolls nothing back."""

    status: str
    version: int
    decided: float

    def to_bytes(self) -> bytes:
        return dumps({"s": self.status, "v": self.version, "t": self.decided})

    @classmethod
    def from_bytes(cls, raw: bytes) -> _StatusMark:
        if raw.decode("ascii", "replace") in STATUSES:  # an earlier release's: the status alone
            return cls(raw.decode(), -1, 0.0)
        doc = loads(raw, "trusted status")
        return cls(str(doc["s"]), int(doc["v"]), float(doc["t"]))

    def follows(self, other: _StatusMark) -> bool:
        return (self.version, self.decided) > (other.version, other.decided)


class _Batch:
    """Entries of one MD to write in one commit, and what to do once they are written."""

    def __init__(self) -> None:
        self.items: dict[bytes | str, bytes] = {}
        self.versions: dict[bytes | str, int | None] = {}
        self.after: list[Callable[[], None]] = []
        self.written: dict[bytes, Entry] = {}
        """The entries written, by key, once committed (``then`` callbacks may read it)."""

    def put(
        self,
        key: bytes | str,
        data: bytes,
        then: Callable[[], None] | None = None,
        *,
        new: bool = False,
    ) -> None:
        """``data`` under ``key``; ``new``: only if no entry is there (as ``insert``)."""
        self.items[key] = data
        if new:
            self.versions[key] = None
        if then is not None:
            self.after.append(then)

    async def commit(self, md: MutableData, *, fresh: bool = False) -> None:
        """``fresh``: the MD was created just now, so no entry is read first (one that
        exists after all fails the commit with ``ConflictError``)."""
        if not self.items:
            return
        written = await md.put_many(
            self.items,
            versions=self.versions,
            atomic=True,
            assume_new=self.items.keys() if fresh else (),
        )
        self.written.update((entry.key, entry) for entry in written)
        for then in self.after:
            then()


class Thing(AsyncResource):
    """A thing with its own identity, in a store given as a URL or a :class:`Store`.

    ``retention_days``: how long archived history is kept (values older than
    an attribute's or topic's ring; see :mod:`safething.things.history`);
    default 30 days, fewer for a thing with very many attributes and topics.
    ``heartbeat``: seconds between the "I am online" writes of a running thing
    (see :mod:`safething.things.availability`); ``None`` when someone else
    (a gateway, for the devices it bridges) reports availability with
    :meth:`set_availability`.
    """

    def __init__(
        self,
        description: ThingDescription,
        *,
        identity: Identity,
        owner: PublicIdentity | Identity | None = None,
        store: Store | str | None = None,
        retention_days: float | None = None,
        heartbeat: float | None = DEFAULT_HEARTBEAT_S,
        trust: TrustState | str | os.PathLike[str] | None = None,
        shared: SharedWatches | None = None,
        online_since: float | None = None,
    ) -> None:
        """``trust``: where the thing keeps what it verified (highest versions, its
        trusted status, processed request ids) across restarts: a
        :class:`TrustState`, a file path, or ``None`` for the default file of this
        identity in :func:`~safething.net.trust.default_trust_dir` (in memory only
        for a ``memory://`` store, which does not outlive the process either).

        ``shared``: started :class:`~safething.things.shared.SharedWatches` on the
        same store, when this process runs many things (a gateway): the thing follows
        its inbox and its status through them instead of two store watches of its
        own.

        ``online_since``: the availability an earlier object of this thing wrote in
        this process, online since then (a gateway that closed a quiet custodial thing
        and now restores it): kept as it is, not written again, so that a reader sees
        no change."""
        if not isinstance(description, ThingDescription):
            raise TypeError("Thing needs a ThingDescription")
        if not isinstance(identity, Identity):
            raise TypeError("Thing needs the thing's own Identity (identity=...)")
        self.description = description
        self.id = description.id
        self.identity = identity
        self.owner = (
            owner.public if isinstance(owner, Identity) else owner if owner else identity.public
        )
        self.addresses = ThingAddresses.of(self.id)
        self.status = "unregistered"
        self._store_arg = store
        self._shared = shared
        self._trust_arg = trust
        self._trust: TrustState | None = None
        self._own_trust = False
        self.refused_count = 0
        """Inbox entries refused as replayed, expired, unbounded or unauthorised."""
        self._own_store = False
        self._store: Store | None = None
        self._client: Client | None = None
        self._things: ThingClient | None = None
        self._handles: dict[str, MutableData] = {}
        """This thing's MD handles by name (see :meth:`_md`)."""
        self._ring = KeyRing(identity.encryption_key)
        self._seq: dict[bytes, tuple[int, int | None]] = {}
        self._handlers: dict[str, Callable[[ActionRequest], Any]] = {}
        self._desired_handlers: dict[str, Callable[[Any], Any]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._finished: deque[str] = deque()  # outbox states this run wrote, oldest first
        self._cancel_requested: set[str] = set()
        self._requesters: dict[str, PublicSignKey] = {}
        self._handling: set[str] = set()
        # requests delivered again while taken on or running: scanned for once they end
        self._passed_over: set[str] = set()
        self._resumable: set[str] = set()
        self._subs: dict[str, StoredSubscription] = {}
        self._tasks = Tasks(f"{self.id}:")
        self._inbox_task: asyncio.Task[None] | None = None
        self._rescan = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._archive = Archive(self, retention_days=retention_days)
        if heartbeat is not None and not heartbeat > 0:
            raise ValueError("heartbeat must be a positive number of seconds (or None)")
        self._heartbeat = heartbeat
        self._online_since: float | None = online_since
        self._inbox_active = 0
        """Inbox entries being acted on now (see :meth:`idle`)."""

    # --- lifecycle of the object ------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Open the store (if given as a URL). Called by ``async with``."""
        if self._client is not None:
            return
        if isinstance(self._store_arg, Store):
            self._store = self._store_arg
        else:
            self._store = await open_store(self._store_arg)
            self._own_store = True
        if isinstance(self._trust_arg, TrustState):
            self._trust = self._trust_arg
        else:
            try:
                if self._trust_arg is not None:
                    self._trust = TrustState.open(self._trust_arg)
                elif self._store.url.startswith("memory:"):
                    self._trust = TrustState()
                else:
                    self._trust = TrustState.for_identity(self.identity.public_sign_key.hex())
            except BaseException:
                if self._own_store:
                    await self._store.close()
                raise
            self._own_trust = True
        self._client = Client(self._store, self.identity, trust=self._trust)
        self._things = ThingClient(self._client)

    async def close(self) -> None:
        """Stop serving: cancel and await every task; close the store if this thing opened it."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None and self._online_since is not None:
            with contextlib.suppress(SafeThingError):
                await self.set_availability(False, reason="stopped")
        running = list(self._running.items())
        for _, task in running:
            task.cancel()
        # a cancellation of the caller while the tasks end is passed on once this close
        # is done: cut short, it would leave tasks running and the trust state unwritten;
        # swallowed, the caller's owner (the gateway's sweep, stopping) waits forever
        cancelled = await wait_ended([task for _, task in running])  # outcomes: the runners'
        for rid, _ in running:
            self._running.pop(rid, None)
        try:
            await self._tasks.cancel_all()
        except asyncio.CancelledError:
            cancelled = True
        if self._things is not None:
            try:  # it waits for the tasks it cancels too: the same
                await self._things.close()
            except asyncio.CancelledError:
                cancelled = True
        if self._own_store and self._store is not None:
            await self._store.close()
        if self._trust is not None:
            if self._own_trust:
                self._trust.close()
            else:
                self._trust.sync()
        if cancelled:
            raise asyncio.CancelledError

    @property
    def online_since(self) -> float | None:
        """Since when this thing is online, as its availability says (None: offline, or
        not written by this object)."""
        return self._online_since

    def idle(self) -> bool:
        """True when closing this thing now cuts nothing short, so that a new object
        of it, registered later, carries on exactly: no request taken on, running,
        cancelled or passed over, no inbox entry being acted on (a desired value on its
        way to its handler), no write in progress, no stored subscription it delivers,
        no history its archive failed to write (values the ring no longer holds), and
        a status under which the inbox holds nothing waiting (``registered``: requests
        wait there for :meth:`publish`, which only a running thing would notice)."""
        return (
            self.status in ("published", "disabled")
            and not self._running
            and not self._handling
            and not self._passed_over
            and not self._cancel_requested
            and not self._inbox_active
            and not self._write_lock.locked()
            and not any(sub.task is not None for sub in self._subs.values())
            and not self._archive.behind()
        )

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ThingError(f"thing {self.id!r} is not started; use 'async with Thing(...)'")
        return self._client

    @property
    def things(self) -> ThingClient:
        """A :class:`ThingClient` acting as this thing (to use other things)."""
        if self._things is None:
            raise ThingError(f"thing {self.id!r} is not started; use 'async with Thing(...)'")
        return self._things

    @property
    def trust(self) -> TrustState:
        """What this thing verified and keeps across restarts."""
        if self._trust is None:
            raise ThingError(f"thing {self.id!r} is not started; use 'async with Thing(...)'")
        return self._trust

    def _md(self, which: str) -> MutableData:
        """One of this thing's MDs, pinned to the owners it must have: the thing and its
        owner (the group MD: the owner alone). No header in the store can change that.

        The handle is made once per client (every ``set()`` took a new one: the address
        parsed and the owners pinned again, about a tenth of the writer's own work); the
        owners the client trusts are checked against the pinned ones each time, as
        :meth:`Client.md` checks them."""
        client = self.client
        md = self._handles.get(which)
        if md is not None and md.client is client:
            client._check_pinned_owners(md.address)
            return md
        address = getattr(self.addresses, which)
        owners = (
            (self.owner.sign_key,)
            if which == "group"
            else (self.identity.public_sign_key, self.owner.sign_key)
        )
        md = self._handles[which] = client.md(address.name, address.tag, owners=owners)
        return md

    def _authorities(self) -> tuple[PublicSignKey, PublicSignKey]:
        """Who may sign this thing's authority entries (level keys, keys, status)."""
        return (self.identity.public_sign_key, self.owner.sign_key)

    # --- registration ---------------------------------------------------------------

    def _budget(self) -> int:
        d = self.description
        used = _FIXED_ENTRIES + _MAX_SUBSCRIPTIONS
        used += sum(1 + a.history for a in d.attributes if a.dynamic)
        used += sum(1 + t.history for t in d.topics)
        return used

    async def register(self, *, publish: bool = False, online: bool = False) -> None:
        """Create or update the thing's MDs and description; keeps history and subscriptions.

        A new thing starts *registered* (*published* with ``publish=True``); a
        registered or published thing keeps its status across restarts, and a
        registered one is published with ``publish=True``. Starts serving the inbox.
        ``online``: the thing is reachable now (a gateway's thing of a device that has
        just spoken): its availability is written as :meth:`set_availability` writes
        it, as a thing with a heartbeat does at its first registration.

        The entries of the thing's MD that need writing (its key list, level keys,
        description, a new thing's status) are signed one by one and committed
        together. A thing whose four MDs this call created, and of which its trust
        state knows nothing, reads nothing back (see :meth:`_register_new`).
        """
        client = self.client
        budget = self._budget()
        if budget > MAX_ENTRIES:
            raise LimitExceededError(
                f"thing {self.id!r} needs {budget} entries for its histories; an MD holds "
                f"{MAX_ENTRIES}: shorten attribute or topic histories",
                limit=MAX_ENTRIES,
                actual=budget,
            )
        self._archive.check_budget()
        owners = (self.owner.sign_key,)
        grants: tuple[tuple[str, dict[Grantee, Action]], ...] = (
            ("thing", {ANYONE: Action.READ}),
            ("inbox", {ANYONE: Action.READ | Action.INSERT}),
            ("outbox", {ANYONE: Action.READ}),
            ("history", {ANYONE: Action.READ}),
        )
        addresses = [getattr(self.addresses, which) for which, _ in grants]
        created = await client.create_mds(
            [(a.name, a.tag, perms) for a, (_, perms) in zip(addresses, grants, strict=True)],
            owners=owners,
        )
        if all(made is not None for made in created) and self._knows_nothing():
            try:
                await self._register_new(publish, online)
            except ConflictError:  # something was written there meanwhile: the long way
                log.warning("thing %s: its new MDs were written to meanwhile", self.id)
            else:
                await self._serve(online)
                return
        for address, made in zip(addresses, created, strict=True):
            if made is None:  # the address was taken
                record = await client.store.get(address.header_key)
                taken = False
                with contextlib.suppress(SafeThingError):  # unreadable: repaired below
                    header = MDHeader.from_bytes(record.value if record else b"", address)
                    header.verify()
                    taken = not header.is_owner(self.identity.public_sign_key)
                if taken:
                    raise ThingError(
                        f"thing id {self.id!r} is taken by another identity in this store"
                    )
        for which, perms in grants:
            # A header the store swapped in (refused, counted) is replaced by the trusted one.
            await self._md(which).repair_header(permissions=PermissionSet(perms))
        md = self._md("thing")
        batch = _Batch()
        await self._put_if_changed(
            md,
            layout.KEYS,
            {"thing": self.identity.public.to_dict(), "owner": self.owner.to_dict()},
            batch,
        )
        await self._ensure_level_keys(md, batch)
        await self._put_if_changed(md, layout.DESC, self.description.to_dict(), batch)
        await self._restore_status(md, batch, "published" if publish else "registered")
        await batch.commit(md)
        if publish and self.status == "registered":
            await self.publish()
        await self._restore_sequences(md)
        await self._archive.restore(self._streams())
        await self._trim_outbox()
        await self._serve(online)

    async def _restore_status(self, md: MutableData, batch: _Batch, first: str) -> None:
        """At registration: take the stored status if this thing may (see
        :meth:`_status_from` and :class:`_StatusMark`); else write back the one it
        trusts over the record it refused (:meth:`_write_back`: a status written
        meanwhile is decided on in turn), or, trusting none, put ``first`` in ``batch``.
        A stored status that does not verify, with none trusted, fails the registration."""
        for _ in range(_WRITE_BACK_TRIES):
            trusted = self._status_mark()
            over: int | None = None
            try:
                entry: Entry | None = await md.get(layout.STATUS, include_deleted=True)
                assert entry is not None
                over = entry.version
            except NoSuchEntryError:
                entry = None
            except TamperedDataError as e:  # forged, or older than the one verified last
                if trusted is None:
                    raise
                log.warning("thing %s: refused the stored status: %s", self.id, e)
                entry, over = None, self._seen_version(md, layout.STATUS)
            stored = None if entry is None else self._status_from(entry)
            if stored is not None:
                refusal = self._older_status(stored, trusted)
                if refusal is None:
                    self._trust_status(stored)
                    return
                log.warning("thing %s: refused the stored status: %s", self.id, refusal)
            if trusted is None:
                self._put_first_status(batch, first)
                return
            if await self._put_back_status(trusted, over):
                return
        log.warning("thing %s: its status kept changing; keeping the trusted one", self.id)

    def _knows_nothing(self) -> bool:
        """This thing's trust state holds no status and no level key of it (a thing
        whose store was wiped while its trust state was kept takes the long way)."""
        trust = self.trust
        names = [self._status_name(), *(self._level_name(lv) for lv in ("thing", "owner", "group"))]
        trust.load_values(names)  # one statement, not four
        return all(trust.value(name) is None for name in names)

    async def _register_new(self, publish: bool, online: bool) -> None:
        """:meth:`register` of a thing whose MDs were all created just now (their headers
        signed by this client and trusted as signed): nothing to read back or repair, no
        sequence, history or outbox to restore. Its entries (and its availability, when
        it is to be written now) are written as new in one commit; if the store holds
        one after all, ``ConflictError`` and nothing written."""
        md = self._md("thing")
        batch = _Batch()
        batch.put(
            layout.KEYS,
            dumps({"thing": self.identity.public.to_dict(), "owner": self.owner.to_dict()}),
            new=True,
        )
        for level, who in self._level_readers().items():
            self._put_new_level_key(batch, level, who)
        batch.put(layout.DESC, dumps(self.description.to_dict()), new=True)
        self._put_first_status(batch, "published" if publish else "registered", new=True)
        if (online or self._heartbeat is not None) and self._online_since is None:
            since = time.time()
            batch.put(
                LIVE,
                live_record(online=True, since=since, heartbeat=self._heartbeat),
                functools.partial(setattr, self, "_online_since", since),
                new=True,
            )
        await batch.commit(md, fresh=True)
        self._archive.restore_new(self._streams())  # every ring empty; no sequence yet

    async def _serve(self, online: bool) -> None:
        """The end of :meth:`register`: its own view, then its tasks (once), and its
        availability if it is to be written and is not yet."""
        # What this thing knows of itself: all of it written or verified just now.
        self.things.own_view(
            self.addresses,
            self.description,
            self.status,
            self.identity.public,
            self.owner,
            self._ring,
        )
        first = self._inbox_task is None
        if first:
            self._inbox_task = self._tasks.spawn(self._serve_inbox(), "inbox")
            self._tasks.spawn(self._follow_status(), "status")
        beat = first and self._heartbeat is not None
        if (online or beat) and self._online_since is None:
            await self.set_availability(True)
        if beat:
            assert self._heartbeat is not None
            self._tasks.spawn(self._beat(self._heartbeat), "heartbeat")

    async def set_availability(self, online: bool, *, reason: str = "") -> None:
        """Say whether the thing is reachable (a running thing does this itself; a gateway
        for each device it bridges, with ``heartbeat=None``)."""
        was = self._online_since is not None
        if online and not was:
            self._online_since = time.time()
        since = self._online_since if online else time.time()
        assert since is not None
        await self._md("thing").put(
            LIVE,
            live_record(online=online, since=since, heartbeat=self._heartbeat, reason=reason),
        )
        if not online:
            self._online_since = None

    async def _beat(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.set_availability(True)
            except SafeThingError as e:
                log.warning("thing %s: heartbeat not written: %s", self.id, e)

    async def _put_if_changed(self, md: MutableData, key: bytes, doc: Any, batch: _Batch) -> None:
        """Put ``doc`` under ``key`` in ``batch`` unless the stored record is that, signed
        by this thing (readers take the key list only from the thing; another key the
        owner granted write rights by mistake could have written the same bytes)."""
        data = dumps(doc)
        try:
            entry = await md.get(key)
            if entry.value == data and entry.signer == self.identity.public_sign_key:
                return
        except NoSuchEntryError:
            pass
        except TamperedDataError:
            pass  # refused and counted; the write below replaces it
        batch.put(key, data)

    def _level_readers(self) -> dict[str, list[PublicIdentity]]:
        """Who each level key is sealed to."""
        return {
            "thing": [self.identity.public],
            "owner": [self.owner, self.identity.public],
            "group": [self.owner, self.identity.public],
        }

    async def _ensure_level_keys(self, md: MutableData, batch: _Batch) -> None:
        for level, who in self._level_readers().items():
            record = await self._take_level_record(md, level)
            if record is None:  # none stored, none trusted: a new key
                self._put_new_level_key(batch, level, who)
                continue
            self.trust.set_value(self._level_name(level), record)
            if not self._ring.learn(level, record):
                raise ThingError(
                    f"thing {self.id!r}: its {level} key is not sealed to this identity"
                )

    def _put_new_level_key(self, batch: _Batch, level: str, who: list[PublicIdentity]) -> None:
        """A new key of ``level`` (epoch 0) sealed to ``who``, written as new in ``batch``;
        this thing holds and trusts it once the batch is committed."""
        secret = SecretKey.generate()
        record = make_key_record(0, secret, who)
        batch.put(
            f"k/{level}",
            record,
            functools.partial(self._new_level_key, level, secret, record),
            new=True,
        )

    def _new_level_key(self, level: str, secret: SecretKey, record: bytes) -> None:
        self._ring.add(level, 0, secret)
        self.trust.set_value(self._level_name(level), record)

    def _level_name(self, level: str) -> str:
        return f"level/{self.id}/{level}"

    async def _take_level_record(self, md: MutableData, level: str) -> bytes | None:
        """The ``k/<level>`` record this thing is to use: the stored one if it may take it
        (verified, signed by the thing or its owner, of no older key epoch than the
        trusted one, see :meth:`_older_epoch`); else the trusted one, written back over
        the record refused (:meth:`_write_back`: a record written meanwhile, the owner's
        next key, is decided on in turn, never overwritten with the older one). ``None``
        when none is stored and none trusted; ``TamperedDataError`` (counted) for a
        refused record when none is trusted."""
        key = f"k/{level}"
        trusted = self.trust.value(self._level_name(level))
        for _ in range(_WRITE_BACK_TRIES):
            trusted = self.trust.value(self._level_name(level))
            over: int | None = None
            record: bytes | None = None
            try:
                entry = await md.get(key, include_deleted=True)
                over = entry.version
                refused = unauthorised(
                    entry.signer,
                    self._authorities(),
                    f"thing {self.id!r}: {level} key record",
                    str(self.addresses.thing),
                )
                if refused is not None:
                    raise self.client._tampered(refused)
                record = entry.value
            except NoSuchEntryError:
                pass
            except TamperedDataError as e:  # forged, rolled back, or signed by another key
                if trusted is None:
                    raise
                log.warning("thing %s: keeping its %s key: %s", self.id, level, e)
                if over is None:
                    over = self._seen_version(md, key)
            if record is not None and (
                trusted is None or not self._older_epoch(level, record, trusted)
            ):
                return record
            if trusted is None:
                return None
            if await self._write_back(md, key, trusted, over) is not None:
                return trusted
        log.warning("thing %s: its %s key record kept changing; keeping its own", self.id, level)
        return trusted

    async def _refresh_group_key(self) -> None:
        """Follow the owner's changes of the group key (members added or removed); a
        refused record leaves the key this thing trusts in use (and is written over)."""
        try:
            record = await self._take_level_record(self._md("thing"), "group")
        except SafeThingError as e:
            log.warning("thing %s: keeping its group key: %s", self.id, e)
            return
        if record is not None:
            self._ring.learn("group", record)
            self.trust.set_value(self._level_name("group"), record)

    def _seen_version(self, md: MutableData, key: bytes | str) -> int:
        """The version a write over a stored record that failed verification must find:
        the one this thing verified last (what :meth:`MutableData.put_many` counts such
        a record as)."""
        raw = key.encode() if isinstance(key, str) else key
        return max(self.trust.entry_version(md.address.entry_key(raw)), 0)

    async def _write_back(
        self, md: MutableData, key: bytes | str, value: bytes, over: int | None
    ) -> Entry | None:
        """Write ``value`` (what this thing trusts) back over the stored record it
        refused, found at version ``over`` (``None``: none was there), and over that one
        only; ``None``, nothing written, if another was written meanwhile (the owner's
        next decision: the caller reads it and decides again; overwritten, the older
        decision would win: a status the owner set, or a member's removal, lost)."""
        try:
            (entry,) = await md.put_many({key: value}, versions={key: over})
        except ConflictError:
            log.info("thing %s: %r changed before it was written back", self.id, key)
            return None
        return entry

    def _older_epoch(self, level: str, record: bytes, trusted: bytes) -> bool:
        """Whether a verified ``k/<level>`` record is of an older key epoch than the one
        this thing trusts: counted as tampering. Both the thing and its owner sign these
        records, each one version past the one it verified, so a store that hides one's
        record from the other gets two at one version; the later epoch wins, else the
        key of a removed member would come back (after a restart: the trusted record is
        the one read then)."""
        found, kept = key_record_epoch(record), key_record_epoch(trusted)
        if found >= kept:
            return False
        self.client._tampered(
            TamperedDataError(
                f"thing {self.id!r}: {level} key record of epoch {found}, older than the "
                f"epoch {kept} it trusts; keeping that one",
                address=str(self.addresses.thing),
            )
        )
        return True

    async def _restore_sequences(self, md: MutableData) -> None:
        pointers = [layout.attr_key(a.name) for a in self.description.attributes if a.dynamic]
        pointers += [layout.event_pointer(t.name) for t in self.description.topics]
        for pointer in pointers:
            self._seq[pointer] = await self._read_pointer(md, pointer, 0)

    async def _read_pointer(
        self, md: MutableData, pointer: bytes, seq: int
    ) -> tuple[int, int | None]:
        """The sequence number and version of a stored sequence pointer, which only this
        thing writes. One the store forged or rolled back, one signed by another key (a
        writer the owner granted update rights on the MD by mistake) or one that is no
        pointer: :meth:`_recover_pointer` from ``seq`` instead."""
        try:
            entry = await md.get(pointer, include_deleted=True)
        except NoSuchEntryError:
            return 0, None
        except TamperedDataError:  # refused, counted: build on what this thing trusts
            return await self._recover_pointer(md, pointer, seq)
        if entry.signer == self.identity.public_sign_key:
            with contextlib.suppress(SafeThingError, KeyError, TypeError, ValueError):
                return int(loads(entry.value or b"", "pointer")["n"]), entry.version
        log.warning("thing %s: %r is no sequence pointer of this thing", self.id, pointer)
        return await self._recover_pointer(md, pointer, seq)

    async def _recover_pointer(
        self, md: MutableData, pointer: bytes, seq: int
    ) -> tuple[int, int | None]:
        """A sequence pointer the store forged or rolled back: the highest sequence number
        in the verified history ring (its slots this thing signed), and the version this
        thing verified last (the next write goes past it and replaces the bad record)."""
        ring = pointer + b"/" if pointer.startswith(b"e/") else b"ah/" + pointer[2:] + b"/"
        me = self.identity.public_sign_key
        for key, entry in (await md.entries(skip_tampered=True)).items():
            if key.startswith(ring) and entry.value is not None and entry.signer == me:
                with contextlib.suppress(SafeThingError, KeyError, TypeError, ValueError):
                    seq = max(seq, int(loads(entry.value, "history slot")["n"]))
        version = self.trust.entry_version(md.address.entry_key(pointer))
        return seq, (version if version >= 0 else None)

    def _streams(self) -> dict[bytes, tuple[str, str, str | None, int]]:
        """Ring pointer -> (kind, name, level, ring size) of every archived stream."""
        d = self.description
        streams = {
            layout.attr_key(a.name): ("a", a.name, level_of(a.access), a.history)
            for a in d.attributes
            if a.dynamic
        }
        for t in d.topics:
            streams[layout.event_pointer(t.name)] = ("e", t.name, level_of(t.access), t.history)
        return streams

    async def _set_status(self, status: str) -> None:
        """Write ``status``, decided now."""
        when = time.time()
        entry = await self._md("thing").put(layout.STATUS, status_record(status, when))
        self._trust_status(_StatusMark(status, entry.version, when))

    async def _put_back_status(self, trusted: _StatusMark, over: int | None) -> bool:
        """Write the trusted status back over the record refused at version ``over``
        (see :meth:`_write_back`); it keeps the time it was decided, so that it never
        outranks a later decision. False if another record was written meanwhile."""
        record = status_record(trusted.status, trusted.decided)
        entry = await self._write_back(self._md("thing"), layout.STATUS, record, over)
        if entry is None:
            return False
        self._trust_status(_StatusMark(trusted.status, entry.version, trusted.decided))
        return True

    def _put_first_status(self, batch: _Batch, status: str, *, new: bool = False) -> None:
        decided = time.time()
        entries = batch.written  # (not the batch: it holds this callback, and frozen
        # cycles are never freed, see the gateway's gc.freeze)

        def written() -> None:
            self._trust_status(_StatusMark(status, entries[layout.STATUS].version, decided))

        batch.put(layout.STATUS, status_record(status, decided), written, new=new)

    def _status_name(self) -> str:
        return f"status/{self.id}"

    def _status_mark(self) -> _StatusMark | None:
        raw = self.trust.value(self._status_name())
        return None if raw is None else _StatusMark.from_bytes(raw)

    def status_trusted(self) -> str:
        """The last status this thing verified or wrote ("registered" if none)."""
        mark = self._status_mark()
        return "registered" if mark is None else mark.status

    def _trust_status(self, mark: _StatusMark) -> None:
        if mark.status not in STATUSES:
            raise ValueError(f"unknown status {mark.status!r}")
        self.trust.set_value(self._status_name(), mark.to_bytes())
        self.status = mark.status
        self._rescan.set()

    async def publish(self) -> None:
        """Make the thing operative: pending requests are served from now on."""
        self._need_registered()
        await self._set_status("published")

    async def disable(self) -> None:
        """Stop accepting requests (they end *rejected*); data stays readable."""
        self._need_registered()
        await self._set_status("disabled")

    def _need_registered(self) -> None:
        if self.status == "unregistered":
            raise ThingError(f"thing {self.id!r} is not registered; call register() first")

    # --- data -----------------------------------------------------------------------

    async def set(self, attribute: str, value: Any) -> int:
        """Publish a new value of a dynamic attribute; returns its sequence number."""
        return (await self.set_many({attribute: value}))[attribute]

    async def set_many(self, values: Mapping[str, Any]) -> dict[str, int]:
        """Publish new values of several dynamic attributes in one signed, atomic commit
        (a reading of several sensors); returns each one's sequence number.

        Every value is checked first: if one is refused, nothing is written.
        """
        self._need_registered()
        if not values:
            raise ValueError("set_many needs at least one attribute")
        items: list[tuple[bytes, Callable[[int], bytes], Any, str | None]] = []
        for attribute, value in values.items():
            attr = self.description.attribute(attribute)
            if not attr.dynamic:
                raise ValueError(
                    f"attribute {attribute!r} is static; its value is in the description"
                )
            clean = attr.schema.validate(value, field=f"attribute {attribute!r}")
            items.append(
                (
                    layout.attr_key(attribute),
                    functools.partial(layout.attr_history_key, attribute, size=attr.history),
                    clean,
                    level_of(attr.access),
                )
            )
        seqs = await self._append(items)
        return dict(zip(values, seqs, strict=True))

    async def notify(self, topic: str, data: Any = None) -> int:
        """Append an event to ``topic``'s history; subscribers are notified. Returns its seq."""
        self._need_registered()
        spec = self.description.topic(topic)
        clean = spec.validate(data)
        pointer = layout.event_pointer(topic)
        slot = functools.partial(layout.event_key, topic, size=spec.history)
        (seq,) = await self._append([(pointer, slot, clean, level_of(spec.access))])
        return seq

    async def _append(
        self, items: Sequence[tuple[bytes, Callable[[int], bytes], Any, str | None]]
    ) -> list[int]:
        """For each ``(pointer, slot, value, level)``: claim the next sequence number with
        a compare-and-set on ``pointer`` (so two writers never reuse one) and fill its
        history slot ``slot(seq)``; all of them in one atomic commit."""
        md = self._md("thing")
        async with self._write_lock:
            if any(level == "group" for _, _, _, level in items):
                await self._refresh_group_key()
            for _ in range(64):
                t = time.time()
                writes: dict[bytes | str, bytes | str] = {}
                versions: dict[bytes | str, int | None] = {}
                slots: list[bytes] = []
                seqs: list[int] = []
                for pointer, slot, value, level in items:
                    seq, version = self._seq.get(pointer, (0, None))
                    data = encode_payload(
                        seq=seq + 1, t=t, value=value, level=level, ring=self._ring
                    )
                    writes[pointer] = data
                    slots.append(slot(seq + 1))
                    writes[slots[-1]] = data
                    versions[pointer] = version
                    seqs.append(seq + 1)
                try:
                    # A slot this thing has not written or read since it started is new
                    # (register() reads the stored ones): not read first (one store read
                    # less per reading while a ring fills; the store refuses one that
                    # exists after all, and it is read then).
                    entries = await md.put_many(
                        writes, versions=versions, atomic=True, assume_new=slots
                    )
                except ConflictError:
                    for pointer, _, _, _ in items:
                        seq, _ = self._seq.get(pointer, (0, None))
                        self._seq[pointer] = await self._read_pointer(md, pointer, seq)
                    continue
                written = {entry.key: entry.version for entry in entries}
                for (pointer, _, value, _), seq in zip(items, seqs, strict=True):
                    self._seq[pointer] = (seq, written[pointer])
                    await self._archive.record(pointer, seq, t, value)
                return seqs
        raise ConflictError(items[0][0].decode(), expected=0, current=0)

    # --- handlers -------------------------------------------------------------------

    def action(
        self, name: str, *, resume: bool = False
    ) -> Callable[[Callable[[ActionRequest], Any]], Callable[[ActionRequest], Any]]:
        """Decorator: ``@thing.action("OpenValve") async def handler(request): ...``.

        A request runs at most once: one interrupted by a shutdown ends *failed*
        when the thing comes back. With ``resume=True`` it is handed to the
        handler again instead (``request.resumed`` is true): for handlers that
        are idempotent by request id, such as a gateway forwarding it to a device
        that deduplicates by id.
        """
        self.description.action(name)

        def register(fn: Callable[[ActionRequest], Any]) -> Callable[[ActionRequest], Any]:
            self._handlers[name] = fn
            if resume:
                self._resumable.add(name)
            else:
                self._resumable.discard(name)
            self._rescan.set()  # requests that arrived before the handler can run now
            return fn

        return register

    def on_action(
        self, name: str, handler: Callable[[ActionRequest], Any], *, resume: bool = False
    ) -> None:
        """Same as the decorator, for plain calls."""
        self.action(name, resume=resume)(handler)

    def on_desired(self, attribute: str, handler: Callable[[Any], Any]) -> None:
        """Called with a new desired value before it becomes the reported value;
        raise to refuse it."""
        attr = self.description.attribute(attribute)
        if not attr.writable:
            raise ValueError(f"attribute {attribute!r} is not writable")
        self._desired_handlers[attribute] = handler

    # --- using other things ---------------------------------------------------------

    async def request(
        self, thing_id: str, action: str, /, *, timeout: float | None = None, **args: Any
    ) -> ActionHandle:
        """Request an action of another thing (signed by this thing)."""
        return await self.things.request(thing_id, action, timeout=timeout, **args)

    async def subscribe(
        self,
        thing_id: str,
        *,
        topic: str | None = None,
        attribute: str | None = None,
        filter: Filter | str | None = None,
        callback: Callback,
    ) -> StoredSubscription:
        """Subscribe and keep the subscription on the network.

        Subscribing again with the same target and filter (e.g. after a
        restart) resumes where the last run stopped: missed notifications
        are delivered first, in order, without duplicates.
        """
        self._need_registered()
        if (topic is None) == (attribute is None):
            raise ValueError("subscribe to exactly one of topic= or attribute=")
        kind, name = ("event", topic) if topic is not None else ("attribute", attribute)
        assert name is not None
        parsed = (
            Filter.parse(filter) if isinstance(filter, str) else (filter or Filter.parse("any"))
        )
        sid = hashlib.sha256(
            f"{thing_id}|{kind}|{name}|{dumps(parsed.to_dict()).hex()}".encode()
        ).hexdigest()[:16]
        if sid in self._subs and self._subs[sid].task is not None:
            raise ValueError(f"already subscribed to {kind} {name!r} of {thing_id!r}")
        md = self._md("thing")
        try:
            last = self._stopped_at(await md.get(f"sub/{sid}"))
        except NoSuchEntryError:
            if len(self._subs) >= _MAX_SUBSCRIPTIONS:
                raise LimitExceededError(
                    f"a thing keeps at most {_MAX_SUBSCRIPTIONS} subscriptions",
                    limit=_MAX_SUBSCRIPTIONS,
                    actual=len(self._subs) + 1,
                ) from None
            last = -1
        stored = StoredSubscription(sid, thing_id, kind, name, parsed, last)
        stored.callback = callback
        stream = self.things.subscribe(
            thing_id,
            topic=topic,
            attribute=attribute,
            filter=parsed,
            after=None if stored.last < 0 else stored.last,
        )
        await stream.start()
        if stored.last < 0:
            stored.last = stream.last
            await md.put(f"sub/{sid}", stored.to_record())
        self._subs[sid] = stored
        stored.task = self._tasks.spawn(self._deliver(stored, stream), f"sub-{sid}")
        return stored

    def _stopped_at(self, entry: Entry) -> int:
        """Where a stored subscription stopped: the ``last`` of a record this thing wrote.
        One signed by another key (one the owner granted write rights on the thing's MD
        by mistake), or no subscription record: -1, it goes on from now (rewritten then),
        never delivering again what it delivered before."""
        if entry.signer == self.identity.public_sign_key and entry.value is not None:
            with contextlib.suppress(SafeThingError, KeyError, TypeError, ValueError):
                return int(loads(entry.value, "subscription")["last"])
        log.warning("thing %s: ignoring the stored record of subscription %s", self.id, entry.key)
        return -1

    async def _deliver(self, stored: StoredSubscription, stream: Subscription) -> None:
        md = self._md("thing")
        try:
            async for note in stream:
                try:
                    result = stored.callback(note) if stored.callback else None
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("subscription callback of %s failed", self.id)
                stored.last = note.seq
                await md.put(f"sub/{stored.sid}", stored.to_record())
        finally:
            await stream.close()

    async def unsubscribe(self, sub: StoredSubscription) -> None:
        """Stop and forget a stored subscription."""
        cancelled = await cancel_and_wait(sub.task, log=log)
        self._subs.pop(sub.sid, None)
        with contextlib.suppress(NoSuchEntryError):
            await self._md("thing").purge(f"sub/{sub.sid}")
        if cancelled:  # the caller's cancellation, passed on now that all has ended
            raise asyncio.CancelledError

    async def stored_subscriptions(self) -> list[dict[str, Any]]:
        """The subscription records this thing kept in its MD (those it wrote)."""
        result = []
        me = self.identity.public_sign_key
        for key, entry in (await self._md("thing").entries()).items():
            if key.startswith(b"sub/") and entry.value is not None and entry.signer == me:
                with contextlib.suppress(SafeThingError):
                    doc = loads(entry.value, "subscription")
                    if isinstance(doc, dict):
                        result.append({**doc, "id": key[4:].decode()})
        return result

    async def _follow_status(self) -> None:
        """The owner may publish or disable the thing (``safething thing publish``)."""
        md = self._md("thing")
        shared = self._shared
        watch = (
            md.watch_key(layout.STATUS)
            if shared is None
            else EntryWatch(md, shared.status(self.addresses), (layout.STATUS,))
        )
        async with watch as feed:
            # The watch starts now: a status written since register() read it (the owner
            # publishing a thing that has just started) is read once here.
            try:
                entry = await md.get(layout.STATUS)
                await self._put_back(self._take_status(entry), entry)
            except SafeThingError as e:  # none, refused (counted), or no store: the watch
                log.debug("thing %s: status not read again (%s)", self.id, e)
            async for entry in feed:
                await self._put_back(self._take_status(entry), entry)

    async def _put_back(self, trusted: _StatusMark | None, refused: Entry) -> None:
        """Write back the status this thing trusts over the record it refused (if any),
        and over that record only: a status written since (the owner's next decision,
        landing while this one was refused) is the watch's next change, never
        overwritten here with the older decision."""
        if trusted is None:
            return
        try:
            await self._put_back_status(trusted, refused.version)
        except SafeThingError as e:
            log.warning("thing %s: could not write its status back: %s", self.id, e)

    def _status_from(self, entry: Entry) -> _StatusMark | None:
        """The status a verified status entry carries, if it is one this thing may take:
        a known status, signed by the thing or its owner (not by a key the owner granted
        update rights on the MD); ``None``, logged, if not."""
        if entry.key != layout.STATUS or entry.value is None:
            return None
        try:
            status, decided = read_status(entry.value)
        except SafeThingError as e:
            log.warning("thing %s: ignoring a malformed status: %s", self.id, e)
            return None
        mark = _StatusMark(status, entry.version, decided)
        if entry.signer not in self._authorities():
            log.warning("thing %s: ignoring a status signed by neither it nor its owner", self.id)
            return None
        if mark.status not in STATUSES:
            log.warning("thing %s: ignoring an unknown status %r", self.id, mark.status)
            return None
        return mark

    def _take_status(self, entry: Entry) -> _StatusMark | None:
        """Follow a status entry the owner (or this thing) signed, if it is newer than the
        trusted one (see :class:`_StatusMark`). Refuse one decided earlier at its version,
        and pass over one it may not take (:meth:`_status_from`), a deletion too: each
        returns the trusted status, to be written back over it for the other readers
        (who refuse a status signed by neither the thing nor its owner, and find no
        thing without a status)."""
        if entry.key != layout.STATUS:
            return None
        mark = self._status_from(entry)
        trusted = self._status_mark()
        if mark is None:
            return trusted
        if self._older_status(mark, trusted) is not None:
            return trusted
        if mark != trusted:
            if mark.status != self.status:
                log.info("thing %s: status %s -> %s", self.id, self.status, mark.status)
            self._trust_status(mark)
        return None

    def _older_status(
        self, mark: _StatusMark, trusted: _StatusMark | None
    ) -> TamperedDataError | None:
        """The refusal, counted, of a verified status record that neither follows the
        trusted one (see :class:`_StatusMark`) nor is it; ``None`` if it may be taken."""
        if trusted is None or mark == trusted or mark.follows(trusted):
            return None
        return self.client._tampered(
            TamperedDataError(
                f"thing {self.id}: a status record at version {mark.version} decided "
                f"before the one trusted (version {trusted.version}, a store that forked "
                f"the status); keeping {trusted.status!r}",
                address=str(self.addresses.thing),
            )
        )

    # --- serving the inbox ----------------------------------------------------------

    async def _serve_inbox(self) -> None:
        inbox = self._md("inbox")
        shared = self._shared
        watch = inbox.watch() if shared is None else EntryWatch(inbox, shared.inbox(self.addresses))
        async with watch as feed:
            feed_task = self._tasks.spawn(self._consume(feed), "inbox-feed")
            try:
                while True:
                    self._rescan.clear()
                    await self._scan_inbox(inbox)
                    await self._rescan.wait()
            finally:
                if await cancel_and_wait(feed_task, log=log):
                    raise asyncio.CancelledError  # (cancelled while waiting for the feed)

    async def _consume(self, feed: Any) -> None:
        async for entry in feed:
            await self._on_inbox(entry)

    async def _scan_inbox(self, inbox: MutableData) -> None:
        entries = await inbox.entries(skip_tampered=True)
        for _, entry in sorted(entries.items(), key=lambda kv: kv[0]):
            await self._on_inbox(entry)

    async def _on_inbox(self, entry: Entry) -> None:
        self._inbox_active += 1
        try:
            await self._act_on(entry)
        finally:
            self._inbox_active -= 1

    async def _act_on(self, entry: Entry) -> None:
        try:
            key = entry.key.decode()
            if entry.value is None:
                return
            if key.startswith("r/"):
                await self._on_request(key[2:], entry)
            elif key.startswith("c/"):
                await self._on_cancel(key[2:], entry)
            elif key.startswith("d/"):
                await self._on_desired(key, entry)
            else:
                await self._md("inbox").purge(entry.key)
        except asyncio.CancelledError:
            raise
        except ReplayedRequestError as e:
            await self._refuse(entry, e)
        except (SafeThingError, ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            log.warning("thing %s: dropping bad inbox entry %r: %s", self.id, entry.key, e)
            with contextlib.suppress(SafeThingError):
                await self._md("inbox").purge(entry.key)

    async def _refuse(self, entry: Entry, error: ReplayedRequestError) -> None:
        """Count a refused inbox record and purge it."""
        self.refused_count += 1
        self.client._tampered(error)
        with contextlib.suppress(SafeThingError):
            await self._md("inbox").purge(entry.key)

    async def _allowed(self, access: AccessType, signer: PublicSignKey) -> bool:
        if signer == self.identity.public_sign_key:
            return True
        if access == AccessType.ALL:
            return True
        if access == AccessType.OWNER:
            return signer == self.owner.sign_key
        if access == AccessType.GROUP:
            return signer == self.owner.sign_key or signer in await self._members()
        return False

    async def _members(self) -> frozenset[PublicSignKey]:
        group = self.addresses.group
        md = self.client.md(group.name, group.tag, owner=self.owner.sign_key)
        try:
            entries = await md.entries(skip_tampered=True)
        except NoSuchDataError:
            return frozenset()
        return frozenset(
            PublicSignKey.from_hex(k[2:].decode())
            for k, e in entries.items()
            if k.startswith(b"m/") and e.signer == self.owner.sign_key
        )

    def _check_lifetime(self, rid: str, doc: dict[str, Any], now: float) -> float:
        """The request's expiry; ``ReplayedRequestError`` unless it is bounded and was
        issued after this thing's trust state began."""
        issued, expires = finite(doc.get("t")), finite(doc.get("exp"))
        where = str(self.addresses.inbox)
        if issued is None or expires is None:  # (or NaN, infinite, too large for a float)
            raise ReplayedRequestError(
                f"thing {self.id!r}: request {rid} has no issue time or expiry; refused",
                address=where,
            )
        if (
            expires - issued > layout.MAX_REQUEST_LIFETIME_S
            or expires > now + layout.MAX_REQUEST_LIFETIME_S + layout.CLOCK_SKEW_S
        ):
            raise ReplayedRequestError(
                f"thing {self.id!r}: request {rid} expires too far ahead "
                f"(at most {layout.MAX_REQUEST_LIFETIME_S:g} s); refused",
                address=where,
            )
        if self.trust.durable and issued < self.trust.created:
            raise ReplayedRequestError(
                f"thing {self.id!r}: request {rid} was issued before this thing's trust "
                "state began (it may have run already); refused",
                address=where,
            )
        return expires

    async def _on_processed(self, rid: str, entry: Entry) -> bool:
        """A request this thing already took on is in the inbox again: a replay, or one
        interrupted by a shutdown (its state is not final). Neither runs again, except
        an interrupted one whose handler is resumable (True)."""
        state = None
        with contextlib.suppress(NoSuchEntryError, SafeThingError, KeyError, TypeError):
            outbox = await self._md("outbox").get(f"r/{rid}")
            if outbox.signer == self.identity.public_sign_key:
                state = loads_map(outbox.value or b"", "state").get("s")
        if state in (ActionState.ACCEPTED, ActionState.RUNNING):
            with contextlib.suppress(SafeThingError, KeyError, TypeError):
                if str(loads_map(entry.value or b"", "request").get("a")) in self._resumable:
                    return True
            await self._finish(
                rid,
                ActionState.FAILED,
                message="interrupted by a restart; not run again (at most once)",
            )
            return False
        try:
            await self._md("inbox").get(f"r/{rid}")
        except NoSuchEntryError:
            return False  # a late second delivery of one just served and purged
        raise ReplayedRequestError(
            f"thing {self.id!r}: request {rid} was already processed (replayed)",
            address=str(self.addresses.inbox),
        )

    def _mark_processed(self, rid: str, expires: float) -> None:
        """Durably remember ``rid`` until it expires, before acting on it."""
        self.trust.mark_processed(self.id, rid, expires + layout.CLOCK_SKEW_S)
        self.trust.sync()

    async def _on_request(self, rid: str, entry: Entry) -> None:
        # The inbox scan and its feed may deliver one entry twice at once: one handles it.
        # A delivery passed over here may be a replay written while the request was
        # ending (after its purge, before it left ``_running``): the inbox is scanned
        # again once it ends, so a record still there is refused and purged, not left.
        if rid in self._running or rid in self._handling:
            self._passed_over.add(rid)
            return
        self._handling.add(rid)
        try:
            await self._take_request(rid, entry)
        except ReplayedRequestError as e:
            # refused and purged while still handled: a second delivery meanwhile (the
            # inbox scan) is passed over, not counted as a second replay
            await self._refuse(entry, e)
        finally:
            self._handling.discard(rid)
            self._scan_if_passed_over(rid)

    def _scan_if_passed_over(self, rid: str) -> None:
        if rid in self._passed_over and rid not in self._running and rid not in self._handling:
            self._passed_over.discard(rid)
            self._rescan.set()

    async def _take_request(self, rid: str, entry: Entry) -> None:
        resumed = False
        if self.trust.processed(self.id, rid):
            if not await self._on_processed(rid, entry):
                return
            resumed = True
        doc = loads_map(entry.value or b"", "request")
        name = str(doc.get("a"))
        now = time.time()
        try:
            deadline = self._check_lifetime(rid, doc, now)
        except ReplayedRequestError as e:
            self.refused_count += 1
            self.client._tampered(e)
            await self._finish(rid, ActionState.REJECTED, message=str(e))
            return
        try:
            spec = self.description.action(name)
        except SafeThingError as e:
            await self._finish(rid, ActionState.REJECTED, message=str(e))
            return
        if self.status == "disabled":
            await self._finish(rid, ActionState.REJECTED, message=f"thing {self.id!r} is disabled")
            return
        if self.status != "published":
            return  # waits in the inbox until publish()
        if now > deadline:
            await self._finish(
                rid, ActionState.TIMED_OUT, message="request expired before it was served"
            )
            return
        if rid in self._cancel_requested:
            await self._finish(rid, ActionState.CANCELLED, message="cancelled before it started")
            return
        if not await self._allowed(spec.access, entry.signer):
            await self._finish(
                rid,
                ActionState.REJECTED,
                message=f"access denied: action {name} is for {spec.access.name.lower()} access",
            )
            return
        try:
            if "x" in doc:
                args = loads(self.identity.encryption_key.unseal(doc["x"]), "arguments")
            else:
                args = doc.get("args", {})
            clean = spec.validate_args(args)
        except (SafeThingError, ValueError, TypeError) as e:
            await self._finish(rid, ActionState.REJECTED, message=str(e))
            return
        handler = self._handlers.get(name)
        if handler is None:  # not yet: registering the handler rescans the inbox
            log.debug("thing %s: request %s waits for a %s handler", self.id, rid, name)
            return
        enc = doc.get("enc") if level_of(spec.access) is not None else None
        request = ActionRequest(rid, name, clean, entry.signer, deadline, self, resumed=resumed)
        self._mark_processed(rid, deadline)  # at most once, even across a crash
        self._requesters[rid] = entry.signer
        self._running[rid] = self._tasks.spawn(self._run(request, handler, enc), f"action-{rid}")

    async def _run(
        self, request: ActionRequest, handler: Callable[[ActionRequest], Any], enc: bytes | None
    ) -> None:
        rid = request.request_id
        spec = self.description.action(request.action)
        work: asyncio.Future[Any] | None = None
        try:
            if rid in self._cancel_requested:  # after this task was made (see _on_cancel)
                await self._finish(
                    rid, ActionState.CANCELLED, message="cancelled before it started"
                )
                return
            if request.action in self._resumable:
                # a restart finds it *accepted* and hands it over again; in this task, so
                # that a cancellation meanwhile stops it before the handler runs
                await self._accept(request)
            result = handler(request)
            if inspect.isawaitable(result):
                work = asyncio.ensure_future(result)
                await asyncio.sleep(0)  # a handler with nothing to wait for ends here
                # still at work: accepted, and running unless it reported progress itself
                if not work.done():
                    await self._accept(request)
                if not work.done() and not request._reported:
                    await self._write_state(rid, ActionState.RUNNING)
                result = await work
            result = spec.validate_output(result)
        except asyncio.CancelledError:
            if work is not None and not work.done():
                work.cancel()
            if rid in self._cancel_requested:
                await asyncio.shield(
                    self._finish(rid, ActionState.CANCELLED, message="cancelled by requester")
                )
            elif self._closed:
                # Shutting down: the request was marked processed before it started, so
                # it does not run again (at most once); the next start ends it *failed*.
                log.info("thing %s: request %s interrupted by shutdown", self.id, rid)
            raise
        except TimeoutError as e:
            await self._finish(
                rid, ActionState.TIMED_OUT, message=str(e) or "the handler timed out"
            )
        except Exception as e:
            await self._finish(rid, ActionState.FAILED, message=f"{type(e).__name__}: {e}")
        else:
            await self._finish(rid, ActionState.DONE, result=result, seal_to=enc)
        finally:
            self._running.pop(rid, None)
            self._requesters.pop(rid, None)
            self._scan_if_passed_over(rid)

    async def _accept(self, request: ActionRequest) -> None:
        """Write *accepted* once, before any other state but a final one of a handler that
        returned at once (a watcher may see only a request's latest state anyway): one
        commit fewer between a request and the result of a quick handler."""
        async with request._accepting:
            if not request._accepted:
                await self._write_state(request.request_id, ActionState.ACCEPTED)
                request._accepted = True

    async def _write_state(
        self,
        rid: str,
        state: str,
        *,
        progress: float | None = None,
        message: str = "",
        result: Any = None,
        seal_to: bytes | None = None,
    ) -> None:
        doc: dict[str, Any] = {"s": state, "t": time.time()}
        if progress is not None:
            doc["p"] = float(progress)
        if message:
            doc["m"] = message
        if result is not None:
            if seal_to is not None:
                from safething.net import PublicEncryptionKey

                doc["x"] = PublicEncryptionKey(seal_to).seal(dumps(result))
            else:
                doc["r"] = result
        await self._md("outbox").put(f"r/{rid}", dumps(doc))

    async def _finish(self, rid: str, state: str, **kwargs: Any) -> None:
        if not self.trust.processed(self.id, rid):
            self._mark_processed(rid, time.time() + layout.MAX_REQUEST_LIFETIME_S)
        await self._write_state(rid, state, **kwargs)
        cancelled = rid in self._cancel_requested
        self._cancel_requested.discard(rid)
        inbox = self._md("inbox")
        for key in (f"r/{rid}", f"c/{rid}") if cancelled else (f"r/{rid}",):
            with contextlib.suppress(NoSuchEntryError, NoSuchDataError):
                await inbox.purge(key)
        self._finished.append(rid)
        outbox = self._md("outbox")
        while len(self._finished) > _OUTBOX_KEEP:  # keep the newest states, drop our oldest
            with contextlib.suppress(NoSuchEntryError, NoSuchDataError):
                await outbox.purge(f"r/{self._finished.popleft()}")

    async def _trim_outbox(self) -> None:
        """Once at start: drop the oldest states left by earlier runs beyond the limit."""
        outbox = self._md("outbox")
        count, _ = await outbox.usage()
        if count <= _OUTBOX_KEEP:
            return
        entries = await outbox.entries(skip_tampered=True)
        oldest = sorted(
            entries.items(), key=lambda kv: loads(kv[1].value or b"", "state").get("t", 0)
        )
        for key, _ in oldest[: count - _OUTBOX_KEEP]:
            await outbox.purge(key)

    async def _on_cancel(self, rid: str, entry: Entry) -> None:
        """A cancellation counts only from the request's signer, the thing or its owner;
        any other, and one for an unknown or finished request, is purged."""
        requester = self._requesters.get(rid)
        task = self._running.get(rid)
        if task is None:
            try:
                pending = await self._md("inbox").get(f"r/{rid}")
                requester = pending.signer
            except NoSuchEntryError:
                requester = None
        if requester is None:  # nothing to cancel (unknown, finished or purged)
            await self._md("inbox").purge(f"c/{rid}")
            return
        if entry.signer not in (requester, *self._authorities()):
            raise ReplayedRequestError(
                f"thing {self.id!r}: cancellation of {rid} signed by "
                f"{entry.signer.hex()[:16]}..., neither the requester nor an owner; refused",
                address=str(self.addresses.inbox),
            )
        self._cancel_requested.add(rid)
        if task is not None:
            # A task cancelled before its first step never runs ``_run`` (nothing would
            # write a final state or clear ``_running``): one not begun yet ends the
            # request *cancelled* when it begins.
            coro = task.get_coro()
            if not (
                inspect.iscoroutine(coro)
                and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
            ):
                task.cancel()
            return
        await self._finish(rid, ActionState.CANCELLED, message="cancelled before it started")

    async def _on_desired(self, key: str, entry: Entry) -> None:
        _, name, _ = key.split("/", 2)
        inbox = self._md("inbox")
        try:
            attr = self.description.attribute(name)
            if not attr.writable:
                raise ValueError(f"attribute {name!r} is not writable")
            if not await self._allowed(attr.access, entry.signer):
                raise AccessDeniedError(f"not allowed to set attribute {name!r}")
            doc = loads_map(entry.value or b"", "desired value")
            value = (
                loads(self.identity.encryption_key.unseal(doc["x"]), "desired value")
                if "x" in doc
                else doc.get("v")
            )
            clean = attr.schema.validate(value, field=f"attribute {name!r}")
            handler = self._desired_handlers.get(name)
            if handler is not None:
                result = handler(clean)
                if inspect.isawaitable(result):
                    await result
            await self.set(name, clean)
        except (SafeThingError, ValueError, TypeError) as e:
            log.warning("thing %s: refused desired value %s: %s", self.id, key, e)
        await inbox.purge(entry.key)
