"""The data network: names, keys, signed MutableData, ImmutableData, public names."""

from safething.net.client import Client
from safething.net.identity import Identity, PublicIdentity
from safething.net.immutable import BlobRef, get_blob, get_chunk, put_blob, put_chunk
from safething.net.keys import (
    EncryptionKey,
    PublicEncryptionKey,
    PublicSignKey,
    SecretKey,
    SigningKey,
)
from safething.net.mutable import EntryWatch, MutableData
from safething.net.names import PublicNames, parse_safe_url
from safething.net.permissions import ANYONE, Action, PermissionSet
from safething.net.records import (
    MAX_ENTRIES,
    MAX_MD_BYTES,
    TAG_PUBLIC_ID,
    TAG_SERVICE,
    TAG_THING,
    Entry,
    MDAddress,
    MDHeader,
)
from safething.net.xorname import XorName, closest

__all__ = [
    "ANYONE",
    "MAX_ENTRIES",
    "MAX_MD_BYTES",
    "TAG_PUBLIC_ID",
    "TAG_SERVICE",
    "TAG_THING",
    "Action",
    "BlobRef",
    "Client",
    "EncryptionKey",
    "Entry",
    "EntryWatch",
    "Identity",
    "MDAddress",
    "MDHeader",
    "MutableData",
    "PermissionSet",
    "PublicEncryptionKey",
    "PublicIdentity",
    "PublicNames",
    "PublicSignKey",
    "SecretKey",
    "SigningKey",
    "XorName",
    "closest",
    "get_blob",
    "get_chunk",
    "parse_safe_url",
    "put_blob",
    "put_chunk",
]
