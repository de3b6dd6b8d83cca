"""WoT Thing Description export, validated against the official TD 1.1 JSON Schema."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from safething.things.description import (
    Action,
    Attribute,
    Param,
    Schema,
    ThingDescription,
    Topic,
)
from safething.things.wot import (
    SAFETHING_VOCAB,
    SECURITY_SCHEME,
    TD_CONTEXT,
    to_thing_description,
)
from tests.things.test_description import everything, garden

SCHEMA_PATH = Path(__file__).parent / "data" / "td-schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["title"] == "Thing Description"
    assert schema["version"].startswith("1.1")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def errors(validator: jsonschema.Draft7Validator, td: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(td)
    ]


def keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from keys(v)
    elif isinstance(value, list):
        for item in value:
            yield from keys(item)


@pytest.mark.parametrize("make", [garden, everything])
@pytest.mark.parametrize("base", [None, "safe://garden.alice", "safe://garden.alice/things/"])
def test_export_validates_against_the_td_schema(
    validator: jsonschema.Draft7Validator, make: Any, base: str | None
) -> None:
    td = to_thing_description(make(), base=base)
    assert errors(validator, td) == []
    assert json.loads(json.dumps(td)) == td


def test_the_schema_does_catch_mistakes(validator: jsonschema.Draft7Validator) -> None:
    """Guards the guard: broken copies of a valid export must fail validation."""
    good = to_thing_description(garden())

    def broken(change: Any) -> dict[str, Any]:
        td = copy.deepcopy(good)
        change(td)
        return td

    mistakes = [
        lambda td: td.pop("security"),
        lambda td: td.pop("securityDefinitions"),
        lambda td: td.update({"@context": "https://example.org/not-td"}),
        lambda td: td["securityDefinitions"]["safething_sc"].update(scheme="signed"),
        lambda td: td["properties"]["moisture"]["forms"][0].update(op="invokeaction"),
        lambda td: td["properties"]["moisture"].update(forms=[]),
        lambda td: td["actions"]["OpenValve"].pop("forms"),
        lambda td: td["events"]["VeryDryAlarm"]["forms"][0].update(op=["readproperty"]),
        lambda td: td["properties"]["moisture"].update(type="float"),
        lambda td: td["properties"]["moisture"].update(minimum="0"),
    ]
    for change in mistakes:
        assert errors(validator, broken(change)), change


def test_top_level_context_id_and_security() -> None:
    td = to_thing_description(garden())
    assert td["@context"] == [TD_CONTEXT, {"safething": SAFETHING_VOCAB}]
    assert td["id"] == "urn:safething:thing:garden-01"
    assert td["safething:thingId"] == "garden-01"
    assert td["title"] == "Gardening device"
    assert "description" not in td
    assert td["security"] == ["safething_sc"]
    scheme = td["securityDefinitions"]["safething_sc"]
    assert scheme["scheme"] == SECURITY_SCHEME
    assert "signed" in scheme["description"]
    assert everything().description == to_thing_description(everything())["description"]


def test_every_extra_term_uses_the_declared_prefix() -> None:
    td = to_thing_description(everything())
    prefixes = {k for item in td["@context"] if isinstance(item, dict) for k in item}
    extras = {k for k in keys(td) if ":" in k}
    assert extras
    assert {k.split(":", 1)[0] for k in extras} <= prefixes
    assert SECURITY_SCHEME.split(":", 1)[0] in prefixes


def test_properties_map_attributes() -> None:
    td = to_thing_description(everything())
    props = td["properties"]
    temp = props["temp"]
    assert temp["type"] == "number"
    assert (temp["unit"], temp["minimum"], temp["maximum"]) == ("°C", -40, 85.5)
    assert temp["readOnly"] is True
    assert temp["writeOnly"] is False
    assert temp["observable"] is True
    assert temp["description"] == "air temperature"
    assert temp["safething:access"] == "owner"
    assert temp["safething:history"] == 500
    assert temp["forms"] == [
        {
            "href": "safe://Acme%3Asensor_7.b/properties/temp",
            "op": ["readproperty", "observeproperty", "unobserveproperty"],
            "contentType": "application/cbor",
        }
    ]
    on = props["on"]
    assert on["readOnly"] is False
    assert on["forms"][0]["op"] == [
        "readproperty",
        "writeproperty",
        "observeproperty",
        "unobserveproperty",
    ]
    assert props["mode"]["type"] == "string"
    assert props["mode"]["enum"] == ["auto", "manual"]
    assert props["mode"]["default"] == "auto"
    assert props["note"]["maxLength"] == 16
    assert props["rgb"]["maxItems"] == 3
    assert props["rgb"]["items"] == {"type": "integer", "minimum": 0, "maximum": 255}
    where = props["where"]
    assert where["type"] == "object"
    assert set(where["properties"]) == {"x", "y", "label"}
    assert where["required"] == ["x", "label"]
    serial = props["serial"]
    assert serial["const"] == "SN-1"
    assert serial["observable"] is False
    assert serial["forms"][0]["op"] == ["readproperty"]
    assert serial["safething:dynamic"] is False
    assert "safething:history" not in serial
    assert props["firmware"]["const"] == {"version": [1, 2, 3], "beta": False}


def test_actions_map_params_to_an_input_object() -> None:
    td = to_thing_description(everything())
    move = td["actions"]["Move"]
    assert move["input"]["type"] == "object"
    assert set(move["input"]["properties"]) == {"to", "speed", "tag"}
    assert move["input"]["required"] == ["to"]
    assert move["input"]["properties"]["speed"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
        "default": 5,
    }
    assert move["input"]["properties"]["to"]["description"] == "target"
    assert move["output"] == {"type": "boolean"}
    assert move["synchronous"] is False
    assert move["safething:access"] == "owner"
    assert move["safething:timeout_s"] == 2.5
    assert move["forms"][0]["op"] == ["invokeaction", "queryaction"]
    assert move["forms"][0]["href"] == "safe://Acme%3Asensor_7.b/actions/Move"
    reset = td["actions"]["Reset"]
    assert "input" not in reset
    assert reset["output"] == {"type": "string", "enum": ["ok", "failed"]}


def test_events_map_topics() -> None:
    td = to_thing_description(everything())
    assert "data" not in td["events"]["Alarm"]
    leak = td["events"]["Leak"]
    assert leak["data"] == {"type": "number", "unit": "l/min", "minimum": 0}
    assert leak["description"] == "flow while leaking"
    assert leak["safething:history"] == 5
    assert leak["safething:access"] == "owner"
    assert leak["forms"][0]["op"] == ["subscribeevent", "unsubscribeevent"]
    assert leak["forms"][0]["href"] == "safe://Acme%3Asensor_7.b/events/Leak"


def test_base_gives_relative_hrefs() -> None:
    td = to_thing_description(garden(), base="safe://garden.alice")
    assert td["base"] == "safe://garden.alice/"
    assert td["properties"]["moisture"]["forms"][0]["href"] == "properties/moisture"
    assert td["actions"]["OpenValve"]["forms"][0]["href"] == "actions/OpenValve"
    assert td["events"]["VeryDryAlarm"]["forms"][0]["href"] == "events/VeryDryAlarm"
    assert "base" not in to_thing_description(garden())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="absolute URL"):
        to_thing_description(garden(), base="garden.alice")
    with pytest.raises(TypeError):
        to_thing_description(garden().to_dict())  # type: ignore[arg-type]


def test_minimal_thing_exports_valid_td(validator: jsonschema.Draft7Validator) -> None:
    td = to_thing_description(ThingDescription("lonely-1"))
    assert td["title"] == "lonely-1"
    assert td["properties"] == td["actions"] == td["events"] == {}
    assert errors(validator, td) == []


def test_single_affordances(validator: jsonschema.Draft7Validator) -> None:
    desc = ThingDescription(
        "valve-0001",
        attributes=[Attribute("pos", Schema("array"), dynamic=True, writable=True)],
        topics=[Topic("Blob", "object")],
        actions=[Action("Go", params=[Param("p", "boolean")])],
    )
    td = to_thing_description(desc)
    assert errors(validator, td) == []
    assert td["properties"]["pos"]["maxItems"] == 1024
    assert td["actions"]["Go"]["input"]["required"] == ["p"]


@pytest.mark.parametrize("make", [garden, everything])
@pytest.mark.parametrize("base", [None, "safe://garden.alice"])
def test_http_forms_validate_and_keep_the_safe_ones(
    validator: jsonschema.Draft7Validator, make: Any, base: str | None
) -> None:
    td = to_thing_description(make(), base=base, http="http://pi.local:8080")
    assert errors(validator, td) == []
    assert td["security"] == ["bearer_sc"]
    assert td["securityDefinitions"]["bearer_sc"]["scheme"] == "bearer"
    for section in ("properties", "actions", "events"):
        for interaction in td[section].values():
            safe, *http = interaction["forms"]
            assert safe["security"] == ["safething_sc"]
            assert http and all(f["href"].startswith("http://pi.local:8080/wot/") for f in http)
    with pytest.raises(ValueError, match="http"):
        to_thing_description(make(), http="ftp://x")
