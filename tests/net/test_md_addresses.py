"""MD addresses: type tags 0..10000 are the network's, tags beyond 2**64-1 do not exist
(written against the mutants of safething/net/records.py, then mutable.py, that survived
tests/net)."""

from __future__ import annotations

import dataclasses

import pytest

from safething.errors import ReservedTypeTagError
from safething.net import TAG_THING, XorName
from safething.net.records import MAX_TAG, RESERVED_TAG_MAX, MDAddress

NAME = XorName.of("address-01")


def test_the_tag_limits() -> None:
    assert RESERVED_TAG_MAX == 10_000
    assert MAX_TAG == 2**64 - 1
    for tag in (RESERVED_TAG_MAX + 1, TAG_THING, MAX_TAG):
        assert MDAddress(NAME, tag).tag == tag
    for tag in (0, 1, 15, RESERVED_TAG_MAX):
        with pytest.raises(ReservedTypeTagError):
            MDAddress(NAME, tag)
    for tag in (-1, MAX_TAG + 1, 2**70):
        with pytest.raises(ValueError, match="out of range"):
            MDAddress(NAME, tag)
    for tag in (True, 10001.0, "10001"):
        with pytest.raises(TypeError, match="a type tag is an integer"):
            MDAddress(NAME, tag)  # type: ignore[arg-type]


def test_parse_names_what_is_wrong() -> None:
    text = f"{NAME.hex()}:{TAG_THING}"
    assert MDAddress.parse(text) == MDAddress(NAME, TAG_THING)
    assert MDAddress.parse(text.replace(":", "/")) == MDAddress(NAME, TAG_THING)
    with pytest.raises(ReservedTypeTagError):
        MDAddress.parse(f"{NAME.hex()}:15")
    with pytest.raises(ValueError, match="bad MD address"):
        MDAddress.parse(f"{NAME.hex()}:twelve")
    with pytest.raises(ValueError, match="write <64 hex chars>:<type tag>"):
        MDAddress.parse(NAME.hex())


def test_an_address_cannot_be_changed() -> None:
    address = MDAddress(NAME, TAG_THING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        address.tag = TAG_THING + 1  # type: ignore[misc]
