"""Using other things: read, subscribe, request actions, set desired values.

:class:`ThingClient` is what a console, a script or a controller uses to
talk to things it does not own; :class:`~safething.things.thing.Thing`
builds on it. Every value it returns was verified (signature, permission,
version) by :mod:`safething.net` and decrypted if this identity holds the
key for its access type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self, overload

from safething.errors import (
    AccessDeniedError,
    ActionFailedError,
    MalformedRecordError,
    NoSuchDataError,
    NoSuchEntryError,
    SafeThingError,
    TamperedDataError,
    ThingOfflineError,
)
from safething.net import Client, Entry, EntryWatch, MutableData, PublicIdentity, PublicSignKey
from safething.resource import AsyncResource, Tasks, cancel_and_wait
from safething.things import layout
from safething.things.access import KeyRing
from safething.things.availability import Availability, AvailabilityWatch, read_availability
from safething.things.description import AccessType, ThingDescription
from safething.things.filters import Filter
from safething.things.history import (
    Bucket,
    downsample,
    merge_points,
    notifications,
    read_archive,
    readings,
)
from safething.things.layout import ThingAddresses
from safething.things.states import FINAL_STATES, ActionState
from safething.things.values import (
    Notification,
    Reading,
    decode_payload,
    dumps,
    finite,
    loads,
    loads_map,
    read_status,
    unauthorised,
)

__all__ = [
    "FINAL_STATES",
    "ActionHandle",
    "ActionStatus",
    "Subscription",
    "ThingClient",
    "ThingView",
    "level_of",
]

log = logging.getLogger("safething.things")


def level_of(access: AccessType) -> str | None:
    """Key level protecting data of ``access`` (None: in clear)."""
    return None if access == AccessType.ALL else access.name.lower()


@dataclass
class ThingView:
    """What a client knows of one thing: description, keys, status, MD handles."""

    thing_id: str
    addresses: ThingAddresses
    description: ThingDescription
    status: str
    thing: PublicIdentity
    owner: PublicIdentity
    ring: KeyRing | None
    md: MutableData
    inbox: MutableData
    outbox: MutableData
    history: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ActionStatus:
    """One state of an action request, as the requester sees it."""

    state: str
    """An :class:`ActionState` value: requested, accepted, running, done, failed,
    rejected, timed_out or cancelled."""
    progress: float | None = None
    """0..100 when the handler reports progress."""
    message: str = ""
    """Progress message or the reason of a failure/rejection."""
    result: Any = None
    """The typed result, when ``state == "done"``."""
    timestamp: float = 0.0
    """When the thing wrote this state."""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class ThingClient(AsyncResource):
    """Talk to things in ``client``'s store as ``client.identity`` (None: read-only)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._views: dict[str, ThingView] = {}
        self._tasks = Tasks()

    async def close(self) -> None:
        """Cancel and await every background task (action followers)."""
        await self._tasks.cancel_all()

    # --- reading -------------------------------------------------------------------

    async def view(self, thing_id: str, *, refresh: bool = False) -> ThingView:
        """Load (or reuse) what is needed to talk to ``thing_id``."""
        if not refresh and thing_id in self._views:
            return self._views[thing_id]
        view = await self.read_view(thing_id)
        self._views[thing_id] = view
        return view

    async def read_view(self, thing_id: str, *, level_keys: bool = True) -> ThingView:
        """``thing_id`` as its MD shows it, each record checked: the MD owned by the thing
        and the owner its key list names, that list signed by the thing, the description
        and status by the thing or its owner (a refused status leaves the one this client
        knew). ``level_keys=False``: without the level keys (``ring`` None; three reads
        fewer, for a list of things). Not kept for later calls (:meth:`view` keeps it)."""
        addresses = ThingAddresses.of(thing_id)
        md = self.client.md(addresses.thing.name, addresses.thing.tag)
        try:
            desc_entry = await md.get(layout.DESC)
            keys_entry = await md.get(layout.KEYS)
            try:
                status_entry: Entry | None = await md.get(layout.STATUS)
            except TamperedDataError:
                # Refused and counted (forged or older than one seen): the thing decides
                # with the status it trusts; this view keeps the one it knew.
                status_entry = None
            desc_doc = loads(desc_entry.value or b"", "description")
            keys = loads(keys_entry.value or b"", "keys")
        except NoSuchEntryError:
            raise NoSuchDataError(f"thing {thing_id!r} is not registered") from None
        except NoSuchDataError:
            raise NoSuchDataError(f"no thing {thing_id!r} in this store") from None
        try:
            description = ThingDescription.from_dict(desc_doc)
            thing = PublicIdentity.from_dict(keys["thing"])
            owner = PublicIdentity.from_dict(keys["owner"])
        except (KeyError, TypeError, ValueError, SafeThingError) as e:
            raise MalformedRecordError(f"thing {thing_id!r}: malformed description: {e}") from e
        authorities = (thing.sign_key, owner.sign_key)
        header = await md.header()
        try:
            if set(header.owners) != set(authorities):
                raise TamperedDataError(
                    f"thing {thing_id!r}: its MD is owned by other keys than the thing and "
                    "the owner its key list names",
                    address=str(addresses.thing),
                )
            if keys_entry.signer != thing.sign_key:
                raise TamperedDataError(
                    f"thing {thing_id!r}: key list not signed by the thing it names",
                    address=str(addresses.thing),
                )
            refused = unauthorised(
                desc_entry.signer,
                authorities,
                f"thing {thing_id!r}: description",
                str(addresses.thing),
            )
            if refused is not None:
                raise refused
        except TamperedDataError as e:
            raise self.client._tampered(e) from None
        state = self._view_status(thing_id, addresses, status_entry, authorities)
        ring = await self._ring(md, authorities) if level_keys else None
        return self._new_view(thing_id, addresses, description, state, thing, owner, ring, md)

    def _view_status(
        self,
        thing_id: str,
        addresses: ThingAddresses,
        entry: Entry | None,
        authorities: tuple[PublicSignKey, ...],
    ) -> str:
        """The status a view shows: the stored one if the thing or its owner signed it and
        it is one; else (refused and counted, or malformed) the one this client knew, or
        ``unknown``. The thing decides with the status it trusts; a stray status record
        (written by a key the owner granted update rights by mistake) must not keep its
        owner from viewing the thing and setting its status again."""
        known = self._views.get(thing_id)
        fallback = known.status if known is not None else "unknown"
        if entry is None:
            return fallback
        refused = unauthorised(
            entry.signer, authorities, f"thing {thing_id!r}: status", str(addresses.thing)
        )
        if refused is not None:
            self.client._tampered(refused)
            return fallback
        try:
            return read_status(entry.value)[0]
        except MalformedRecordError:
            return fallback

    def own_view(
        self,
        addresses: ThingAddresses,
        description: ThingDescription,
        status: str,
        thing: PublicIdentity,
        owner: PublicIdentity,
        ring: KeyRing,
    ) -> ThingView:
        """The view of the thing this client acts as, from what that thing wrote or
        verified itself (instead of reading it all back from the store); ``addresses``:
        the thing's own (not hashed again)."""
        md = self.client.md(addresses.thing.name, addresses.thing.tag)
        view = self._new_view(
            addresses.thing_id, addresses, description, status, thing, owner, ring, md
        )
        self._views[addresses.thing_id] = view
        return view

    def _new_view(
        self,
        thing_id: str,
        addresses: ThingAddresses,
        description: ThingDescription,
        status: str,
        thing: PublicIdentity,
        owner: PublicIdentity,
        ring: KeyRing | None,
        md: MutableData,
    ) -> ThingView:
        """A view of the thing with its inbox and outbox MDs."""
        return ThingView(
            thing_id,
            addresses,
            description,
            status,
            thing,
            owner,
            ring,
            md,
            self.client.md(addresses.inbox.name, addresses.inbox.tag),
            self.client.md(addresses.outbox.name, addresses.outbox.tag),
        )

    async def _ring(self, md: MutableData, authorities: tuple[Any, ...]) -> KeyRing | None:
        identity = self.client.identity
        if identity is None:
            return None
        ring = KeyRing(identity.encryption_key)
        for level in ("owner", "group", "thing"):
            with contextlib.suppress(NoSuchEntryError):
                entry = await md.get(f"k/{level}")
                what = f"{level} key record of MD {md.address}"
                refused = unauthorised(entry.signer, authorities, what, str(md.address))
                if refused is not None:
                    raise self.client._tampered(refused)
                ring.learn(level, entry.value or b"")
        return ring

    async def availability(self, thing_id: str) -> Availability:
        """Whether ``thing_id`` is online now and when it was last seen (verified)."""
        return await read_availability(await self.view(thing_id))

    def follow_availability(self, thing_id: str) -> AvailabilityWatch:
        """Changes of availability, the current state first:
        ``async with things.follow_availability(id) as watch: async for a in watch``."""
        return AvailabilityWatch(self, thing_id)

    async def describe(self, thing_id: str) -> ThingDescription:
        return (await self.view(thing_id, refresh=True)).description

    async def status(self, thing_id: str) -> str:
        view = await self.view(thing_id)
        entry = await view.md.get(layout.STATUS)
        refused = unauthorised(
            entry.signer,
            (view.thing.sign_key, view.owner.sign_key),
            f"thing {thing_id!r}: status",
            str(view.addresses.thing),
        )
        if refused is not None:
            raise self.client._tampered(refused)
        try:
            view.status = read_status(entry.value)[0]
        except MalformedRecordError as e:
            raise MalformedRecordError(f"thing {thing_id!r}: {e}") from None
        return view.status

    def decode(self, view: ThingView, entry: Entry, what: str) -> tuple[int, float, Any]:
        """``(seq, t, value)`` of a reading or an event (``what``) read from the thing's
        MD. Only the thing writes these: one signed by any other key that may write there
        (one the owner granted update rights on the MD by mistake) is refused, counted.
        ``AccessDeniedError`` for a value sealed to readers this identity is not."""
        if entry.signer != view.thing.sign_key:
            raise self.client._tampered(
                TamperedDataError(
                    f"{what} of thing {view.thing_id!r} signed by "
                    f"{entry.signer.hex()[:16]}..., not by the thing",
                    address=str(view.addresses.thing),
                )
            )
        try:
            return decode_payload(entry.value or b"", view.ring, what)
        except AccessDeniedError:
            raise AccessDeniedError(
                f"{what} of thing {view.thing_id!r} is encrypted for other readers "
                "(access type Owner/Group/Thing); this identity holds no key for it"
            ) from None

    async def read(self, thing_id: str, attribute: str) -> Reading:
        """The latest value of an attribute (static ones come from the description)."""
        view = await self.view(thing_id)
        attr = view.description.attribute(attribute)
        if not attr.dynamic:
            return Reading(thing_id, attribute, attr.value, 0, 0.0)
        try:
            entry = await view.md.get(layout.attr_key(attribute))
        except NoSuchEntryError:
            raise NoSuchDataError(
                f"attribute {attribute!r} of thing {thing_id!r} has no value yet"
            ) from None
        seq, t, value = self.decode(view, entry, f"attribute {attribute!r}")
        return Reading(thing_id, attribute, value, seq, t)

    @overload
    async def history(
        self,
        thing_id: str,
        attribute: str,
        *,
        since: float | None = None,
        until: float | None = None,
        every: None = None,
    ) -> list[Reading]: ...

    @overload
    async def history(
        self,
        thing_id: str,
        attribute: str,
        *,
        since: float | None = None,
        until: float | None = None,
        every: float,
    ) -> list[Bucket]: ...

    async def history(
        self,
        thing_id: str,
        attribute: str,
        *,
        since: float | None = None,
        until: float | None = None,
        every: float | None = None,
    ) -> list[Reading] | list[Bucket]:
        """The attribute's values, oldest first.

        Without ``since``/``until``/``every``: the values kept in the ring (the
        newest ``history`` of them). With any of them: the archive too, every
        value with a time in ``[since, until]`` (Unix times; ``since`` 0 or
        None: from the start, ``until`` None: now). ``every`` (seconds)
        summarises them instead: one :class:`Bucket` (min/max/mean/last) per
        ``every`` seconds from ``since``. Every archived segment used is
        verified (hash, the thing's signature, the index signed by the thing
        or owner); ``TamperedDataError`` otherwise.
        """
        view = await self.view(thing_id)
        attr = view.description.attribute(attribute)
        recent = []
        for entry in await self._ring_entries(view, f"ah/{attribute}/", attr.history):
            seq, t, value = self.decode(view, entry, f"attribute {attribute!r}")
            recent.append((seq, t, value))
        if since is None and until is None and every is None:
            return readings(thing_id, attribute, sorted(recent, key=lambda p: p[0]))
        points = await self._archived("a", view, attribute, recent, since, until)
        if every is not None:
            return downsample(points, every=every, origin=since or (points[0][1] if points else 0))
        return readings(thing_id, attribute, points)

    async def event_history(
        self,
        thing_id: str,
        topic: str,
        *,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Notification]:
        """Events of ``topic`` in ``[since, until]``, archived and kept, oldest first."""
        view = await self.view(thing_id)
        recent = [(n.seq, n.timestamp, n.value) for n in await self.events(thing_id, topic)]
        points = await self._archived("e", view, topic, recent, since, until)
        return notifications(thing_id, topic, points, view.thing.sign_key)

    async def _archived(
        self,
        kind: str,
        view: ThingView,
        name: str,
        recent: list[tuple[int, float, Any]],
        since: float | None,
        until: float | None,
    ) -> list[tuple[int, float, Any]]:
        low = float(since or 0.0)
        high = float(until if until is not None else time.time() + 3600)
        history_md = self.client.md(view.addresses.history.name, view.addresses.history.tag)
        try:
            archived = await read_archive(
                view, history_md, kind=kind, name=name, since=low, until=high
            )
        except AccessDeniedError:
            raise AccessDeniedError(
                f"history of {name!r} of thing {view.thing_id!r} is encrypted for other "
                "readers (access type Owner/Group/Thing); this identity holds no key for it"
            ) from None
        return merge_points(archived, [p for p in recent if low <= p[1] <= high])

    async def events(self, thing_id: str, topic: str, *, after: int = 0) -> list[Notification]:
        """Kept events of ``topic`` with a sequence number above ``after``, oldest first."""
        return await self._kept(thing_id, "event", topic, after)

    async def _kept(self, thing_id: str, kind: str, name: str, after: int) -> list[Notification]:
        """The ring of an event topic or a dynamic attribute: its values above ``after``."""
        view = await self.view(thing_id)
        if kind == "event":
            size, prefix = view.description.topic(name).history, layout.event_prefix(name)
        else:
            size = view.description.attribute(name).history
            prefix = layout.attr_history_prefix(name)
        result = []
        for entry in await self._ring_entries(view, prefix.decode(), size):
            seq, t, value = self.decode(view, entry, f"{kind} {name!r}")
            if seq > after:
                result.append(Notification(thing_id, kind, name, value, seq, t, entry.signer))
        return sorted(result, key=lambda n: n.seq)

    async def _ring_entries(self, view: ThingView, prefix: str, size: int) -> list[Entry]:
        entries = []
        for slot in range(size):
            with contextlib.suppress(NoSuchEntryError):
                entries.append(await view.md.get(f"{prefix}{slot}"))
        return entries

    # --- subscribing ---------------------------------------------------------------

    def subscribe(
        self,
        thing_id: str,
        *,
        topic: str | None = None,
        attribute: str | None = None,
        filter: Filter | str | None = None,
        after: int | None = None,
    ) -> Subscription:
        """Notifications of a topic or a dynamic attribute, pushed by the change feed.

        ``after``: resume after this sequence number (catch up on what was
        missed first, in order, without duplicates); ``None``: only new ones.
        Use as ``async with things.subscribe(...) as sub: async for n in sub``.
        """
        if (topic is None) == (attribute is None):
            raise ValueError("subscribe to exactly one of topic= or attribute=")
        kind, name = ("event", topic) if topic is not None else ("attribute", attribute)
        assert name is not None
        parsed = (
            Filter.parse(filter) if isinstance(filter, str) else (filter or Filter.parse("any"))
        )
        return Subscription(self, thing_id, kind, name, parsed, after)

    # --- actions -------------------------------------------------------------------

    async def request(
        self,
        thing_id: str,
        action: str,
        /,
        *,
        timeout: float | None = None,
        queue_if_offline: bool = True,
        **args: Any,
    ) -> ActionHandle:
        """Ask ``thing_id`` to run ``action``; returns at once with a handle to follow it.

        Arguments are checked against the description here (a type error names
        the parameter) and again by the thing. Requests are durable: a thing
        that is offline runs them when it comes back, unless they expired; the
        handle says so at once (``handle.offline``, a message on the
        *requested* state). ``queue_if_offline=False``: raise
        :class:`~safething.errors.ThingOfflineError` instead.
        """
        identity = self.client._writer()
        view = await self.view(thing_id)
        spec = view.description.action(action)
        clean = spec.validate_args(args)
        limit = float(timeout if timeout is not None else spec.timeout_s)
        if not 0 < limit <= layout.MAX_REQUEST_LIFETIME_S:
            raise ValueError(
                f"timeout must be positive and at most {layout.MAX_REQUEST_LIFETIME_S:g} s "
                "(a request expires; the thing remembers what it ran until then)"
            )
        try:
            live = await read_availability(view)
        except TamperedDataError as e:  # whether it is online is unknown: asked all the same
            log.warning("thing %s: availability refused: %s", thing_id, e)
            live = Availability(thing_id, None)
        if live.online is False and not queue_if_offline:
            raise ThingOfflineError(
                f"thing {thing_id!r} is offline ({_offline_text(live)}); request not sent",
                thing_id=thing_id,
                last_seen=live.last_seen,
            )
        request_id = secrets.token_hex(8)
        now = time.time()
        doc: dict[str, Any] = {
            "a": action,
            "enc": identity.public_encryption_key.value,
            "t": now,
            "exp": now + limit,
        }
        if level_of(spec.access) is None:
            doc["args"] = clean
        else:
            doc["x"] = view.thing.encryption_key.seal(dumps(clean))
        handle = ActionHandle(self, view, request_id, action, limit)
        if live.online is False:
            handle.offline = True
            handle.status = ActionStatus(
                ActionState.REQUESTED,
                message=f"thing is offline ({_offline_text(live)}); queued until it returns",
                timestamp=handle.status.timestamp,
            )
            handle.history = [handle.status]
        await handle._start()
        try:
            await view.inbox.insert(f"r/{request_id}", dumps(doc))
        except BaseException:
            await handle._stop()
            raise
        return handle

    async def set_desired(self, thing_id: str, attribute: str, value: Any) -> None:
        """Ask a thing to change a writable attribute; delivered when it next wakes."""
        self.client._writer()
        view = await self.view(thing_id)
        attr = view.description.attribute(attribute)
        if not attr.writable:
            raise ValueError(f"attribute {attribute!r} of thing {thing_id!r} is not writable")
        clean = attr.schema.validate(value, field=f"attribute {attribute!r}")
        doc: dict[str, Any] = {"t": time.time()}
        if level_of(attr.access) is None:
            doc["v"] = clean
        else:
            doc["x"] = view.thing.encryption_key.seal(dumps(clean))
        await view.inbox.insert(
            f"d/{attribute}/{time.time_ns():x}{secrets.token_hex(4)}", dumps(doc)
        )


