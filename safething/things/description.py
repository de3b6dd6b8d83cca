"""The typed description of a thing: its attributes, topics and actions.

Everything here is a frozen value object that checks itself when built, so a
:class:`ThingDescription` that exists is a valid one. Nothing here touches a
store or the network.

Builder API (positional ``name, type``, then keywords)::

    ThingDescription(
        id="garden-01",
        title="Gardening device",
        attributes=[
            Attribute("moisture", "number", unit="%", minimum=0, maximum=100, dynamic=True),
            Attribute("model", "string", value="GD-1"),
        ],
        topics=[Topic("VeryDryAlarm"), Topic("VeryWetAlarm")],
        actions=[
            Action("OpenValve", params=[
                Param("psi", "number", minimum=0, maximum=100, default=30),
            ]),
            Action("CloseValve"),
        ],
    )

Two kinds of error, on purpose:

* :class:`DescriptionError` - the *description* is wrong (a minimum above the
  maximum, a duplicate name, a malformed dict). Carries ``path``, the place of
  the bad field as in the dict form (``attributes[0].minimum``).
* :class:`ValueTypeError` - a *value* does not fit its schema at run time (a
  reading, an event payload, an action argument). Carries ``field``, ``value``
  and ``expected``.

Values are JSON-shaped: numbers, strings, booleans, lists and string-keyed
dicts. ``None`` means "absent" everywhere (no default, no value, no payload).
Descriptions that hold dict or list values (object defaults, say) are not
hashable; treat such values as read-only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeVar

from safething.errors import SafeThingError
from safething.things.words import Word

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_TIMEOUT_S",
    "FORMAT",
    "MAX_HISTORY",
    "AccessType",
    "Action",
    "Attribute",
    "DescriptionError",
    "MissingParamError",
    "Param",
    "Schema",
    "ThingDescription",
    "Topic",
    "UnknownFieldError",
    "ValueType",
    "ValueTypeError",
]

FORMAT: Final = 1
"""Version of the dict form written by :meth:`ThingDescription.to_dict`."""
DEFAULT_MAX_LENGTH: Final = 1024
"""Longest string (characters) or array (items) a schema accepts unless told otherwise."""
DEFAULT_HISTORY: Final = 32
"""Values (or events) kept per dynamic attribute (or topic) unless told otherwise."""
MAX_HISTORY: Final = 500
"""Largest history ring; the ring has to fit in one MutableData with its neighbours."""
DEFAULT_TIMEOUT_S: Final = 30.0
"""Seconds an action may take before it is ``timed_out``, unless told otherwise."""
MAX_TIMEOUT_S: Final = 86_400.0
"""Longest action timeout: one day."""
MAX_ITEMS: Final = 100
"""Most attributes, most topics and most actions in one description."""
MAX_PARAMS: Final = 32
"""Most parameters of one action."""
MAX_DEPTH: Final = 8
"""Deepest nesting of object/array schemas and of JSON values inside them."""
MAX_TEXT: Final = 1024
"""Longest description text; titles and units are shorter (see the checks)."""
MAX_STRING_LIMIT: Final = 1024 * 1024
"""Largest ``max_length`` a schema may set (the size of a MutableData)."""

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T", "Attribute", "Topic", "Action")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_THING_ID = re.compile(r"[A-Za-z0-9_.:-]{5,64}")


# --- errors -----------------------------------------------------------------------


class DescriptionError(SafeThingError, ValueError):
    """A thing description (or one of its parts) is invalid or malformed.

    ``path`` names the bad field as in the dict form, e.g.
    ``attributes[0].minimum``; ``reason`` says what is wrong with it.
    """

    def __init__(self, reason: str, *, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)

    def within(self, prefix: str) -> DescriptionError:
        """The same error seen from the enclosing object (``prefix`` goes in front)."""
        if not self.path:
            path = prefix
        elif self.path.startswith("["):
            path = prefix + self.path
        else:
            path = f"{prefix}.{self.path}"
        return DescriptionError(self.reason, path=path)


class ValueTypeError(SafeThingError, ValueError):
    """A value does not fit its schema.

    ``field`` says whose value it is (``attribute 'moisture'``), ``value`` is
    what was given and ``expected`` describes what fits
    (``number between 0 and 100``).
    """

    def __init__(self, field: str, value: Any, expected: str, *, message: str = "") -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(message or f"{field}: expected {expected}, got {_show(value)}")


class MissingParamError(ValueTypeError):
    """An action was requested without one of its required parameters."""

    def __init__(self, action: str, param: str, expected: str) -> None:
        self.action = action
        self.param = param
        super().__init__(
            f"action {action!r} param {param!r}",
            None,
            expected,
            message=f"action {action!r}: missing required param {param!r} ({expected})",
        )


class UnknownFieldError(SafeThingError, KeyError):
    """A lookup by name found nothing: no such attribute, topic, action or param.

    ``owner`` is who was asked (``thing 'garden-01'``), ``kind`` what was
    looked for (``action``), ``name`` the name given and ``known`` the names
    there are.
    """

    def __init__(self, owner: str, kind: str, name: str, known: Iterable[str]) -> None:
        self.owner = owner
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        listing = ", ".join(self.known) if self.known else "none"
        super().__init__(f"{owner} has no {kind} {name!r} ({kind}s: {listing})")

    def __str__(self) -> str:
        return str(self.args[0])


# --- small helpers ------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:50] + "..." + text[-6:]
    if isinstance(value, str | list | tuple | dict) and len(value) > 20:
        text += f" (length {len(value)})"
    return text


def _type_name(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _check_name(name: Any, *, path: str = "name") -> str:
    if not isinstance(name, str):
        raise DescriptionError(f"expected a string, got {_type_name(name)}", path=path)
    if not _NAME.fullmatch(name):
        raise DescriptionError(
            f"invalid name {name!r}: use 1-64 letters, digits, '_' and '-', "
            "starting with a letter or '_'",
            path=path,
        )
    return name


def _check_text(text: Any, *, path: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(text, str):
        raise DescriptionError(f"expected a string, got {_type_name(text)}", path=path)
    if len(text) > limit:
        raise DescriptionError(f"too long ({len(text)} characters, limit {limit})", path=path)
    return text


def _check_bool(value: Any, *, path: str) -> bool:
    if not isinstance(value, bool):
        raise DescriptionError(f"expected true or false, got {_show(value)}", path=path)
    return value


def _check_int(value: Any, *, path: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DescriptionError(
            f"expected an integer from {low} to {high}, got {_show(value)}", path=path
        )
    return value


def _check_finite(value: Any, *, path: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise DescriptionError(f"expected a finite number, got {_show(value)}", path=path)
    return value  # type: ignore[no-any-return]


def _set(obj: object, **fields: Any) -> None:
    for name, value in fields.items():
        object.__setattr__(obj, name, value)


def _json_value(value: Any, *, field: str, depth: int = 0) -> Any:
    """A checked copy of a JSON-shaped value (tuples become lists)."""
    if depth > MAX_DEPTH:
        raise ValueTypeError(field, value, f"a value nested at most {MAX_DEPTH} deep")
    if value is None or isinstance(value, bool | str):
        return value
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueTypeError(field, value, "a finite number")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, field=f"{field}[{i}]", depth=depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueTypeError(field, value, "an object with string keys")
            out[k] = _json_value(v, field=f"{field}[{k!r}]", depth=depth + 1)
        return out
    raise ValueTypeError(field, value, "a JSON value (number, string, boolean, list, object)")


def _parse_enum(cls: type[_E], value: Any, *, path: str, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise DescriptionError(
            f"unknown {what} {value!r}; use one of: {choices}", path=path
        ) from None


def _fields(
    data: Any, *, allowed: Iterable[str], required: Iterable[str] = ()
) -> Mapping[str, Any]:
    """``data`` as a mapping with only ``allowed`` keys and every ``required`` one."""
    if not isinstance(data, Mapping):
        raise DescriptionError(f"expected an object, got {_type_name(data)}")
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise DescriptionError(
                f"unknown key (known keys: {', '.join(allowed)})",
                path=key if isinstance(key, str) else repr(key),
            )
    for key in required:
        if key not in data:
            raise DescriptionError("is required", path=key)
    return data


def _list(data: Any, *, path: str) -> list[Any]:
    if not isinstance(data, list | tuple):
        raise DescriptionError(f"expected a list, got {_type_name(data)}", path=path)
    return list(data)


# --- enums ----------------------------------------------------------------------------


class ValueType(StrEnum):
    """The type of a value. Parsed case-insensitively; ``int``, ``float``,
    ``bool`` and ``str`` are accepted as aliases."""

    NUMBER = "number"
    """A finite real number (an ``int`` is accepted and becomes a ``float``)."""
    INTEGER = "integer"
    """A whole number (a float with no fraction, like ``3.0``, becomes ``3``)."""
    BOOLEAN = "boolean"
    """``True`` or ``False``; never ``0``/``1``."""
    STRING = "string"
    """Text of at most ``max_length`` characters."""
    ENUM = "enum"
    """One of a fixed set of strings (``choices``)."""
    OBJECT = "object"
    """A dict with string keys; with ``properties``, exactly those keys, each checked."""
    ARRAY = "array"
    """A list of at most ``max_length`` items, each checked against ``items`` if given."""

    @classmethod
    def _missing_(cls, value: object) -> ValueType | None:
        if isinstance(value, str):
            text = value.strip().lower()
            text = {"float": "number", "int": "integer", "bool": "boolean", "str": "string"}.get(
                text, text
            )
            for member in cls:
                if member.value == text:
                    return member
        return None


class AccessType(Word):
    """Who may read an attribute or topic, or request an action.

    Parsed case-insensitively (``"owner"``, ``"All"``). Owner and Group data
    is encrypted to those keys; Thing means only the thing itself.
    """

    THING = "thing"
    """Only the thing's own key."""
    OWNER = "owner"
    """The thing and its owner."""
    GROUP = "group"
    """The thing, its owner and the members of its group."""
    ALL = "all"
    """Anyone."""


