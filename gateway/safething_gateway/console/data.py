"""Where the console's data comes from: things through a verified ThingClient, devices
through the gateway's registry. The one module to switch when the data sources change.

Every thing value the console shows comes from :class:`ThingClient` (or the
:class:`MutableData` handles it opened), which verified its signature,
permission and version and decrypted it with the owner's keys. The thing list
is an index kept in memory, loaded once (each description verified) and kept
current by the store's change feed, so a page of 10,000 things is a slice of
a sorted list rather than 10,000 verified reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from safething.errors import (
    AccessDeniedError,
    NoSuchDataError,
    NoSuchEntryError,
    SafeThingError,
    TamperedDataError,
)
from safething.net import TAG_THING, Client, Identity, PublicIdentity, PublicSignKey, XorName
from safething.store import Store
from safething.things import Availability, ThingClient, ThingOwner, layout, set_status
from safething.things.availability import (
    LIVE,
    availability_of,
    heartbeat_deadline,
    parse_live,
)
from safething.things.client import ThingView
from safething.things.discovery import thing_id_at
from safething.things.filters import Filter
from safething.things.values import finite, loads, loads_map

if TYPE_CHECKING:  # the gateway extra: imported only when a registry is given
    from safething_gateway.device_admin import DeviceAdmin, Provisioned

__all__ = [
    "RANGES",
    "AttributeValue",
    "ConsoleData",
    "DesiredValue",
    "DeviceRow",
    "Subscription",
    "ThingIndex",
    "ThingRow",
    "fingerprint",
]

log = logging.getLogger("safething.console")

RANGES = {"hour": 3600.0, "day": 86400.0, "30days": 30 * 86400.0}
"""Chart ranges the thing page offers, in seconds."""
CHART_POINTS = 240
"""A chart never gets more points than this: the server downsamples (mean per bucket)."""


def fingerprint(key: PublicSignKey | str) -> str:
    """A key as people compare it: 64 hex digits in groups of four."""
    text = key if isinstance(key, str) else key.hex()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


@dataclass(frozen=True, slots=True)
class ThingRow:
    """One thing in the index."""

    id: str
    title: str
    status: str
    key: str
    """The thing's public sign key (hex)."""
    owner: str
    """Its owner's public sign key (hex)."""
    attributes: tuple[str, ...]
    topics: tuple[str, ...]
    actions: tuple[str, ...]
    online: bool | None = None
    """Availability as last written (by the thing or its gateway): None when never said."""
    last_seen: float | None = None
    """When it (or its gateway) last vouched for it."""
    registered: float = field(default_factory=time.time)
    """When the console first saw it (for "new")."""
    online_until: float | None = None
    """When a silent ``online`` record stops counting (its heartbeat deadline)."""

    def at(self, now: float) -> ThingRow:
        """This row as it stands at ``now``: offline once its heartbeat deadline passed."""
        if self.online and self.online_until is not None and now > self.online_until:
            return replace(self, online=False)
        return self

    def matches(self, text: str) -> bool:
        needle = text.casefold()
        return any(
            needle in item.casefold()
            for item in (self.id, self.title, *self.attributes, *self.topics, *self.actions)
        )


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device of this gateway, as the devices page shows it."""

    id: str
    transport: str
    state: str
    """``online``, ``offline`` or ``revoked``."""
    last_seen: float | None
    rejected: dict[str, int]
    """Refused messages by reason since the gateway started."""
    described: bool


@dataclass(frozen=True, slots=True)
class AttributeValue:
    """A dynamic attribute's latest value, verified."""

    name: str
    value: Any
    seq: int
    t: float
    signer: str
    """Hex sign key of the writer the net layer verified."""
    error: str = ""


@dataclass(frozen=True, slots=True)
class DesiredValue:
    """The last desired value of a writable attribute, against the reported one."""

    name: str
    state: str
    """``pending`` (in the thing's inbox, not applied yet), ``applied``, ``not applied``
    (the thing refused or replaced it), or ``""``: none known."""
    value: Any = None
    known: bool = False
    """False when the value is sealed for the thing and this console did not send it."""
    t: float = 0.0
    signer: str = ""
    """Hex sign key of whoever asked for it (verified)."""


@dataclass(frozen=True, slots=True)
class _Sent:
    value: Any
    t: float
    """Unix time just before it was written."""
    signer: str


@dataclass(frozen=True, slots=True)
class Subscription:
    """A stored subscription: ``subscriber`` follows ``kind`` ``name`` of ``thing``."""

    subscriber: str
    sid: str
    thing: str
    kind: str
    name: str
    filter: str


