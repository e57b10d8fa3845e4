"""Operator parameter declarations and their validation into canonical values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamdag.errors import ParamError, StreamdagError
from streamdag.schema import Schema

__all__ = ["REQUIRED", "Param", "ParamKind", "parse_duration", "validate_params"]

ParamKind = Literal["int", "float", "str", "bool", "str_list", "duration", "schema", "str_map"]


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
    ``20.0``; ``-0.0`` becomes ``0.0``; NaN and infinities are refused.

    >>> Param("window", "int", minimum=1).coerce("rolling_mean", 20.0)
    20
    """

    name: str
    kind: ParamKind
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        """Whether the user must give a value."""
        return self.default is REQUIRED

    def describe(self) -> str:
        """What this parameter accepts, in words, for error messages."""
        text = {
            "str_list": "a list of strings",
            "duration": "a duration (int nanoseconds, or a string like '500ms', '5s', '1m')",
            "schema": "a mapping of field names to types (float64, int64, bool)",
            "str_map": "a mapping of names to strings",
        }.get(self.kind, f"a {self.kind}")
        if self.choices is not None:
            text += f" in {list(self.choices)}"
        if self.minimum is not None and self.maximum is not None:
            text += f" between {self.minimum} and {self.maximum}"
        elif self.minimum is not None:
            text += f" >= {self.minimum}"
        elif self.maximum is not None:
            text += f" <= {self.maximum}"
        return text

    def coerce(self, node: str, value: Any) -> Any:
        """The canonical form of ``value``, or a ParamError naming node, param and value."""
        canonical = self._coerce_type(value)
        if canonical is None:
            raise self._error(node, value)
        if self.choices is not None and canonical not in self.choices:
            raise self._error(node, value)
        if isinstance(canonical, int | float) and not isinstance(canonical, bool):
            if self.minimum is not None and canonical < self.minimum:
                raise self._error(node, value)
            if self.maximum is not None and canonical > self.maximum:
                raise self._error(node, value)
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

    def _error(self, node: str, value: Any) -> ParamError:
        return ParamError(
            f"node {node!r}: param {self.name!r} got {value!r} "
            f"({type(value).__name__}); expected {self.describe()}"
        )


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
            f"node {node!r}: operator {operator!r} has no param {unknown[0]!r}; "
            f"its params are {sorted(by_name) or 'none'}"
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
             "h": 3_600_000_000_000, "d": 86_400_000_000_000}


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