def _offline_text(live: Availability) -> str:
    if live.last_seen is None:
        return "never seen"
    seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(live.last_seen))
    return f"last seen {seen}" + (f", {live.reason}" if live.reason else "")


class ActionHandle:
    """Follows one action request: ``await handle.result()``, ``handle.state``,
    ``async for status in handle.states()``, ``await handle.cancel()``."""

    def __init__(
        self, things: ThingClient, view: ThingView, request_id: str, action: str, timeout: float
    ) -> None:
        self.things = things
        self.thing_id = view.thing_id
        self.request_id = request_id
        self.action = action
        self.timeout = timeout
        self.status = ActionStatus(ActionState.REQUESTED, timestamp=time.time())
        self.history: list[ActionStatus] = [self.status]
        self.offline = False
        """True when the thing was offline as the request was sent (it waits in its inbox)."""
        self._view = view
        self._changed = asyncio.Condition()
        self._watch: EntryWatch | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return self.status.state

    async def _start(self) -> None:
        key = f"r/{self.request_id}".encode()
        self._watch = self._view.outbox.watch(prefixes=(key,))
        self._task = self.things._tasks.spawn(self._follow(), f"action-{self.request_id}")

    async def _stop(self) -> None:
        task = self._task if self._task is not asyncio.current_task() else None
        cancelled = await cancel_and_wait(task, log=log)
        if self._watch is not None:
            await self._watch.close()
        if cancelled:  # the caller's cancellation, passed on now that all has ended
            raise asyncio.CancelledError

    async def _follow(self) -> None:
        assert self._watch is not None
        try:
            async for entry in self._watch:
                if entry.value is None:
                    continue
                if entry.signer != self._view.thing.sign_key:
                    log.warning("ignoring a state of %s not signed by the thing", self.request_id)
                    continue
                try:
                    await self._set(self._parse(entry.value))
                except (SafeThingError, ValueError, TypeError) as e:
                    log.warning("ignoring a malformed state of %s: %s", self.request_id, e)
                    continue
                if self.status.final:
                    return
        finally:
            await self._watch.close()

    def _parse(self, data: bytes) -> ActionStatus:
        doc = loads_map(data, "action state")
        if "s" not in doc:
            raise MalformedRecordError("malformed action state record (no state)")
        result = doc.get("r")
        if "x" in doc:
            identity = self.things.client._writer()
            result = loads(identity.encryption_key.unseal(doc["x"]), "action result")
        return ActionStatus(
            str(doc["s"]),
            doc.get("p"),
            str(doc.get("m", "")),
            result,
            finite(doc.get("t")) or 0.0,
        )

    async def _set(self, status: ActionStatus) -> None:
        async with self._changed:
            if self.status.final:
                return
            self.status = status
            self.history.append(status)
            self._changed.notify_all()

    async def states(self) -> AsyncIterator[ActionStatus]:
        """Every state from now until a final one (the current one first)."""
        seen = 0
        while True:
            async with self._changed:
                while seen >= len(self.history):
                    await self._changed.wait()
                batch = self.history[seen:]
                seen = len(self.history)
            for status in batch:
                yield status
                if status.final:
                    return

    async def wait(self, timeout: float | None = None) -> ActionStatus:
        """Wait for a final state; on timeout the request is cancelled and ends *timed_out*."""
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit), self._changed:
                await self._changed.wait_for(lambda: self.status.final)
        except TimeoutError:
            await self._set(
                ActionStatus(
                    ActionState.TIMED_OUT,
                    message=f"no result within {limit:g} s",
                    timestamp=time.time(),
                )
            )
            with contextlib.suppress(SafeThingError):
                await self._send_cancel()
            await self._stop()
        return self.status

    async def result(self, timeout: float | None = None) -> Any:
        """The result of a *done* action; ``ActionFailedError`` for any other final state."""
        status = await self.wait(timeout)
        if status.state != ActionState.DONE:
            raise ActionFailedError(
                f"action {self.action} on {self.thing_id} ended {status.state}"
                + (f": {status.message}" if status.message else ""),
                state=status.state,
                reason=status.message,
            )
        return status.result

    async def _send_cancel(self) -> None:
        await self._view.inbox.insert(f"c/{self.request_id}", dumps({"t": time.time()}))

    async def cancel(self) -> ActionStatus:
        """Ask the thing to stop; returns the final state (cancelled, or done if too late)."""
        if not self.status.final:
            await self._send_cancel()
        return await self.wait()


