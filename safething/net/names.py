"""Public names: ``safe://service.publicid`` (seed: SAFE API Overview, DNS).

A public id is an MD at (SHA3-256 of the id, tag 15001) owned by whoever
registered it first. Each of its entries maps a service name to the XorName
of a service MD (tag 15002). Resolving reads both, verifying each, so a
store cannot point a name somewhere its owner did not.
"""

from __future__ import annotations

import re

import nacl.utils

from safething.errors import EntryExistsError, NameTakenError, NoSuchDataError, NoSuchEntryError
from safething.net.client import Client
from safething.net.mutable import MutableData
from safething.net.permissions import ANYONE, Action
from safething.net.records import TAG_PUBLIC_ID, TAG_SERVICE
from safething.net.xorname import XorName

__all__ = ["PublicNames", "parse_safe_url"]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _label(text: str, what: str) -> str:
    if not _LABEL.match(text):
        raise ValueError(
            f"invalid {what} {text!r}: use 1-63 lower-case letters, digits and inner hyphens"
        )
    return text


def parse_safe_url(url: str) -> tuple[str, str]:
    """``safe://service.publicid`` -> ``(service, publicid)``; ``safe://publicid`` has
    the service ``www`` as in the SAFE browser."""
    if not url.startswith("safe://"):
        raise ValueError(f"not a safe:// URL: {url!r}")
    host = url[len("safe://") :].split("/", 1)[0]
    service, _, public_id = host.rpartition(".")
    return _label(service or "www", "service name"), _label(public_id, "public id")


class PublicNames:
    """Register public ids and services, and resolve ``safe://`` URLs."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _public_id_md(self, public_id: str) -> MutableData:
        return self.client.md(XorName.of(_label(public_id, "public id")), TAG_PUBLIC_ID)

    async def register_public_id(self, public_id: str) -> MutableData:
        """Claim ``public_id`` for this identity; ``NameTakenError`` if someone else has it."""
        me = self.client._writer()
        md = self._public_id_md(public_id)
        try:
            return await self.client.create_md(
                md.address.name, TAG_PUBLIC_ID, permissions={ANYONE: Action.READ}
            )
        except EntryExistsError:
            header = await md.header()
            if header.is_owner(me.public_sign_key):
                return md
            raise NameTakenError(f"public id {public_id!r} belongs to someone else") from None

    async def create_service(self, url: str) -> MutableData:
        """Create the service MD behind ``safe://service.publicid`` and link it.

        Registers the public id first if it is free; ``NameTakenError`` if the id
        belongs to another identity or the service name is already in use.
        """
        service, public_id = parse_safe_url(url)
        id_md = await self.register_public_id(public_id)
        try:
            await id_md.get(service, include_deleted=True)
        except NoSuchEntryError:
            pass
        else:
            raise NameTakenError(f"{url} is already registered")
        name = XorName(nacl.utils.random(32))
        service_md = await self.client.create_md(
            name, TAG_SERVICE, permissions={ANYONE: Action.READ}
        )
        try:
            await id_md.insert(service, name.value)
        except EntryExistsError:
            raise NameTakenError(f"{url} is already registered") from None
        return service_md

    async def resolve(self, url: str) -> MutableData:
        """The verified service MD behind a ``safe://`` URL; ``NoSuchDataError`` if none."""
        service, public_id = parse_safe_url(url)
        id_md = self._public_id_md(public_id)
        try:
            value = await id_md.get_value(service)
        except NoSuchEntryError:
            raise NoSuchDataError(
                f"{url}: public id {public_id!r} has no service {service!r}"
            ) from None
        except NoSuchDataError:
            raise NoSuchDataError(f"{url}: no public id {public_id!r}") from None
        service_md = self.client.md(XorName(value), TAG_SERVICE)
        await service_md.header()
        return service_md
