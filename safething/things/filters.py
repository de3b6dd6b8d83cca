"""Subscription filters: which new values of an attribute or topic to deliver.

A :class:`Filter` is a frozen value (kind plus operands) written as text
(``"gt:30"``, ``"between:10:20"``, ``"deadband:0.5"``, ``"changed"``) or as a
dict. Most kinds look only at the new value; ``changed`` and ``deadband``
compare it with earlier ones, kept in a :class:`FilterState`::

    f = Filter.parse("deadband:0.5")
    state = f.new_state()
    [f.matches(v, state) for v in (20.0, 20.3, 20.6, 20.7)]  # [True, False, True, False]

Semantics, for a value ``v``:

========== ================================================================
any        always
changed    the first value, then whenever ``v`` differs from the last value
           *seen* (delivered or not)
eq / ne    ``v`` equals / does not equal ``value`` (number, string or
           boolean; ``1 == 1.0`` but ``True`` never equals ``1``)
lt le gt ge  ``v < value``, ``<=``, ``>``, ``>=``
between    ``low <= v <= high`` (both ends included)
deadband   the first value, then whenever ``|v - last notified| > delta``:
           the reference moves only when a value is delivered, so a slow
           drift is reported once it has drifted by more than ``delta``
========== ================================================================

Numeric kinds (lt, le, gt, ge, between, deadband) never fire for a value
that is not a finite number (a string, ``None``, a boolean, NaN): such a
value is skipped, not an error. Comparison kinds are level-triggered: they
fire for every value that satisfies them, not only when it starts to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safething.errors import SafeThingError
from safething.things.values import finite
from safething.things.words import Word

__all__ = ["Filter", "FilterError", "FilterKind", "FilterState"]

_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class FilterError(SafeThingError, ValueError):
    """A filter that cannot be built: unknown kind, bad or missing operands, bad text."""


class FilterKind(Word):
    """The kinds of filter; parsed case-insensitively."""

    ANY = "any"
    CHANGED = "changed"
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    BETWEEN = "between"
    DEADBAND = "deadband"


_COMPARISONS = (FilterKind.LT, FilterKind.LE, FilterKind.GT, FilterKind.GE)
_NUMERIC = (*_COMPARISONS, FilterKind.BETWEEN, FilterKind.DEADBAND)


def _equal(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (``True != 1`` here)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return bool(a == b)
    except Exception:  # exotic values with a failing __eq__: treat as different
        return False


def _number_text(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def _parse_number(text: str, *, what: str, source: str) -> float:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise FilterError(f"filter {source!r}: {what} must be a number, got {text!r}")
    number: float = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
    if finite(number) is None:
        raise FilterError(f"filter {source!r}: {what} must be a finite number")
    return number


def _parse_scalar(text: str) -> Any:
    """An ``eq``/``ne`` operand: a JSON number, ``true``/``false`` or ``"string"``;
    anything else is taken as a bare string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, str | bool) or finite(value) is not None:
        return value
    return text


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        parsed = _parse_scalar(value)
        if value and value == value.strip() and isinstance(parsed, str) and parsed == value:
            return value
        return json.dumps(value, ensure_ascii=False)
    return _number_text(value)


@dataclass
class FilterState:
    """What a stateful filter remembers between values (``changed``, ``deadband``).

    One per subscription; :meth:`Filter.matches` updates it. It is plain
    data so a subscription can store it and resume after a reboot.
    """

    seen: bool = False
    """Whether any value has been offered yet."""
    last_seen: Any = None
    """The last value offered, delivered or not (``changed`` compares with it)."""
    notified: bool = False
    """Whether any value has been delivered yet."""
    last_notified: Any = None
    """The last value delivered (``deadband`` compares with it)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; ``last_*`` keys only once something was seen/delivered."""
        out: dict[str, Any] = {}
        if self.seen:
            out["last_seen"] = self.last_seen
        if self.notified:
            out["last_notified"] = self.last_notified
        return out

    @classmethod
    def from_dict(cls, data: Any) -> FilterState:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or not set(data) <= {"last_seen", "last_notified"}:
            raise FilterError(f"malformed filter state: {data!r}")
        return cls(
            seen="last_seen" in data,
            last_seen=data.get("last_seen"),
            notified="last_notified" in data,
            last_notified=data.get("last_notified"),
        )


