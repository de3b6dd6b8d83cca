"""History that lasts: readings and events older than the ring, archived.

A dynamic attribute keeps its newest values in a ring inside the thing MD
(``ah/<attr>/<slot>``, ``history`` slots). Before the ring would overwrite a
value not yet archived, the thing rolls the ring's unarchived values into
one *segment*: a compressed, signed ImmutableData chunk. The segment is
found through the thing's *history MD* (tag 27421), in the spirit of the
SAFE NFS: an MD entry points at immutable content.

* Index entry ``a/<attr>/<day>`` (``e/<topic>/<day>`` for events), ``day``
  the UTC day number of the segment's *last* reading: a list of rows
  ``[first seq, last seq, first time, last time, count, chunk address]``.
  Only the thing and its owner may write it: a reader refuses an index entry
  signed by anyone else.
* Segment chunk: ``{"doc": <CBOR>, "sig": <ed25519>}``; the document names
  the thing, stream, sequence and time range, and holds the body: zlib
  compressed columns (sequence deltas, microsecond time deltas, values).
  For Owner, Group and Thing access the compressed body is sealed under the
  level key, exactly like the live values. The signature, by the thing's
  key, covers the document; the chunk's address is the hash of its bytes.

A reader checks, for every segment it uses: the chunk's hash (the store
cannot swap bytes), the thing's signature, and that the document's
thing, stream and ranges are the ones the index row names (a segment of
another stream or thing is refused). Any failure raises
:class:`~safething.errors.TamperedDataError`: history is never silently
short.

Retention: the thing purges index entries older than ``retention_days``
(the chunks themselves stay in the store, unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2

from safething.errors import (
    AccessDeniedError,
    ConflictError,
    LimitExceededError,
    MalformedRecordError,
    NoSuchDataError,
    NoSuchEntryError,
    SafeThingError,
    TamperedDataError,
)
from safething.net import MAX_ENTRIES, MutableData, PublicSignKey, XorName
from safething.net.codec import decode_record, encode_record, signing_bytes
from safething.net.codec import field as record_field
from safething.net.immutable import get_chunk, put_chunk
from safething.things.access import KeyRing
from safething.things.values import Notification, Reading, decode_payload, unauthorised

if TYPE_CHECKING:
    from safething.things.client import ThingView
    from safething.things.thing import Thing

__all__ = [
    "DAY_S",
    "DEFAULT_RETENTION_DAYS",
    "Archive",
    "Bucket",
    "SegmentRow",
    "downsample",
    "read_archive",
]

log = logging.getLogger("safething.things.history")

DAY_S = 86_400
"""Index period: one index entry per stream and UTC day."""
DEFAULT_RETENTION_DAYS = 30
"""How long a thing keeps archived history unless told otherwise."""
_SEGMENT_DOMAIN = "safething/history-segment"
_FETCH_CONCURRENCY = 32
_MAX_PENDING = 2000  # values kept in memory while archiving fails
_MAX_ROWS_PER_ENTRY = 4000  # ~ 300 KB; a writer that fast should use a longer ring
_INDEX_RETRIES = 8  # compare-and-set attempts at an index entry others write too


def day_of(t: float) -> int:
    return int(t // DAY_S)


def index_prefix(kind: str, name: str) -> bytes:
    """``a/<attr>/`` or ``e/<topic>/`` in the history MD."""
    return f"{kind}/{name}/".encode()


def index_key(kind: str, name: str, day: int) -> bytes:
    return index_prefix(kind, name) + str(day).encode()


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One index row: where one segment is and what it covers."""

    first: int
    """Sequence number of its first value."""
    last: int
    """Sequence number of its last value."""
    t0: float
    """Time of its first value."""
    t1: float
    """Time of its last value."""
    count: int
    """Number of values."""
    address: XorName
    """Address of the segment chunk."""

    def __post_init__(self) -> None:
        if self.count < 1 or self.last < self.first or self.t1 < self.t0:
            raise MalformedRecordError("history index row has inconsistent ranges")

    def to_list(self) -> list[Any]:
        return [self.first, self.last, self.t0, self.t1, self.count, self.address.value]

    @classmethod
    def from_list(cls, row: Any) -> SegmentRow:
        try:
            first, last, t0, t1, count, address = row
            return cls(int(first), int(last), float(t0), float(t1), int(count), XorName(address))
        except (TypeError, ValueError, SafeThingError) as e:
            raise MalformedRecordError(f"malformed history index row: {e}") from e


