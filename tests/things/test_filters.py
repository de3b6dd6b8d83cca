"""Subscription filters: parsing, operand checks, and what each kind lets through."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

import pytest

from safething.errors import SafeThingError
from safething.things.filters import Filter, FilterError, FilterKind, FilterState


def run(f: Filter, values: Sequence[Any]) -> list[bool]:
    """Offer ``values`` in order to one subscription's state."""
    state = f.new_state()
    return [f.matches(v, state) for v in values]


# --- parsing and forms -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("any", Filter()),
        ("ANY", Filter("any")),
        ("  changed ", Filter("changed")),
        ("eq:open", Filter("eq", "open")),
        ("eq:30", Filter("eq", 30)),
        ("eq:-1.5", Filter("eq", -1.5)),
        ('eq:"30"', Filter("eq", "30")),
        ("eq:true", Filter("eq", True)),
        ("ne:false", Filter("ne", False)),
        ("eq:a:b", Filter("eq", "a:b")),
        ("eq:null", Filter("eq", "null")),
        ("eq:NaN", Filter("eq", "NaN")),
        ("Gt:30", Filter("gt", 30)),
        ("lt:-2", Filter(FilterKind.LT, -2)),
        ("le:1e3", Filter("le", 1000.0)),
        ("ge:.5", Filter("ge", 0.5)),
        ("between:10:20", Filter("between", low=10, high=20)),
        ("between:-10.5:-10.5", Filter("between", low=-10.5, high=-10.5)),
        ("deadband:0.5", Filter("deadband", delta=0.5)),
    ],
)
def test_parse(text: str, expected: Filter) -> None:
    parsed = Filter.parse(text)
    assert parsed == expected
    assert Filter.parse(str(parsed)) == parsed
    assert Filter.from_dict(json.loads(json.dumps(parsed.to_dict()))) == parsed


def test_parse_keeps_integers_and_floats_apart() -> None:
    assert isinstance(Filter.parse("gt:30").value, int)
    assert isinstance(Filter.parse("gt:30.0").value, float)


def test_text_form_quotes_strings_that_would_read_as_something_else() -> None:
    for value in ("30", "true", "", " padded ", 'has "quotes"', "open", "a:b", "ünï"):
        f = Filter("eq", value)
        assert Filter.parse(str(f)) == f, str(f)
    assert str(Filter("eq", "open")) == "eq:open"
    assert str(Filter("eq", "30")) == 'eq:"30"'
    assert str(Filter("between", low=1, high=2.5)) == "between:1:2.5"
    assert str(Filter()) == "any"


def test_parse_accepts_a_filter() -> None:
    f = Filter("gt", 1)
    assert Filter.parse(f) is f


def test_to_dict_has_only_the_used_operands() -> None:
    assert Filter("any").to_dict() == {"kind": "any"}
    assert Filter("gt", 30).to_dict() == {"kind": "gt", "value": 30}
    assert Filter("between", low=10, high=20).to_dict() == {
        "kind": "between",
        "low": 10,
        "high": 20,
    }
    assert Filter("deadband", delta=0.5).to_dict() == {"kind": "deadband", "delta": 0.5}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "unknown kind ''"),
        ("above:3", "unknown kind 'above'"),
        ("any:3", "takes no operand"),
        ("changed:", "takes no operand"),
        ("gt", "needs an operand"),
        ("gt:", "needs an operand"),
        ("eq:", "needs an operand"),
        ("gt:abc", "must be a number"),
        ("gt:0x10", "must be a number"),
        ("gt:1_000", "must be a number"),
        ("gt:\u0663", "must be a number"),
        ("gt:nan", "must be a number"),
        ("gt:inf", "must be a number"),
        ("gt:1e999", "finite"),
        ("between:10", "between:LOW:HIGH"),
        ("between:1:2:3", "between:LOW:HIGH"),
        ("between:20:10", "must not be above high"),
        ("between:a:10", "low must be a number"),
        ("between", "needs an operand"),
        ("deadband:0", "delta must be above 0"),
        ("deadband:-1", "delta must be above 0"),
        ("deadband:x", "delta must be a number"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(FilterError, match=match) as e:
        Filter.parse(text)
    assert isinstance(e.value, ValueError)
    assert isinstance(e.value, SafeThingError)


def test_parse_refuses_non_text() -> None:
    with pytest.raises(FilterError, match="written as text"):
        Filter.parse(30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "value", "kwargs", "match"),
    [
        ("nope", None, {}, "unknown filter kind 'nope'"),
        ("any", 3, {}, "takes no value"),
        ("changed", None, {"delta": 1}, "takes no delta"),
        ("gt", None, {}, "needs a value"),
        ("gt", "30", {}, "value must be a finite number"),
        ("gt", True, {}, "value must be a finite number"),
        ("lt", math.nan, {}, "finite number"),
        ("eq", None, {}, "needs a value"),
        ("eq", [1], {}, "number, string or boolean"),
        ("ne", math.inf, {}, "number, string or boolean"),
        ("between", None, {"low": 1}, "needs a high"),
        ("between", 5, {"low": 1, "high": 2}, "takes no value"),
        ("between", None, {"low": 2, "high": 1}, "must not be above high"),
        ("between", None, {"low": "a", "high": 1}, "low must be a finite number"),
        ("deadband", None, {}, "needs a delta"),
        ("deadband", None, {"delta": 0}, "above 0"),
        ("deadband", None, {"delta": math.inf}, "finite"),
        ("deadband", None, {"delta": 1, "low": 0}, "takes no low"),
    ],
)
def test_bad_operands_are_refused(
    kind: str, value: Any, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(FilterError, match=match):
        Filter(kind, value, **kwargs)


@pytest.mark.parametrize(
    "data",
    [None, "gt:3", {}, {"value": 3}, {"kind": "gt", "value": 3, "extra": 1}, {"kind": "gt"}],
)
def test_from_dict_errors(data: Any) -> None:
    with pytest.raises(FilterError):
        Filter.from_dict(data)


def test_filters_are_frozen_and_hashable() -> None:
    f = Filter("gt", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.value = 4  # type: ignore[misc]
    assert len({Filter("gt", 3), Filter.parse("gt:3"), Filter("gt", 4)}) == 2


# --- evaluation -------------------------------------------------------------------------


def test_any_fires_for_everything() -> None:
    assert run(Filter(), [1, 1, None, "x", math.nan]) == [True] * 5


def test_changed_compares_with_the_last_value_seen() -> None:
    f = Filter("changed")
    assert run(f, [1, 1, 2, 2, 1, "1", "1", None, None, True, 1, 1.0]) == [
        True,  # first value
        False,
        True,
        False,
        True,
        True,  # a string is not the number
        False,
        True,
        False,
        True,  # True is not 1 here
        True,
        False,  # 1 == 1.0
    ]


def test_changed_without_state_fires() -> None:
    assert Filter("changed").matches(5) is True


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("eq:30", [30, 30.0, 31, "30", True], [True, True, False, False, False]),
        ("eq:open", ["open", "Open", None, 0], [True, False, False, False]),
        ("eq:true", [True, 1, "true", False], [True, False, False, False]),
        ("eq:1", [1, True], [True, False]),
        ("ne:open", ["open", "closed", 3, None], [False, True, True, True]),
        ("lt:10", [9.99, 10, 11, -5], [True, False, False, True]),
        ("le:10", [9.99, 10, 10.01], [True, True, False]),
        ("gt:30", [30, 30.5, 29, 1e9], [False, True, False, True]),
        ("ge:30", [29.9, 30, 31], [False, True, True]),
    ],
)
def test_comparisons_are_level_triggered(
    text: str, values: list[Any], expected: list[bool]
) -> None:
    assert run(Filter.parse(text), values) == expected