class ThingIndex:
    """Every thing in the store, verified once, kept current by the change feed."""

    def __init__(self) -> None:
        self.rows: dict[str, ThingRow] = {}
        self.by_name: dict[str, str] = {}
        """XorName hex of the thing MD -> thing id."""
        self.deadlines: dict[str, float] = {}
        """Thing id -> heartbeat deadline of each thing whose record says online."""
        self.subs: dict[str, dict[str, Subscription]] = {}
        """Subscriber thing id -> its stored subscriptions by id (its ``sub/`` entries)."""
        self.loaded = False
        self.version = 0
        """Bumped on every change (pages that cache a sorted list compare it)."""
        self._sorted: list[ThingRow] | None = None
        self._changed = asyncio.Event()

    def _bump(self) -> None:
        self.version += 1
        self._sorted = None
        self.notify()

    def notify(self) -> None:
        """Wake :meth:`wait_for` (something but the rows changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def set_loaded(self) -> None:
        self.loaded = True
        self._bump()

    async def wait_for(self, predicate: Callable[[ThingIndex], bool]) -> None:
        """Until ``predicate(index)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    def put(self, row: ThingRow, name_hex: str) -> None:
        old = self.rows.get(row.id)
        if old is not None:
            row = ThingRow(**{**_fields(row), "registered": old.registered})
        self.rows[row.id] = row
        self.by_name[name_hex] = row.id
        if row.online and row.online_until is not None:
            self.deadlines[row.id] = row.online_until
        else:
            self.deadlines.pop(row.id, None)
        self._bump()

    def get(self, thing_id: str, now: float | None = None) -> ThingRow | None:
        """The row of ``thing_id`` as it stands now (see :meth:`ThingRow.at`)."""
        row = self.rows.get(thing_id)
        return None if row is None else row.at(time.time() if now is None else now)

    def subscriptions_of(self, thing_id: str) -> list[Subscription]:
        """The subscriptions ``thing_id`` keeps."""
        return sorted(self.subs.get(thing_id, {}).values(), key=lambda s: (s.thing, s.sid))

    def subscriptions_to(self, thing_id: str) -> list[Subscription]:
        """The subscriptions other things keep to ``thing_id``."""
        return sorted(
            (s for subs in self.subs.values() for s in subs.values() if s.thing == thing_id),
            key=lambda s: (s.subscriber, s.sid),
        )

    def ordered(self) -> list[ThingRow]:
        if self._sorted is None:
            self._sorted = sorted(self.rows.values(), key=lambda r: r.id)
        return self._sorted

    def query(
        self,
        *,
        search: str = "",
        status: str = "",
        online: str = "",
        has: str = "",
        ids: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[ThingRow], int]:
        """A page of things and how many match in all."""
        only = set(ids) if ids is not None else None
        skip = set(exclude) if exclude is not None else None
        needle = has.casefold()
        found = []
        now = time.time()
        for stored in self.ordered():
            row = stored.at(now)
            if status and row.status != status:
                continue
            if online and {True: "online", False: "offline", None: "unknown"}[row.online] != online:
                continue
            if only is not None and row.id not in only:
                continue
            if skip is not None and row.id in skip:
                continue
            if needle and not any(needle in n.casefold() for n in (*row.topics, *row.actions)):
                continue
            if search and not row.matches(search):
                continue
            found.append(row)
        return found[offset : offset + limit], len(found)


def _fields(row: ThingRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in ThingRow.__slots__}


def _row(view: ThingView, live: Availability, online_until: float | None) -> ThingRow:
    d = view.description
    return ThingRow(
        d.id,
        d.title,
        view.status,
        view.thing.sign_key.hex(),
        view.owner.sign_key.hex(),
        tuple(a.name for a in d.attributes),
        tuple(t.name for t in d.topics),
        tuple(a.name for a in d.actions),
        live.online,
        live.last_seen,
        online_until=online_until,
    )


