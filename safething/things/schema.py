"""Schemas of values: what a reading, an event payload or an action argument may be.

:class:`Schema` is a frozen value object that checks itself when built and
checks values with :meth:`Schema.validate`; :class:`ValueType` names the
types. The options every place that declares a value shares (an attribute,
a topic's payload, an action's parameter) are typed once, as
:class:`SchemaOptions`. Nothing here touches a store or the network.

Two kinds of error, on purpose: :class:`DescriptionError` (a *description*
is wrong; ``path`` names the field) and :class:`ValueTypeError` (a *value*
does not fit its schema at run time; ``field``, ``value``, ``expected``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypedDict, TypeVar, Unpack

from safething.errors import SafeThingError

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DescriptionError",
    "MissingParamError",
    "Schema",
    "SchemaOptions",
    "ValueOptions",
    "ValueType",
    "ValueTypeError",
]

DEFAULT_MAX_LENGTH: Final = 1024
"""Longest string (characters) or array (items) a schema accepts unless told otherwise."""
MAX_DEPTH: Final = 8
"""Deepest nesting of object/array schemas and of JSON values inside them."""
MAX_TEXT: Final = 1024
"""Longest description text; titles and units are shorter (see the checks)."""
MAX_STRING_LIMIT: Final = 1024 * 1024
"""Largest ``max_length`` a schema may set (the size of a MutableData)."""

_E = TypeVar("_E", bound=StrEnum)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


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
        **options: Unpack[ValueOptions],
    ) -> None:
        unknown = set(options) - set(_SCHEMA_KEYS)
        if unknown:
            raise TypeError(f"unexpected schema keyword(s): {', '.join(sorted(unknown))}")
        _set(self, type=type, **{k: options.get(k) for k in _SCHEMA_KEYS if k != "type"})
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


class SchemaOptions(TypedDict, total=False):
    """The schema keywords an attribute, a topic or a param takes beside its type
    (see :class:`Schema` for what each means)."""

    unit: str | None
    minimum: float | None
    maximum: float | None
    choices: Iterable[str] | None
    max_length: int | None
    properties: Mapping[str, Schema | ValueType | str] | None
    items: Schema | ValueType | str | None


class ValueOptions(SchemaOptions, total=False):
    """:class:`SchemaOptions` plus ``default`` (attributes and params, not topics)."""

    default: Any
