"""The typed thing description: schemas, value checks, errors that name things, dict form."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
from typing import Any

import pytest

from safething.errors import SafeThingError
from safething.things.description import (
    DEFAULT_MAX_LENGTH,
    AccessType,
    Action,
    Attribute,
    DescriptionError,
    MissingParamError,
    Param,
    Schema,
    ThingDescription,
    Topic,
    UnknownFieldError,
    ValueType,
    ValueTypeError,
)


def garden() -> ThingDescription:
    return ThingDescription(
        id="garden-01",
        title="Gardening device",
        attributes=[
            Attribute("moisture", "number", unit="%", minimum=0, maximum=100, dynamic=True),
            Attribute("model", "string", value="GD-1"),
        ],
        topics=[Topic("VeryDryAlarm"), Topic("VeryWetAlarm")],
        actions=[
            Action(
                "OpenValve",
                params=[Param("psi", "number", minimum=0, maximum=100, default=30)],
            ),
            Action("CloseValve"),
        ],
    )


def everything() -> ThingDescription:
    """A description that uses every feature, for round trips and exports."""
    point = Schema(
        "object",
        properties={"x": "number", "y": Schema("number", default=0), "label": "string"},
    )
    return ThingDescription(
        id="Acme:sensor_7.b",
        title="Everything",
        description="uses every field",
        attributes=[
            Attribute(
                "temp",
                "number",
                unit="°C",
                minimum=-40,
                maximum=85.5,
                dynamic=True,
                history=500,
                access="owner",
                description="air temperature",
            ),
            Attribute("count", "integer", minimum=0, dynamic=True, default=0, history=1),
            Attribute("on", "boolean", dynamic=True, writable=True, access="Group"),
            Attribute(
                "mode",
                "enum",
                choices=["auto", "manual"],
                dynamic=True,
                writable=True,
                default="auto",
            ),
            Attribute("note", "string", max_length=16, dynamic=True, access=AccessType.THING),
            Attribute("where", point, dynamic=True),
            Attribute(
                "rgb",
                "array",
                items=Schema("integer", minimum=0, maximum=255),
                max_length=3,
                dynamic=True,
            ),
            Attribute("blob", "object", dynamic=True),
            Attribute("serial", "string", value="SN-1"),
            Attribute("firmware", "object", value={"version": [1, 2, 3], "beta": False}),
            Attribute("ratio", "number", value=1),
        ],
        topics=[
            Topic("Alarm"),
            Topic(
                "Leak",
                "number",
                unit="l/min",
                minimum=0,
                history=5,
                access="owner",
                description="flow while leaking",
            ),
            Topic("State", "enum", choices=["a", "b"]),
        ],
        actions=[
            Action(
                "Move",
                params=[
                    Param("to", point, description="target"),
                    Param("speed", "integer", minimum=1, maximum=10, default=5),
                    Param("tag", "string", required=False),
                ],
                output="boolean",
                access="owner",
                timeout_s=2.5,
                description="moves",
            ),
            Action("Reset", output=Schema("enum", choices=["ok", "failed"]), timeout_s=1),
        ],
    )


# --- value types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("number", ValueType.NUMBER),
        ("Number", ValueType.NUMBER),
        ("float", ValueType.NUMBER),
        ("INT", ValueType.INTEGER),
        ("bool", ValueType.BOOLEAN),
        ("str", ValueType.STRING),
        ("enum", ValueType.ENUM),
        ("object", ValueType.OBJECT),
        (" array ", ValueType.ARRAY),
    ],
)
def test_value_type_parses_plain_strings(text: str, expected: ValueType) -> None:
    choices = ["a"] if expected is ValueType.ENUM else None
    assert Schema(text, choices=choices).type is expected


def test_unknown_value_type_lists_the_known_ones() -> None:
    with pytest.raises(DescriptionError, match="unknown type 'numbr'; use one of: number") as e:
        Schema("numbr")
    assert e.value.path == "type"


def test_number_accepts_int_and_float_and_normalises_to_float() -> None:
    s = Schema("number")
    assert s.validate(3, field="x") == 3.0
    assert isinstance(s.validate(3, field="x"), float)
    assert s.validate(-2.5, field="x") == -2.5


@pytest.mark.parametrize(
    "bad", [True, False, "3", None, math.nan, math.inf, -math.inf, 10**400, [1]]
)
def test_number_refuses_bool_nan_inf_and_non_numbers(bad: Any) -> None:
    with pytest.raises(ValueTypeError):
        Schema("number").validate(bad, field="x")


def test_number_range_is_inclusive_and_the_message_names_the_field() -> None:
    s = Schema("number", minimum=0, maximum=100)
    assert s.validate(0, field="x") == 0.0
    assert s.validate(100, field="x") == 100.0
    with pytest.raises(ValueTypeError) as e:
        Attribute("moisture", s, dynamic=True).validate("wet")
    assert str(e.value) == "attribute 'moisture': expected number between 0 and 100, got 'wet'"
    assert e.value.field == "attribute 'moisture'"
    assert e.value.value == "wet"
    assert e.value.expected == "number between 0 and 100"
    assert isinstance(e.value, ValueError)
    assert isinstance(e.value, SafeThingError)
    for out in (-0.001, 100.5):
        with pytest.raises(ValueTypeError, match="between 0 and 100"):
            s.validate(out, field="x")


def test_one_sided_ranges_are_described() -> None:
    assert Schema("number", minimum=1.5).expected == "number >= 1.5"
    assert Schema("integer", maximum=7).expected == "integer <= 7"
    with pytest.raises(ValueTypeError, match="expected integer <= 7, got 8"):
        Schema("integer", maximum=7).validate(8, field="n")


def test_integer_accepts_integral_floats_and_refuses_fractions_and_bools() -> None:
    s = Schema("integer", minimum=0, maximum=10)
    assert s.validate(3, field="n") == 3
    got = s.validate(4.0, field="n")
    assert got == 4
    assert isinstance(got, int)
    for bad in (3.5, True, "3", math.nan, 11, -1):
        with pytest.raises(ValueTypeError):
            s.validate(bad, field="n")


def test_boolean_accepts_only_booleans() -> None:
    s = Schema("boolean")
    assert s.validate(True, field="b") is True
    assert s.validate(False, field="b") is False
    for bad in (0, 1, "true", None):
        with pytest.raises(ValueTypeError, match="expected boolean"):
            s.validate(bad, field="b")


def test_string_length_limit_defaults_and_applies() -> None:
    assert Schema("string").max_length == DEFAULT_MAX_LENGTH
    s = Schema("string", max_length=3)
    assert s.validate("abc", field="s") == "abc"
    assert s.validate("", field="s") == ""
    with pytest.raises(ValueTypeError, match="string of at most 3 characters"):
        s.validate("abcd", field="s")
    with pytest.raises(ValueTypeError):
        s.validate(3, field="s")
    with pytest.raises(ValueTypeError, match=r"\(length 2000\)"):
        Schema("string").validate("x" * 2000, field="s")


def test_enum_accepts_only_its_choices() -> None:
    s = Schema("enum", choices=["open", "closed"])
    assert s.choices == ("open", "closed")
    assert s.validate("open", field="valve") == "open"
    for bad in ("Open", "ajar", 0, None):
        with pytest.raises(ValueTypeError, match="expected one of 'open', 'closed'"):
            s.validate(bad, field="valve")


def test_free_object_takes_json_values_and_returns_a_copy() -> None:
    s = Schema("object")
    value = {"a": [1, 2.5, {"b": None}], "c": "x", "d": True}
    got = s.validate(value, field="o")
    assert got == value
    assert got is not value
    got["a"].append(3)
    assert value["a"] == [1, 2.5, {"b": None}]
    for bad in ({1: "x"}, {"a": math.nan}, {"a": object()}, [1], "x"):
        with pytest.raises(ValueTypeError):
            s.validate(bad, field="o")


def test_object_with_properties_checks_each_fills_defaults_and_refuses_extras() -> None:
    s = Schema("object", properties={"x": "number", "y": Schema("integer", default=7)})
    assert s.validate({"x": 1}, field="attribute 'pos'") == {"x": 1.0, "y": 7}
    with pytest.raises(ValueTypeError, match=r"attribute 'pos'\['x'\]: expected number, got True"):
        s.validate({"x": True}, field="attribute 'pos'")
    with pytest.raises(ValueTypeError, match="attribute 'pos': unknown property 'z'"):
        s.validate({"x": 1, "z": 2}, field="attribute 'pos'")
    with pytest.raises(ValueTypeError, match="attribute 'pos': missing property 'x' \\(number\\)"):
        s.validate({}, field="attribute 'pos'")


def test_array_checks_length_and_items() -> None:
    s = Schema("array", items="integer", max_length=3)
    assert s.validate((1, 2.0), field="a") == [1, 2]
    with pytest.raises(ValueTypeError, match=r"a\[1\]: expected integer, got 'x'"):
        s.validate([1, "x"], field="a")
    with pytest.raises(ValueTypeError, match="array of at most 3 items, each integer"):
        s.validate([1, 2, 3, 4], field="a")
    free = Schema("array")
    assert free.validate([1, "a", {"b": [True]}], field="a") == [1, "a", {"b": [True]}]
    with pytest.raises(ValueTypeError):
        free.validate([math.inf], field="a")
    with pytest.raises(ValueTypeError):
        free.validate("abc", field="a")


def test_deeply_nested_values_are_refused() -> None:
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(ValueTypeError, match="nested at most"):
        Schema("array").validate(deep, field="a")


@pytest.mark.parametrize(
    ("kwargs", "path", "match"),
    [
        ({"type": "number", "minimum": 200, "maximum": 100}, "minimum", "above the maximum"),
        ({"type": "string", "minimum": 0}, "minimum", "only for number and integer"),
        ({"type": "number", "minimum": math.nan}, "minimum", "finite number"),
        ({"type": "number", "maximum": True}, "maximum", "finite number"),
        ({"type": "enum"}, "choices", "needs a list of choices"),
        ({"type": "enum", "choices": []}, "choices", "at least one"),
        ({"type": "enum", "choices": "ab"}, "choices", "needs a list"),
        ({"type": "enum", "choices": ["a", "a"]}, "choices[1]", "duplicate choice 'a'"),
        ({"type": "enum", "choices": ["a", 1]}, "choices[1]", "expected a string"),
        ({"type": "number", "choices": ["a"]}, "choices", "only for enum"),
        ({"type": "number", "max_length": 3}, "max_length", "only for string and array"),
        ({"type": "string", "max_length": 0}, "max_length", "integer from 1"),
        ({"type": "number", "properties": {}}, "properties", "only for object"),
        ({"type": "object", "properties": {"bad name": "number"}}, "properties.bad name", "name"),
        ({"type": "object", "properties": {"x": "nope"}}, "properties.x.type", "unknown type"),
        ({"type": "number", "items": "number"}, "items", "only for array"),
        ({"type": "number", "unit": ""}, "unit", "1-32 characters"),
        ({"type": "number", "maximum": 10, "default": 11}, "default", "expected number <= 10"),
        (
            {"type": "object", "properties": {"x": "number"}, "default": {"x": "a"}},
            "default['x']",
            "expected number",
        ),
    ],
)
def test_bad_schemas_are_refused_with_the_field_named(
    kwargs: dict[str, Any], path: str, match: str
) -> None:
    with pytest.raises(DescriptionError, match=match) as e:
        Schema(**kwargs)
    assert e.value.path == path
    assert str(e.value).startswith(f"{path}: ")
    assert isinstance(e.value, ValueError)


def test_schema_default_is_normalised() -> None:
    assert Schema("number", default=30).default == 30.0
    assert isinstance(Schema("number", default=30).default, float)
    assert Schema("integer", default=2.0).default == 2


# --- access types ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("owner", AccessType.OWNER),
        ("All", AccessType.ALL),
        (" GROUP ", AccessType.GROUP),
        ("thing", AccessType.THING),
        (AccessType.OWNER, AccessType.OWNER),
    ],
)
def test_access_type_parses_case_insensitively(text: Any, expected: AccessType) -> None:
    assert AccessType(text) is expected
    assert Attribute("a", "number", dynamic=True, access=text).access is expected


def test_access_defaults_to_all_and_unknown_access_is_refused() -> None:
    assert Attribute("a", "number", dynamic=True).access is AccessType.ALL
    assert Topic("t").access is AccessType.ALL
    assert Action("A").access is AccessType.ALL
    with pytest.raises(DescriptionError, match="unknown access type 'everyone'") as e:
        Topic("t", access="everyone")
    assert e.value.path == "access"


# --- attributes, topics ------------------------------------------------------------------


def test_static_attribute_keeps_its_checked_value() -> None:
    model = Attribute("model", "string", value="GD-1")
    assert model.dynamic is False
    assert model.value == "GD-1"
    assert Attribute("ratio", "number", value=1).value == 1.0
    with pytest.raises(DescriptionError, match="needs its value") as e:
        Attribute("model", "string")
    assert e.value.path == "value"
    with pytest.raises(DescriptionError, match="expected string") as e:
        Attribute("model", "string", value=3)
    assert e.value.path == "value"


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"value": "x", "writable": True}, "writable"),
        ({"value": "x", "default": "y"}, "default"),
        ({"dynamic": True, "value": "x"}, "value"),
        ({"dynamic": True, "history": 0}, "history"),
        ({"dynamic": True, "history": 501}, "history"),
        ({"dynamic": True, "history": True}, "history"),
        ({"dynamic": 1}, "dynamic"),
        ({"dynamic": True, "writable": "yes"}, "writable"),
        ({"dynamic": True, "description": "x" * 1025}, "description"),
    ],
)
def test_bad_attributes_are_refused(kwargs: dict[str, Any], path: str) -> None:
    with pytest.raises(DescriptionError) as e:
        Attribute("a", "string", **kwargs)
    assert e.value.path == path


@pytest.mark.parametrize("name", ["", "1abc", "has space", "a/b", "x" * 65, "é", "ok\n", 3])
def test_bad_names_are_refused(name: Any) -> None:
    with pytest.raises(DescriptionError) as e:
        Topic(name)
    assert e.value.path == "name"


def test_history_bounds() -> None:
    assert Attribute("a", "number", dynamic=True).history == 32
    assert Attribute("a", "number", dynamic=True, history=1).history == 1
    assert Attribute("a", "number", dynamic=True, history=500).history == 500


def test_schema_object_or_keywords_but_not_both() -> None:
    s = Schema("number", minimum=0)
    assert Attribute("a", s, dynamic=True).schema is s
    with pytest.raises(TypeError, match="not both"):
        Attribute("a", s, minimum=1, dynamic=True)
    with pytest.raises(DescriptionError, match="expected a Schema or a type name"):
        Attribute("a", 3, dynamic=True)  # type: ignore[arg-type]


def test_topic_payload_is_optional_and_checked() -> None:
    alarm = Topic("VeryDryAlarm")
    assert alarm.payload is None
    assert alarm.history == 32
    assert alarm.validate(None) is None
    with pytest.raises(ValueTypeError, match="topic 'VeryDryAlarm': expected no payload, got 3"):
        alarm.validate(3)
    leak = Topic("Leak", "number", minimum=0)
    assert leak.validate(2) == 2.0
    with pytest.raises(ValueTypeError, match="topic 'Leak': expected number >= 0"):
        leak.validate(-1)
    with pytest.raises(DescriptionError, match="without a type") as e:
        Topic("Leak", minimum=0)
    assert e.value.path == "minimum"


# --- params and actions -------------------------------------------------------------------


def test_param_is_required_unless_it_has_a_default() -> None:
    assert Param("psi", "number").required is True
    assert Param("psi", "number", default=30).required is False
    assert Param("psi", "number", default=30).default == 30.0
    assert Param("tag", "string", required=False).required is False
    with pytest.raises(DescriptionError, match="cannot have a default") as e:
        Param("psi", "number", default=30, required=True)
    assert e.value.path == "required"


def test_validate_args_fills_defaults_and_normalises() -> None:
    action = garden().action("OpenValve")
    assert action.validate_args({}) == {"psi": 30.0}
    assert action.validate_args(None) == {"psi": 30.0}
    assert action.validate_args({"psi": 12}) == {"psi": 12.0}
    move = everything().action("Move")
    assert move.validate_args({"to": {"x": 1, "label": "home"}}) == {
        "to": {"x": 1.0, "y": 0.0, "label": "home"},
        "speed": 5,
    }


def test_validate_args_refuses_unknown_params_naming_action_and_param() -> None:
    with pytest.raises(UnknownFieldError) as e:
        garden().action("OpenValve").validate_args({"pressure": 3})
    assert str(e.value) == "action 'OpenValve' has no param 'pressure' (params: psi)"
    assert e.value.name == "pressure"
    assert e.value.known == ("psi",)
    assert isinstance(e.value, KeyError)
    with pytest.raises(
        UnknownFieldError, match=r"action 'CloseValve' has no param 'x' \(params: none\)"
    ):
        garden().action("CloseValve").validate_args({"x": 1})


def test_validate_args_refuses_missing_required_and_bad_values() -> None:
    action = Action("Water", params=[Param("litres", "number", minimum=0, maximum=5)])
    with pytest.raises(MissingParamError) as e:
        action.validate_args({})
    assert str(e.value) == (
        "action 'Water': missing required param 'litres' (number between 0 and 5)"
    )
    assert (e.value.action, e.value.param) == ("Water", "litres")
    assert isinstance(e.value, ValueTypeError)
    with pytest.raises(ValueTypeError) as bad:
        action.validate_args({"litres": 9})
    assert str(bad.value) == (
        "action 'Water' param 'litres': expected number between 0 and 5, got 9"
    )
    with pytest.raises(ValueTypeError, match="an object of named arguments"):
        action.validate_args([1])  # type: ignore[arg-type]


def test_optional_param_without_default_is_left_out() -> None:
    move = everything().action("Move")
    args = move.validate_args({"to": {"x": 0, "label": ""}})
    assert "tag" not in args
    assert move.validate_args({"to": {"x": 0, "label": ""}, "tag": "t"})["tag"] == "t"


def test_defaults_handed_out_are_copies() -> None:
    action = Action("Set", params=[Param("cfg", "object", default={"a": [1]})])
    first = action.validate_args({})
    first["cfg"]["a"].append(2)
    assert action.validate_args({}) == {"cfg": {"a": [1]}}


def test_action_output_and_timeout() -> None:
    move = everything().action("Move")
    assert move.validate_output(True) is True
    with pytest.raises(ValueTypeError, match="action 'Move' output: expected boolean"):
        move.validate_output("yes")
    close = garden().action("CloseValve")
    assert close.validate_output(None) is None
    with pytest.raises(ValueTypeError, match="expected no output"):
        close.validate_output(1)
    assert close.timeout_s == 30.0
    assert Action("A", timeout_s=1).timeout_s == 1.0
    for bad in (0, -1, math.inf, 86_401, True, "5"):
        with pytest.raises(DescriptionError) as e:
            Action("A", timeout_s=bad)
        assert e.value.path == "timeout_s"


def test_action_params_are_unique_and_kept_as_a_tuple() -> None:
    action = Action("A", params=[Param("a", "number"), Param("b", "string")])
    assert isinstance(action.params, tuple)
    assert action.param("b").schema.type is ValueType.STRING
    with pytest.raises(UnknownFieldError, match="action 'A' has no param 'c' \\(params: a, b\\)"):
        action.param("c")
    with pytest.raises(DescriptionError, match="duplicate param name 'a'") as e:
        Action("A", params=[Param("a", "number"), Param("a", "string")])
    assert e.value.path == "params[1].name"
    with pytest.raises(DescriptionError, match="expected Param") as e:
        Action("A", params=["a"])  # type: ignore[list-item]
    assert e.value.path == "params[0]"


# --- the description ----------------------------------------------------------------------


def test_builder_api_reads_naturally_and_keeps_tuples() -> None:
    desc = garden()
    assert isinstance(desc.attributes, tuple)
    assert isinstance(desc.topics, tuple)
    assert isinstance(desc.actions, tuple)
    assert desc.attribute("moisture").schema.unit == "%"
    assert desc.attribute("model").value == "GD-1"
    assert desc.topic("VeryWetAlarm").payload is None
    assert desc.action("OpenValve").param("psi").default == 30.0
    assert ThingDescription("garden-01").title == "garden-01"


def test_descriptions_are_frozen_and_replace_works() -> None:
    desc = garden()
    with pytest.raises(dataclasses.FrozenInstanceError):
        desc.title = "x"  # type: ignore[misc]
    moisture = desc.attribute("moisture")
    assert dataclasses.replace(moisture, history=5).history == 5
    assert dataclasses.replace(moisture, access="owner").access is AccessType.OWNER
    renamed = dataclasses.replace(desc, title="Renamed")
    assert renamed.title == "Renamed"
    assert renamed.attributes == desc.attributes
    with pytest.raises(DescriptionError):
        dataclasses.replace(moisture, history=0)


def test_lookups_name_the_thing_and_what_it_has() -> None:
    desc = garden()
    with pytest.raises(UnknownFieldError) as e:
        desc.action("Fly")
    assert str(e.value) == "thing 'garden-01' has no action 'Fly' (actions: OpenValve, CloseValve)"
    assert (e.value.kind, e.value.name) == ("action", "Fly")
    with pytest.raises(
        UnknownFieldError, match="has no attribute 'temp' \\(attributes: moisture, model\\)"
    ):
        desc.attribute("temp")
    with pytest.raises(KeyError):
        desc.topic("Nope")
    with pytest.raises(UnknownFieldError, match=r"\(topics: none\)"):
        ThingDescription("empty-thing").topic("x")


@pytest.mark.parametrize("good", ["abcde", "garden-01", "Acme:sensor_7.b", "x" * 64, "12345"])
def test_valid_thing_ids(good: str) -> None:
    assert ThingDescription(good).id == good


@pytest.mark.parametrize(
    "bad", ["abcd", "", "x" * 65, "has space", "a/b/c/d", "ünïcode", "garden-01\n", 12345]
)
def test_invalid_thing_ids(bad: Any) -> None:
    with pytest.raises(DescriptionError, match="invalid thing id") as e:
        ThingDescription(bad)
    assert e.value.path == "id"


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("attributes", lambda n: Attribute(n, "number", dynamic=True)),
        ("topics", lambda n: Topic(n)),
        ("actions", lambda n: Action(n)),
    ],
)
def test_duplicate_names_are_refused_naming_the_duplicate(kind: str, make: Any) -> None:
    with pytest.raises(DescriptionError) as e:
        ThingDescription("thing-1", **{kind: [make("a"), make("b"), make("a")]})
    assert e.value.path == f"{kind}[2].name"
    assert f"duplicate {kind[:-1]} name 'a'" in str(e.value)


def test_same_name_in_different_kinds_is_fine() -> None:
    desc = ThingDescription(
        "thing-1",
        attributes=[Attribute("level", "number", dynamic=True)],
        topics=[Topic("level", "number")],
        actions=[Action("level")],
    )
    assert desc.topic("level").payload is not None


def test_wrong_part_types_and_empty_title_are_refused() -> None:
    with pytest.raises(DescriptionError, match="expected Attribute") as e:
        ThingDescription("thing-1", attributes=[Topic("x")])  # type: ignore[list-item]
    assert e.value.path == "attributes[0]"
    with pytest.raises(DescriptionError, match="expected a list of Action"):
        ThingDescription("thing-1", actions="OpenValve")  # type: ignore[arg-type]
    with pytest.raises(DescriptionError) as e:
        ThingDescription("thing-1", title="  ")
    assert e.value.path == "title"


# --- dict form ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [garden, everything])
def test_round_trip_through_json_is_exact(make: Any) -> None:
    desc = make()
    data = desc.to_dict()
    assert data["format"] == 1
    again = ThingDescription.from_dict(json.loads(json.dumps(data)))
    assert again == desc
    assert again.to_dict() == data
    assert json.loads(json.dumps(data)) == data


def test_descriptions_copy_and_pickle() -> None:
    desc = everything()
    assert copy.deepcopy(desc) == desc
    assert copy.copy(desc) == desc
    assert pickle.loads(pickle.dumps(desc)) == desc
    where = desc.attribute("where").schema
    assert pickle.loads(pickle.dumps(where)).properties == where.properties


def test_to_dict_is_plain_and_detached() -> None:
    desc = everything()
    data = desc.to_dict()
    data["attributes"][9]["value"]["version"].append(4)
    assert desc.attribute("firmware").value == {"version": [1, 2, 3], "beta": False}


def test_parts_round_trip_on_their_own() -> None:
    desc = everything()
    for attr in desc.attributes:
        assert Attribute.from_dict(attr.to_dict()) == attr
    for topic in desc.topics:
        assert Topic.from_dict(topic.to_dict()) == topic
    for action in desc.actions:
        assert Action.from_dict(action.to_dict()) == action
        for p in action.params:
            assert Param.from_dict(p.to_dict()) == p


def _mutated(path: list[Any], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(everything().to_dict())
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["format"], 2, "format"),
        (["format"], True, "format"),
        (["format"], _DELETE, "format"),
        (["id"], _DELETE, "id"),
        (["id"], "bad", "id"),
        (["colour"], "red", "colour"),
        (["attributes"], {"a": 1}, "attributes"),
        (["attributes", 0], "temp", "attributes[0]"),
        (["attributes", 0, "minimun"], 1, "attributes[0].minimun"),
        (["attributes", 0, "type"], "nope", "attributes[0].type"),
        (["attributes", 0, "type"], _DELETE, "attributes[0].type"),
        (["attributes", 0, "minimum"], "low", "attributes[0].minimum"),
        (["attributes", 0, "history"], 1000, "attributes[0].history"),
        (["attributes", 0, "access"], "world", "attributes[0].access"),
        (["attributes", 1, "name"], "temp", "attributes[1].name"),
        (["attributes", 5, "properties", "x", "type"], 7, "attributes[5].properties.x.type"),
        (["attributes", 5, "properties", "x"], [], "attributes[5].properties.x"),
        (["attributes", 6, "items", "maximum"], "x", "attributes[6].items.maximum"),
        (["attributes", 3, "choices"], "auto", "attributes[3].choices"),
        (["attributes", 3, "choices", 1], 5, "attributes[3].choices[1]"),
        (["attributes", 8, "value"], 5, "attributes[8].value"),
        (
            ["attributes", 9, "value", "version"],
            {"a": math.nan},
            "attributes[9].value['version']['a']",
        ),
        (["topics", 1, "minimum"], "x", "topics[1].minimum"),
        (["topics", 0, "minimum"], 1, "topics[0].minimum"),
        (["actions", 0, "params"], "to", "actions[0].params"),
        (["actions", 0, "params", 1, "default"], 11, "actions[0].params[1].default"),
        (["actions", 0, "params", 1, "required"], "no", "actions[0].params[1].required"),
        (["actions", 0, "output"], "bool", "actions[0].output"),
        (["actions", 0, "output", "kind"], "x", "actions[0].output.kind"),
        (["actions", 1, "timeout_s"], 0, "actions[1].timeout_s"),
        (["actions", 1, "name"], "Move", "actions[1].name"),
    ],
)
def test_malformed_dicts_name_the_bad_field(path: list[Any], value: Any, where: str) -> None:
    data = _mutated(path, value)
    with pytest.raises(DescriptionError) as e:
        ThingDescription.from_dict(data)
    assert e.value.path == where, str(e.value)
    assert str(e.value).startswith(f"{where}: ")


@pytest.mark.parametrize("data", [None, [], "garden", 3])
def test_from_dict_refuses_non_objects(data: Any) -> None:
    with pytest.raises(DescriptionError, match="expected an object"):
        ThingDescription.from_dict(data)


def test_deeply_nested_schema_dicts_are_refused() -> None:
    schema: dict[str, Any] = {"type": "number"}
    for _ in range(12):
        schema = {"type": "array", "items": schema}
    with pytest.raises(DescriptionError, match="nest too deeply"):
        Schema.from_dict(schema)
