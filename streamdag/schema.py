"""Value schemas: the ordered, typed fields a stream carries besides time and key."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from streamdag.errors import SchemaMismatchError, did_you_mean

__all__ = ["FIELD_TYPES", "Schema"]

#: The value types a field may have, mapped to the numpy dtype of its column.
FIELD_TYPES: Mapping[str, np.dtype[np.generic]] = {
    "float64": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class Schema:
    """An ordered set of ``(field name, type name)`` pairs; hashable and canonical.

    >>> Schema.of(price="float64", size="float64")
    Schema(price: float64, size: float64)
    """

    fields: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name, type_name in self.fields:
            if not isinstance(name, str) or not name.isidentifier():
                raise SchemaMismatchError(
                    f"field name {name!r} is not a valid identifier; use letters, digits and _"
                )
            if name in seen:
                raise SchemaMismatchError(f"field {name!r} appears twice in a schema")
            if not isinstance(type_name, str) or type_name not in FIELD_TYPES:
                hint = did_you_mean(type_name, FIELD_TYPES) if isinstance(type_name, str) else ""
                raise SchemaMismatchError(
                    f"field {name!r} has type {type_name!r}{hint}, not one of "
                    f"{', '.join(sorted(FIELD_TYPES))}"
                )
            seen.add(name)

    @classmethod
    def of(cls, **fields: str) -> Schema:
        """Build a schema from keyword arguments, in the order given."""
        return cls(tuple(fields.items()))

    @classmethod
    def from_mapping(cls, fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> Schema:
        """Build a schema from a mapping or pairs, keeping their order."""
        items = fields.items() if isinstance(fields, Mapping) else fields
        # A type that is not text is kept as it is, so the refusal shows what was given.
        return cls(tuple((str(k), str(v) if isinstance(v, str) else v) for k, v in items))

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(name for name, _ in self.fields)

    def dtype(self, name: str) -> np.dtype[np.generic]:
        """The numpy dtype of field ``name``."""
        return FIELD_TYPES[self.type_of(name)]

    def type_of(self, name: str) -> str:
        """The type name of field ``name``; raises SchemaMismatchError when absent."""
        for field, type_name in self.fields:
            if field == name:
                return type_name
        raise SchemaMismatchError(
            f"field {name!r} is not in the schema; available fields: {list(self.names)}"
        )

    def __contains__(self, name: object) -> bool:
        return any(field == name for field, _ in self.fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def to_dict(self) -> dict[str, str]:
        """The schema as an ordered plain dict (for specs and the wire)."""
        return dict(self.fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}: {type_name}" for name, type_name in self.fields)
        return f"Schema({inner})"