def encode_index(rows: Sequence[SegmentRow], encoded: Sequence[bytes] | None = None) -> bytes:
    """An index entry's value: ``encode_record("hindex", {"rows": [...]})``, built from
    each row's own CBOR (``encoded``, from :func:`encode_row`, when the caller kept
    them). The archivist appends one row to the day's entry per segment: re-encoding
    the others each time grew with the day (about 100 us per segment at 190 rows,
    2 ms at the 4,000 an entry holds); it appends to the entry's bytes
    (:func:`append_row`). The bytes are the same either way."""
    parts = [encode_row(r) for r in rows] if encoded is None else encoded
    return _INDEX_HEAD + _array_head(len(parts)) + b"".join(parts)


def append_row(value: bytes, count: int, row: SegmentRow) -> bytes:
    """The index entry ``value`` (``count`` rows, as :func:`encode_index` makes it) with
    ``row`` added at the end: the bytes :func:`encode_index` makes of all of them, built
    from the bytes alone (the archivist keeps the entry it wrote, not its rows)."""
    start = len(_INDEX_HEAD) + len(_array_head(count))
    return _INDEX_HEAD + _array_head(count + 1) + value[start:] + encode_row(row)


def encode_row(row: SegmentRow) -> bytes:
    """One index row's CBOR, as it appears inside an index entry."""
    return bytes(cbor2.dumps(row.to_list()))


def _array_head(n: int) -> bytes:
    """CBOR's head of an array of ``n`` items (major type 4, the shortest form)."""
    if n < 24:
        return bytes([0x80 | n])
    if n < 0x100:
        return bytes([0x98, n])
    if n < 0x10000:
        return b"\x99" + n.to_bytes(2, "big")
    return b"\x9a" + n.to_bytes(4, "big")


_INDEX_HEAD = encode_record("hindex", {"rows": []})[:-1]
"""An index entry's CBOR up to the head of its rows' array (the empty array's head,
``0x80``, is its last byte)."""


def decode_index(data: bytes, where: str) -> list[SegmentRow]:
    doc = decode_record(data, "hindex", where=where)
    return [SegmentRow.from_list(r) for r in record_field(doc, "rows", list, where=where)]


# --- segments -----------------------------------------------------------------------


def _encode_body(points: Sequence[tuple[int, float, Any]]) -> bytes:
    """Columns, delta-coded, then zlib: sequence numbers and microsecond times shrink
    to a byte or two each; values stay CBOR (canonical: the shortest exact float)."""
    seqs, times, values = [], [], []
    prev_n, prev_us = 0, 0
    for n, t, v in points:
        us = round(t * 1_000_000)
        seqs.append(n - prev_n)
        times.append(us - prev_us)
        values.append(v)
        prev_n, prev_us = n, us
    return zlib.compress(cbor2.dumps([seqs, times, values], canonical=True), 9)


def _decode_body(data: bytes, where: str) -> list[tuple[int, float, Any]]:
    try:
        seqs, times, values = cbor2.loads(zlib.decompress(data))
        points = []
        n, us = 0, 0
        for dn, dus, v in zip(seqs, times, values, strict=True):
            n += int(dn)
            us += int(dus)
            points.append((n, us / 1_000_000, v))
    except Exception as e:  # zlib, cbor2 and unpacking raise unrelated types on garbage
        raise MalformedRecordError(f"{where}: segment body does not decode") from e
    return points


