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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar, Unpack

from safething.errors import SafeThingError
from safething.things.schema import (
    _SCHEMA_KEYS,
    DEFAULT_MAX_LENGTH,
    DescriptionError,
    MissingParamError,
    Schema,
    SchemaOptions,
    ValueOptions,
    ValueType,
    ValueTypeError,
    _as_schema,
    _check_bool,
    _check_finite,
    _check_int,
    _check_name,
    _check_text,
    _checked,
    _fields,
    _flat_schema,
    _json_value,
    _list,
    _num,
    _parse_enum,
    _schema_arg,
    _set,
    _show,
    _split_schema,
    _type_name,
)
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

_T = TypeVar("_T", "Attribute", "Topic", "Action")
_THING_ID = re.compile(r"[A-Za-z0-9_.:-]{5,64}")


# --- errors -----------------------------------------------------------------------


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


# --- enums ----------------------------------------------------------------------------


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
        value: Any = None,
        dynamic: bool = False,
        writable: bool = False,
        history: int = DEFAULT_HISTORY,
        access: AccessType | str = AccessType.ALL,
        description: str = "",
        **options: Unpack[ValueOptions],
    ) -> None:
        built = _schema_arg(
            schema,
            dict(options),
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
        history: int = DEFAULT_HISTORY,
        access: AccessType | str = AccessType.ALL,
        description: str = "",
        **options: Unpack[SchemaOptions],
    ) -> None:
        if "default" in options:
            raise TypeError("a topic's payload has no default")
        built = _schema_arg(
            payload,
            dict(options),
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
        required: bool | None = None,
        description: str = "",
        **options: Unpack[ValueOptions],
    ) -> None:
        built = _schema_arg(
            schema,
            dict(options),
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
