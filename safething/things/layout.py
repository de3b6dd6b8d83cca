"""Where a thing's data lives: its MDs and the entry keys inside them.

A thing with id ``garden-01`` owns five MDs, all named from its id:

=========  =====  ===============================  ==================================
MD         tag    owners / permissions              entries
=========  =====  ===============================  ==================================
thing      27417  thing + owner; anyone reads      ``desc``, ``keys``, ``status``,
                                                    ``k/owner``, ``k/thing``, ``k/group``,
                                                    ``a/<attr>`` (latest value),
                                                    ``ah/<attr>/<slot>`` (history ring),
                                                    ``e/<topic>`` (latest event),
                                                    ``e/<topic>/<slot>`` (event ring),
                                                    ``sub/<id>`` (its subscriptions)
inbox      27418  thing + owner; anyone inserts    ``r/<request id>`` action requests,
                                                    ``c/<request id>`` cancellations,
                                                    ``d/<attr>/<id>`` desired values
outbox     27419  thing + owner; anyone reads      ``r/<request id>`` action states
group      27420  owner only                        ``m/<member sign key hex>`` members
history    27421  thing + owner; anyone reads      ``a/<attr>/<day>``, ``e/<topic>/<day>``:
                                                    index of archived segments (see
                                                    :mod:`safething.things.history`)
=========  =====  ===============================  ==================================

The inbox is insert-only for everyone: a request is a signed entry, so the
thing knows who asked and checks the action's access type before running
anything. Processed inbox records are purged by the thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from safething.net import TAG_THING, MDAddress, XorName

__all__ = [
    "CLOCK_SKEW_S",
    "MAX_REQUEST_LIFETIME_S",
    "TAG_GROUP",
    "TAG_HISTORY",
    "TAG_INBOX",
    "TAG_OUTBOX",
    "TAG_THING",
    "ThingAddresses",
    "attr_history_key",
    "attr_history_prefix",
    "attr_key",
    "event_key",
    "event_pointer",
    "event_prefix",
]

TAG_INBOX = 27418
TAG_OUTBOX = 27419
TAG_GROUP = 27420
TAG_HISTORY = 27421

MAX_REQUEST_LIFETIME_S = 24 * 3600.0
"""Longest a request may stay valid (``exp - t``); a thing refuses requests without an
expiry or with one further ahead, so it need remember processed ids only this long."""
CLOCK_SKEW_S = 120.0
"""How far ahead of the thing's clock a requester's clock may be."""

DESC = b"desc"
KEYS = b"keys"
STATUS = b"status"


@dataclass(frozen=True, slots=True)
class ThingAddresses:
    """The MD addresses of one thing id."""

    thing_id: str
    thing: MDAddress
    inbox: MDAddress
    outbox: MDAddress
    group: MDAddress
    history: MDAddress

    @classmethod
    def of(cls, thing_id: str) -> ThingAddresses:
        return cls(
            thing_id,
            MDAddress(XorName.of(thing_id), TAG_THING),
            MDAddress(XorName.of(thing_id + "/inbox"), TAG_INBOX),
            MDAddress(XorName.of(thing_id + "/outbox"), TAG_OUTBOX),
            MDAddress(XorName.of(thing_id + "/group"), TAG_GROUP),
            MDAddress(XorName.of(thing_id + "/history"), TAG_HISTORY),
        )


def attr_key(name: str) -> bytes:
    return f"a/{name}".encode()


def attr_history_prefix(name: str) -> bytes:
    """The history ring of attribute ``name`` (what an attribute subscription follows)."""
    return f"ah/{name}/".encode()


def attr_history_key(name: str, seq: int, size: int) -> bytes:
    return attr_history_prefix(name) + str(seq % size).encode()


def event_pointer(topic: str) -> bytes:
    """The latest event of ``topic`` (claims sequence numbers)."""
    return f"e/{topic}".encode()


def event_prefix(topic: str) -> bytes:
    return f"e/{topic}/".encode()


def event_key(topic: str, seq: int, size: int) -> bytes:
    return event_prefix(topic) + str(seq % size).encode()
