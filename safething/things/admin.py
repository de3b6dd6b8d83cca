"""What an owner does to a thing's lifecycle from a console: publish, disable, remove.

A thing publishes itself (:meth:`Thing.publish`), but the seed's register &
publish sequence also lets an owner publish a thing that registered when it
was plugged in, or disable one, from a console. The owner is an owner of the
thing MD, so it signs the ``status`` entry itself, in the same form the thing
writes: CBOR ``{"s": status, "t": unix time}``. A running thing follows
that entry and serves or rejects requests accordingly.
"""

from __future__ import annotations

import time

from safething.errors import PermissionDeniedError, TamperedDataError
from safething.net import Client
from safething.things import layout
from safething.things.client import ThingClient
from safething.things.values import STATUSES, status_record

__all__ = ["remove_thing", "set_status"]


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
    try:
        old = await things.status(thing_id)
    except TamperedDataError:  # refused and counted; the write below replaces it
        old = view.status
    await view.md.put(layout.STATUS, status_record(status, time.time()))
    return old


async def remove_thing(client: Client, thing_id: str) -> int:
    """Remove ``thing_id`` from the store as its owner; returns how many records went.

    Every record of the thing's MDs (description, values, events, inbox,
    outbox, group keys, history index) is deleted, so the id can be registered
    again, by a new identity too. Like :meth:`MutableData.purge` this is
    housekeeping in the owner's own vault: a store can always drop records, so
    it grants nothing the store did not already have. The caller must be the
    thing's owner (checked on the signed view); the thing itself may not.
    """
    me = client._writer().public_sign_key
    view = await ThingClient(client).view(thing_id, refresh=True)
    if me != view.owner.sign_key:
        raise PermissionDeniedError(
            f"only the owner of thing {thing_id!r} may remove it; it is owned by "
            f"{view.owner.sign_key.hex()[:16]}..., this identity is {me.hex()[:16]}..."
        )
    removed = 0
    addresses = layout.ThingAddresses.of(thing_id)
    for address in (
        addresses.inbox,
        addresses.outbox,
        addresses.group,
        addresses.history,
        addresses.thing,  # last: until it goes, the thing is still listed and removable
    ):
        keys = await client.store.keys(address.prefix)
        for key in sorted(keys, key=lambda k: k == address.header_key):  # the header last
            await client.store.delete(key)
            removed += 1
    return removed
