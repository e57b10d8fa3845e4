"""Operator parameter declarations and their validation into canonical values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamdag.errors import ParamError, StreamdagError, did_you_mean
from streamdag.schema import Schema
from streamdag.topic_names import TOPIC_RULES, topic_name_problem

__all__ = [
    "DAY_NS",
    "MAX_EVENTS",
    "MAX_SPAN_NS",
    "REQUIRED",
    "OrderedMapParam",
    "Param",
    "ParamKind",
    "format_duration",
    "parse_duration",
    "validate_params",
]

ParamKind = Literal[
    "int", "float", "str", "bool", "str_list", "str_set", "duration", "schema", "str_map",
    "topic",
]

#: Nanoseconds in a day.
DAY_NS = 86_400_000_000_000
#: Most events a size param may ask to keep per key (a count window, a span in events).
MAX_EVENTS = 1_000_000
#: Longest span of event time a size param may ask for (31 days).
MAX_SPAN_NS = 31 * DAY_NS
_SIZE_KINDS = ("int", "duration")
_SHOWN = 100


class _Required:
    """Marker for a parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


#: Default of a parameter the user must give.
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One declared parameter of an operator: its type, range and default.

    Numbers are canonicalized so that equal values give equal node ids: an ``int`` param takes
    ``20`` or ``20.0`` and stores ``20``; a ``float`` param takes ``20`` or ``20.0`` and stores
    ``20.0``; ``-0.0`` becomes ``0.0``; NaN and infinities are refused. A ``topic`` param is a
    string that follows Kafka's topic name rules.

    A ``size`` param (a window, a span, an iteration count) scales a node's memory or CPU with
    its value, so it must be an int or a duration with a ``maximum``: a spec is data from the
    network, and one number must not be able to ask for terabytes.

    >>> Param("window", "int", minimum=1, maximum=MAX_EVENTS, size=True).coerce("sma", 20.0)
    20
    """

    name: str
    kind: ParamKind
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    size: bool = False

    def __post_init__(self) -> None:
        if self.size and (self.kind not in _SIZE_KINDS or self.maximum is None):
            raise ValueError(
                f"param {self.name!r} is declared size=True with kind {self.kind!r} and "
                f"maximum {self.maximum!r}; a size param is an int or a duration with a "
                "maximum, so that no spec can ask a node for unbounded memory. Declare "
                "maximum=... (e.g. streamdag.params.MAX_EVENTS or MAX_SPAN_NS)"
            )

    @property
    def required(self) -> bool:
        """Whether the user must give a value."""
        return self.default is REQUIRED

    def describe(self) -> str:
        """What this parameter accepts, in words, for error messages."""
        text = {
            "str_list": "a list of strings",
            "str_set": "a list of strings (order and repeats ignored)",
            "duration": "a duration (int nanoseconds, or a string like '500ms', '5s', '1m')",
            "schema": "a mapping of field names to types (float64, int64, bool)",
            "str_map": "a mapping of names to strings",
            "topic": f"a Kafka topic name ({TOPIC_RULES})",
        }.get(self.kind, f"a {self.kind}")
        if self.choices is not None:
            text += f" in {list(self.choices)}"
        low, high = self._bound_text(self.minimum), self._bound_text(self.maximum)
        if low is not None and high is not None:
            text += f" between {low} and {high}"
        elif low is not None:
            text += f" >= {low}"
        elif high is not None:
            text += f" <= {high}"
        return text

    def _bound_text(self, bound: float | None) -> str | None:
        if bound is None or self.kind != "duration":
            return None if bound is None else str(bound)
        return format_duration(int(bound))

    def coerce(self, node: str, value: Any) -> Any:
        """The canonical form of ``value``, or a ParamError naming node, param and value."""
        canonical = self._coerce_type(value)
        if canonical is None:
            raise self._error(node, value, self._why_unfit(value))
        if self.choices is not None and canonical not in self.choices:
            raise self._error(node, value)
        if isinstance(canonical, int | float) and not isinstance(canonical, bool):
            if self.minimum is not None and canonical < self.minimum:
                raise self._error(node, value)
            if self.maximum is not None and canonical > self.maximum:
                high = self._bound_text(self.maximum)
                raise self._error(node, value, f"over the maximum of {high}")
        return canonical

    def _coerce_type(self, value: Any) -> Any:
        if self.kind == "duration":
            try:
                return parse_duration(value)
            except ValueError:
                return None
        if self.kind == "schema":
            try:
                return value if isinstance(value, Schema) else Schema.from_mapping(value)
            except (StreamdagError, TypeError, ValueError, AttributeError):
                return None
        if self.kind == "str_map":
            if isinstance(value, Mapping) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                return tuple(sorted(value.items()))
            if isinstance(value, tuple) and all(
                isinstance(p, tuple) and len(p) == 2 for p in value
            ):
                return tuple(sorted(value))
            return None
        if self.kind == "bool":
            return value if isinstance(value, bool) else None
        if self.kind == "str":
            return value if isinstance(value, str) else None
        if self.kind == "topic":
            return value if topic_name_problem(value) is None else None
        if self.kind == "str_set":  # order and repeats carry no meaning: one canonical form
            is_list = isinstance(value, Sequence) and not isinstance(value, str | bytes)
            return (tuple(sorted(set(value))) if is_list and all(isinstance(v, str) for v in value)
                    else None)
        if self.kind == "str_list":
            is_list = isinstance(value, Sequence) and not isinstance(value, str | bytes)
            if is_list and all(isinstance(v, str) for v in value):
                return tuple(value)
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if self.kind == "int":
            if isinstance(value, float):
                return int(value) if value.is_integer() else None
            return int(value)
        as_float = float(value)
        return 0.0 if as_float == 0.0 else as_float

    def _why_unfit(self, value: Any) -> str | None:
        """What is wrong with a value of the right shape but not accepted, when it can be told."""
        if self.kind == "duration":
            negative = isinstance(value, int | float) and not isinstance(value, bool) and value < 0
            if negative or (isinstance(value, str) and value.strip().startswith("-")):
                return "a negative duration: it must be positive"
        if self.kind == "schema" and not isinstance(value, Schema):
            try:
                Schema.from_mapping(value)
            except StreamdagError as exc:
                return str(exc)
            except (TypeError, ValueError, AttributeError):
                return None
        if self.kind == "topic" and isinstance(value, str):
            return topic_name_problem(value)
        return None

    def _error(self, node: str, value: Any, reason: str | None = None) -> ParamError:
        shown = repr(value)
        if isinstance(value, str) and len(shown) > _SHOWN:
            shown = f"{shown[:_SHOWN]}...' ({len(value)} characters)"
        because = f", {reason}" if reason else ""
        return ParamError(
            f"node {node!r}: param {self.name!r} got {shown} "
            f"({type(value).__name__}){because}; expected {self.describe()}"
        )


@dataclass(frozen=True)
class OrderedMapParam(Param):
    """A ``str_map`` param whose order means something (e.g. output columns): kept as given.

    The value is stored as ``(name, text)`` pairs in the order given, so the order is part of
    the node's id; a plain ``str_map`` is sorted instead.

    >>> OrderedMapParam("columns", "str_map", default=()).coerce("row", {"b": "x", "a": "y"})
    (('b', 'x'), ('a', 'y'))
    """

    def _coerce_type(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            items = tuple(value.items())
        elif isinstance(value, tuple | list) and all(
            isinstance(p, tuple | list) and len(p) == 2 for p in value
        ):
            items = tuple((p[0], p[1]) for p in value)
        else:
            return None
        names = [name for name, _ in items]
        if len(set(names)) != len(names):
            return None
        if all(isinstance(k, str) and isinstance(v, str) for k, v in items):
            return items
        return None


def validate_params(
    node: str, operator: str, declared: Sequence[Param], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Check ``given`` against ``declared``; return every param in canonical form.

    Unknown names, missing required params and bad values raise ParamError naming the node.
    """
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise ParamError(
            f"node {node!r}: operator {operator!r} has no param {unknown[0]!r}"
            f"{did_you_mean(unknown[0], by_name)}; its params are {sorted(by_name) or 'none'}"
        )
    result: dict[str, Any] = {}
    for param in declared:
        if param.name in given:
            result[param.name] = param.coerce(node, given[param.name])
        elif param.required:
            raise ParamError(
                f"node {node!r}: operator {operator!r} needs param {param.name!r} "
                f"({param.describe()}), which was not given"
            )
        else:
            result[param.name] = param.default
    return result


