"""What an owner does to a thing's lifecycle from a console: publish, disable.

A thing publishes itself (:meth:`Thing.publish`), but the seed's register &
publish sequence also lets an owner publish a thing that registered when it
was plugged in, or disable one, from a console. The owner is an owner of the
thing MD, so it signs the ``status`` entry itself, in the same form the thing
writes: CBOR ``{"s": status, "t": unix time}``. A running thing follows
that entry and serves or rejects requests accordingly.
"""

from __future__ import annotations

import time

from safething.errors import PermissionDeniedError
from safething.net import Client
from safething.things import layout
from safething.things.consumer import STATUSES, ThingClient
from safething.things.values import dumps

__all__ = ["set_status"]


async def set_status(client: Client, thing_id: str, status: str) -> str:
    """Set the status of ``thing_id`` as its owner (or the thing itself); returns the old one.

    ``status`` is ``published``, ``disabled`` or ``registered`` (pending
    requests wait, as for a thing that has not been published yet).
    ``NoSuchDataError`` if there is no such thing; ``PermissionDeniedError``
    if ``client.identity`` is neither its owner nor the thing.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown thing status {status!r}; use one of {', '.join(STATUSES)}")
    me = client._writer().public_sign_key
    things = ThingClient(client)
    view = await things.view(thing_id, refresh=True)
    if me not in (view.owner.sign_key, view.thing.sign_key):
        raise PermissionDeniedError(
            f"only the owner of thing {thing_id!r} may change its status; it is owned by "
            f"{view.owner.sign_key.hex()[:16]}..., this identity is {me.hex()[:16]}..."
        )
    old = await things.status(thing_id)
    await view.md.put(layout.STATUS, dumps({"s": status, "t": time.time()}))
    return old