def test_between_includes_both_ends() -> None:
    f = Filter.parse("between:10:20")
    assert run(f, [9.999, 10, 15, 20, 20.001, -15]) == [False, True, True, True, False, False]
    point = Filter("between", low=5, high=5)
    assert run(point, [4.9, 5, 5.0, 5.1]) == [False, True, True, False]


@pytest.mark.parametrize("kind", ["lt:1", "le:1", "gt:1", "ge:1", "between:0:100", "deadband:1"])
@pytest.mark.parametrize(
    "odd", ["5", None, True, False, math.nan, math.inf, -math.inf, [5], {"v": 5}, 10**400]
)
def test_numeric_filters_skip_non_numbers_without_crashing(kind: str, odd: Any) -> None:
    f = Filter.parse(kind)
    state = f.new_state()
    assert f.matches(odd, state) is False
    assert state.notified is False


def test_deadband_compares_with_the_last_value_notified() -> None:
    f = Filter.parse("deadband:0.5")
    # First always fires; small steps accumulate against the last *notified* value.
    assert run(f, [20.0, 20.3, 20.6, 20.7, 21.2, 20.6, 20.1]) == [
        True,
        False,  # 0.3 from 20.0
        True,  # 0.6 from 20.0
        False,  # 0.1 from 20.6
        True,  # 0.6 from 20.6 (20.7 was not notified)
        True,  # 0.6 down from 21.2
        False,  # 0.5 is not more than the band
    ]


def test_deadband_edge_is_strict_and_skips_odd_values_in_between() -> None:
    f = Filter("deadband", delta=1)
    # 11 is exactly 1 away (not more); 11.5 is the new reference; 12.5 is again exactly 1 away.
    assert run(f, [10, 11, 11.5, "x", None, 12.5, 12.51]) == [
        True,
        False,
        True,
        False,
        False,
        False,
        True,
    ]


def test_state_records_seen_and_notified_values() -> None:
    f = Filter.parse("gt:10")
    state = f.new_state()
    assert state == FilterState()
    assert f.matches(5, state) is False
    assert (state.seen, state.last_seen, state.notified) == (True, 5, False)
    assert f.matches(15, state) is True
    assert (state.last_seen, state.notified, state.last_notified) == (15, True, 15)
    assert f.matches(7, state) is False
    assert (state.last_seen, state.last_notified) == (7, 15)


def test_state_round_trips_so_a_subscription_can_resume() -> None:
    f = Filter.parse("deadband:1")
    state = f.new_state()
    assert FilterState.from_dict(state.to_dict()) == state
    for v in (1, 1.5, 2.5):
        f.matches(v, state)
    saved = json.loads(json.dumps(state.to_dict()))
    assert saved == {"last_seen": 2.5, "last_notified": 2.5}
    resumed = FilterState.from_dict(saved)
    assert resumed == state
    assert f.matches(3.0, resumed) is False
    assert f.matches(3.6, resumed) is True
    none_seen = FilterState(seen=True, last_seen=None)
    assert FilterState.from_dict(none_seen.to_dict()) == none_seen
    with pytest.raises(FilterError):
        FilterState.from_dict({"last": 1})
    with pytest.raises(FilterError):
        FilterState.from_dict([1])