_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
             "h": 3_600_000_000_000, "d": DAY_NS}


def format_duration(nanos: int) -> str:
    """``nanos`` in the largest unit that divides it exactly, as ``parse_duration`` reads it.

    >>> format_duration(31 * DAY_NS), format_duration(1_500_000), format_duration(0)
    ('31d', '1500us', '0')
    """
    if nanos == 0:
        return "0"
    for unit, size in sorted(_UNITS_NS.items(), key=lambda item: -item[1]):
        if nanos % size == 0:
            return f"{nanos // size}{unit}"
    return f"{nanos}ns"


def parse_duration(value: Any) -> int:
    """Nanoseconds from an int (already ns) or a string such as ``'250ms'``, ``'5s'``, ``'1h'``.

    >>> parse_duration("5s"), parse_duration(1500), parse_duration("1.5ms")
    (5000000000, 1500, 1500000)
    """
    if isinstance(value, bool):
        raise ValueError(f"a duration cannot be a bool: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        for unit in sorted(_UNITS_NS, key=len, reverse=True):
            if text.endswith(unit):
                number = text[: -len(unit)].strip()
                try:
                    amount = float(number)
                except ValueError:
                    break
                nanos = amount * _UNITS_NS[unit]
                if amount < 0 or not math.isfinite(nanos) or not float(nanos).is_integer():
                    break
                return int(nanos)
    raise ValueError(
        f"cannot read {value!r} as a duration; give nanoseconds as an int or a string "
        "with a unit: ns, us, ms, s, m, h, d (e.g. '500ms')"
    )
