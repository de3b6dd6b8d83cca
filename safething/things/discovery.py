"""Finding things: every thing in a store, with its status, filtered and searched.

A thing keeps its description in the ``desc`` entry of its thing MD (tag
27417, see :mod:`safething.things.layout`). :func:`list_things` walks the
MDs of that tag, reads each description through a :class:`ThingClient`
(verified like every other read) and skips, with a log line, the MDs of that
tag that are not things: plain MDs someone created under the tag, things
whose description is malformed, or records that fail verification.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from safething.errors import NoSuchDataError, NoSuchEntryError, SafeThingError
from safething.net import TAG_THING, Client, MDAddress
from safething.things import layout
from safething.things.availability import Availability, read_availability
from safething.things.client import ThingClient, ThingView
from safething.things.layout import ThingAddresses
from safething.things.values import STATUSES, loads

__all__ = ["ThingSummary", "list_things", "summarize", "thing_id_at"]

log = logging.getLogger("safething.things")


@dataclass(frozen=True, slots=True)
class ThingSummary:
    """One line about a thing: who it is, whether it serves, what it offers."""

    id: str
    """The thing's id."""
    title: str
    """Its name for people."""
    status: str
    """``registered``, ``published`` or ``disabled``."""
    attributes: tuple[str, ...] = ()
    """Names of its attributes, in description order (a list is accepted)."""
    topics: tuple[str, ...] = ()
    """Names of its event topics."""
    actions: tuple[str, ...] = ()
    """Names of its actions."""
    availability: str = "unknown"
    """``online``, ``offline`` or ``unknown`` (see :mod:`safething.things.availability`)."""
    last_seen: float | None = None
    """Unix time the thing (or its gateway) last vouched for it."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown thing status {self.status!r}; use one of {_known()}")
        for name in ("attributes", "topics", "actions"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError(f"ThingSummary.{name} must be a list of names")
            object.__setattr__(self, name, tuple(value))

    def matches(self, text: str) -> bool:
        """Whether ``text`` occurs (case-insensitively) in the id, title or a name."""
        needle = text.casefold()
        haystack = (self.id, self.title, *self.attributes, *self.topics, *self.actions)
        return any(needle in item.casefold() for item in haystack)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (the CLI's ``--json`` form)."""
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "attributes": list(self.attributes),
            "topics": list(self.topics),
            "actions": list(self.actions),
            "availability": self.availability,
            "last_seen": self.last_seen,
        }


def _known() -> str:
    return ", ".join(STATUSES)


def summarize(view: ThingView, live: Availability | None = None) -> ThingSummary:
    """The summary of a thing a :class:`ThingClient` has loaded."""
    d = view.description
    return ThingSummary(
        d.id,
        d.title,
        view.status,
        tuple(a.name for a in d.attributes),
        tuple(t.name for t in d.topics),
        tuple(a.name for a in d.actions),
        live.state if live is not None else "unknown",
        live.last_seen if live is not None else None,
    )


def _statuses(status: str | Iterable[str] | None) -> frozenset[str] | None:
    if status is None:
        return None
    wanted = frozenset([status] if isinstance(status, str) else status)
    unknown = sorted(wanted - set(STATUSES))
    if unknown:
        raise ValueError(f"unknown thing status {unknown[0]!r}; use one of {_known()}")
    return wanted


async def thing_id_at(client: Client, address: MDAddress) -> str:
    """The id in the description stored in the MD at ``address`` (checked against it:
    ``ValueError`` if it names none or another thing's). Not yet who signed it:
    :meth:`ThingClient.read_view` checks that."""
    doc = loads(await client.md(address.name, address.tag).get_value(layout.DESC), "description")
    thing_id = doc.get("id") if isinstance(doc, dict) else None
    if not isinstance(thing_id, str):
        raise ValueError("its description has no id")
    if ThingAddresses.of(thing_id).thing != address:
        raise ValueError(f"its description is that of {thing_id!r}, which lives elsewhere")
    return thing_id


async def list_things(
    client: Client,
    *,
    status: str | Iterable[str] | None = None,
    search: str | None = None,
) -> list[ThingSummary]:
    """Every thing in ``client``'s store, sorted by id.

    ``status``: keep only things in this status (or any of these statuses).
    ``search``: keep only things whose id, title, or an attribute, topic or
    action name contains this text, ignoring case. MDs of the thing tag that
    are not valid things are skipped and logged, never raised.
    """
    wanted = _statuses(status)
    things = ThingClient(client)
    found: list[ThingSummary] = []
    for address in await client.list_mds(TAG_THING):
        try:
            thing_id = await thing_id_at(client, address)
            view = await things.read_view(thing_id, level_keys=False)
            try:
                live = await read_availability(view)
            except SafeThingError as e:
                log.warning("thing %s: availability unreadable: %s", thing_id, e)
                live = None
            summary = summarize(view, live)
        except NoSuchEntryError:
            log.debug("MD %s has no description: not a thing", address)
            continue
        except NoSuchDataError:
            log.debug("MD %s went away while listing things", address)
            continue
        except (SafeThingError, ValueError, TypeError, KeyError) as e:
            log.warning("skipping MD %s: not a valid thing: %s", address, e)
            continue
        if wanted is not None and summary.status not in wanted:
            continue
        if search and not summary.matches(search):
            continue
        found.append(summary)
    return sorted(found, key=lambda s: s.id)