class ConsoleData:
    """Things (verified reads, owner-signed writes) and the gateway's devices."""

    def __init__(
        self,
        store: Store,
        owner: Identity,
        *,
        registry: Any = None,
        gateway: Any = None,
        admin: DeviceAdmin | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        if registry is None:
            registry = admin.registry if admin is not None else getattr(gateway, "registry", None)
        self.registry = registry
        self.gateway = gateway
        if admin is None and registry is not None:
            from safething_gateway.device_admin import DeviceAdmin

            admin = DeviceAdmin(registry)
        self.admin = admin
        """Provisions and revokes this gateway's devices (registry entry and broker login)."""
        self.reader = ThingClient(Client(store, owner))
        """Reads as the owner, so Owner and Group values can be decrypted."""
        self.index = ThingIndex()
        self._clients: dict[str, ThingClient] = {}
        self._sent: dict[tuple[str, str], _Sent] = {}
        """The last desired value this console sent, per (thing, attribute)."""

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        await self.reader.close()

    def client_for(self, key: str, identity: Identity) -> ThingClient:
        """The ThingClient that signs as ``identity`` (one per session)."""
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = ThingClient(Client(self.store, identity))
        return client

    async def forget_client(self, key: str) -> None:
        client = self._clients.pop(key, None)
        if client is not None:
            await client.close()

    # --- the index -------------------------------------------------------------------

    async def load_index(self) -> int:
        """Read every thing in the store (each verified); returns how many were found."""
        client = self.reader.client
        for address in await client.list_mds(TAG_THING):
            await self.learn(address.name.hex())
            await asyncio.sleep(0)  # pages keep being served while 10,000 things load
        self.index.set_loaded()
        return len(self.index.rows)

    async def learn(self, name_hex: str) -> ThingRow | None:
        """(Re)read the thing whose MD has this XorName; None if it is not a valid thing.

        Its description for its id, then what :meth:`ThingClient.read_view` checks (the
        MD's owners; the key list signed by the thing; description and status by the
        thing or its owner: a key granted update rights by mistake plants neither) and
        its availability: what the list shows, without the level keys a thing page
        needs."""
        try:
            row = await self._read_row(name_hex)
        except (NoSuchEntryError, NoSuchDataError):
            return None
        except (SafeThingError, ValueError, TypeError, KeyError) as e:
            log.warning("skipping MD %s: not a valid thing: %s", name_hex[:16], e)
            return None
        self.index.put(row, name_hex)
        if row.id not in self.index.subs:
            self.index.subs[row.id] = await self._read_subscriptions(row.id)
        return self.index.rows[row.id]

    async def _read_subscriptions(self, thing_id: str) -> dict[str, Subscription]:
        """Its ``sub/`` entries: the MD's records scanned for their keys (nothing verified
        there), then a verified read of each one found."""
        md = self.reader.client.md(layout.ThingAddresses.of(thing_id).thing.name, TAG_THING)
        found: dict[str, Subscription] = {}
        for sid in await _keys_under(self.store, md.address, b"sub/"):
            sub = await self.read_subscription(thing_id, sid)
            if sub is not None:
                found[sid] = sub
        return found

    async def read_subscription(self, thing_id: str, sid: str) -> Subscription | None:
        """Subscription ``sid`` of ``thing_id`` (verified), None if gone or not one."""
        md = self.reader.client.md(layout.ThingAddresses.of(thing_id).thing.name, TAG_THING)
        try:
            doc = loads(await md.get_value(f"sub/{sid}"), "subscription")
            return Subscription(
                thing_id,
                sid,
                str(doc["thing"]),
                str(doc.get("kind", "")),
                str(doc.get("name", "")),
                str(Filter.from_dict(doc["filter"])) if doc.get("filter") else "any",
            )
        except (SafeThingError, ValueError, KeyError, TypeError) as e:
            if not isinstance(e, NoSuchEntryError):
                log.warning("thing %s: unreadable subscription %s: %s", thing_id, sid, e)
            return None

    async def subscription_changed(self, thing_id: str, sid: str, deleted: bool) -> None:
        """The change feed saw ``sub/<sid>`` of ``thing_id`` written or purged. A known
        subscription that only moved its position (each delivery) is not read again."""
        subs = self.index.subs.setdefault(thing_id, {})
        if deleted:
            subs.pop(sid, None)
            self.index.notify()
        elif sid not in subs:
            sub = await self.read_subscription(thing_id, sid)
            if sub is not None:
                subs[sid] = sub
                self.index.notify()

    async def _read_row(self, name_hex: str) -> ThingRow:
        md = self.reader.client.md(XorName.from_hex(name_hex), TAG_THING)
        thing_id = await thing_id_at(self.reader.client, md.address)
        view = await self.reader.read_view(thing_id, level_keys=False)
        until = None
        try:
            entry = await md.get(LIVE)
            live = availability_of(view, entry.value, entry.signer)
            if entry.value is not None:
                until = heartbeat_deadline(parse_live(view, entry.value, entry.signer))
        except NoSuchEntryError:
            live = Availability(thing_id, None)
        except (SafeThingError, ValueError, KeyError, TypeError) as e:
            log.warning("thing %s: unreadable availability: %s", thing_id, e)
            live = Availability(thing_id, None)
        return _row(view, live, until)

    # --- one thing -------------------------------------------------------------------

    async def view(self, thing_id: str) -> ThingView:
        return await self.reader.view(thing_id, refresh=True)

    async def value(self, view: ThingView, name: str) -> AttributeValue:
        """The latest value of dynamic attribute ``name``, verified, with its signer."""
        try:
            entry = await view.md.get(layout.attr_key(name))
        except NoSuchEntryError:
            return AttributeValue(name, None, 0, 0.0, "", "no value yet")
        except TamperedDataError as e:  # (counted) forged or rolled back by the store
            return AttributeValue(name, None, 0, 0.0, "", f"refused: {e}")
        try:
            seq, t, value = self.reader.decode(view, entry, f"attribute {name!r}")
        except AccessDeniedError:
            return AttributeValue(name, None, 0, 0.0, entry.signer.hex(), "encrypted for others")
        except TamperedDataError:  # (counted) signed by another key than the thing's
            return AttributeValue(
                name, None, 0, 0.0, entry.signer.hex(), "refused: not signed by the thing"
            )
        return AttributeValue(name, value, seq, t, entry.signer.hex())

    async def events(self, view: ThingView, topic: str, limit: int = 10) -> list[dict[str, Any]]:
        try:
            notes = await self.reader.events(view.thing_id, topic)
        except AccessDeniedError:
            return []
        except TamperedDataError as e:  # (counted) a kept event refused: none shown
            log.warning("thing %s: events of %s refused: %s", view.thing_id, topic, e)
            return []
        return [
            {
                "seq": n.seq,
                "t": n.timestamp,
                "value": n.value,
                "signer": n.signer.hex() if n.signer else "",
            }
            for n in notes[-limit:]
        ][::-1]

    async def desired(self, view: ThingView, reported: AttributeValue) -> DesiredValue:
        """The newest desired value of writable attribute ``reported.name``: still in the
        thing's inbox, else the last one this console sent; ``applied`` once the thing
        reports that value after it was asked for."""
        name = reported.name
        sent = self._sent.get((view.thing_id, name))
        found = await self._pending_desired(view, name)
        if found is None:
            if sent is None:
                return DesiredValue(name, "")
            value, known, t, signer, state = sent.value, True, sent.t, sent.signer, "not applied"
        else:
            t, doc, signer = found
            state = "pending"
            mine = sent is not None and sent.signer == signer and t >= sent.t
            if "v" in doc:
                value, known = doc["v"], True
            else:  # sealed for the thing: known only if this console sent it
                value, known = (sent.value if sent is not None and mine else None), mine
        if known and reported.t >= t and reported.value == value:
            state = "applied"
        return DesiredValue(name, state, value, known, t, signer)

    async def _pending_desired(
        self, view: ThingView, name: str
    ) -> tuple[float, dict[str, Any], str] | None:
        """The newest ``d/<name>/`` entry in the inbox (verified): time, record, signer."""
        inbox = view.inbox
        prefix = f"d/{name}/".encode()
        for rest in reversed(await _keys_under(self.store, inbox.address, prefix)):
            try:  # entry keys carry the time: newest last
                entry = await inbox.get(prefix + rest.encode())
                doc = loads_map(entry.value or b"", "desired value")
                t = finite(doc.get("t"))
                if t is None:
                    raise ValueError("no time it was asked at")
                return t, doc, entry.signer.hex()
            except NoSuchEntryError:
                continue  # applied meanwhile
            except (SafeThingError, ValueError, KeyError, TypeError) as e:
                log.warning("thing %s: unreadable desired value: %s", view.thing_id, e)
        return None

    async def set_desired(
        self, identity: Identity, things: ThingClient, thing_id: str, name: str, value: Any
    ) -> None:
        """Ask for ``value`` (signed by ``identity``); remembered to show it beside the
        reported value, even when it is sealed for the thing."""
        sent = _Sent(value, time.time(), identity.public_sign_key.hex())
        await things.set_desired(thing_id, name, value)
        self._sent[(thing_id, name)] = sent

    async def members(self, identity: Identity, thing_id: str) -> list[str]:
        try:
            return [
                k.hex() for k in await ThingOwner(Client(self.store, identity), thing_id).members()
            ]
        except SafeThingError:
            return []

    async def history(self, thing_id: str, attribute: str, range_name: str) -> dict[str, Any]:
        """Chart data: times, values (None where there is a gap), downsampled on the server."""
        span = RANGES.get(range_name, RANGES["hour"])
        until = time.time()
        since = until - span
        every = span / CHART_POINTS
        view = await self.reader.view(thing_id)
        attr = view.description.attribute(attribute)
        points = await self._points(thing_id, attribute, since, until, every)
        return {
            "unit": attr.schema.unit or "",
            "since": since,
            "until": until,
            **_series(points, every),
        }

    async def _points(
        self, thing_id: str, attribute: str, since: float, until: float, every: float
    ) -> list[tuple[float, float | None]]:
        """Mean per ``every`` seconds from the archive and the ring (verified by ThingClient)."""
        buckets = await self.reader.history(
            thing_id, attribute, since=since, until=until, every=every
        )
        return [
            (b.start + every / 2, b.mean if b.count else None)
            for b in buckets
            if b.start + every / 2 <= until
        ]

    # --- commands (signed by the session's identity) --------------------------------------

    async def set_status(self, identity: Identity, thing_id: str, status: str) -> str:
        old = await set_status(Client(self.store, identity), thing_id, status)
        await self.learn(layout.ThingAddresses.of(thing_id).thing.name.hex())
        return old

    async def add_member(
        self, identity: Identity, thing_id: str, sign_hex: str, enc_hex: str
    ) -> None:
        from safething.net import PublicEncryptionKey

        member = PublicIdentity(
            PublicSignKey.from_hex(sign_hex.strip()), PublicEncryptionKey.from_hex(enc_hex.strip())
        )
        await ThingOwner(Client(self.store, identity), thing_id).add_member(member)

    async def remove_member(self, identity: Identity, thing_id: str, sign_hex: str) -> None:
        await ThingOwner(Client(self.store, identity), thing_id).remove_member(
            PublicSignKey.from_hex(sign_hex.strip())
        )

    # --- devices of this gateway ---------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        if self.registry is None:
            return []
        rejected: dict[str, dict[str, int]] = getattr(self.gateway, "rejected_by_device", {}) or {}
        now = time.time()
        found = []
        for r in self.registry.devices():
            # online/offline as its thing's availability says (what the gateway signed,
            # a silent thing offline after its deadline), else as the registry last noted
            row = self.index.get(r.device_id, now)
            online = row.online if row is not None and row.online is not None else r.online
            seen = [t for t in (r.last_seen, row.last_seen if row else None) if t]
            found.append(
                DeviceRow(
                    r.device_id,
                    r.transport,
                    "revoked" if r.revoked else ("online" if online else "offline"),
                    max(seen) if seen else None,
                    dict(rejected.get(r.device_id, {})),
                    r.description is not None,
                )
            )
        return found

    def device_map(self) -> dict[str, DeviceRow]:
        return {d.id: d for d in self.devices()}

    def _admin(self) -> DeviceAdmin:
        if self.admin is None:
            raise NoSuchDataError("this console runs without a gateway: no devices")
        return self.admin

    async def provision(self, device_id: str, transport: str) -> Provisioned:
        """A new device with its broker login (MQTT); off the event loop (SQLite, files,
        the broker's reload)."""
        admin = self._admin()
        return await asyncio.to_thread(
            admin.provision, device_id, transport, meta={"by": "console"}
        )

    async def revoke(self, device_id: str) -> tuple[str, ...]:
        """Refuse the device from now on and remove its broker login; off the event loop."""
        return await asyncio.to_thread(self._admin().revoke, device_id)


async def _keys_under(store: Store, address: Any, prefix: bytes) -> list[str]:
    """The rest of each entry key of a public MD that starts with ``prefix``, in order
    (store keys only: an entry's content is verified when it is read)."""
    base = address.entry_prefix
    start = base + prefix.hex()
    return sorted(
        bytes.fromhex(r.key[len(base) :])[len(prefix) :].decode(errors="replace")
        for r in await store.scan(base)
        if r.key.startswith(start)
    )


def _series(points: list[tuple[float, float | None]], every: float) -> dict[str, list[Any]]:
    """Times and values for the chart; a run of empty buckets is one gap (None)."""
    times: list[float] = []
    values: list[float | None] = []
    for t, v in points:
        if v is None:
            if values and values[-1] is not None:
                times.append(round(t, 3))
                values.append(None)
            continue
        if times and t - times[-1] > 2.5 * every and values[-1] is not None:
            times.append(round(times[-1] + every, 3))
            values.append(None)
        times.append(round(t, 3))
        values.append(round(v, 6))
    return {"t": times, "v": values}
