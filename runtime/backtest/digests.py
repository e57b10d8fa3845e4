"""Digests of outputs: sha256 over a canonical per-key order, and the first difference.

Two outputs with the same records have the same digest however their records were batched or
interleaved across keys: records are ordered by key, then event time, keeping the order a key's
records were produced in for equal times. Columns are compared by name, float64 bit for bit
(every NaN alike). Live output read back from a topic and a backtest's arrays digest alike,
since the sinks' JSON and msgpack floats round-trip exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from streamdag.batch import Batch

__all__ = ["canonical", "digest", "first_difference"]


def canonical(batch: Batch) -> Batch:
    """The batch in canonical order: by key, then event time, stable within ties."""
    order = np.lexsort((batch.ts, batch.key))
    return batch.take(order)


def digest(batch: Batch) -> str:
    """sha256 hex of the batch's records in canonical order.

    >>> a = Batch.from_columns(ts=[1, 1], key=["b", "a"], value=[2.0, 1.0])
    >>> b = Batch.from_columns(ts=[1, 1], key=["a", "b"], value=[1.0, 2.0])
    >>> digest(a) == digest(b), digest(a) == digest(b.slice(0, 1))
    (True, False)
    """
    ordered = canonical(batch)
    keys, index = np.unique(ordered.key, return_inverse=True)
    hasher = hashlib.sha256()
    hasher.update(json.dumps({"records": len(ordered),
                              "keys": [key.decode("utf-8", "replace") for key in keys.tolist()],
                              "columns": sorted(ordered.columns)}).encode())
    hasher.update(index.astype("<i8").tobytes())
    hasher.update(ordered.ts.astype("<i8").tobytes())
    for name in sorted(ordered.columns):
        hasher.update(_canonical_bytes(ordered.columns[name]))
    return hasher.hexdigest()


def first_difference(expected: Batch, actual: Batch) -> str | None:
    """None when both hold the same records; else the first differing record, in words.

    >>> a = Batch.from_columns(ts=[1, 2], key=["a", "a"], value=[1.0, 2.0])
    >>> print(first_difference(a, a.with_columns({"value": np.array([1.0, 2.5])})))
    record 1 (key 'a', ts 2): value is 2.5, expected 2.0
    """
    left, right = canonical(expected), canonical(actual)
    names = sorted(set(left.columns) | set(right.columns))
    for index in range(min(len(left), len(right))):
        where = f"record {index} (key {left.key[index].decode()!r}, ts {int(left.ts[index])})"
        if left.key[index] != right.key[index] or left.ts[index] != right.ts[index]:
            return (f"{where}: got key {right.key[index].decode()!r} at ts "
                    f"{int(right.ts[index])} instead")
        for name in names:
            a = _value(left.columns, name, index)
            b = _value(right.columns, name, index)
            if not _same(a, b):
                return f"{where}: {name} is {b!r}, expected {a!r}"
    if len(left) != len(right):
        return (f"{len(right)} records, expected {len(left)}; the first "
                f"{min(len(left), len(right))} agree")
    return None


def _canonical_bytes(column: npt.NDArray[Any]) -> bytes:
    if column.dtype.kind == "f":
        values = column.astype("<f8")
        values = np.where(np.isnan(values), np.nan, values)  # one NaN bit pattern
        return values.tobytes()
    if column.dtype.kind in "iu":
        return column.astype("<i8").tobytes()
    if column.dtype.kind == "b":
        return column.astype(np.uint8).tobytes()
    return json.dumps([str(value) for value in column.tolist()]).encode()


def _value(columns: Mapping[str, npt.NDArray[Any]], name: str, index: int) -> Any:
    column = columns.get(name)
    return None if column is None else column[index].item()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)