# --- schema ---------------------------------------------------------------------------

_SCHEMA_KEYS: Final = (
    "type",
    "unit",
    "minimum",
    "maximum",
    "choices",
    "max_length",
    "properties",
    "items",
    "default",
)


@dataclass(frozen=True, init=False)
class Schema:
    """The shape of a value: its type and the limits it must keep.

    ``Schema("number", unit="%", minimum=0, maximum=100)``;
    ``Schema("enum", choices=["open", "closed"])``;
    ``Schema("object", properties={"lat": "number", "lon": "number"})``.
    Keywords that do not apply to the type (``minimum`` on a string...) are refused.
    """

    type: ValueType
    """What kind of value; a plain string like ``"number"`` is accepted."""
    unit: str | None
    """Unit of measure for people and UIs (``"%"``, ``"°C"``); not checked."""
    minimum: float | None
    """Smallest allowed value (inclusive), number and integer only."""
    maximum: float | None
    """Largest allowed value (inclusive), number and integer only."""
    choices: tuple[str, ...] | None
    """The allowed strings of an enum (required for enum, refused otherwise)."""
    max_length: int | None
    """Longest string (characters) or array (items); defaults to
    :data:`DEFAULT_MAX_LENGTH` for those types and is ``None`` for the others."""
    properties: Mapping[str, Schema] | None
    """Object only: the keys an object must have, each with its schema (read-only).
    ``None`` accepts any JSON object."""
    items: Schema | None
    """Array only: the schema of every item; ``None`` accepts any JSON values."""
    default: Any
    """Value used when none is given (checked against this schema); ``None`` for none."""

    def __init__(
        self,
        type: ValueType | str,
        *,
        unit: str | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Iterable[str] | None = None,
        max_length: int | None = None,
        properties: Mapping[str, Schema | ValueType | str] | None = None,
        items: Schema | ValueType | str | None = None,
        default: Any = None,
    ) -> None:
        _set(
            self,
            type=type,
            unit=unit,
            minimum=minimum,
            maximum=maximum,
            choices=choices,
            max_length=max_length,
            properties=properties,
            items=items,
            default=default,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        kind = _parse_enum(ValueType, self.type, path="type", what="type")
        _set(self, type=kind)
        numeric = kind in (ValueType.NUMBER, ValueType.INTEGER)

        def refuse(name: str, why: str) -> None:
            if getattr(self, name) is not None:
                raise DescriptionError(f"{why}, not for {kind.value}", path=name)

        if self.unit is not None and (
            not isinstance(self.unit, str) or not 0 < len(self.unit) <= 32
        ):
            raise DescriptionError(f"expected 1-32 characters, got {_show(self.unit)}", path="unit")

        if not numeric:
            refuse("minimum", "only for number and integer")
            refuse("maximum", "only for number and integer")
        for name in ("minimum", "maximum"):
            if getattr(self, name) is not None:
                _check_finite(getattr(self, name), path=name)
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise DescriptionError(
                f"{_num(self.minimum)} is above the maximum {_num(self.maximum)}", path="minimum"
            )

        if kind is ValueType.ENUM:
            self._check_choices()
        else:
            refuse("choices", "only for enum")

        if kind in (ValueType.STRING, ValueType.ARRAY):
            length = DEFAULT_MAX_LENGTH if self.max_length is None else self.max_length
            _set(
                self,
                max_length=_check_int(length, path="max_length", low=1, high=MAX_STRING_LIMIT),
            )
        else:
            refuse("max_length", "only for string and array")

        if kind is ValueType.OBJECT:
            self._check_properties()
        else:
            refuse("properties", "only for object")

        if kind is ValueType.ARRAY:
            if self.items is not None:
                _set(self, items=_as_schema(self.items, path="items"))
        else:
            refuse("items", "only for array")

        if self.default is not None:
            _set(self, default=_checked(self, self.default, path="default"))

    def _check_choices(self) -> None:
        raw = self.choices
        if raw is None or isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
            raise DescriptionError("an enum needs a list of choices", path="choices")
        choices = tuple(raw)
        if not choices:
            raise DescriptionError("an enum needs at least one choice", path="choices")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not 0 < len(choice) <= 128:
                raise DescriptionError(
                    f"expected a string of 1-128 characters, got {_show(choice)}",
                    path=f"choices[{i}]",
                )
            if choice in choices[:i]:
                raise DescriptionError(f"duplicate choice {choice!r}", path=f"choices[{i}]")
        _set(self, choices=choices)

    def _check_properties(self) -> None:
        if self.properties is None:
            return
        if not isinstance(self.properties, Mapping):
            raise DescriptionError(
                f"expected a mapping of names to schemas, got {_type_name(self.properties)}",
                path="properties",
            )
        props: dict[str, Schema] = {}
        for key, value in self.properties.items():
            _check_name(key, path=f"properties.{key}")
            props[key] = _as_schema(value, path=f"properties.{key}")
        _set(self, properties=MappingProxyType(props))

    def __reduce__(self) -> tuple[Any, ...]:
        # ``properties`` is a read-only mapping proxy, which cannot be pickled or
        # deep-copied; rebuild from the dict form instead.
        return (Schema.from_dict, (self.to_dict(),))

    # --- values --------------------------------------------------------------------

    @property
    def expected(self) -> str:
        """What fits, in words: ``number between 0 and 100``."""
        kind = self.type
        if kind in (ValueType.NUMBER, ValueType.INTEGER):
            text = kind.value
            if self.minimum is not None and self.maximum is not None:
                return f"{text} between {_num(self.minimum)} and {_num(self.maximum)}"
            if self.minimum is not None:
                return f"{text} >= {_num(self.minimum)}"
            if self.maximum is not None:
                return f"{text} <= {_num(self.maximum)}"
            return text
        if kind is ValueType.STRING:
            return f"string of at most {self.max_length} characters"
        if kind is ValueType.ENUM:
            return "one of " + ", ".join(repr(c) for c in self.choices or ())
        if kind is ValueType.OBJECT:
            if self.properties:
                return "object with properties " + ", ".join(self.properties)
            return "object"
        if kind is ValueType.ARRAY:
            text = f"array of at most {self.max_length} items"
            return f"{text}, each {self.items.expected}" if self.items else text
        return kind.value

    def validate(self, value: Any, *, field: str) -> Any:
        """Check ``value`` and return it normalised, or raise :class:`ValueTypeError`.

        ``field`` names whose value it is, for the message (``"attribute 'moisture'"``).
        Numbers: ``int`` is accepted for number (returned as ``float``), an
        integral ``float`` for integer (returned as ``int``); ``bool``, NaN and
        infinities are refused. Objects and arrays come back as fresh
        ``dict``/``list`` copies.
        """
        return self._validate(value, field, 0)

    def _validate(self, value: Any, field: str, depth: int) -> Any:
        kind = self.type
        if kind is ValueType.NUMBER or kind is ValueType.INTEGER:
            return self._validate_number(value, field)
        if kind is ValueType.BOOLEAN:
            if isinstance(value, bool):
                return value
        elif kind is ValueType.STRING:
            if isinstance(value, str) and len(value) <= (self.max_length or 0):
                return value
        elif kind is ValueType.ENUM:
            if isinstance(value, str) and value in (self.choices or ()):
                return value
        elif kind is ValueType.OBJECT:
            if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
                return self._validate_object(value, field, depth)
        elif (
            kind is ValueType.ARRAY
            and isinstance(value, list | tuple)
            and len(value) <= (self.max_length or 0)
        ):
            if self.items is None:
                return _json_value(value, field=field, depth=depth)
            if depth >= MAX_DEPTH:
                raise ValueTypeError(field, value, f"a value nested at most {MAX_DEPTH} deep")
            return [
                self.items._validate(item, f"{field}[{i}]", depth + 1)
                for i, item in enumerate(value)
            ]
        raise ValueTypeError(field, value, self.expected)

    def _validate_number(self, value: Any, field: str) -> Any:
        if not _is_number(value):
            raise ValueTypeError(field, value, self.expected)
        try:
            number: float = float(value)
        except OverflowError:
            raise ValueTypeError(field, value, self.expected) from None
        if not math.isfinite(number):
            raise ValueTypeError(field, value, self.expected)
        if self.type is ValueType.INTEGER:
            if isinstance(value, float) and not value.is_integer():
                raise ValueTypeError(field, value, self.expected)
            result: float = int(value)
        else:
            result = number
        if (self.minimum is not None and result < self.minimum) or (
            self.maximum is not None and result > self.maximum
        ):
            raise ValueTypeError(field, value, self.expected)
        return result

    def _validate_object(self, value: Mapping[str, Any], field: str, depth: int) -> dict[str, Any]:
        if self.properties is None:
            return _json_value(value, field=field, depth=depth)  # type: ignore[no-any-return]
        if depth >= MAX_DEPTH:
            raise ValueTypeError(field, value, f"a value nested at most {MAX_DEPTH} deep")
        for key in value:
            if key not in self.properties:
                raise ValueTypeError(
                    field,
                    value,
                    self.expected,
                    message=f"{field}: unknown property {key!r} (expected {self.expected})",
                )
        out: dict[str, Any] = {}
        for key, schema in self.properties.items():
            if key in value:
                out[key] = schema._validate(value[key], f"{field}[{key!r}]", depth + 1)
            elif schema.default is not None:
                out[key] = _json_value(schema.default, field=f"{field}[{key!r}]")
            else:
                raise ValueTypeError(
                    f"{field}[{key!r}]",
                    None,
                    schema.expected,
                    message=f"{field}: missing property {key!r} ({schema.expected})",
                )
        return out

    # --- dict form -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict; keys that are ``None`` are left out."""
        out: dict[str, Any] = {"type": self.type.value}
        if self.unit is not None:
            out["unit"] = self.unit
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.max_length is not None:
            out["max_length"] = self.max_length
        if self.properties is not None:
            out["properties"] = {k: v.to_dict() for k, v in self.properties.items()}
        if self.items is not None:
            out["items"] = self.items.to_dict()
        if self.default is not None:
            out["default"] = _json_value(self.default, field="default")
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Schema:
        """Inverse of :meth:`to_dict`; :class:`DescriptionError` names the bad field."""
        return _schema_from_dict(data, depth=0)


def _schema_from_dict(data: Any, *, depth: int) -> Schema:
    if depth > MAX_DEPTH:
        raise DescriptionError(f"schemas nest too deeply (limit {MAX_DEPTH})")
    raw = _fields(data, allowed=_SCHEMA_KEYS, required=("type",))
    args = dict(raw)
    if isinstance(args.get("properties"), Mapping):
        props: dict[str, Schema] = {}
        for key, value in args["properties"].items():
            try:
                props[key] = _schema_from_dict(value, depth=depth + 1)
            except DescriptionError as e:
                raise e.within(f"properties.{key}") from None
        args["properties"] = props
    if isinstance(args.get("items"), Mapping):
        try:
            args["items"] = _schema_from_dict(args["items"], depth=depth + 1)
        except DescriptionError as e:
            raise e.within("items") from None
    if "choices" in args and not isinstance(args["choices"], list | tuple):
        raise DescriptionError(
            f"expected a list, got {_type_name(args['choices'])}", path="choices"
        )
    return Schema(**args)


def _as_schema(value: Any, *, path: str) -> Schema:
    if isinstance(value, Schema):
        return value
    if isinstance(value, ValueType | str):
        try:
            return Schema(value)
        except DescriptionError as e:
            raise e.within(path) from None
    raise DescriptionError(f"expected a Schema or a type name, got {_type_name(value)}", path=path)


def _checked(schema: Schema, value: Any, *, path: str) -> Any:
    """``schema.validate(value)`` for a value written in a description."""
    try:
        return schema.validate(value, field=path)
    except ValueTypeError as e:
        raise DescriptionError(f"expected {e.expected}, got {_show(e.value)}", path=e.field) from e


def _schema_arg(
    schema: Schema | ValueType | str | None,
    keywords: dict[str, Any],
    *,
    optional: bool = False,
) -> Schema | None:
    """Build the schema of an attribute, topic or param from its flat keywords."""
    given = {k: v for k, v in keywords.items() if v is not None}
    if schema is None:
        if given and optional:
            raise DescriptionError(
                f"{', '.join(given)} given without a type", path=next(iter(given))
            )
        if optional:
            return None
        raise DescriptionError("a type is required (e.g. 'number')", path="type")
    if isinstance(schema, Schema):
        if given:
            raise TypeError(f"give either a Schema or its keywords ({', '.join(given)}), not both")
        return schema
    if not isinstance(schema, ValueType | str):
        raise DescriptionError(
            f"expected a Schema or a type name, got {_type_name(schema)}", path="type"
        )
    return Schema(schema, **keywords)


def _split_schema(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat dict into (schema keys, other keys)."""
    schema = {k: v for k, v in data.items() if k in _SCHEMA_KEYS}
    rest = {k: v for k, v in data.items() if k not in _SCHEMA_KEYS}
    return schema, rest


def _flat_schema(data: Mapping[str, Any]) -> Schema | None:
    schema_part, _ = _split_schema(data)
    if "type" not in schema_part:
        if schema_part:
            key = next(iter(schema_part))
            raise DescriptionError("given without a type", path=key)
        return None
    return _schema_from_dict(schema_part, depth=0)


# --- attributes, topics, params, actions ------------------------------------------------


@dataclass(frozen=True, init=False)
class Attribute:
    """A named value of a thing: static (fixed in the description) or dynamic.

    ``Attribute("model", "string", value="GD-1")`` is static: its ``value``
    is part of the description. ``Attribute("moisture", "number", unit="%",
    minimum=0, maximum=100, dynamic=True)`` is dynamic: the thing reports
    values at run time and the last ``history`` of them are kept.
    """

    name: str
    """Name, unique among the thing's attributes: 1-64 letters, digits, ``_``, ``-``."""
    schema: Schema
    """Shape of the values. Give a type name and the schema keywords
    (``unit``, ``minimum``, ``maximum``, ``choices``, ``max_length``,
    ``properties``, ``items``, ``default``), or a :class:`Schema`."""
    dynamic: bool
    """``True`` for values that change at run time (readings, state)."""
    writable: bool
    """Dynamic only: others may write a *desired* value that the thing then
    applies and reports; ``False`` means only the thing sets it."""
    history: int
    """Dynamic only: how many past values to keep (1..:data:`MAX_HISTORY`)."""
    access: AccessType
    """Who may read it; a plain string like ``"owner"`` is accepted."""
    value: Any
    """Static only (and required there): the fixed value, checked against the schema."""
    description: str
    """Free text for people."""

    def __init__(
        self,
        name: str,
        schema: Schema | ValueType | str,
        *,
        unit: str | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Iterable[str] | None = None,
        max_length: int | None = None,
        properties: Mapping[str, Schema | ValueType | str] | None = None,
        items: Schema | ValueType | str | None = None,
        default: Any = None,
        value: Any = None,
        dynamic: bool = False,
        writable: bool = False,
        history: int = DEFAULT_HISTORY,
        access: AccessType | str = AccessType.ALL,
        description: str = "",
    ) -> None:
        built = _schema_arg(
            schema,
            {
                "unit": unit,
                "minimum": minimum,
                "maximum": maximum,
                "choices": choices,
                "max_length": max_length,
                "properties": properties,
                "items": items,
                "default": default,
            },
        )
        _set(
            self,
            name=name,
            schema=built,
            dynamic=dynamic,
            writable=writable,
            history=history,
            access=access,
            value=value,
            description=description,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_bool(self.dynamic, path="dynamic")
        _check_bool(self.writable, path="writable")
        _check_int(self.history, path="history", low=1, high=MAX_HISTORY)
        _set(self, access=_parse_enum(AccessType, self.access, path="access", what="access type"))
        _check_text(self.description, path="description")
        if self.dynamic:
            if self.value is not None:
                raise DescriptionError(
                    "a dynamic attribute gets its values at run time; "
                    "use default= for a starting value",
                    path="value",
                )
        else:
            if self.writable:
                raise DescriptionError(
                    "a static attribute cannot be writable; set dynamic=True", path="writable"
                )
            if self.schema.default is not None:
                raise DescriptionError(
                    "a static attribute has a value, not a default; use value=", path="default"
                )
            if self.value is None:
                raise DescriptionError(
                    "a static attribute needs its value (or set dynamic=True)", path="value"
                )
            _set(self, value=_checked(self.schema, self.value, path="value"))

    def validate(self, value: Any) -> Any:
        """Check a value for this attribute; see :meth:`Schema.validate`."""
        return self.schema.validate(value, field=f"attribute {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: ``name``, the schema's keys, then the attribute's own."""
        out: dict[str, Any] = {"name": self.name, **self.schema.to_dict()}
        out.update(dynamic=self.dynamic, writable=self.writable, history=self.history)
        out["access"] = self.access.value
        if self.value is not None:
            out["value"] = _json_value(self.value, field="value")
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Attribute:
        """Inverse of :meth:`to_dict`; :class:`DescriptionError` names the bad field."""
        own = ("name", "dynamic", "writable", "history", "access", "value", "description")
        raw = _fields(data, allowed=own + _SCHEMA_KEYS, required=("name", "type"))
        schema = _flat_schema(raw)
        assert schema is not None
        _, rest = _split_schema(raw)
        return cls(rest.pop("name"), schema, **rest)


@dataclass(frozen=True, init=False)
class Topic:
    """Events a thing emits and others subscribe to, e.g. ``Topic("VeryDryAlarm")``.

    With a payload type, each event carries a value:
    ``Topic("Leak", "number", unit="l/min")``.
    """

    name: str
    """Name, unique among the thing's topics: 1-64 letters, digits, ``_``, ``-``."""
    payload: Schema | None
    """Shape of each event's payload; ``None`` for events that carry none."""
    history: int
    """How many past events to keep (1..:data:`MAX_HISTORY`)."""
    access: AccessType
    """Who may read (subscribe to) the events; ``"owner"`` etc. accepted."""
    description: str
    """Free text for people."""

    def __init__(
        self,
        name: str,
        payload: Schema | ValueType | str | None = None,
        *,
        unit: str | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Iterable[str] | None = None,
        max_length: int | None = None,
        properties: Mapping[str, Schema | ValueType | str] | None = None,
        items: Schema | ValueType | str | None = None,
        history: int = DEFAULT_HISTORY,
        access: AccessType | str = AccessType.ALL,
        description: str = "",
    ) -> None:
        built = _schema_arg(
            payload,
            {
                "unit": unit,
                "minimum": minimum,
                "maximum": maximum,
                "choices": choices,
                "max_length": max_length,
                "properties": properties,
                "items": items,
            },
            optional=True,
        )
        _set(
            self,
            name=name,
            payload=built,
            history=history,
            access=access,
            description=description,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_int(self.history, path="history", low=1, high=MAX_HISTORY)
        _set(self, access=_parse_enum(AccessType, self.access, path="access", what="access type"))
        _check_text(self.description, path="description")

    def validate(self, payload: Any) -> Any:
        """Check an event's payload (``None`` when the topic has no payload)."""
        field = f"topic {self.name!r}"
        if self.payload is None:
            if payload is not None:
                raise ValueTypeError(field, payload, "no payload")
            return None
        return self.payload.validate(payload, field=field)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: ``name``, the payload schema's keys (if any), then the topic's own."""
        out: dict[str, Any] = {"name": self.name}
        if self.payload is not None:
            out.update(self.payload.to_dict())
        out.update(history=self.history, access=self.access.value)
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Topic:
        """Inverse of :meth:`to_dict`; :class:`DescriptionError` names the bad field."""
        own = ("name", "history", "access", "description")
        raw = _fields(data, allowed=own + _SCHEMA_KEYS, required=("name",))
        payload = _flat_schema(raw)
        _, rest = _split_schema(raw)
        return cls(rest.pop("name"), payload, **rest)


@dataclass(frozen=True, init=False)
class Param:
    """A parameter of an action: ``Param("psi", "number", minimum=0, maximum=100, default=30)``.

    A param with a default is optional; one without is required unless
    ``required=False`` is given (then it is simply left out when not passed).
    """

    name: str
    """Name, unique within the action: 1-64 letters, digits, ``_``, ``-``."""
    schema: Schema
    """Shape of the argument, including its ``default``, ``minimum``, ``maximum``."""
    required: bool
    """Whether a request must give it. Defaults to "no default given"; a
    required param cannot have a default."""
    description: str
    """Free text for people."""

    def __init__(
        self,
        name: str,
        schema: Schema | ValueType | str,
        *,
        unit: str | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: Iterable[str] | None = None,
        max_length: int | None = None,
        properties: Mapping[str, Schema | ValueType | str] | None = None,
        items: Schema | ValueType | str | None = None,
        default: Any = None,
        required: bool | None = None,
        description: str = "",
    ) -> None:
        built = _schema_arg(
            schema,
            {
                "unit": unit,
                "minimum": minimum,
                "maximum": maximum,
                "choices": choices,
                "max_length": max_length,
                "properties": properties,
                "items": items,
                "default": default,
            },
        )
        assert built is not None
        if required is None:
            required = built.default is None
        _set(self, name=name, schema=built, required=required, description=description)
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_bool(self.required, path="required")
        _check_text(self.description, path="description")
        if self.required and self.schema.default is not None:
            raise DescriptionError(
                "a required param cannot have a default; drop one of them", path="required"
            )

    @property
    def default(self) -> Any:
        """The schema's default (``None`` if there is none)."""
        return self.schema.default

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: ``name``, the schema's keys, ``required``, ``description``."""
        out: dict[str, Any] = {"name": self.name, **self.schema.to_dict()}
        out["required"] = self.required
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Param:
        """Inverse of :meth:`to_dict`; :class:`DescriptionError` names the bad field."""
        own = ("name", "required", "description")
        raw = _fields(data, allowed=own + _SCHEMA_KEYS, required=("name", "type"))
        schema = _flat_schema(raw)
        assert schema is not None
        _, rest = _split_schema(raw)
        return cls(rest.pop("name"), schema, **rest)


@dataclass(frozen=True, init=False)
class Action:
    """Something a thing can be asked to do: ``Action("OpenValve", params=[Param(...)])``.

    Requests run asynchronously (requested -> accepted -> running -> done,
    failed, rejected or timed_out); :meth:`validate_args` checks a request's
    arguments before the handler sees them.
    """

    name: str
    """Name, unique among the thing's actions: 1-64 letters, digits, ``_``, ``-``."""
    params: tuple[Param, ...]
    """The parameters, in order (a list is accepted); names unique."""
    output: Schema | None
    """Shape of the result; ``None`` when the action returns nothing."""
    access: AccessType
    """Who may request it; ``"owner"`` etc. accepted."""
    timeout_s: float
    """Seconds from request to result before the request is ``timed_out``."""
    description: str
    """Free text for people."""

    def __init__(
        self,
        name: str,
        *,
        params: Iterable[Param] = (),
        output: Schema | ValueType | str | None = None,
        access: AccessType | str = AccessType.ALL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        description: str = "",
    ) -> None:
        _set(
            self,
            name=name,
            params=params,
            output=output,
            access=access,
            timeout_s=timeout_s,
            description=description,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        _check_name(self.name)
        if isinstance(self.params, str | bytes | Mapping) or not isinstance(self.params, Iterable):
            raise DescriptionError(
                f"expected a list of Param, got {_type_name(self.params)}", path="params"
            )
        params = tuple(self.params)
        if len(params) > MAX_PARAMS:
            raise DescriptionError(f"too many params (limit {MAX_PARAMS})", path="params")
        _unique(params, Param, "params", "param")
        _set(self, params=params)
        if self.output is not None:
            _set(self, output=_as_schema(self.output, path="output"))
        _set(self, access=_parse_enum(AccessType, self.access, path="access", what="access type"))
        timeout = _check_finite(self.timeout_s, path="timeout_s")
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise DescriptionError(
                f"expected seconds above 0 and at most {_num(MAX_TIMEOUT_S)}, got {_show(timeout)}",
                path="timeout_s",
            )
        _set(self, timeout_s=float(timeout))
        _check_text(self.description, path="description")

    def param(self, name: str) -> Param:
        """The param called ``name``, or :class:`UnknownFieldError`."""
        for p in self.params:
            if p.name == name:
                return p
        raise UnknownFieldError(
            f"action {self.name!r}", "param", name, (p.name for p in self.params)
        )

    def validate_args(self, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check a request's arguments and return them complete.

        Fills in defaults, normalises each value (see :meth:`Schema.validate`),
        and refuses unknown params (:class:`UnknownFieldError`), missing
        required ones (:class:`MissingParamError`) and bad values
        (:class:`ValueTypeError`). Optional params without a default that are
        not given stay out of the result.
        """
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ValueTypeError(f"action {self.name!r}", args, "an object of named arguments")
        known = {p.name: p for p in self.params}
        for key in args:
            if key not in known:
                raise UnknownFieldError(f"action {self.name!r}", "param", str(key), known)
        out: dict[str, Any] = {}
        for p in self.params:
            field = f"action {self.name!r} param {p.name!r}"
            if p.name in args:
                out[p.name] = p.schema.validate(args[p.name], field=field)
            elif p.schema.default is not None:
                out[p.name] = _json_value(p.schema.default, field=field)
            elif p.required:
                raise MissingParamError(self.name, p.name, p.schema.expected)
        return out

    def validate_output(self, value: Any) -> Any:
        """Check a result (``None`` when the action has no output)."""
        field = f"action {self.name!r} output"
        if self.output is None:
            if value is not None:
                raise ValueTypeError(field, value, "no output")
            return None
        return self.output.validate(value, field=field)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; ``output`` is a nested schema dict."""
        out: dict[str, Any] = {"name": self.name, "params": [p.to_dict() for p in self.params]}
        if self.output is not None:
            out["output"] = self.output.to_dict()
        out.update(access=self.access.value, timeout_s=self.timeout_s)
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Action:
        """Inverse of :meth:`to_dict`; :class:`DescriptionError` names the bad field."""
        raw = dict(
            _fields(
                data,
                allowed=("name", "params", "output", "access", "timeout_s", "description"),
                required=("name",),
            )
        )
        if "params" in raw:
            params = []
            for i, item in enumerate(_list(raw["params"], path="params")):
                try:
                    params.append(Param.from_dict(item))
                except DescriptionError as e:
                    raise e.within(f"params[{i}]") from None
            raw["params"] = params
        if "output" in raw:
            try:
                raw["output"] = Schema.from_dict(raw["output"])
            except DescriptionError as e:
                raise e.within("output") from None
        return cls(raw.pop("name"), **raw)


def _unique(items: tuple[Any, ...], cls: type[Any], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise DescriptionError(
                f"expected {cls.__name__}, got {_type_name(item)}", path=f"{path}[{i}]"
            )
        name: str = item.name
        if name in seen:
            raise DescriptionError(f"duplicate {what} name {name!r}", path=f"{path}[{i}].name")
        seen.add(name)


# --- the description ----------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class ThingDescription:
    """What a thing is and what it offers: attributes, topics and actions.

    Lists are accepted and kept as tuples; names are unique within each kind.
    """

    id: str
    """The thing's id (serial number): 5-64 letters, digits and ``-_.:``."""
    title: str
    """Name for people (1-128 characters); defaults to the id."""
    description: str
    """Free text for people."""
    attributes: tuple[Attribute, ...]
    """Static and dynamic attributes, in order."""
    topics: tuple[Topic, ...]
    """Event topics, in order."""
    actions: tuple[Action, ...]
    """Actions, in order."""

    def __init__(
        self,
        id: str,
        *,
        title: str | None = None,
        description: str = "",
        attributes: Iterable[Attribute] = (),
        topics: Iterable[Topic] = (),
        actions: Iterable[Action] = (),
    ) -> None:
        _set(
            self,
            id=id,
            title=id if title is None else title,
            description=description,
            attributes=attributes,
            topics=topics,
            actions=actions,
        )
        self.__post_init__()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _THING_ID.fullmatch(self.id):
            raise DescriptionError(
                f"invalid thing id {_show(self.id)}: use 5-64 letters, digits and '-_.:'",
                path="id",
            )
        title = _check_text(self.title, path="title", limit=128)
        if not title.strip():
            raise DescriptionError("must not be empty", path="title")
        _check_text(self.description, path="description")
        for path, cls, what in (
            ("attributes", Attribute, "attribute"),
            ("topics", Topic, "topic"),
            ("actions", Action, "action"),
        ):
            raw = getattr(self, path)
            if isinstance(raw, str | bytes | Mapping) or not isinstance(raw, Iterable):
                raise DescriptionError(f"expected a list of {cls.__name__}", path=path)
            items = tuple(raw)
            if len(items) > MAX_ITEMS:
                raise DescriptionError(f"too many {path} (limit {MAX_ITEMS})", path=path)
            _unique(items, cls, path, what)
            _set(self, **{path: items})

    def _find(self, items: tuple[_T, ...], kind: str, name: str) -> _T:
        for item in items:
            if item.name == name:
                return item
        raise UnknownFieldError(f"thing {self.id!r}", kind, name, (i.name for i in items))

    def attribute(self, name: str) -> Attribute:
        """The attribute called ``name``, or :class:`UnknownFieldError`."""
        return self._find(self.attributes, "attribute", name)

    def topic(self, name: str) -> Topic:
        """The topic called ``name``, or :class:`UnknownFieldError`."""
        return self._find(self.topics, "topic", name)

    def action(self, name: str) -> Action:
        """The action called ``name``, or :class:`UnknownFieldError`."""
        return self._find(self.actions, "action", name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict with ``"format": 1``; see :meth:`from_dict`."""
        return {
            "format": FORMAT,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "attributes": [a.to_dict() for a in self.attributes],
            "topics": [t.to_dict() for t in self.topics],
            "actions": [a.to_dict() for a in self.actions],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ThingDescription:
        """Rebuild a description from :meth:`to_dict` output.

        Unknown keys and wrong types are refused with a :class:`DescriptionError`
        whose ``path`` names the bad field (``actions[0].params[1].minimum``).
        """
        raw = _fields(
            data,
            allowed=("format", "id", "title", "description", "attributes", "topics", "actions"),
            required=("format", "id"),
        )
        if raw["format"] != FORMAT or isinstance(raw["format"], bool):
            raise DescriptionError(
                f"unsupported format {_show(raw['format'])}; this release reads format {FORMAT}",
                path="format",
            )
        parts: dict[str, list[Any]] = {}
        for key, part_cls in (("attributes", Attribute), ("topics", Topic), ("actions", Action)):
            parts[key] = []
            for i, item in enumerate(_list(raw.get(key, []), path=key)):
                try:
                    parts[key].append(part_cls.from_dict(item))
                except DescriptionError as e:
                    raise e.within(f"{key}[{i}]") from None
        return cls(
            raw["id"],
            title=raw.get("title"),
            description=raw.get("description", ""),
            **parts,
        )
