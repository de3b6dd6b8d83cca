"""What an owner does to its things: manage the group, change access.

The owner's identity signs the group MD (tag 27420), listing members by
sign key with their encryption key. Adding a member seals the current group
key to them; removing one starts a new key epoch sealed only to those who
remain, so the removed member cannot read anything written afterwards.
"""

from __future__ import annotations

from safething.errors import (
    MalformedRecordError,
    NoSuchDataError,
    NoSuchEntryError,
    PermissionDeniedError,
    TamperedDataError,
)
from safething.net import (
    Client,
    MutableData,
    PublicEncryptionKey,
    PublicIdentity,
    PublicSignKey,
    SecretKey,
)
from safething.things.access import KeyRing, make_key_record
from safething.things.layout import ThingAddresses
from safething.things.values import loads, unauthorised

__all__ = ["ThingOwner"]


class ThingOwner:
    """Owner-side operations on one thing; ``client.identity`` must be its owner."""

    def __init__(self, client: Client, thing_id: str) -> None:
        self.client = client
        self.identity = client._writer()
        self.thing_id = thing_id
        self.addresses = ThingAddresses.of(thing_id)

    def _thing_md(self) -> MutableData:
        a = self.addresses.thing
        return self.client.md(a.name, a.tag)

    async def _group_md(self) -> MutableData:
        a = self.addresses.group
        md = self.client.md(a.name, a.tag)
        if not await md.exists():
            md = await self.client.create_md(a.name, a.tag)
        return md

    async def members(self) -> dict[PublicSignKey, PublicEncryptionKey]:
        """Current group members (verified, signed by this owner)."""
        a = self.addresses.group
        md = self.client.md(a.name, a.tag, owner=self.identity.public_sign_key)
        try:
            entries = await md.entries()
        except NoSuchDataError:
            return {}
        return {
            PublicSignKey.from_hex(k[2:].decode()): PublicEncryptionKey(e.value or b"")
            for k, e in entries.items()
            if k.startswith(b"m/")
        }

    async def _keys(self) -> tuple[PublicIdentity, PublicIdentity]:
        """The thing and its owner (this identity), from the thing's key list: signed by
        the thing it names, which owns the thing's MD with this owner. Anything else is
        refused, counted: a key the owner granted update rights on that MD by mistake
        could write a list naming itself as the thing, to have the group key sealed to
        it."""
        md = self._thing_md()
        entry = await md.get("keys")
        try:
            keys = loads(entry.value or b"", "keys")
            thing = PublicIdentity.from_dict(keys["thing"])
            owner = PublicIdentity.from_dict(keys["owner"])
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedRecordError(f"thing {self.thing_id!r}: malformed key list") from e
        if owner.sign_key != self.identity.public_sign_key:
            raise PermissionDeniedError(f"{self.thing_id!r} is owned by another identity")
        header = await md.header()
        if entry.signer != thing.sign_key or set(header.owners) != {
            thing.sign_key,
            owner.sign_key,
        }:
            raise self.client._tampered(
                TamperedDataError(
                    f"thing {self.thing_id!r}: key list not signed by the thing that owns "
                    "its MD with this owner",
                    address=str(self.addresses.thing),
                )
            )
        return thing, owner

    async def _readers(self, thing: PublicIdentity, owner: PublicIdentity) -> list[PublicIdentity]:
        members = [PublicIdentity(s, e) for s, e in (await self.members()).items()]
        return [owner, thing, *members]

    async def _ring(self, thing: PublicIdentity) -> KeyRing:
        """The group keys, from the thing's ``k/group`` record: signed by the thing or
        this owner (else refused, counted: a key granted update rights by mistake could
        write one holding keys it chose, for this owner to sign on)."""
        entry = await self._thing_md().get("k/group")
        refused = unauthorised(
            entry.signer,
            (thing.sign_key, self.identity.public_sign_key),
            f"thing {self.thing_id!r}: group key record",
            str(self.addresses.thing),
        )
        if refused is not None:
            raise self.client._tampered(refused)
        ring = KeyRing(self.identity.encryption_key)
        if not ring.learn("group", entry.value or b""):
            raise PermissionDeniedError("the group key is not sealed to this owner")
        return ring

    async def add_member(self, member: PublicIdentity) -> None:
        """Let ``member`` read Group data (all of it, past and future) and use Group actions."""
        thing, owner = await self._keys()
        ring = await self._ring(thing)
        group = await self._group_md()
        await group.put(f"m/{member.sign_key.hex()}", member.encryption_key.value)
        epoch = ring.current["group"]
        keys = ring.keys_of("group")
        current = keys.pop(epoch)
        await self._thing_md().put(
            "k/group", make_key_record(epoch, current, await self._readers(thing, owner), keys)
        )

    async def remove_member(self, member: PublicSignKey) -> None:
        """Revoke ``member``: a new group key that it never sees protects future data."""
        thing, owner = await self._keys()
        ring = await self._ring(thing)
        group = await self._group_md()
        try:
            await group.delete(f"m/{member.hex()}")
        except NoSuchEntryError:
            raise NoSuchDataError(f"{member.hex()[:16]}... is not a member") from None
        epoch = ring.current["group"] + 1
        await self._thing_md().put(
            "k/group",
            make_key_record(
                epoch,
                SecretKey.generate(),
                await self._readers(thing, owner),
                ring.keys_of("group"),
            ),
        )
