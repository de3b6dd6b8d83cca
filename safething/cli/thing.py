"""``safething thing list|show|publish|disable|watch|request|history|td``: things from a terminal.

Reading needs no identity (``list``, ``td``); ``show`` and ``watch`` use
yours if there is one, to decrypt Owner and Group data you hold keys for;
``publish``, ``disable``, ``rm`` and ``request`` sign with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from safething.cli import history
from safething.cli.common import (
    add_identity_option,
    add_store_option,
    default_identity_path,
    load_identity,
    open_cli_store,
    out,
)
from safething.errors import AccessDeniedError, ActionFailedError, NoSuchDataError
from safething.net import Client, Identity
from safething.things import (
    Action,
    ActionHandle,
    ActionStatus,
    Attribute,
    Notification,
    Schema,
    Subscription,
    ThingClient,
    ValueType,
    to_thing_description,
)
from safething.things.admin import remove_thing, set_status
from safething.things.client import ThingView, level_of
from safething.things.discovery import ThingSummary, list_things
from safething.things.values import STATUSES

__all__ = ["clock", "follow", "parse_arg", "register", "stop_on_interrupt"]

_EVENTS_SHOWN = 10


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("thing", help="list, inspect, publish, watch and use things")
    tsub = p.add_subparsers(dest="thing_command", required=True, metavar="COMMAND")

    ls = tsub.add_parser("list", help="the things in the store")
    ls.add_argument("--status", choices=STATUSES, help="only things in this status")
    ls.add_argument("--search", metavar="TEXT", help="id, title or a name contains TEXT")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    add_store_option(ls)
    ls.set_defaults(func=cmd_list, is_async=True)

    show = tsub.add_parser("show", help="a thing's description, status, values and events")
    show.add_argument("id", help="thing id")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_store_option(show)
    add_identity_option(show)
    show.set_defaults(func=cmd_show, is_async=True)

    for name, status, verb in (
        ("publish", "published", "serve requests"),
        ("disable", "disabled", "reject requests"),
    ):
        s = tsub.add_parser(name, help=f"as its owner, make a thing {verb}")
        s.add_argument("id", help="thing id")
        add_store_option(s)
        add_identity_option(s)
        s.set_defaults(func=cmd_set_status, status=status, is_async=True)

    rm = tsub.add_parser("rm", help="as its owner, remove a thing from the store (its id is free)")
    rm.add_argument("id", help="thing id")
    add_store_option(rm)
    add_identity_option(rm)
    rm.set_defaults(func=cmd_rm, is_async=True)

    w = tsub.add_parser("watch", help="print a thing's notifications as they happen (Ctrl-C)")
    w.add_argument("id", help="thing id")
    w.add_argument("--topic", action="append", default=[], metavar="T", help="repeatable")
    w.add_argument("--attribute", action="append", default=[], metavar="A", help="repeatable")
    w.add_argument(
        "--filter", metavar="F", default=None, help="e.g. gt:70, changed, deadband:2 (default any)"
    )
    w.add_argument("--json", action="store_true", help="print JSON lines")
    add_store_option(w)
    add_identity_option(w)
    w.set_defaults(func=cmd_watch, is_async=True)

    r = tsub.add_parser("request", help="ask a thing to run an action and follow it")
    r.add_argument("id", help="thing id")
    r.add_argument("action", help="action name")
    r.add_argument("args", nargs="*", metavar="NAME=VALUE", help="arguments, e.g. psi=30")
    r.add_argument("--timeout", type=float, metavar="S", help="seconds (default: the action's)")
    r.add_argument("--json", action="store_true", help="print each state as a JSON line")
    r.add_argument(
        "--refuse-offline",
        action="store_true",
        help="fail at once if the thing is offline (default: queue until it returns)",
    )
    add_store_option(r)
    add_identity_option(r)
    r.set_defaults(func=cmd_request, is_async=True)

    history.add_parser(tsub)

    td = tsub.add_parser("td", help="the W3C WoT Thing Description (JSON)")
    td.add_argument("id", help="thing id")
    add_store_option(td)
    td.set_defaults(func=cmd_td, is_async=True)


# --- shared ------------------------------------------------------------------------


def clock(t: float) -> str:
    """``HH:MM:SS.mmm`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _reader(path: Path | None) -> Identity | None:
    """The CLI identity if there is one (to decrypt what it may read); else read-only."""
    target = path or default_identity_path()
    return load_identity(target) if target.exists() else None


REPEAT_GRACE_S = 1.0
"""A second Ctrl-C sooner than this after the first is taken as the same one."""


@contextlib.asynccontextmanager
async def stop_on_interrupt() -> AsyncIterator[asyncio.Event]:
    """An event that Ctrl-C (SIGINT) or SIGTERM sets while the block runs.

    A command that streams until interrupted waits on it and then shuts
    down cleanly (exit 0, no traceback). A second Ctrl-C interrupts at once.
    Where signals cannot be caught (another thread, Windows) the event only
    gets set by the caller. A repeat within ``REPEAT_GRACE_S`` of the first is the
    same interrupt delivered twice (``timeout`` signals the child and then its
    process group) and is ignored.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    first: list[float] = []

    def on_signal() -> None:
        now = loop.time()
        if not first:
            first.append(now)
            stop.set()
            return
        if now - first[0] < REPEAT_GRACE_S:
            return
        raise KeyboardInterrupt

    installed: list[tuple[signal.Signals, Any]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append((sig, previous))
    try:
        yield stop
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)


# --- list, show, td ----------------------------------------------------------------


async def cmd_list(args: argparse.Namespace) -> int:
    async with await open_cli_store(args.store) as store:
        found = await list_things(Client(store), status=args.status, search=args.search)
        url = store.url
    if args.json:
        for summary in found:
            out(json.dumps(summary.to_dict()))
        return 0
    if not found:
        what = " matching" if args.status or args.search else ""
        out(f"no{what} things in {url}")
        return 0
    _table(found)
    return 0


def _table(found: list[ThingSummary]) -> None:
    rows = [("ID", "STATUS", "AVAILABLE", "SEEN", "TITLE", "ATTRIBUTES", "TOPICS", "ACTIONS")]
    for s in found:
        rows.append(
            (
                s.id,
                s.status,
                s.availability,
                clock(s.last_seen) if s.last_seen is not None else "-",
                s.title,
                ",".join(s.attributes) or "-",
                ",".join(s.topics) or "-",
                ",".join(s.actions) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        padded = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        out("  ".join([*padded, row[-1]]))


def _schema(schema: Schema | None) -> str:
    if schema is None:
        return "-"
    text = schema.expected
    return f"{text} ({schema.unit})" if schema.unit else text


def _signature(action: Action) -> str:
    params = []
    for p in action.params:
        default = "" if p.schema.default is None else f" = {_text(p.schema.default)}"
        params.append(f"{p.name}: {_schema(p.schema)}{default}")
    output = f" -> {_schema(action.output)}" if action.output is not None else ""
    return f"{action.name}({', '.join(params)}){output}"


async def _attribute(things: ThingClient, view: ThingView, a: Attribute) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": a.name,
        "type": a.schema.type.value,
        "unit": a.schema.unit,
        "access": a.access.value,
        "dynamic": a.dynamic,
        "writable": a.writable,
    }
    if not a.dynamic:
        doc["value"] = a.value
        return doc
    try:
        reading = await things.read(view.thing_id, a.name)
    except AccessDeniedError:
        doc["encrypted"] = True
    except NoSuchDataError:
        doc["value"] = None
    else:
        doc.update(value=reading.value, seq=reading.seq, time=reading.timestamp)
    return doc


async def _recent_events(
    things: ThingClient, view: ThingView
) -> tuple[list[Notification], list[str]]:
    events: list[Notification] = []
    hidden: list[str] = []
    for topic in view.description.topics:
        try:
            events += await things.events(view.thing_id, topic.name)
        except AccessDeniedError:
            hidden.append(topic.name)
    events.sort(key=lambda n: (n.timestamp, n.name, n.seq))
    return events[-_EVENTS_SHOWN:], hidden


async def cmd_show(args: argparse.Namespace) -> int:
    identity = _reader(args.identity)
    async with await open_cli_store(args.store) as store:
        things = ThingClient(Client(store, identity))
        view = await things.view(args.id, refresh=True)
        attributes = [await _attribute(things, view, a) for a in view.description.attributes]
        events, hidden = await _recent_events(things, view)
        live = await things.availability(args.id)
    d = view.description
    mine = identity is not None and identity.public_sign_key == view.owner.sign_key
    if args.json:
        doc = {
            "id": d.id,
            "title": d.title,
            "description": d.description,
            "status": view.status,
            "availability": live.to_dict(),
            "owner": view.owner.sign_key.hex(),
            "thing_key": view.thing.sign_key.hex(),
            "attributes": attributes,
            "topics": [t.to_dict() for t in d.topics],
            "actions": [a.to_dict() for a in d.actions],
            "events": [_note_dict(n) for n in events],
            "events_encrypted": hidden,
        }
        out(json.dumps(doc, ensure_ascii=False, default=str))
        return 0
    out(f"{d.id}: {d.title}")
    if d.description:
        out(f"  {d.description}")
    out(f"status:    {view.status}")
    seen = f", last seen {clock(live.last_seen)}" if live.last_seen is not None else ""
    why = f" ({live.reason})" if live.reason else ""
    out(f"available: {live.state}{why}{seen}")
    out(f"owner:     {view.owner.sign_key.hex()}{'  (you)' if mine else ''}")
    out(f"thing key: {view.thing.sign_key.hex()}")
    out("attributes:")
    width = max((len(a.name) for a in d.attributes), default=0)
    for attribute in attributes:
        out(f"  {attribute['name'].ljust(width)}  {_shown_value(attribute)}")
    out("topics:" if d.topics else "topics: none")
    for t in d.topics:
        out(f"  {t.name}: {_schema(t.payload)}  [{t.access.value} access, keeps {t.history}]")
    out("actions:" if d.actions else "actions: none")
    for action in d.actions:
        out(f"  {_signature(action)}  [{action.access.value} access]")
    out("recent events:" if events or hidden else "recent events: none")
    for n in events:
        out(f"  {clock(n.timestamp)}  {n.name}  {_text(n.value)}  (seq {n.seq})")
    for name in hidden:
        out(f"  {name}: <encrypted: {d.topic(name).access.value} access>")
    return 0


def _shown_value(doc: dict[str, Any]) -> str:
    tags = f"[{'dynamic' if doc['dynamic'] else 'static'}, {doc['access']} access]"
    if doc.get("encrypted"):
        return f"<encrypted: {doc['access']} access>  {tags}"
    if doc["dynamic"] and doc["value"] is None:
        return f"<no value yet>  {tags}"
    unit = f" {doc['unit']}" if doc["unit"] else ""
    value = f"{_text(doc['value'])}{unit}"
    if doc["dynamic"]:
        value += f"  (seq {doc['seq']}, {clock(doc['time'])})"
    return f"{value}  {tags}"


async def cmd_td(args: argparse.Namespace) -> int:
    async with await open_cli_store(args.store) as store:
        description = await ThingClient(Client(store)).describe(args.id)
    out(json.dumps(to_thing_description(description), indent=2, ensure_ascii=False))
    return 0


# --- publish, disable --------------------------------------------------------------


async def cmd_set_status(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    async with await open_cli_store(args.store) as store:
        old = await set_status(Client(store, identity), args.id, args.status)
    if old == args.status:
        out(f"{args.id} was already {old}")
    else:
        out(f"{args.id}: {old} -> {args.status}")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    async with await open_cli_store(args.store) as store:
        removed = await remove_thing(Client(store, identity), args.id)
    out(f"removed {args.id} ({removed} records); the id can be registered again")
    return 0


# --- watch -------------------------------------------------------------------------


def _note_dict(n: Notification) -> dict[str, Any]:
    return {
        "time": n.timestamp,
        "thing": n.thing_id,
        "kind": n.kind,
        "name": n.name,
        "value": n.value,
        "seq": n.seq,
    }


def _note_line(n: Notification) -> str:
    value = _text(n.value) if n.kind == "attribute" or n.value is not None else "(event)"
    mark = "=" if n.kind == "attribute" else "!"
    return f"{clock(n.timestamp)}  {n.thing_id}  {n.name} {mark} {value}  (seq {n.seq})"


async def _pump(sub: Subscription, queue: asyncio.Queue[Notification | str | None]) -> None:
    try:
        async for note in sub:
            await queue.put(note)
    except AccessDeniedError as e:
        await queue.put(f"{sub.name}: stopped: {e}")


async def cmd_watch(args: argparse.Namespace) -> int:
    identity = _reader(args.identity)
    async with (
        stop_on_interrupt() as stop,
        await open_cli_store(args.store) as store,
    ):
        things = ThingClient(Client(store, identity))
        subs: list[Subscription] = []
        try:
            for kind, name in await _targets(things, args):
                sub = things.subscribe(
                    args.id,
                    topic=name if kind == "topic" else None,
                    attribute=name if kind == "attribute" else None,
                    filter=args.filter,
                )
                await sub.start()
                subs.append(sub)
            _err(f"watching {args.id}: {', '.join(s.name for s in subs)} (Ctrl-C to stop)")
            await _stream(subs, stop, args.json)
        finally:
            for sub in subs:
                await sub.close()
    _err("stopped")
    return 0


async def _targets(things: ThingClient, args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(kind, name)`` to watch: those asked for, else every readable one."""
    view = await things.view(args.id, refresh=True)
    d = view.description
    explicit = bool(args.topic or args.attribute)
    targets = [("topic", t) for t in args.topic] + [("attribute", a) for a in args.attribute]
    if not explicit:
        targets = [("attribute", a.name) for a in d.attributes if a.dynamic]
        targets += [("topic", t.name) for t in d.topics]
    readable = []
    for kind, name in targets:
        access = (d.topic(name) if kind == "topic" else d.attribute(name)).access
        level = level_of(access)
        if level is not None and (view.ring is None or not view.ring.has(level)):
            if explicit:
                raise AccessDeniedError(
                    f"{kind} {name!r} of thing {args.id!r} is for {access.value} "
                    "access and this identity holds no key for it"
                )
            _err(f"skipping {name}: <encrypted: {access.value} access>")
            continue
        readable.append((kind, name))
    if not readable:
        raise AccessDeniedError(f"nothing of {args.id!r} is readable with this identity")
    return readable


async def _stream(subs: list[Subscription], stop: asyncio.Event, as_json: bool) -> None:
    """Print notifications of ``subs`` as they come, until ``stop`` is set."""
    queue: asyncio.Queue[Notification | str | None] = asyncio.Queue()
    tasks = [
        asyncio.create_task(_pump(sub, queue), name=f"watch-{sub.kind}-{sub.name}") for sub in subs
    ]
    tasks.append(asyncio.create_task(_on_stop(stop, queue), name="watch-stop"))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, str):
                _err(item)
            elif as_json:
                out(json.dumps(_note_dict(item), ensure_ascii=False, default=str))
            else:
                out(_note_line(item))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _on_stop(stop: asyncio.Event, queue: asyncio.Queue[Notification | str | None]) -> None:
    await stop.wait()
    await queue.put(None)


# --- request -----------------------------------------------------------------------

_TRUE = ("true", "yes", "on")
_FALSE = ("false", "no", "off")


def parse_arg(schema: Schema, text: str) -> Any:
    """A command-line ``VALUE`` for a param of ``schema``: text for string and enum
    params, else JSON (numbers, booleans, lists, objects), else the text itself
    (so that the thing's type check names the param)."""
    if schema.type in (ValueType.STRING, ValueType.ENUM):
        return text
    if schema.type is ValueType.BOOLEAN and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_args(action: Action, items: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"bad argument {item!r}: write NAME=VALUE, e.g. psi=30")
        if name in values:
            raise ValueError(f"argument {name!r} given twice")
        values[name] = parse_arg(action.param(name).schema, text)
    return values


def _status_line(handle: ActionHandle, status: ActionStatus) -> str:
    when = clock(status.timestamp or time.time())
    text = f"{when}  {handle.thing_id}  {handle.action}  {status.state}"
    if status.progress is not None:
        text += f" {status.progress:g}%"
    if status.message:
        text += f": {status.message}"
    if status.state == "done" and status.result is not None:
        text += f"  result: {_text(status.result)}"
    if status.state == "requested":
        text += f"  (request {handle.request_id})"
    return text


def _status_dict(handle: ActionHandle, status: ActionStatus) -> dict[str, Any]:
    return {
        "time": status.timestamp,
        "thing": handle.thing_id,
        "action": handle.action,
        "request": handle.request_id,
        "state": status.state,
        "progress": status.progress,
        "message": status.message,
        "result": status.result,
    }


async def _print_states(handle: ActionHandle, as_json: bool) -> None:
    async for status in handle.states():
        if as_json:
            out(json.dumps(_status_dict(handle, status), ensure_ascii=False, default=str))
        else:
            out(_status_line(handle, status))


async def follow(handle: ActionHandle, *, as_json: bool = False) -> ActionStatus:
    """Print every state of ``handle`` until a final one; Ctrl-C asks the thing to cancel."""
    async with stop_on_interrupt() as stop:
        printer = asyncio.create_task(_print_states(handle, as_json), name="request-states")
        waiter = asyncio.create_task(handle.wait(), name="request-wait")
        stopper = asyncio.create_task(stop.wait(), name="request-stop")
        tasks = (printer, waiter, stopper)
        try:
            await asyncio.wait({printer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not printer.done():
                _err("interrupted: asking the thing to cancel the request")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await handle.cancel()
                await asyncio.wait({printer}, timeout=1)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return handle.status


async def cmd_request(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    async with (
        await open_cli_store(args.store) as store,
        ThingClient(Client(store, identity)) as things,
    ):
        view = await things.view(args.id, refresh=True)
        spec = view.description.action(args.action)
        values = _parse_args(spec, args.args)
        handle = await things.request(
            args.id,
            args.action,
            timeout=args.timeout,
            queue_if_offline=not args.refuse_offline,
            **values,
        )
        final = await follow(handle, as_json=args.json)
    if final.state != "done":
        raise ActionFailedError(
            f"{args.action} on {args.id} ended {final.state}"
            + (f": {final.message}" if final.message else ""),
            state=final.state,
            reason=final.message,
        )
    return 0