def make_segment(
    *,
    signer: Any,
    thing_id: str,
    kind: str,
    name: str,
    level: str | None,
    ring: KeyRing,
    points: Sequence[tuple[int, float, Any]],
) -> tuple[bytes, SegmentRow]:
    """The signed segment chunk of ``points`` (seq, time, value) and its index row."""
    body: Any = _encode_body(points)
    if level is not None:
        body = ring.seal(level, body)
    first, last = points[0][0], points[-1][0]
    t0, t1 = points[0][1], points[-1][1]
    doc = bytes(
        cbor2.dumps(
            {
                "thing": thing_id,
                "kind": kind,
                "name": name,
                "first": first,
                "last": last,
                "t0": t0,
                "t1": t1,
                "count": len(points),
                "lvl": level,
                "body": body,
            }
        )
    )
    signature = signer.sign(signing_bytes(_SEGMENT_DOMAIN, [doc]))
    chunk = encode_record("hseg", {"doc": doc, "sig": signature})
    row = SegmentRow(first, last, t0, t1, len(points), XorName.of(chunk))
    return chunk, row


def open_segment(
    chunk: bytes,
    *,
    row: SegmentRow,
    thing_id: str,
    kind: str,
    name: str,
    thing_key: PublicSignKey,
    ring: KeyRing | None,
) -> list[tuple[int, float, Any]]:
    """Verify a segment chunk against its index row and the thing's key; its points."""
    where = f"history segment {row.address.hex()[:16]}... of {thing_id}/{name}"
    outer = decode_record(chunk, "hseg", where=where)
    doc_bytes = record_field(outer, "doc", bytes, where=where)
    signature = record_field(outer, "sig", bytes, where=where)
    if not thing_key.verify(signing_bytes(_SEGMENT_DOMAIN, [doc_bytes]), signature):
        raise TamperedDataError(f"{where}: not signed by the thing", address=row.address.hex())
    try:
        doc = cbor2.loads(doc_bytes)
        claimed = (doc["thing"], doc["kind"], doc["name"], doc["first"], doc["last"], doc["count"])
        body = doc["body"]
    except Exception as e:
        raise MalformedRecordError(f"{where}: malformed segment") from e
    if claimed != (thing_id, kind, name, row.first, row.last, row.count) or (
        doc.get("t0"),
        doc.get("t1"),
    ) != (row.t0, row.t1):
        raise TamperedDataError(
            f"{where}: the segment is not the one its index row names", address=row.address.hex()
        )
    if doc.get("lvl") is not None:
        if ring is None:
            raise AccessDeniedError(f"{where} is encrypted and this reader holds no keys")
        body = ring.open(body)
    if not isinstance(body, bytes):
        raise MalformedRecordError(f"{where}: malformed segment body")
    points = _decode_body(body, where)
    if len(points) != row.count or points[0][0] != row.first or points[-1][0] != row.last:
        raise TamperedDataError(f"{where}: body does not match its header")
    return points


# --- the writer's side ----------------------------------------------------------------


@dataclass
class _Stream:
    kind: str  # "a" attribute, "e" event topic
    name: str
    level: str | None
    size: int  # ring slots
    ring_prefix: str
    pending: list[tuple[int, float, Any]] = field(default_factory=list)
    archived: int = 0  # last archived sequence number
    index: _Index | None = None  # the index entry this archivist wrote last
    expired_day: int | None = None  # the day whose expired index entries were purged


@dataclass(frozen=True, slots=True)
class _Index:
    """An index entry as the archivist last wrote it: rewritten with a compare-and-set on
    ``version``, so a change by anyone else (the owner, a second process of the thing)
    is read back instead of overwritten.

    Kept as the bytes written and a count, nothing per row: the next row is appended
    to the bytes (:func:`append_row`), and they are the very object the client keeps
    as the entry it wrote. Kept as rows as well (a :class:`SegmentRow`, its address,
    each row's CBOR), the day's index held about 460 bytes more per segment, about 14
    a reading at a 32-slot ring, growing until the day's entry was replaced by the
    next day's: the gateway soak's resident set grew 1.4 MB a minute. As bytes, what
    a segment adds to the entry: its row's CBOR, about 60 bytes."""

    key: bytes
    version: int
    value: bytes
    """The entry's value as written (:func:`encode_index` of its rows)."""
    count: int
    """Its rows."""


