"""``nats://host:port[,host2:port...]``: the store on NATS JetStream, for many gateways.

Needs nats-server >= 2.12 (atomic batch publish) and the ``nats`` extra.
The store is untrusted like every other: this backend never interprets
values, it only keeps them, orders them and enforces compare-and-set.

URL
    ``nats://[user:password@]host:port[,host:port...][?options]``, ``tls://`` for TLS.
    Options: ``bucket`` (default ``safething``), ``replicas`` (1; 3 in a
    cluster), ``timeout`` (seconds a write keeps retrying through a leader
    election, default 30), ``creds`` (a ``.creds`` file: JWT and nkey),
    ``nkey`` (an nkey seed file), ``tls_ca``, ``tls_cert``, ``tls_key``
    (PEM files), ``domain`` (use the streams of that JetStream domain: a leaf
    site's, from its hub; writes then go out on :func:`site_write_prefix`
    subjects, which the site's server maps back). A password in the URL is visible in ``ps``; prefer
    ``$SAFETHING_NATS_PASSWORD`` (used when the URL names a user but no
    password) or a creds file.

Layout
    Records live in the JetStream stream ``KV_<bucket>`` with the subjects
    ``$KV.<bucket>.<key>``, one message kept per subject (a NATS key-value
    bucket with history 1: ``nats kv`` tools can read it). A delete is a
    message with the header ``KV-Operation: DEL``. Store keys use only
    ``[A-Za-z0-9_=-]`` and dots, all legal in NATS keys, so keys map to
    subjects unchanged. Chunks live in a second bucket ``<bucket>-chunks``
    under ``$KV.<bucket>-chunks.<base64url of the address>``. The revision
    of a record is the stream sequence of its message: store-wide and
    increasing, not dense.

Writes
    Every write is a JetStream publish with ``Nats-Expected-Last-Subject-Sequence``
    (the compare-and-set; a create expects the tombstone's sequence or 0)
    and a ``Nats-Msg-Id``. When a publish times out or meets no responders
    (a leader election in a cluster takes seconds) it is sent again with
    the same id until ``timeout``: an unconditional write is deduplicated by
    the server; a conditional one answers "wrong last sequence", and the
    subject's last message is read back: if it carries our id, it was ours.
    ``commit(..., atomic=True)`` sends one atomic batch (ADR-50): every
    expectation holds or nothing is stored (see "Quotas").

    Nothing is published while the client is not connected: it waits for
    the connection (up to ``timeout``; then ``StoreError``, nothing sent).
    nats-py keeps what is published while it reconnects and sends it once
    connected again, after the write has timed out and its ``StoreError``
    has told the caller it was not acknowledged: a whole atomic batch (or a
    retried publish) was then stored seconds later, and a caller that wrote
    it again after the error (the gateway replaying its buffered readings)
    stored it twice, the thing's next reading one sequence number on
    (``tests/gateway/test_nats_store_outage.py`` on nats-server 2.15.1, where
    a guarded batch no longer reads its guard first, which failed in the
    outage before anything was sent). (The client could still be given a
    batch just before it notices a dead connection, and a server can store
    a batch and die before it answers: ``StoreError`` says the outcome is
    unknown then.)

Quotas (exact, whoever writes under the prefix)
    A write with a quota (its key under the quota's prefix) reads the last
    message under the prefix (``last_by_subj`` on ``$KV.<bucket>.<prefix>>``,
    deletes included), then scans the prefix's records (see ``_scan``), and
    publishes expecting that last message still to be the last under the
    prefix (``Nats-Expected-Last-Subject-Sequence`` with
    ``Nats-Expected-Last-Subject-Sequence-Subject``, nats-server >= 2.11). Any
    record written under the prefix in between, by a writer with a quota or
    without, refuses the write, which counts again: two writers racing for the
    last slot cannot both get it, and a writer passing no quota cannot make a
    count stale. The expectation on the prefix stands in for the key's own
    compare-and-set (one expectation per message; the key is under the
    prefix, so it is covered). A store object remembers what its own last
    write under a prefix left (every record's revision and size, the write's
    sequence; up to 60,000 records in all, about 20 MB, least recently used
    prefixes dropped first) and writes on that without reading: if anything else
    landed under the prefix since, the expectation refuses the write and it
    counts again. A thing writing its own records thus pays one round trip
    per write. A refusal decided on memory (a conflict, the quota) is decided
    again on a fresh count. A write with a quota whose key lies outside the
    prefix changes nothing the quota counts and is an ordinary write.

    ``commit(..., atomic=True)`` does the same in one atomic batch (ADR-50):
    the first message under each quota prefix carries that prefix's
    expectation, the rest of the batch under it follows (a prefix inside
    another quota prefix of the batch is covered by the outer one and counted
    from its records); writes outside every quota prefix carry their own
    compare-and-set. A batch of one message is sent as a plain publish. On
    nats-server 2.12.8 with file storage an atomic batch took 4-8 ms on
    loopback against 0.4 ms for a plain publish (strace shows the server creating
    and removing files for each batch): a ``thing.set()``, one batch of two writes, pays it.

Group commit
    With file storage and one replica an atomic batch of 2 messages cost the server
    1.1-1.7 ms of CPU on 2.12.8 (2.2-2.6 ms on 2.15.1), one of 20 the same, against
    20-30 us for a plain publish (the server stages every such batch in a file store
    of its own, made and removed for the batch): the server's CPU, not the round
    trips, limits how many ``thing.set()`` a second the store takes. So a store object keeps at most
    ``_BATCHES_IN_FLIGHT`` atomic batches in flight; atomic commits planned while that
    many are out wait, and when one is answered everything waiting goes out as one
    batch (up to 1,000 messages; a commit writing or expecting under a subject of an
    earlier one in the group waits for the next, so that no commit of a group can
    refuse another). Each commit keeps its own expectations, so the batch is stored
    only if every commit in it would have been stored alone. If the server refuses a
    group, it stored nothing, and each commit of the group is sent again alone, for
    its own outcome (a refusal is planned again, counting, as before). Commits are
    grouped only on servers that check several prefix expectations in one batch
    right (:func:`checks_batch_prefixes`: 2.12.14, 2.14.4, 2.15 and later; 2.12.8
    refuses such batches of long subjects, so they would all be sent twice), and a
    commit expecting an empty prefix (0) is always sent alone (on a server without
    the fix such an expectation could pass unchecked in a group). In a cluster the
    version is that of the server the client is connected to: upgrade every node
    before relying on it.

Guards
    A commit's guard (a record that must still be at the revision its writer read,
    an MD's header) is read just before the commit is sent. On the servers above an
    atomic commit of several messages carries it instead, as the expectation of a
    message that has none (``Nats-Expected-Last-Subject-Sequence-Subject`` naming
    the guard's record): one round trip less, and checked where the batch is
    stored. If such a batch is refused, the guard's record is read to tell a
    guard that no longer holds (``GuardFailedError``) from another expectation. A
    guard on an absent record is always read (a delete leaves a message on the
    subject).

Watches
    A watch is a JetStream push consumer that this module supervises itself
    (as nats.py's ordered consumer does, without relying on it): in memory,
    one replica, no acks, flow control, idle heartbeat every second,
    filtered on ``$KV.<bucket>.<prefix>>`` (``watch_pattern``: on
    ``$KV.<bucket>.<pattern>``, ``*`` a NATS wildcard), delivering from sequence
    ``since + 1``. It remembers the last stream sequence delivered; on a gap
    in the consumer sequence, a heartbeat that reports more than it
    delivered, five seconds of silence or an error it recreates the consumer
    at ``last + 1`` (back-off 50 ms doubling to 2 s). Since a bucket keeps one
    message per key, a replay delivers the latest change of each key written
    after ``since``, deletes included.

Durability
    An acknowledged write is stored by the stream's replicas (a majority of
    3 with ``replicas=3``). nats-server fsyncs every two minutes by default;
    set ``sync_interval: always`` in its configuration where an acknowledged
    write must survive a power cut.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from safething.errors import (
    AbortedWriteError,
    ConflictError,
    GuardFailedError,
    LimitExceededError,
    StoreError,
    StoreURLError,
)
from safething.store.base import (
    Change,
    Guard,
    Record,
    Store,
    StoreInfo,
    Watch,
    Write,
    check_key,
    check_pattern,
    check_prefix,
    pattern_prefix,
    pattern_regex,
)
from safething.store.quota import add_effect, enforce

__all__ = [
    "NatsStore",
    "parse_nats_url",
    "site_copy_config",
    "site_write_mapping",
    "site_write_prefix",
]

log = logging.getLogger(__name__)

PASSWORD_ENV = "SAFETHING_NATS_PASSWORD"

_T = TypeVar("_T")

_KEY_RE = re.compile(r"^[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*$")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_WRONG_LAST_SEQUENCE = 10071
_NOT_FOUND = 10037
_STREAM_NOT_FOUND = 10059
_MAX_BATCH = 1000
"""Most messages one atomic batch may hold (nats-server's limit)."""
_HEARTBEAT_S = 1.0
_STALL_S = 5.0
_REQUEST_S = 5.0
_BATCHES_IN_FLIGHT = 2
"""Atomic batches a store object has in flight at once (see "Group commit" above)."""
_COUNTED_KEYS = 60_000
"""Most records of quota prefixes a store object remembers (see "Quotas" above): about
320 bytes each. A gateway's thing MD holds about 7 records after its birth, so this
covers some 8,000 things; beyond what it covers, a write under a forgotten prefix counts
it again (a point read and a scan: a gateway with 3,000 devices took 10.9 s instead of
3.8 s to mark them offline with 20,000, under a profiler; scripts/bench_gateway_stop.py)."""


@dataclass(frozen=True)
class NatsOptions:
    """What a ``nats://`` URL says."""

    servers: list[str]
    bucket: str = "safething"
    replicas: int = 1
    timeout: float = 30.0
    user: str | None = None
    password: str | None = None
    creds: str | None = None
    nkey: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    domain: str | None = None
    """JetStream domain whose streams to use (a leaf site's, from its hub)."""


def parse_nats_url(url: str) -> NatsOptions:
    """Read a ``nats://`` (or ``tls://``) store URL; ``StoreURLError`` if malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise StoreURLError(f"not a nats URL: {url!r}")
    netloc = parts.netloc
    user = password = None
    if "@" in netloc:
        login, _, netloc = netloc.rpartition("@")
        user, _, pw = login.partition(":")
        user, password = unquote(user), (unquote(pw) if pw else None)
    hosts = [h for h in netloc.split(",") if h]
    if not hosts:
        raise StoreURLError(f"nats URL {url!r} names no server (nats://host:4222)")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise StoreURLError(f"nats URL {url!r}: write each server as host:port, not {host!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {
        "bucket",
        "replicas",
        "timeout",
        "creds",
        "nkey",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "domain",
    }
    unknown = sorted(set(query) - known)
    if unknown:
        raise StoreURLError(f"nats URL {url!r}: unknown option(s) {', '.join(unknown)}")
    bucket = query.get("bucket", "safething")
    if not _BUCKET_RE.match(bucket):
        raise StoreURLError(f"nats URL {url!r}: a bucket name uses only [A-Za-z0-9_-]")
    try:
        replicas = int(query.get("replicas", "1"))
        timeout = float(query.get("timeout", "30"))
    except ValueError as e:
        raise StoreURLError(f"nats URL {url!r}: {e}") from None
    if not 1 <= replicas <= 5 or timeout <= 0:
        raise StoreURLError(f"nats URL {url!r}: replicas is 1 to 5, timeout above 0")
    domain = query.get("domain") or None
    if domain is not None and not _BUCKET_RE.match(domain):
        raise StoreURLError(f"nats URL {url!r}: a domain name uses only [A-Za-z0-9_-]")
    if user and password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    tls = parts.scheme == "tls" or any(k.startswith("tls_") for k in query)
    scheme = "tls" if tls else "nats"
    return NatsOptions(
        servers=[f"{scheme}://{h}" for h in hosts],
        bucket=bucket,
        replicas=replicas,
        timeout=timeout,
        user=user,
        password=password,
        creds=query.get("creds"),
        nkey=query.get("nkey"),
        tls=tls,
        tls_ca=query.get("tls_ca"),
        tls_cert=query.get("tls_cert"),
        tls_key=query.get("tls_key"),
        domain=domain,
    )


def site_write_prefix(domain: str) -> str:
    """Where a client elsewhere (at the hub) publishes writes for the site of JetStream
    domain ``domain``: ``safething-kv.<domain>.`` followed by what follows ``$KV.``.
    Subjects under ``$KV.`` do not cross a leaf-node connection; these do, and the
    site's server maps them back (:func:`site_write_mapping`), so that the site's
    stream stores them and checks their compare-and-set as for any write."""
    return f"safething-kv.{domain}."


def site_write_mapping(domain: str) -> str:
    """The ``mappings`` line of the site's server configuration that takes writes
    published from elsewhere (:func:`site_write_prefix`) into its ``$KV.`` streams."""
    return f'mappings = {{ "{site_write_prefix(domain)}>": "$KV.>" }}'


def _stream_config(name: str, subject: str, replicas: int) -> dict[str, Any]:
    return {
        "name": name,
        "subjects": [subject],
        "retention": "limits",
        "max_msgs_per_subject": 1,
        "max_msg_size": -1,
        "discard": "new",
        "storage": "file",
        "num_replicas": replicas,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        # Point reads go to the leader (STREAM.MSG.GET); direct gets, which any replica
        # answers, serve scans, checked against the leader's last sequence.
        "allow_direct": True,
        "allow_atomic": True,
        "duplicate_window": 120_000_000_000,
    }


def site_copy_config(
    bucket: str, domain: str, *, copy: str | None = None, replicas: int = 1
) -> dict[str, Any]:
    """The ``$JS.API.STREAM.CREATE`` request that makes, on a hub, a read-only copy of a
    leaf site's record bucket: stream ``KV_<copy>`` (default ``<bucket>-<domain>``)
    sourcing ``KV_<bucket>`` through the site's JetStream domain, its subjects renamed
    to ``$KV.<copy>.``, so that ``nats://hub...?bucket=<copy>`` opens it as a store.
    The hub keeps the copy and catches up, in order, whenever the site is reachable."""
    copy = copy or f"{bucket}-{domain}"
    for name in (bucket, domain, copy):
        if not _BUCKET_RE.match(name):
            raise ValueError(f"{name!r}: bucket and domain names use only [A-Za-z0-9_-]")
    config = _stream_config(f"KV_{copy}", f"$KV.{copy}.>", replicas)
    config["subjects"] = []  # nobody publishes to a copy
    config["sources"] = [
        {
            "name": f"KV_{bucket}",
            "external": {"api": f"$JS.{domain}.API"},
            "subject_transforms": [{"src": f"$KV.{bucket}.>", "dest": f"$KV.{copy}.>"}],
        }
    ]
    return config


_BATCH_PREFIX_FIXES = ((2, 12, 14), (2, 14, 4), (2, 15, 0))
"""The first release of each nats-server line whose atomic batches check several
``Nats-Expected-Last-Subject-Sequence-Subject`` expectations right."""


def checks_batch_prefixes(version: Any) -> bool:
    """Whether nats-server ``version`` (nats-py's ``ServerVersion``) checks several prefix
    expectations in one atomic batch right. Before the fix (nats-server commit 39a478e,
    2026-07, "Atomic batch expected subject ownership") the server kept each such
    expectation's subject as a view into a buffer that the batch's next message
    overwrote, so a later expectation could be compared with an earlier one's cached
    answer: 2.12.8 refused every batch of two thing writes whose MD prefixes are 64
    hex digits long, and a later expectation of an empty prefix could pass unchecked."""
    try:
        found = (int(version.major), int(version.minor), int(version.patch))
    except (TypeError, ValueError):
        return False
    return any(
        found >= fix and (found[:2] == fix[:2] or fix == _BATCH_PREFIX_FIXES[-1])
        for fix in _BATCH_PREFIX_FIXES
    )


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def _is_delete(headers: dict[str, str] | None) -> bool:
    return headers is not None and headers.get("KV-Operation") in ("DEL", "PURGE")


@dataclass(frozen=True)
class _Last:
    """The last message on a subject."""

    seq: int
    """Its stream sequence (0: the subject never had one)."""
    value: bytes | None
    """``None`` for a delete (tombstone) or no message."""
    msg_id: str | None


@dataclass(frozen=True)
class _Message:
    subject: str
    value: bytes | None
    """``None``: a delete."""
    expect: int | None
    """``Nats-Expected-Last-Subject-Sequence``, if any."""
    expect_subject: str | None = None
    """``Nats-Expected-Last-Subject-Sequence-Subject``: the expectation is on the last
    message of these subjects (a wildcard) instead of the message's own subject."""


@dataclass
class _Counted:
    """The records under a quota prefix as of one message."""

    last: int
    """Sequence of the last message under the prefix (deletes included; 0: none)."""
    size: int
    """Their bytes."""
    keys: dict[str, tuple[int, int]]
    """Key -> (revision, length) of every live record under the prefix."""
    remembered: bool
    """Taken from what this store object remembered (not read now)."""


@dataclass(frozen=True)
class _Plan:
    messages: list[_Message]
    mapping: list[int]
    """Per write: the index of its message, -1 for a delete of nothing."""
    covered: dict[str, _Counted]
    """Records under each covering quota prefix, as counted or remembered."""


def _headers(message: _Message, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the message's expectations and delete marker."""
    if message.expect is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(message.expect)
    if message.expect_subject is not None:
        headers["Nats-Expected-Last-Subject-Sequence-Subject"] = message.expect_subject
    if message.value is None:
        headers["KV-Operation"] = "DEL"
    return headers


@dataclass(frozen=True)
class _Refusal:
    index: int
    error: ConflictError | LimitExceededError


@dataclass(eq=False)
class _Queued:
    """An atomic commit's messages waiting for a batch of their own or a group's."""

    messages: list[_Message]
    done: asyncio.Future[int]
    """The sequence of its first message once stored, or the refusal."""


def _scopes(queued: _Queued) -> list[str]:
    """The subjects its messages write and the subject prefixes they expect on."""
    return [m.subject for m in queued.messages] + [
        m.expect_subject.removesuffix(">") for m in queued.messages if m.expect_subject
    ]


def _overlap(a: _Queued, b: _Queued) -> bool:
    """Whether ``a`` and ``b`` write or expect on a common subject (one could refuse
    the other in a shared batch)."""
    return any(x.startswith(y) or y.startswith(x) for x in _scopes(a) for y in _scopes(b))


def _settle(queued: _Queued, *, first: int = 0, error: BaseException | None = None) -> None:
    if queued.done.done():  # its committer was cancelled
        return
    if error is not None:
        queued.done.set_exception(error)
    else:
        queued.done.set_result(first)


class _APIError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"{description} ({code})")
        # In a cluster a stale expectation inside a batch may come back under
        # another error code; the description is what they share.
        self.code = _WRONG_LAST_SEQUENCE if "wrong last sequence" in description else code


class NatsStore(Store):
    """A store in two JetStream key-value buckets. Open with :meth:`open`."""

    def __init__(self, url: str, options: NatsOptions, client: Client) -> None:
        self.url = url
        self._options = options
        self._nc = client
        self._bucket = options.bucket
        self._stream = f"KV_{options.bucket}"
        self._prefix = f"$KV.{options.bucket}."
        self._chunk_bucket = f"{options.bucket}-chunks"
        self._chunk_stream = f"KV_{self._chunk_bucket}"
        self._chunk_prefix = f"$KV.{self._chunk_bucket}."
        self._js = f"$JS.{options.domain}.API" if options.domain else "$JS.API"
        """Prefix of the JetStream API of the streams' domain."""
        self._writes_to = site_write_prefix(options.domain) if options.domain else None
        """Where writes are published instead of ``$KV.``: another domain's server maps
        them back (see :func:`site_write_prefix`); ``$KV.`` does not cross a leaf
        connection."""
        self._request_s = min(_REQUEST_S, options.timeout)
        """How long one attempt waits for an answer (never beyond ``timeout``)."""
        self._watches: set[_NatsWatch] = set()
        self._starting: set[_NatsWatch] = set()
        """Watches without ``since`` still learning where "now" is (see :meth:`watch`)."""
        self._seen = 0
        """Highest revision this object has seen acknowledged or reported."""
        self._counted: OrderedDict[str, _Counted] = OrderedDict()
        """Quota prefixes as this object's last write under each left them (LRU)."""
        self._counted_keys = 0
        """Records in ``_counted``."""
        self._in_flight = 0
        """Atomic batches of this object sent and not yet answered."""
        self._queued: list[_Queued] = []
        """Atomic commits waiting to go out together (see "Group commit")."""
        self._groups: set[asyncio.Task[None]] = set()
        """The tasks sending groups of them."""
        self.group_commit: bool | None = None
        """Whether atomic commits may share batches (see "Group commit" above); ``None``:
        when the server connected to checks several prefix expectations per batch right."""
        self._version_checked: tuple[str, bool] | None = None
        """The server version last looked at, and whether it does."""
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> NatsStore:
        options = parse_nats_url(url)
        kwargs: dict[str, Any] = {
            "servers": options.servers,
            "name": "safething-store",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "allow_reconnect": True,
        }
        if options.user:
            kwargs["user"] = options.user
            kwargs["password"] = options.password or ""
        if options.creds:
            kwargs["user_credentials"] = options.creds
        if options.nkey:
            kwargs["nkeys_seed"] = options.nkey
        if options.tls:
            context = ssl.create_default_context(cafile=options.tls_ca)
            if options.tls_cert:
                context.load_cert_chain(options.tls_cert, options.tls_key)
            kwargs["tls"] = context

        async def _error(e: Exception) -> None:
            log.warning("nats store %s: %s", url, e)

        kwargs["error_cb"] = _error
        try:
            client = await nats.connect(**kwargs)
        except Exception as e:
            raise StoreError(f"cannot connect to {', '.join(options.servers)}: {e}") from None
        store = cls(url, options, client)
        try:
            await store._ensure_stream(store._stream, store._prefix + ">")
            await store._ensure_stream(store._chunk_stream, store._chunk_prefix + ">")
        except BaseException:
            await client.close()
            raise
        return store

    # --- the NATS client -------------------------------------------------------
    # Every call into nats-py goes through these three: nats-py can swallow the
    # cancellation of the task calling it (its request waits with asyncio.wait_for,
    # which on Python 3.11 returns the answer and drops a cancellation that lands as
    # the answer comes in; its flush drops one outright). A task cancelled then would
    # carry on as if nothing happened: a watch or a writer loop asked to stop would
    # run for ever, and whoever awaits its end would wait for ever.

    async def _nats_request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        return await _keep_cancel(
            self._nc.request(subject, payload, timeout=timeout, headers=headers)
        )

    async def _nats_publish(
        self,
        subject: str,
        payload: bytes,
        *,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        await _keep_cancel(self._nc.publish(subject, payload, reply=reply, headers=headers))

    async def _nats_subscribe(
        self, subject: str, *, cb: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        return await _keep_cancel(self._nc.subscribe(subject, cb=cb))

    # --- JetStream API ---------------------------------------------------------

    async def _api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self._check_open()
        payload = json.dumps(body).encode() if body is not None else b""
        deadline = time.monotonic() + self._options.timeout
        delay = 0.05
        while True:
            try:
                reply = await self._nats_request(
                    f"{self._js}.{subject}", payload, timeout=self._request_s
                )
                answer: dict[str, Any] = json.loads(reply.data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"NATS JetStream did not answer {subject}: {e!r}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except nats.errors.ConnectionClosedError:
                raise StoreError(f"store {self.url}: the NATS connection is closed") from None
            error = answer.get("error")
            if error:
                code = int(error.get("err_code", 0))
                if error.get("code") == 503 and time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay)  # no leader right now (election)
                    delay = min(delay * 2, 1.0)
                    continue
                raise _APIError(code, str(error.get("description", error)))
            return answer

    async def _ensure_stream(self, name: str, subject: str) -> None:
        try:
            info = await self._api(f"STREAM.INFO.{name}")
        except _APIError as e:
            if e.code != _STREAM_NOT_FOUND:
                raise StoreError(f"cannot read stream {name}: {e}") from None
            config = _stream_config(name, subject, self._options.replicas)
            try:
                await self._api(f"STREAM.CREATE.{name}", config)
                return
            except _APIError as e2:
                try:  # another opener created it at the same moment
                    info = await self._api(f"STREAM.INFO.{name}")
                except _APIError:
                    raise StoreError(f"cannot create stream {name}: {e2}") from None
        if name == self._stream:
            self._seen = max(self._seen, int(info["state"]["last_seq"]))
        if not info["config"].get("allow_atomic"):
            raise StoreError(
                f"stream {name} exists without allow_atomic (nats-server >= 2.12 needed and "
                "the stream must allow atomic batches)"
            )

    async def _last(self, stream: str, subject: str) -> _Last:
        try:
            answer = await self._api(f"STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
        except _APIError as e:
            if e.code == _NOT_FOUND:
                return _Last(0, None, None)
            raise StoreError(f"cannot read {subject}: {e}") from None
        message = answer["message"]
        headers = _parse_headers(base64.b64decode(message["hdrs"])) if message.get("hdrs") else {}
        data = base64.b64decode(message["data"]) if message.get("data") else b""
        value = None if _is_delete(headers) else data
        return _Last(int(message["seq"]), value, headers.get("Nats-Msg-Id"))

    def _write_subject(self, subject: str) -> str:
        """The subject to publish a write of ``subject`` (``$KV.<bucket>.<key>``) on."""
        if self._writes_to is None:
            return subject
        return self._writes_to + subject[len("$KV.") :]

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str], *, conditional: bool
    ) -> int:
        """Publish until acknowledged (retrying with the same ``Nats-Msg-Id``); the
        sequence. Raises ``_APIError`` for a refusal (wrong last sequence...)."""
        msg_id = headers["Nats-Msg-Id"]
        self._check_size(subject, payload, headers)
        deadline = time.monotonic() + self._options.timeout
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            self._check_open()
            if not self._nc.is_connected:
                await self._connected(deadline, f"write to {subject}")
            try:
                reply = await self._nats_request(
                    self._write_subject(subject), payload, timeout=self._request_s, headers=headers
                )
                answer = json.loads(reply.data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"write to {subject} not acknowledged: {e!r}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except nats.errors.ConnectionClosedError:
                raise StoreError(f"store {self.url}: the NATS connection is closed") from None
            error = answer.get("error")
            if not error:
                seq = int(answer["seq"])
                if subject.startswith(self._prefix):  # a chunk's sequence is another stream's
                    self._saw(seq, seq)
                return seq
            code = int(error.get("err_code", 0))
            if error.get("code") == 503 and time.monotonic() + delay < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if code == _WRONG_LAST_SEQUENCE and conditional and attempt > 1:
                # An earlier attempt may have been stored: is the last message ours?
                stream = self._stream if subject.startswith(self._prefix) else self._chunk_stream
                last = await self._last(stream, subject)
                if last.msg_id == msg_id:
                    return last.seq
            raise _APIError(code, str(error.get("description", error)))

    def _saw(self, first: int, last: int) -> None:
        """Writes ``first..last`` of this object were acknowledged."""
        self._seen = max(self._seen, last)
        for watch in self._starting:
            # only writes that may hide below the start point need remembering
            top = last if watch._live_from is None else min(last, watch._live_from)
            watch._own.update(range(first, top + 1))

    def _check_size(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        size = len(payload) + len(subject) + sum(len(k) + len(v) + 4 for k, v in headers.items())
        limit = self._nc.max_payload
        if size + 64 > limit:
            raise StoreError(
                f"a write of {len(payload)} bytes does not fit the server's max_payload of "
                f"{limit} bytes (raise max_payload in nats-server.conf)"
            )

    # --- records ---------------------------------------------------------------

    async def get(self, key: str) -> Record | None:
        check_key(key)
        last = await self._last(self._stream, self._prefix + key)
        if last.value is None:
            return None
        return Record(key, last.value, last.seq)

    async def commit(
        self, writes: Sequence[Write], *, atomic: bool = False, guard: Guard | None = None
    ) -> list[int | Exception]:
        self._check_open()
        for write in writes:
            if not isinstance(write, Write):
                raise TypeError(f"commit takes Write objects, not {type(write).__name__}")
        if atomic:
            return await self._commit_atomic(list(writes), guard)
        # The guard's record is read just before (what a writer did itself before there
        # were guards).
        if guard is not None and not guard.holds(await self.get(guard.key)):
            raise GuardFailedError(guard.key)
        results: list[int | Exception] = []
        for write in writes:
            try:
                results.append(await self._write(write))
            except (ConflictError, LimitExceededError) as e:
                results.append(e.with_traceback(None))  # an outcome: no frames held in a cycle
        return results

    async def _write(self, write: Write) -> int:
        quota = write.quota
        if quota is not None and write.key.startswith(quota.prefix):
            return self._one(await self._commit_atomic([write]))  # one message: no batch
        # without a quota, or outside its prefix (nothing the quota counts changes)
        subject = self._prefix + write.key
        while True:
            current = None
            if write.expect is not None or write.value is None:
                current = await self._last(self._stream, subject)
                live = current.seq if current.value is not None else 0
                if write.expect is not None and write.expect != live:
                    raise ConflictError(write.key, expected=write.expect, current=live)
                if write.value is None and live == 0:
                    return 0
            headers = {"Nats-Msg-Id": secrets.token_hex(12)}
            if current is not None:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(current.seq)
            if write.value is None:
                headers["KV-Operation"] = "DEL"
            try:
                return await self._publish(
                    subject, write.value or b"", headers, conditional=current is not None
                )
            except _APIError as e:
                if e.code != _WRONG_LAST_SEQUENCE:
                    raise StoreError(f"write to {write.key!r} refused: {e}") from None
                # Someone wrote in between: decide again on the new state.

    async def _count(self, prefix: str) -> _Counted:
        """The records under ``prefix`` as of the last message under it (deletes included)."""
        last = (await self._last(self._stream, self._under(prefix))).seq
        # Scanned after ``last`` was read: if anything lands under the prefix meanwhile,
        # a write expecting ``last`` is refused and counts again.
        found = await self._scan(prefix, headers_only=True)
        return _Counted(
            last,
            sum(n for _v, n, _s in found.values()),
            {key: (seq, n) for key, (_v, n, seq) in found.items()},
            remembered=False,
        )

    def _remember(self, prefix: str, counted: _Counted) -> None:
        self._forget(prefix)
        counted.remembered = True
        self._counted[prefix] = counted
        self._counted_keys += len(counted.keys)
        while self._counted_keys > _COUNTED_KEYS and len(self._counted) > 1:
            self._forget(next(iter(self._counted)))

    def _forget(self, prefix: str) -> _Counted | None:
        counted = self._counted.pop(prefix, None)
        if counted is not None:
            self._counted_keys -= len(counted.keys)
        return counted

    def _under(self, prefix: str) -> str:
        """The subjects of the records under ``prefix``."""
        return self._prefix + prefix + ">"

    async def _plan(self, writes: list[Write]) -> _Plan | _Refusal | None:
        """Decide ``writes`` in order on the current state: the messages to send and,
        for each write, the index of its message (-1: a delete of nothing, revision
        0); or the first refusal; or ``None`` when a decision rested on remembered
        counts that found no message to check them (plan again, counting)."""
        quoted = {w.quota.prefix for w in writes if w.quota and w.key.startswith(w.quota.prefix)}
        # One expectation per message: a prefix inside another quota prefix of the batch
        # is covered by the outer one's expectation and counted from the outer's records.
        covering = sorted(p for p in quoted if not any(p != q and p.startswith(q) for q in quoted))

        def cover(key: str) -> str | None:
            return next((p for p in covering if key.startswith(p)), None)

        async def counted(prefix: str) -> _Counted:
            return self._forget(prefix) or await self._count(prefix)

        outside = list(dict.fromkeys(w.key for w in writes if cover(w.key) is None))
        found, lasts = await asyncio.gather(
            asyncio.gather(*(counted(p) for p in covering)),
            asyncio.gather(*(self._last(self._stream, self._prefix + k) for k in outside)),
        )
        covered = dict(zip(covering, found, strict=True))
        # key -> (live revision or 0, length or -1, the subject's last sequence)
        state: dict[str, tuple[int, int, int]] = {}
        for key, last in zip(outside, lasts, strict=True):
            if last.value is not None:
                state[key] = (last.seq, len(last.value), last.seq)
            else:
                state[key] = (0, -1, last.seq)
        usage: dict[str, list[int]] = {}
        for prefix in quoted:
            records = covered[cover(prefix) or prefix].keys
            under = [n for k, (_s, n) in records.items() if k.startswith(prefix)]
            usage[prefix] = [len(under), sum(under)]
        messages: list[_Message] = []
        mapping: list[int] = []
        seen: set[str] = set()
        for index, write in enumerate(writes):
            outer = cover(write.key)
            if write.key not in state:
                assert outer is not None
                seq, length = covered[outer].keys.get(write.key, (0, -1))
                state[write.key] = (seq, length, seq)
            live, old_len, last_seq = state[write.key]
            refusal: ConflictError | LimitExceededError | None = None
            if write.expect is not None and write.expect != live:
                refusal = ConflictError(write.key, expected=write.expect, current=live)
            new_len = len(write.value) if write.value is not None else -1
            quota = write.quota
            if refusal is None and quota is not None and write.key.startswith(quota.prefix):
                after = list(usage[quota.prefix])
                add_effect(after, old_len, new_len)
                try:
                    enforce(quota, usage[quota.prefix], after)
                except LimitExceededError as e:
                    refusal = e
            if refusal is not None:
                if any(c.remembered for c in covered.values()):
                    return None  # refuse on what the store holds now, not on memory
                return _Refusal(index, refusal)
            if write.value is None and old_len < 0:
                mapping.append(-1)
                continue
            for prefix, counts in usage.items():
                if write.key.startswith(prefix):
                    add_effect(counts, old_len, new_len)
            subject = self._prefix + write.key
            if outer is not None:
                # the first message under a covering prefix expects nothing to have
                # landed under it since it was counted; the rest of the batch follows
                first = outer not in seen
                seen.add(outer)
                message = _Message(
                    subject,
                    write.value,
                    covered[outer].last if first else None,
                    self._under(outer) if first else None,
                )
            else:
                # the first message on a subject carries the compare-and-set
                message = _Message(subject, write.value, None if subject in seen else last_seq)
            seen.add(subject)
            mapping.append(len(messages))
            messages.append(message)
            state[write.key] = (-1, new_len, -1) if write.value is not None else (0, -1, -1)
        if any(c.remembered and p not in seen for p, c in covered.items()):
            return None  # a no-op decided on memory, with nothing to check it
        return _Plan(messages, mapping, covered)

    def _guarded(self, plan: _Plan, guard: Guard | None) -> list[_Message] | None:
        """The plan's messages with the guard as the expectation of one that carries
        none (the batch is stored only if the guard's record is still at that revision);
        ``None`` when the guard is read first instead: no guard, no such message, a
        guard on an absent record (a delete leaves a message on its subject), a plan
        writing the guard's record, a server that mis-checks several expectations per
        batch (see "Group commit" above)."""
        if guard is None or guard.revision <= 0 or len(plan.messages) < 2:
            return None
        subject = self._prefix + guard.key
        free = [
            i for i, m in enumerate(plan.messages) if m.expect is None and m.expect_subject is None
        ]
        if not free or any(m.subject == subject for m in plan.messages):
            return None
        if not self._checks_several():
            return None
        messages = list(plan.messages)
        messages[free[0]] = replace(
            messages[free[0]], expect=guard.revision, expect_subject=subject
        )
        return messages

    async def _send_batch(self, messages: list[_Message], mapping: list[int]) -> list[int]:
        """Send the messages as one atomic batch (one message: a plain publish, as
        atomic and cheaper); the revision of each write (0 for a no-op)."""
        if not messages:
            return [0 for _ in mapping]
        if len(messages) > _MAX_BATCH:
            raise StoreError(f"an atomic batch holds at most {_MAX_BATCH} writes")
        if len(messages) == 1:
            (message,) = messages
            seq = await self._publish(
                message.subject,
                message.value or b"",
                _headers(message, {"Nats-Msg-Id": secrets.token_hex(12)}),
                conditional=message.expect is not None,
            )
            return [0 if m < 0 else seq for m in mapping]
        first = await self._atomic(messages)
        return [0 if m < 0 else first + m for m in mapping]

    async def _atomic(self, messages: list[_Message]) -> int:
        """Store ``messages`` all or none (raises ``_APIError`` for a refusal); the
        sequence of the first. With fewer than ``_BATCHES_IN_FLIGHT`` batches of this
        object in flight they go out at once, as their own batch; otherwise they wait
        for one to end and go out with the others waiting then, in one batch (see
        "Group commit" above)."""
        if not self._groups_with(messages):
            return await self._send_atomic(messages)
        if self._in_flight < _BATCHES_IN_FLIGHT and not self._queued:
            self._in_flight += 1
            try:
                return await self._send_atomic(messages)
            finally:
                self._in_flight -= 1
                self._send_queued()
        self._check_open()
        queued = _Queued(messages, asyncio.get_running_loop().create_future())
        self._queued.append(queued)
        try:
            return await queued.done
        finally:
            if queued in self._queued:  # cancelled before it was sent
                self._queued.remove(queued)

    def _groups_with(self, messages: list[_Message]) -> bool:
        """Whether ``messages`` may share a batch with others: the server must check
        several prefix expectations in one batch right, and the messages expect no
        empty prefix (see "Group commit" above)."""
        if any(m.expect_subject is not None and m.expect == 0 for m in messages):
            return False
        return self._checks_several()

    def _checks_several(self) -> bool:
        """Whether the server checks several subject expectations in one batch right
        (:func:`checks_batch_prefixes`), unless :attr:`group_commit` says."""
        if self.group_commit is not None:
            return self.group_commit
        version = self._nc.connected_server_version
        label = repr(version)  # a new object at each call
        if self._version_checked is None or self._version_checked[0] != label:
            self._version_checked = (label, checks_batch_prefixes(version))
        return self._version_checked[1]

    def _send_queued(self) -> None:
        """Send what waits, in groups, while fewer than ``_BATCHES_IN_FLIGHT`` batches
        are in flight."""
        while self._queued and self._in_flight < _BATCHES_IN_FLIGHT and not self._closed:
            group = [self._queued.pop(0)]
            size = len(group[0].messages)
            while self._queued:
                queued = self._queued[0]
                if size + len(queued.messages) > _MAX_BATCH or any(
                    _overlap(queued, other) for other in group
                ):
                    break  # it waits for the next group (the order kept)
                group.append(self._queued.pop(0))
                size += len(queued.messages)
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._send_group(group), name="nats-store-group-commit"
            )
            self._groups.add(task)
            task.add_done_callback(self._groups.discard)

    async def _send_group(self, group: list[_Queued]) -> None:
        """Send ``group`` as one batch and tell each its outcome. A refused batch stored
        nothing: each of a group of several is then sent alone, for its own outcome."""
        try:
            try:
                first = await self._send_atomic([m for q in group for m in q.messages])
            except _APIError as e:
                if len(group) == 1:
                    _settle(group[0], error=e)
                else:
                    await asyncio.gather(*(self._send_alone(q) for q in group))
                return
            except StoreError as e:
                for queued in group:
                    _settle(queued, error=e)
                return
            for queued in group:
                _settle(queued, first=first)
                first += len(queued.messages)
        finally:
            closed = StoreError(f"store {self.url} is closed")
            for queued in group:  # cancelled (the store closes): those not told yet
                _settle(queued, error=closed)
            self._in_flight -= 1
            self._send_queued()

    async def _send_alone(self, queued: _Queued) -> None:
        try:
            _settle(queued, first=await self._send_atomic(queued.messages))
        except (_APIError, StoreError) as e:
            _settle(queued, error=e)

    async def _send_atomic(self, messages: list[_Message]) -> int:
        """Send ``messages`` as one atomic batch now; the sequence of the first."""
        batch_id = secrets.token_hex(12)
        last = len(messages) - 1
        headers: dict[str, str] = {}
        if not self._nc.is_connected:
            await self._connected(time.monotonic() + self._options.timeout, "atomic batch")
        for i, message in enumerate(messages):
            headers = _headers(
                message,
                {
                    "Nats-Batch-Id": batch_id,
                    "Nats-Batch-Sequence": str(i + 1),
                    "Nats-Msg-Id": f"{batch_id}-{i}",
                },
            )
            self._check_size(message.subject, message.value or b"", headers)
            if i < last:
                try:
                    await self._nats_publish(
                        self._write_subject(message.subject), message.value or b"", headers=headers
                    )
                except nats.errors.ConnectionClosedError:
                    raise StoreError(f"store {self.url}: the NATS connection is closed") from None
        headers["Nats-Batch-Commit"] = "1"
        final = messages[last]
        try:
            reply = await self._nats_request(
                self._write_subject(final.subject),
                final.value or b"",
                timeout=self._options.timeout,
                headers=headers,
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise StoreError(f"atomic batch not acknowledged, outcome unknown: {e!r}") from None
        except nats.errors.ConnectionClosedError:
            raise StoreError(f"store {self.url}: the NATS connection is closed") from None
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error:
            raise _APIError(int(error.get("err_code", 0)), str(error.get("description", error)))
        first = int(answer["seq"]) - len(messages) + 1
        self._saw(first, int(answer["seq"]))
        return first

    async def _commit_atomic(
        self, writes: list[Write], guard: Guard | None = None
    ) -> list[int | Exception]:
        while True:
            plan = await self._plan(writes)
            if plan is None:
                continue  # remembered counts are dropped: this time it counts
            messages = None if isinstance(plan, _Refusal) else self._guarded(plan, guard)
            # otherwise the guard's record is read just before (what a writer did itself
            # before there were guards)
            if guard is not None and messages is None:
                await self._check_guard(guard)
            if isinstance(plan, _Refusal):
                return [
                    plan.error if i == plan.index else AbortedWriteError(w.key)
                    for i, w in enumerate(writes)
                ]
            try:
                revisions = await self._send_batch(messages or plan.messages, plan.mapping)
            except _APIError as e:
                if e.code != _WRONG_LAST_SEQUENCE:
                    raise StoreError(f"atomic batch refused: {e}") from None
                if guard is not None and messages is not None:
                    await self._check_guard(guard)  # the guard, or another expectation?
                continue  # something moved meanwhile: decide again, counting
            for prefix, counted in plan.covered.items():
                for write, revision in zip(writes, revisions, strict=True):
                    if not write.key.startswith(prefix) or revision == 0:
                        continue
                    if write.value is None:
                        counted.keys.pop(write.key, None)
                    else:
                        counted.keys[write.key] = (revision, len(write.value))
                    counted.last = max(counted.last, revision)
                counted.size = sum(n for _s, n in counted.keys.values())
                self._remember(prefix, counted)
            return list(revisions)

    async def _check_guard(self, guard: Guard) -> None:
        if not guard.holds(await self.get(guard.key)):
            raise GuardFailedError(guard.key)

    async def scan(self, prefix: str) -> list[Record]:
        check_prefix(prefix)
        found = await self._scan(prefix, headers_only=False)
        return [Record(k, v or b"", s) for k, (v, _n, s) in sorted(found.items())]

    async def usage(self, prefix: str) -> tuple[int, int]:
        check_prefix(prefix)
        return await self._usage(prefix)

    async def _usage(self, prefix: str) -> tuple[int, int]:
        found = await self._scan(prefix, headers_only=True)
        return len(found), sum(n for _v, n, _s in found.values())

    async def _scan(
        self, prefix: str, *, headers_only: bool, stream: str | None = None
    ) -> dict[str, tuple[bytes | None, int, int]]:
        """key -> (value, size, revision) of the live records under ``prefix``; the
        value is ``None`` with ``headers_only`` (only the size travels).

        First one batched direct get (up to 1,000 records; any replica answers it,
        and in a cluster its answer counts only if that replica has applied the
        leader's last sequence). Otherwise a consumer delivering the last message of
        every subject; in a cluster that consumer may sit on a replica that has not
        applied the latest writes yet, so the scan also asks for the subject of the
        stream's last message (read from the leader) and starts over until that
        message is among what it got: then the replica has applied every write
        acknowledged before."""
        stream = stream or self._stream
        while True:
            floor = await self._last_sequence(stream) if self._options.replicas > 1 else 0
            quick = await self._scan_direct(prefix, stream, floor)
            if quick is not None:
                return quick[0]
            barrier = None
            if self._options.replicas > 1:
                barrier = await self._barrier(stream)
            found = await self._scan_once(prefix, headers_only, stream, barrier)
            if found is not None:
                return found
            await asyncio.sleep(0.02)

    async def _scan_direct(
        self, prefix: str, stream: str, floor: int
    ) -> tuple[dict[str, tuple[bytes | None, int, int]], int] | None:
        """One batched direct get of the last message of every subject under ``prefix``
        (nats-server >= 2.11), answered by any replica: the result and the stream
        sequence it reflects (0: unknown), or ``None`` when it cannot be trusted or is
        incomplete (a replica behind ``floor``, more than one batch, no answer), and
        the caller scans with a consumer instead."""
        subject_prefix = self._prefix if stream == self._stream else self._chunk_prefix
        wanted = subject_prefix + (prefix + ">" if prefix else ">")
        inbox = self._nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def receive(msg: Msg) -> None:
            queue.put_nowait(msg)

        found: dict[str, tuple[bytes | None, int, int]] = {}
        sub = await self._nats_subscribe(inbox, cb=receive)
        try:
            request = json.dumps({"multi_last": [wanted], "batch": _MAX_BATCH}).encode()
            await self._nats_publish(f"{self._js}.DIRECT.GET.{stream}", request, reply=inbox)
            async with asyncio.timeout(_REQUEST_S):
                while True:
                    msg = await queue.get()
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status == "404":
                        return ({}, 0) if self._options.replicas == 1 else None
                    if status == "204":  # end of batch
                        upto = int(headers.get("Nats-UpTo-Sequence", "0"))
                        complete = headers.get("Nats-Num-Pending", "0") == "0"
                        return (found, upto) if complete and upto >= floor else None
                    if status is not None:
                        return None
                    subject = headers.get("Nats-Subject", "")
                    if not subject.startswith(subject_prefix + prefix):
                        return None
                    key = subject[len(subject_prefix) :]
                    if _is_delete(headers) or (stream == self._stream and not _KEY_RE.match(key)):
                        continue
                    found[key] = (msg.data, len(msg.data), int(headers["Nats-Sequence"]))
        except (TimeoutError, nats.errors.Error, KeyError, ValueError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _barrier(self, stream: str) -> tuple[str, int] | None:
        """The subject and sequence of the stream's last message (from its leader)."""
        last = await self._last_sequence(stream)
        if last == 0:
            return None
        try:
            answer = await self._api(f"STREAM.MSG.GET.{stream}", {"seq": last})
        except _APIError:
            return None  # replaced meanwhile: a later write, the scan will see it or not
        return str(answer["message"]["subject"]), last

    async def _scan_once(
        self, prefix: str, headers_only: bool, stream: str, barrier: tuple[str, int] | None
    ) -> dict[str, tuple[bytes | None, int, int]] | None:
        subject_prefix = self._prefix if stream == self._stream else self._chunk_prefix
        wanted = subject_prefix + (prefix + ">" if prefix else ">")
        filters = [wanted]
        if barrier is not None and not barrier[0].startswith(subject_prefix + prefix):
            filters.append(barrier[0])
        found: dict[str, tuple[bytes | None, int, int]] = {}
        barrier_seen = 0
        inbox = self._nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def receive(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await self._nats_subscribe(inbox, cb=receive)
        try:
            config = {
                "deliver_policy": "last_per_subject",
                "ack_policy": "none",
                "filter_subjects": filters,
                "deliver_subject": inbox,
                "flow_control": True,
                "idle_heartbeat": int(_HEARTBEAT_S * 1e9),
                "headers_only": headers_only,
                "mem_storage": True,
                "num_replicas": 1,
                "max_deliver": 1,
                "inactive_threshold": 30_000_000_000,
            }
            info = await self._api(
                f"CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
            )
            pending = int(info["num_pending"]) + int(info["delivered"]["consumer_seq"])
            name = info["name"]
            delivered = 0
            try:
                async with asyncio.timeout(self._options.timeout + 30):
                    while delivered < pending:
                        msg = await queue.get()
                        if _status(msg):
                            if msg.reply:
                                await self._nats_publish(msg.reply, b"")
                            continue
                        delivered += 1
                        seq = msg.metadata.sequence.stream
                        if barrier is not None and msg.subject == barrier[0]:
                            barrier_seen = seq
                        if not msg.subject.startswith(subject_prefix + prefix):
                            continue
                        key = msg.subject[len(subject_prefix) :]
                        if _is_delete(msg.headers) or (
                            stream == self._stream and not _KEY_RE.match(key)
                        ):
                            continue
                        if headers_only:
                            size = int((msg.headers or {}).get("Nats-Msg-Size", "0"))
                            found[key] = (None, size, seq)
                        else:
                            found[key] = (msg.data, len(msg.data), seq)
            except TimeoutError:
                raise StoreError(f"scan of {prefix!r} did not complete") from None
            finally:
                with contextlib.suppress(Exception):
                    await self._nats_publish(f"{self._js}.CONSUMER.DELETE.{stream}.{name}", b"")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if barrier is not None and barrier_seen < barrier[1]:
            return None  # this replica is behind: ask again
        return found

    def watch(self, prefix: str, *, since: int | None = None) -> Watch:
        """Without ``since`` the feed starts from the stream's last sequence as the
        server reports it to the watch's first request (``async with`` waits for
        that answer); writes of this store object acknowledged after the call are
        delivered even if they overtake that request. If that request fails (the store
        does not answer), the feed starts after the last revision this store object had
        seen at the call, once the store answers: a change another client committed
        just before the call may then come too, none committed after it is missed."""
        check_prefix(prefix)
        self._check_open()
        if since is not None and since < 0:
            raise ValueError("since must be None or a revision >= 0")
        watch = _NatsWatch(self, prefix, since)
        self._watches.add(watch)
        return watch

    def watch_pattern(self, pattern: str, *, since: int | None = None) -> Watch:
        """As :meth:`watch`, on a consumer filtered on ``$KV.<bucket>.<pattern>`` (``*``
        is a NATS wildcard token): the server sends only matching changes."""
        check_pattern(pattern)
        self._check_open()
        if since is not None and since < 0:
            raise ValueError("since must be None or a revision >= 0")
        watch = _NatsWatch(self, pattern_prefix(pattern), since, pattern=pattern)
        self._watches.add(watch)
        return watch

    async def _last_sequence(self, stream: str | None = None) -> int:
        try:
            info = await self._api(f"STREAM.INFO.{stream or self._stream}")
        except _APIError as e:
            raise StoreError(f"cannot read stream info: {e}") from None
        last = int(info["state"]["last_seq"])
        if (stream or self._stream) == self._stream:
            self._seen = max(self._seen, last)
        return last

    # --- immutable chunks ------------------------------------------------------

    def _chunk_subject(self, address: str) -> str:
        if not isinstance(address, str) or not address:
            raise ValueError(f"invalid chunk address {address!r}: use a non-empty string")
        token = base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")
        return self._chunk_prefix + token

    async def put_chunk(self, address: str, data: bytes) -> None:
        subject = self._chunk_subject(address)
        if not isinstance(data, bytes):
            raise TypeError("a chunk must be bytes")
        headers = {
            "Nats-Msg-Id": "chunk-" + secrets.token_hex(12),
            "Nats-Expected-Last-Subject-Sequence": "0",
        }
        try:
            await self._publish(subject, data, headers, conditional=True)
        except _APIError as e:
            if e.code != _WRONG_LAST_SEQUENCE:  # already there: chunks are immutable
                raise StoreError(f"chunk {address!r} refused: {e}") from None

    async def get_chunk(self, address: str) -> bytes | None:
        subject = self._chunk_subject(address)
        return (await self._last(self._chunk_stream, subject)).value

    # --- housekeeping ----------------------------------------------------------

    async def info(self) -> StoreInfo:
        self._check_open()
        records = await self._scan("", headers_only=True)
        chunks = await self._scan("", headers_only=True, stream=self._chunk_stream)
        return StoreInfo(
            url=self.url,
            backend="nats",
            records=len(records),
            record_bytes=sum(n for _v, n, _s in records.values()),
            chunks=len(chunks),
            chunk_bytes=sum(n for _v, n, _s in chunks.values()),
            revision=await self._last_sequence(),
        )

    async def close(self) -> None:
        if self._closed:
            return
        for watch in list(self._watches):
            await watch.close()
        self._closed = True
        closed = StoreError(f"store {self.url} is closed")
        for queued in self._queued:
            _settle(queued, error=closed)
        self._queued.clear()
        for task in list(self._groups):
            task.cancel()
        await asyncio.gather(*self._groups, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._nc.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")

    async def _connected(self, deadline: float, what: str) -> None:
        """Wait until the client is connected (see "Writes" above: what nats-py is given
        while it reconnects, it sends when connected again, after the write's
        ``StoreError``); ``StoreError`` at ``deadline`` (``time.monotonic()``), nothing
        sent."""
        delay = 0.01
        while not self._nc.is_connected:
            self._check_open()
            if self._nc.is_closed:
                raise StoreError(f"store {self.url}: the NATS connection is closed")
            if time.monotonic() + delay > deadline:
                raise StoreError(f"store {self.url}: not connected, {what} not sent")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


async def _keep_cancel(call: Awaitable[_T]) -> _T:
    """``await call``; if the task was cancelled meanwhile and ``call`` swallowed the
    cancellation (see ``NatsStore._nats_request``), raise it now."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await call
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError
    return result


def _status(msg: Msg) -> str | None:
    headers = msg.headers
    if headers and "Status" in headers:
        return headers["Status"]
    if not msg.data and headers is None and msg.reply and not msg.reply.startswith("$JS.ACK"):
        return "100"
    return None


class _NatsWatch(Watch):
    """A supervised push consumer on ``$KV.<bucket>.<prefix>>`` (see the module doc)."""

    def __init__(
        self, store: NatsStore, prefix: str, since: int | None, *, pattern: str | None = None
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._filter = store._prefix + (pattern or (prefix + ">" if prefix else ">"))
        self._match = pattern_regex(pattern).match if pattern else None
        self._after: int | None = since if since is not None else store._seen
        """Last stream sequence delivered (or the start point)."""
        self._live_from: int | None = None
        """Without ``since``: the stream's last sequence at the start. Changes up to
        it are delivered only if this store object wrote them after the call."""
        self._own: set[int] = set()
        if since is None:
            store._starting.add(self)
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._consumer: str | None = None
        self._consumer_seq = 0
        self._closed = False
        self._closing = asyncio.Event()
        self._failures = 0
        self._start = asyncio.get_running_loop().create_task(
            self._begin(since is None), name=f"nats-watch-{prefix}"
        )
        self.recreated = 0
        """How many times the consumer was recreated (a gap, a stall, an error)."""
        self._start_reported = False

    async def __aenter__(self) -> Self:
        try:
            await self._start  # the feed starts from here on, before the body runs
        except StoreError as e:
            if self._start_reported:
                return self
            self._start_reported = True
            log.warning(
                "watch on %r: the store does not answer (%s); the watch starts when it does",
                self._prefix,
                e,
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Change]:
        return self

    async def _begin(self, now: bool) -> None:
        if now and self._live_from is None:
            live_from = await self._store._last_sequence()
            self._live_from = live_from
            self._own = {s for s in self._own if s <= live_from}

    async def __anext__(self) -> Change:
        store = self._store
        while True:
            if self._closed:
                raise StopAsyncIteration
            try:
                if not self._start.done():
                    await self._until_closed(asyncio.shield(self._start))
                    continue
                if self._start.exception() is not None:
                    # The store did not say where "now" was when the watch was made; it
                    # is not asked again (a later "now" would pass over what others
                    # wrote meanwhile): the watch delivers every change after the last
                    # revision this store object had seen then. One committed just
                    # before the call may come too; none after it is missed.
                    self._start = asyncio.get_running_loop().create_task(self._begin(False))
                    self._live_from, self._own = None, set()
                    store._starting.discard(self)
                    continue
                if self._sub is None:
                    # a request in flight when the store closes may never be answered
                    await self._until_closed(self._subscribe())
                    continue
                msg = await self._until_closed(self._queue.get(), timeout=_STALL_S)
            except (StoreError, _APIError, nats.errors.Error, OSError) as e:
                log.info("watch %r: %s; recreating its consumer", self._prefix, e)
                await self._reset()
                await self._back_off()
                continue
            if msg is None:
                if not self._closed:  # silence: no heartbeat either
                    await self._reset()
                continue
            status = _status(msg)
            if status is not None:
                if msg.reply:  # flow control: we have taken what came before it
                    with contextlib.suppress(Exception):
                        await store._nats_publish(msg.reply, b"")
                delivered = (msg.headers or {}).get("Nats-Last-Consumer")
                if delivered is not None and int(delivered) != self._consumer_seq:
                    await self._reset()  # the server sent something we never got
                continue
            try:
                meta = msg.metadata
            except Exception:
                continue
            if meta.sequence.consumer != self._consumer_seq + 1:
                await self._reset()
                continue
            self._consumer_seq = meta.sequence.consumer
            seq = self._after = meta.sequence.stream
            self._failures = 0
            key = msg.subject[len(store._prefix) :]
            if not _KEY_RE.match(key) or not key.startswith(self._prefix):
                continue
            if self._match is not None and not self._match(key):
                continue
            if self._live_from is not None:
                if seq <= self._live_from:
                    if seq not in self._own:
                        continue  # committed before the call
                else:
                    store._starting.discard(self)
                    self._live_from, self._own = None, set()
            value = None if _is_delete(msg.headers) else msg.data
            return Change(key, value, meta.sequence.stream)

    async def _until_closed(self, awaitable: Any, timeout: float | None = None) -> Any:
        """``await awaitable``, or ``None`` when the watch closes or ``timeout`` passes."""
        task = asyncio.ensure_future(awaitable)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait(
                {task, closing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closing.cancel()
            if not task.done():
                task.cancel()
        if self._closed:
            # close() cancels the start this may be waiting on: both come done in the
            # same turn, and the cancelled one must end the iteration, not escape it
            return None
        if task in done:
            return task.result()
        return None

    async def _back_off(self) -> None:
        self._failures += 1
        delay = min(0.05 * 2 ** min(self._failures, 6), 2.0)
        await self._until_closed(asyncio.sleep(delay))

    async def _subscribe(self) -> None:
        store = self._store
        assert self._after is not None
        inbox = store._nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def receive(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await store._nats_subscribe(inbox, cb=receive)
        config = {
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": self._after + 1,
            "ack_policy": "none",
            "filter_subject": self._filter,
            "deliver_subject": inbox,
            "flow_control": True,
            "idle_heartbeat": int(_HEARTBEAT_S * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
            "max_deliver": 1,
            "inactive_threshold": 30_000_000_000,
        }
        try:
            info = await store._api(
                f"CONSUMER.CREATE.{store._stream}", {"stream_name": store._stream, "config": config}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            raise
        self._sub, self._queue, self._consumer = sub, queue, info["name"]
        self._consumer_seq = 0

    async def _reset(self) -> None:
        """Drop the consumer; the next iteration creates one at ``after + 1``."""
        sub, consumer = self._sub, self._consumer
        self._sub = self._consumer = None
        self._queue = asyncio.Queue()
        self.recreated += 1
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None and not self._store._closed:
            with contextlib.suppress(Exception):
                await self._store._nats_publish(
                    f"{self._store._js}.CONSUMER.DELETE.{self._store._stream}.{consumer}", b""
                )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._start.cancel()
        self._store._watches.discard(self)
        self._store._starting.discard(self)
        await self._reset()