@dataclass(frozen=True, init=False)
class Filter:
    """Which values of a subscribed attribute or topic are delivered.

    ``Filter("gt", 30)``, ``Filter("between", low=10, high=20)``,
    ``Filter("deadband", delta=0.5)``, ``Filter("changed")``, ``Filter()``
    (any), or from text with :meth:`parse`. Operands a kind does not use must
    be left out. See the module docstring for what each kind means.
    """

    kind: FilterKind
    """What to test; a plain string like ``"gt"`` is accepted."""
    value: Any
    """Operand of eq/ne (number, string or boolean) and lt/le/gt/ge (number)."""
    low: float | None
    """Lower bound of ``between`` (included)."""
    high: float | None
    """Upper bound of ``between`` (included); at least ``low``."""
    delta: float | None
    """Dead band of ``deadband``: how far (strictly more than) a value must move
    from the last delivered one to be delivered again. Above 0."""

    def __init__(
        self,
        kind: FilterKind | str = FilterKind.ANY,
        value: Any = None,
        *,
        low: float | None = None,
        high: float | None = None,
        delta: float | None = None,
    ) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "delta", delta)
        self.__post_init__()

    def __post_init__(self) -> None:
        try:
            kind = FilterKind(self.kind)
        except ValueError:
            kinds = ", ".join(k.value for k in FilterKind)
            raise FilterError(f"unknown filter kind {self.kind!r}; use one of: {kinds}") from None
        object.__setattr__(self, "kind", kind)
        uses = {
            "value": kind in (FilterKind.EQ, FilterKind.NE, *_COMPARISONS),
            "low": kind is FilterKind.BETWEEN,
            "high": kind is FilterKind.BETWEEN,
            "delta": kind is FilterKind.DEADBAND,
        }
        for name, used in uses.items():
            given = getattr(self, name) is not None
            if given and not used:
                raise FilterError(f"filter {kind.value!r} takes no {name}")
            if used and not given:
                raise FilterError(f"filter {kind.value!r} needs a {name}")
        scalar = isinstance(self.value, str | bool) or finite(self.value) is not None
        if kind in (FilterKind.EQ, FilterKind.NE) and not scalar:
            raise FilterError(
                f"filter {kind.value!r} compares with a number, string or boolean, "
                f"got {self.value!r}"
            )
        for name in ("value", "low", "high", "delta"):
            if uses[name] and kind in _NUMERIC and finite(getattr(self, name)) is None:
                raise FilterError(
                    f"filter {kind.value!r}: {name} must be a finite number, "
                    f"got {getattr(self, name)!r}"
                )
        if kind is FilterKind.BETWEEN and self.low > self.high:  # type: ignore[operator]
            raise FilterError(
                f"filter 'between': low ({self.low}) must not be above high ({self.high})"
            )
        if kind is FilterKind.DEADBAND and self.delta <= 0:  # type: ignore[operator]
            raise FilterError(f"filter 'deadband': delta must be above 0, got {self.delta}")

    # --- text and dict forms ------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | Filter) -> Filter:
        """``"any"``, ``"changed"``, ``"eq:open"``, ``"ne:0"``, ``"gt:30"``,
        ``"between:10:20"``, ``"deadband:0.5"``; a :class:`Filter` is returned as is.

        Kinds are case-insensitive. An eq/ne operand is a number, ``true`` or
        ``false`` when it reads as one, otherwise a string; quote it
        (``eq:"30"``) to force a string.
        """
        if isinstance(text, Filter):
            return text
        if not isinstance(text, str):
            raise FilterError(f"a filter is written as text like 'gt:30', got {text!r}")
        source = text
        name, sep, rest = text.strip().partition(":")
        try:
            kind = FilterKind(name)
        except ValueError:
            kinds = ", ".join(k.value for k in FilterKind)
            raise FilterError(
                f"filter {source!r}: unknown kind {name.strip()!r}; use one of: {kinds}"
            ) from None
        if kind in (FilterKind.ANY, FilterKind.CHANGED):
            if sep:
                raise FilterError(f"filter {source!r}: {kind.value!r} takes no operand")
            return cls(kind)
        if not rest.strip():
            example = {"between": "between:10:20", "deadband": "deadband:0.5"}
            raise FilterError(
                f"filter {source!r}: {kind.value!r} needs an operand, "
                f"e.g. {example.get(kind.value, kind.value + ':30')!r}"
            )
        if kind in (FilterKind.EQ, FilterKind.NE):
            return cls(kind, _parse_scalar(rest.strip()))
        if kind is FilterKind.BETWEEN:
            parts = rest.split(":")
            if len(parts) != 2:
                raise FilterError(f"filter {source!r}: write 'between:LOW:HIGH'")
            low = _parse_number(parts[0], what="low", source=source)
            high = _parse_number(parts[1], what="high", source=source)
            return cls(kind, low=low, high=high)
        if kind is FilterKind.DEADBAND:
            return cls(kind, delta=_parse_number(rest, what="delta", source=source))
        return cls(kind, _parse_number(rest, what="the operand", source=source))

    def __str__(self) -> str:
        """The text form; ``Filter.parse(str(f)) == f``."""
        kind = self.kind.value
        if self.kind in (FilterKind.ANY, FilterKind.CHANGED):
            return kind
        if self.kind is FilterKind.BETWEEN:
            assert self.low is not None and self.high is not None
            return f"{kind}:{_number_text(self.low)}:{_number_text(self.high)}"
        if self.kind is FilterKind.DEADBAND:
            assert self.delta is not None
            return f"{kind}:{_number_text(self.delta)}"
        return f"{kind}:{_scalar_text(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "between", "low": 10, "high": 20}``: the kind and its operands."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for name in ("value", "low", "high", "delta"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Filter:
        """Inverse of :meth:`to_dict`; :class:`FilterError` on anything else."""
        if not isinstance(data, Mapping) or "kind" not in data:
            raise FilterError(f"a filter dict needs a 'kind', got {data!r}")
        unknown = set(data) - {"kind", "value", "low", "high", "delta"}
        if unknown:
            raise FilterError(f"unknown filter keys: {', '.join(sorted(map(str, unknown)))}")
        return cls(
            data["kind"],
            data.get("value"),
            low=data.get("low"),
            high=data.get("high"),
            delta=data.get("delta"),
        )

    # --- evaluation -----------------------------------------------------------------

    def new_state(self) -> FilterState:
        """A fresh state for one subscription (nothing seen or delivered yet)."""
        return FilterState()

    def matches(self, value: Any, state: FilterState | None = None) -> bool:
        """Whether ``value`` is to be delivered; updates ``state`` if given.

        Without a state every value is treated as the first one (so
        ``changed`` and ``deadband`` fire). With one, the state records
        ``value`` as seen and, when this returns ``True``, as notified.
        Never raises for odd values: numeric kinds just do not fire.
        """
        fire = self._test(value, state or FilterState())
        if state is not None:
            state.seen = True
            state.last_seen = value
            if fire:
                state.notified = True
                state.last_notified = value
        return fire

    def _test(self, value: Any, state: FilterState) -> bool:
        kind = self.kind
        if kind is FilterKind.ANY:
            return True
        if kind is FilterKind.CHANGED:
            return not state.seen or not _equal(value, state.last_seen)
        if kind is FilterKind.EQ:
            return _equal(value, self.value)
        if kind is FilterKind.NE:
            return not _equal(value, self.value)
        number = finite(value)
        if number is None:
            return False
        if kind is FilterKind.DEADBAND:
            last = finite(state.last_notified) if state.notified else None
            assert self.delta is not None
            return last is None or abs(number - last) > self.delta
        if kind is FilterKind.BETWEEN:
            assert self.low is not None and self.high is not None
            return self.low <= number <= self.high
        operand: float = self.value
        if kind is FilterKind.LT:
            return number < operand
        if kind is FilterKind.LE:
            return number <= operand
        if kind is FilterKind.GT:
            return number > operand
        return number >= operand