class Archive:
    """The thing's archivist: rolls ring values into segments before they are overwritten."""

    def __init__(self, thing: Thing, *, retention_days: float | None) -> None:
        """``retention_days`` None: :data:`DEFAULT_RETENTION_DAYS`, fewer if the thing has
        so many attributes and topics that their index entries would not fit one MD."""
        if retention_days is not None and not retention_days > 0:
            raise ValueError("retention_days must be positive")
        # A weak reference: the thing holds its archivist, and without a cycle between
        # them a closed thing is freed as soon as the last reference to it goes (no
        # cyclic collection needed: a gateway closes and restores thousands of them).
        self._thing_ref = weakref.ref(thing)
        self._explicit = retention_days is not None
        streams = max(1, self._stream_count())
        fit = max(1, MAX_ENTRIES // streams - 2)
        self.retention_days = (
            retention_days if retention_days is not None else min(DEFAULT_RETENTION_DAYS, fit)
        )
        self._streams: dict[bytes, _Stream] = {}

    @property
    def _thing(self) -> Thing:
        thing = self._thing_ref()
        if thing is None:  # (only a thing that is gone would call it)
            raise ReferenceError("the thing of this archive is gone")
        return thing

    def _stream_count(self) -> int:
        d = self._thing.description
        return sum(1 for a in d.attributes if a.dynamic) + len(d.topics)

    def entries_needed(self) -> int:
        """Index entries the history MD may hold at once (one per stream and day kept)."""
        return self._stream_count() * (math.ceil(self.retention_days) + 2)

    def check_budget(self) -> None:
        needed = self.entries_needed()
        if self._explicit and needed > MAX_ENTRIES:
            raise LimitExceededError(
                f"thing {self._thing.id!r}: keeping {self.retention_days:g} days of history "
                f"needs up to {needed} index entries; an MD holds {MAX_ENTRIES}: "
                "keep fewer days",
                limit=MAX_ENTRIES,
                actual=needed,
            )

    def _md(self) -> MutableData:
        """The history MD, pinned to the thing and its owner like the thing's other MDs."""
        return self._thing._md("history")

    async def restore(self, levels: dict[bytes, tuple[str, str, str | None, int]]) -> None:
        """At register: find what is archived and take the ring's newer values as pending.

        ``levels``: ring pointer -> (kind, name, level, ring size).
        """
        md = self._md()
        keys = await md.keys()
        thing_md = self._thing._md("thing")
        # Which ring slots are stored at all (one key scan; absent slots cost no reads:
        # a new thing's rings are empty). A slot present is read and verified as before.
        stored = set(await thing_md.client.store.keys(thing_md.address.entry_prefix))
        for pointer, (kind, name, level, size) in levels.items():
            prefix = index_prefix(kind, name)
            days = sorted(int(k[len(prefix) :]) for k in keys if _is_day_key(k, prefix))
            archived = 0
            if days:
                rows = decode_index(await md.get_value(index_key(kind, name, days[-1])), "index")
                archived = max((r.last for r in rows), default=0)
            ring_prefix = _ring_prefix(kind, name)
            stream = _Stream(kind, name, level, size, ring_prefix, archived=archived)
            for slot in range(size):
                key = f"{ring_prefix}{slot}".encode()
                if thing_md.address.entry_key(key) not in stored:
                    continue
                try:
                    entry = await thing_md.get(key)
                except NoSuchEntryError:
                    continue
                if entry.signer != self._thing.identity.public_sign_key:
                    log.warning(
                        "thing %s: ring slot of %s not signed by the thing", self._thing.id, name
                    )
                    continue  # (never archived under the thing's signature)
                try:
                    seq, t, value = decode_payload(entry.value or b"", self._thing._ring, "ring")
                except SafeThingError as e:
                    log.warning("thing %s: ring slot of %s unreadable: %s", self._thing.id, name, e)
                    continue
                if seq > archived:
                    stream.pending.append((seq, t, value))
            stream.pending.sort(key=lambda p: p[0])
            self._streams[pointer] = stream

    def restore_new(self, levels: dict[bytes, tuple[str, str, str | None, int]]) -> None:
        """At the register of a thing whose MDs were created just now: nothing archived,
        every ring empty (``levels`` as for :meth:`restore`)."""
        for pointer, (kind, name, level, size) in levels.items():
            self._streams[pointer] = _Stream(kind, name, level, size, _ring_prefix(kind, name))

    async def record(self, pointer: bytes, seq: int, t: float, value: Any) -> None:
        """A value was just written at ``seq``; archive the ring before it wraps."""
        stream = self._streams.get(pointer)
        if stream is None:
            return
        stream.pending.append((seq, t, value))
        if len(stream.pending) >= stream.size:
            try:
                await self.flush(stream)
            except SafeThingError as e:
                # The value itself is written; its archiving is retried with the next one
                # (the values stay pending in memory, so the ring may wrap meanwhile).
                log.warning("thing %s: archiving %s failed: %s", self._thing.id, stream.name, e)
                if len(stream.pending) > _MAX_PENDING:  # bounded memory while the store fails
                    lost = len(stream.pending) - _MAX_PENDING
                    del stream.pending[:lost]
                    log.error(
                        "thing %s: %d values of %s not archived", self._thing.id, lost, stream.name
                    )

    def behind(self) -> bool:
        """True when values wait in memory that archiving failed to write (as many as
        the ring holds, or more: the ring may have overwritten some of them already)."""
        return any(len(stream.pending) >= stream.size for stream in self._streams.values())

    async def flush_all(self) -> None:
        for stream in self._streams.values():
            if stream.pending:
                await self.flush(stream)

    async def flush(self, stream: _Stream) -> None:
        points = [p for p in stream.pending if p[0] > stream.archived]
        if not points:
            stream.pending.clear()
            return
        thing = self._thing
        chunk, row = make_segment(
            signer=thing.identity.sign_key,
            thing_id=thing.id,
            kind=stream.kind,
            name=stream.name,
            level=stream.level,
            ring=thing._ring,
            points=points,
        )
        await put_chunk(thing.client.store, chunk)
        md = self._md()
        key = index_key(stream.kind, stream.name, day_of(row.t1))
        for _ in range(_INDEX_RETRIES):
            known = stream.index
            version: int | None = None
            if known is not None and known.key == key:
                version, count = known.version, known.count
                value = append_row(known.value, count, row)
            else:
                rows: list[SegmentRow] = []
                try:
                    entry = await md.get(key, include_deleted=True)
                except NoSuchEntryError:
                    pass
                else:
                    version = entry.version
                    if not entry.deleted:
                        rows = decode_index(entry.value or b"", "index")
                count = len(rows)
                value = encode_index([*rows, row])
            if count >= _MAX_ROWS_PER_ENTRY:
                raise LimitExceededError(
                    f"thing {thing.id!r}: {stream.name} archived {count} segments today; "
                    "give it a longer history ring",
                    limit=_MAX_ROWS_PER_ENTRY,
                    actual=count + 1,
                )
            try:
                (written,) = await md.put_many({key: value}, versions={key: version})
            except ConflictError:
                stream.index = None  # someone else wrote it: read it again
                continue
            stream.index = _Index(key, written.version, value, count + 1)
            break
        else:
            raise ConflictError(key.decode(), expected=-1, current=-1)
        stream.archived = row.last
        stream.pending = [p for p in stream.pending if p[0] > row.last]
        today = day_of(row.t1)
        if stream.expired_day != today:  # index entries expire by the day
            await self._expire(md, stream, row.t1)
            stream.expired_day = today

    async def _expire(self, md: MutableData, stream: _Stream, now: float) -> None:
        oldest = day_of(now - self.retention_days * DAY_S)
        prefix = index_prefix(stream.kind, stream.name)
        for key in await md.keys():
            if _is_day_key(key, prefix) and int(key[len(prefix) :]) < oldest:
                await md.purge(key)


def _ring_prefix(kind: str, name: str) -> str:
    """Where a stream's ring slots are in the thing's MD (``kind``: "a" or "e")."""
    return "ah/" + name + "/" if kind == "a" else "e/" + name + "/"


def _is_day_key(key: bytes, prefix: bytes) -> bool:
    return key.startswith(prefix) and key[len(prefix) :].isdigit()


# --- the reader's side ----------------------------------------------------------------


async def _index_rows(
    md: MutableData, view: ThingView, kind: str, name: str, since: float, until: float
) -> list[SegmentRow]:
    """Rows of segments that may hold values in [since, until], oldest first."""
    prefix = index_prefix(kind, name)
    try:
        keys = await md.keys()
    except NoSuchDataError:
        return []
    days = sorted(int(k[len(prefix) :]) for k in keys if _is_day_key(k, prefix))
    first_day = day_of(since) if since > 0 else -(2**62)
    wanted = [d for d in days if d >= first_day and d <= day_of(until)]
    later = [d for d in days if d > day_of(until)]
    if later:  # a segment ending after `until` may start before it
        wanted.append(later[0])
    allowed = (view.thing.sign_key, view.owner.sign_key)
    rows: list[SegmentRow] = []
    for day in wanted:
        key = index_key(kind, name, day)
        try:
            entry = await md.get(key)
        except NoSuchEntryError:
            continue
        refused = unauthorised(
            entry.signer, allowed, f"history index {key.decode()} of {view.thing_id}"
        )
        if refused is not None:
            raise refused
        rows += decode_index(entry.value or b"", f"history index {key.decode()}")
    rows = [r for r in rows if r.t1 >= since and r.t0 <= until]
    return sorted(rows, key=lambda r: r.first)


async def read_archive(
    view: ThingView,
    history_md: MutableData,
    *,
    kind: str,
    name: str,
    since: float,
    until: float,
) -> list[tuple[int, float, Any]]:
    """Verified archived points (seq, time, value) of one stream in [since, until]."""
    rows = await _index_rows(history_md, view, kind, name, since, until)
    store = history_md.client.store
    gate = asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(row: SegmentRow) -> list[tuple[int, float, Any]]:
        async with gate:
            chunk = await get_chunk(store, row.address)
        return open_segment(
            chunk,
            row=row,
            thing_id=view.thing_id,
            kind=kind,
            name=name,
            thing_key=view.thing.sign_key,
            ring=view.ring,
        )

    points: list[tuple[int, float, Any]] = []
    for part in await asyncio.gather(*(one(r) for r in rows)):
        points += [p for p in part if since <= p[1] <= until]
    return points


def merge_points(
    archived: Iterable[tuple[int, float, Any]], recent: Iterable[tuple[int, float, Any]]
) -> list[tuple[int, float, Any]]:
    """Archive and ring together, by sequence number, each value once."""
    by_seq = {p[0]: p for p in archived}
    for p in recent:
        by_seq.setdefault(p[0], p)
    return [by_seq[n] for n in sorted(by_seq)]


def readings(thing_id: str, name: str, points: Iterable[tuple[int, float, Any]]) -> list[Reading]:
    return [Reading(thing_id, name, v, n, t) for n, t, v in points]


def notifications(
    thing_id: str, name: str, points: Iterable[tuple[int, float, Any]], signer: PublicSignKey
) -> list[Notification]:
    return [Notification(thing_id, "event", name, v, n, t, signer) for n, t, v in points]


@dataclass(frozen=True, slots=True)
class Bucket:
    """Summary of the values in one time bucket ``[start, start + every)``."""

    start: float
    """Start of the bucket (Unix time)."""
    count: int
    """How many values fell in it."""
    min: float | None
    """Smallest numeric value (None: no numeric values)."""
    max: float | None
    """Largest numeric value."""
    mean: float | None
    """Mean of the numeric values."""
    last: Any
    """The last value in the bucket (any type)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "last": self.last,
        }


def downsample(
    points: Iterable[tuple[int, float, Any]], *, every: float, origin: float
) -> list[Bucket]:
    """min/max/mean/last per bucket of ``every`` seconds from ``origin``; empty buckets omitted."""
    if not every > 0:
        raise ValueError("every must be a positive number of seconds")
    buckets: dict[int, list[Any]] = {}
    for _, t, v in points:
        buckets.setdefault(int((t - origin) // every), []).append(v)
    result = []
    for i in sorted(buckets):
        values = buckets[i]
        nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        nums += [float(v) for v in values if isinstance(v, bool)]
        result.append(
            Bucket(
                origin + i * every,
                len(values),
                min(nums) if nums else None,
                max(nums) if nums else None,
                sum(nums) / len(nums) if nums else None,
                values[-1],
            )
        )
    return result