class Subscription(AsyncResource):
    """A stream of :class:`Notification` for one topic or attribute of one thing."""

    def __init__(
        self,
        things: ThingClient,
        thing_id: str,
        kind: str,
        name: str,
        filter: Filter,
        after: int | None,
    ) -> None:
        self.things = things
        self.thing_id = thing_id
        self.kind = kind
        self.name = name
        self.filter = filter
        self.last = after if after is not None else -1
        """Sequence number of the last notification delivered or filtered out."""
        self.lost = 0
        """Events or attribute values overwritten in the thing's ring before this subscriber
        read them."""
        self._after = after
        self._state = filter.new_state()
        self._pending: list[Notification] = []
        self._watch: EntryWatch | None = None
        self._view: ThingView | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Open the live feed first, then read what was missed: nothing falls between."""
        view = self._view = await self.things.view(self.thing_id)
        if self.kind == "event":
            view.description.topic(self.name)
            prefix = layout.event_prefix(self.name)
        else:
            attr = view.description.attribute(self.name)
            if not attr.dynamic:
                raise ValueError(f"attribute {self.name!r} is static: nothing to subscribe to")
            prefix = layout.attr_history_prefix(self.name)
        self._watch = view.md.watch(prefixes=(prefix,))
        if self._after is None:
            self.last = await self._current_seq()
        else:
            self._pending = await self._missed(self.last, None)

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()

    async def _current_seq(self) -> int:
        try:
            if self.kind == "event":
                events = await self.things.events(self.thing_id, self.name)
                return events[-1].seq if events else 0
            return (await self.things.read(self.thing_id, self.name)).seq
        except NoSuchDataError:
            return 0

    async def _missed(self, after: int, upto: int | None) -> list[Notification]:
        found = await self.things._kept(self.thing_id, self.kind, self.name, after)
        found = [n for n in found if upto is None or n.seq < upto]
        if upto is not None or found:
            expected = (found[-1].seq - after) if upto is None else (upto - 1 - after)
            self.lost += max(0, expected - len(found))
        return found

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self

    async def __anext__(self) -> Notification:
        if self._watch is None or self._view is None:
            raise RuntimeError("use 'async with subscription' (or await start()) first")
        while True:
            while self._pending:
                note = self._pending.pop(0)
                if note.seq <= self.last:
                    continue
                self.last = note.seq
                if self.filter.matches(note.value, self._state):
                    return note
            entry = await self._watch.__anext__()
            live = self._notification(entry)
            if live is None or live.seq <= self.last:
                continue
            if live.seq > self.last + 1:
                self._pending = await self._missed(self.last, live.seq)
            self._pending.append(live)

    def _notification(self, entry: Entry) -> Notification | None:
        assert self._view is not None
        if entry.value is None:
            return None
        try:
            seq, t, value = self.things.decode(self._view, entry, f"{self.kind} {self.name!r}")
        except (MalformedRecordError, TamperedDataError) as e:
            log.warning("skipping a bad %s of %s: %s", self.kind, self.thing_id, e)
            return None
        return Notification(self.thing_id, self.kind, self.name, value, seq, t, entry.signer)
