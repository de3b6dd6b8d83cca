"""Home Assistant value templates: the common forms without Jinja, the rest in Jinja2's
sandbox with limits. A discovery config is written by whoever can publish on the
broker: its template must not reach the gateway's objects, spin or fill memory."""

from __future__ import annotations

import pytest

from safething_gateway.adoption.templates import (
    MAX_OUTPUT,
    MAX_TEMPLATE,
    TemplateError,
    ValueTemplate,
)


@pytest.mark.parametrize(
    ("text", "payload", "expected"),
    [
        ("{% if value == 'ON' %}on{% else %}off{% endif %}", "ON", "on"),
        ("{{ value_json.power / 1000 }}", '{"power": 1234}', "1.234"),
        ("{{ (value_json.t | float * 9 / 5 + 32) | round(1) }}", '{"t": "20"}', "68.0"),
        ("{{ value_json.a | tojson }}", '{"a": [1, 2]}', "[1, 2]"),
        ("plain {{ value }} text {{ value }}", "x", "plain x text x"),
        ("{{ value_json.state | default('off') | upper }}", "{}", "OFF"),
        ("{{ (value | float(0)) + 1 }}", "n/a", "1"),
    ],
)
def test_more_of_jinja_than_the_common_forms(text: str, payload: str, expected: str) -> None:
    template = ValueTemplate.parse(text)
    assert template.compiled is not None
    assert template.render(payload) == expected


def test_the_common_forms_keep_their_types_without_jinja() -> None:
    template = ValueTemplate.parse("{{ value_json.t | float }}")
    assert template.compiled is None
    assert template.render('{"t": "21.5"}') == 21.5


@pytest.mark.parametrize(
    "text",
    [
        "{{ states('sensor.x') }}",  # a name other than value and value_json
        "{{ value.upper() }}",  # calls
        "{% for i in value %}{% for j in value %}x{% endfor %}{% endfor %}",  # loops
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",  # recursion
        "{{ value | center(1000000000) }}",  # a filter that can make anything big
        "{% include 'x' %}",
        "{{ value ",  # not a template
        "{{ value }} " + "y" * MAX_TEMPLATE,  # too long
    ],
)
def test_what_the_sandbox_refuses_when_parsed(text: str) -> None:
    with pytest.raises(TemplateError):
        ValueTemplate.parse(text)


@pytest.mark.parametrize(
    ("text", "payload"),
    [
        ("{{ 'x' * 1000000000 }}", "1"),  # memory
        ("{{ value * 100000 }}", "abcdefgh"),
        ("{{ 10 ** 100000000 }}", "1"),  # CPU and memory
        ("{{ value_json.a }}{{ value_json.a }}{{ value_json.a }}", '{"a": "' + "y" * 2000 + '"}'),
        ("{{ value | float }}", "not a number"),
        ("{{ value.__class__.__mro__ }}", "x"),  # reaching Python objects
        ("{{ value_json.__class__ }}", "{}"),
        ("{{ value_json.missing + 1 }}", "{}"),
        ("{{ value_json.x }}", "not json"),
        ("{{ 1 / value_json.zero }}", '{"zero": 0}'),
    ],
)
def test_what_has_no_value_when_rendered(text: str, payload: str) -> None:
    template = ValueTemplate.parse(text)
    with pytest.raises(TemplateError):
        template.render(payload)
    assert MAX_OUTPUT < 6000
