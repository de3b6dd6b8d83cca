"""The schema options are typed once (schema.SchemaOptions) and shared by attributes,
topics and params; the old import path of the schema names keeps working."""

from __future__ import annotations

import pytest

from safething.things import Attribute, Param, Schema, Topic
from safething.things import description as description_module
from safething.things import schema as schema_module


def test_the_same_options_build_the_same_schema() -> None:
    options = {"unit": "%", "minimum": 0, "maximum": 100}
    expected = Schema("number", **options)
    assert Attribute("m", "number", dynamic=True, **options).schema == expected
    assert Topic("t", "number", **options).payload == expected
    assert Param("p", "number", **options).schema == expected


def test_unknown_or_misplaced_options_are_refused() -> None:
    with pytest.raises(TypeError, match="bogus"):
        Attribute("m", "number", dynamic=True, bogus=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no default"):
        Topic("t", "number", default=3)  # type: ignore[call-arg]


def test_schema_names_are_still_importable_from_description() -> None:
    for name in ("Schema", "ValueType", "ValueTypeError", "DescriptionError", "MissingParamError"):
        assert getattr(description_module, name) is getattr(schema_module, name)
