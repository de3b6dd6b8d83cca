"""Value templates of Home Assistant discovery configs (``val_tpl``, ``cmd_tpl``).

The common forms (``{{ value }}``, ``{{ value_json.a['b'][0] | float | round(1) }}``)
are read by a small parser and rendered without Jinja. Anything else is
compiled by Jinja2's immutable sandbox with limits: only ``value`` and
``value_json``, no loops, macros, imports or calls, a set of harmless filters,
bounded ``*`` and ``**``, short templates and short output: a device's config
can neither reach the gateway's objects nor make it spin or fill memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from safething_gateway.adoption.ha_discovery import DiscoveryConfigError

__all__ = ["TemplateError", "ValueTemplate", "command_template", "jinja_text"]


class TemplateError(DiscoveryConfigError):
    """A template is outside the supported subset, or does not apply to a payload."""


_TEMPLATE: Final = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)
_ROOT: Final = re.compile(r"\s*(?P<root>value_json|value)(?![A-Za-z0-9_])")
_STEP: Final = re.compile(
    r"""\s*(?:\.(?P<attr>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|\[\s*(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<idx>\d+))\s*\])"""
)
_FILTER: Final = re.compile(
    r"^(?P<name>float|int|round|lower|upper|string|trim)(?:\(\s*(?P<arg>-?[0-9.]*)\s*\))?$"
)


MAX_TEMPLATE: Final = 1024
"""Longest template text (characters) compiled by the sandbox."""
MAX_OUTPUT: Final = 4096
"""Longest rendered text (characters); a longer one has no value."""
_MAX_REPEAT: Final = 4096
"""Largest string or list ``*`` may make, largest exponent ``**`` takes."""
_NAMES: Final = frozenset({"value", "value_json"})
_SAFE_FILTERS: Final = frozenset(
    {
        "abs",
        "bool",
        "capitalize",
        "d",
        "default",
        "first",
        "float",
        "int",
        "last",
        "length",
        "lower",
        "max",
        "min",
        "replace",
        "round",
        "string",
        "title",
        "tojson",
        "trim",
        "upper",
    }
)
_FORBIDDEN_NODES: Final = (
    "For",
    "Macro",
    "CallBlock",
    "Call",
    "Include",
    "Import",
    "FromImport",
    "Extends",
    "Block",
    "FilterBlock",
    "With",
    "Assign",
    "AssignBlock",
)


def _sandbox() -> Any:
    """Jinja2's immutable sandbox with bounded ``*``/``**`` and strict undefined names;
    ``float``/``int`` raise on a non-number unless given a default (as Home Assistant)."""
    from jinja2 import StrictUndefined
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if (
                        isinstance(seq, str | list | tuple)
                        and isinstance(n, int)
                        and len(seq) * n > _MAX_REPEAT
                    ):
                        raise SecurityError("result too large")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(undefined=StrictUndefined, autoescape=False)
    missing = object()

    def number(kind: type) -> Any:
        def convert(value: Any, default: Any = missing) -> Any:
            try:
                return kind(float(value)) if kind is int else float(value)
            except (TypeError, ValueError, OverflowError):
                if default is missing:
                    raise TemplateError(f"{value!r} is not a number") from None
                return default

        return convert

    env.filters["float"] = number(float)
    env.filters["int"] = number(int)
    return env


_ENV: Any = None


def _compile(text: str) -> Any:
    """The template compiled in the sandbox, or :class:`TemplateError`."""
    global _ENV
    from jinja2 import TemplateSyntaxError, meta, nodes

    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"template of {len(text)} characters; the limit is {MAX_TEMPLATE}")
    if _ENV is None:
        _ENV = _sandbox()
    try:
        tree = _ENV.parse(text)
    except TemplateSyntaxError as e:
        raise TemplateError(f"unsupported template {text!r}: {e.message}") from None
    unknown = meta.find_undeclared_variables(tree) - _NAMES
    if unknown:
        raise TemplateError(
            f"unsupported template {text!r}: only value and value_json, not "
            + ", ".join(sorted(unknown))
        )
    for name in _FORBIDDEN_NODES:
        if next(tree.find_all(getattr(nodes, name)), None) is not None:
            raise TemplateError(f"unsupported template {text!r}: no {name.lower()} here")
    for node in tree.find_all(nodes.Filter):
        if node.name not in _SAFE_FILTERS:
            raise TemplateError(f"unsupported template {text!r}: filter {node.name!r}")
    return _ENV.from_string(tree)


@dataclass(frozen=True)
class ValueTemplate:
    """A Home Assistant value template, as an adopter reads it.

    The common forms are read without Jinja: ``{{ value }}`` and
    ``{{ value_json.<path> }}`` where the path is made of ``.key``, ``['key']``,
    ``["key"]`` and ``[index]`` steps, followed by any of the filters ``float``,
    ``int``, ``round(n)``, ``lower``, ``upper``, ``string``, ``trim``; these
    render to the value itself (a number stays a number). Anything else
    (``{% if %}``, arithmetic, text around the value...) is compiled by
    Jinja2's sandbox (see the module) and renders to text; what the sandbox
    refuses (other names such as ``states()``, loops, calls, other filters)
    raises :class:`TemplateError` when parsed.
    """

    source: str
    """The template text."""
    json: bool
    """Whether the payload is parsed as JSON (``value_json``)."""
    path: tuple[str | int, ...] = ()
    """Keys and indexes into the JSON payload."""
    filters: tuple[tuple[str, str | None], ...] = ()
    """Filters applied in order, with their argument."""
    compiled: Any = None
    """The sandboxed Jinja template, for a template outside the common forms."""

    @classmethod
    def parse(cls, text: str) -> ValueTemplate:
        try:
            return cls._parse_simple(text)
        except TemplateError:
            compiled = _compile(text)
            return cls(text, "value_json" in text, compiled=compiled)

    @classmethod
    def _parse_simple(cls, text: str) -> ValueTemplate:
        match = _TEMPLATE.match(text)
        if match is None or "{%" in text or text.count("{{") != 1:
            raise TemplateError(f"unsupported template {text!r}")
        pieces = match["expr"].split("|")
        expr = pieces[0]
        root = _ROOT.match(expr)
        if root is None:
            raise TemplateError(f"unsupported template {text!r}: only value and value_json")
        pos = root.end()
        path: list[str | int] = []
        while pos < len(expr.rstrip()):
            step = _STEP.match(expr, pos)
            if step is None:
                raise TemplateError(f"unsupported template {text!r}")
            if step["idx"] is not None:
                path.append(int(step["idx"]))
            else:
                path.append(step["attr"] or step["sq"] or step["dq"] or "")
            pos = step.end()
        if path and root["root"] == "value":
            raise TemplateError(f"unsupported template {text!r}: use value_json for a path")
        filters: list[tuple[str, str | None]] = []
        for piece in pieces[1:]:
            f = _FILTER.match(piece.strip())
            if f is None:
                raise TemplateError(f"unsupported template {text!r}: filter {piece.strip()!r}")
            filters.append((f["name"], f["arg"] or None))
        return cls(text, root["root"] == "value_json", tuple(path), tuple(filters))

    def render(self, payload: str) -> Any:
        """The template's value for ``payload``; :class:`TemplateError` if it has none."""
        if self.compiled is not None:
            return self._render_sandboxed(payload)
        value: Any = payload
        if self.json:
            try:
                value = json.loads(payload)
            except ValueError:
                raise TemplateError(f"{payload[:40]!r} is not JSON") from None
        for step in self.path:
            try:
                value = value[step]
            except (KeyError, IndexError, TypeError):
                raise TemplateError(f"no {step!r} in the payload") from None
        for name, arg in self.filters:
            value = _filter(name, arg, value)
        return value

    def _render_sandboxed(self, payload: str) -> str:
        from jinja2 import TemplateError as JinjaError

        context: dict[str, Any] = {"value": payload}
        if self.json:
            try:
                context["value_json"] = json.loads(payload)
            except ValueError:
                raise TemplateError(f"{payload[:40]!r} is not JSON") from None
        try:
            text = str(self.compiled.render(context))
        except TemplateError:
            raise
        except (JinjaError, ArithmeticError, TypeError, ValueError, LookupError) as e:
            raise TemplateError(f"template {self.source!r}: {e}") from None
        if len(text) > MAX_OUTPUT:
            raise TemplateError(f"template {self.source!r} made {len(text)} characters")
        return text.strip()


def _filter(name: str, arg: str | None, value: Any) -> Any:
    if name in ("float", "int", "round"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            if arg is not None and name != "round":
                number = float(arg)
            else:
                raise TemplateError(f"{value!r} is not a number") from None
        if name == "int":
            return int(number) if math.isfinite(number) else number
        if name == "round":
            return round(number, int(float(arg)) if arg else 0)
        return number
    text = jinja_text(value)
    return {"lower": text.lower(), "upper": text.upper(), "trim": text.strip()}.get(name, text)


def jinja_text(value: Any) -> str:
    """A value as a Jinja template would print it (``True``, ``21.5``, ``{'a': 1}``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def command_template(text: str) -> str:
    """Check a command template: plain text with ``{{ value }}`` placeholders only."""
    if "{%" in text:
        raise TemplateError(f"unsupported command template {text!r}")
    for expr in re.findall(r"\{\{(.*?)\}\}", text, re.S):
        if expr.strip() != "value":
            raise TemplateError(f"unsupported command template {text!r}")
    return text
