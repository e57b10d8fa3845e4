"""The columnar micro-batch that travels between nodes: event time, key, value columns."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streamdag.errors import SchemaMismatchError
from streamdag.schema import Schema

__all__ = ["Batch", "encode_keys"]

KeyArray = npt.NDArray[np.bytes_]
TimeArray = npt.NDArray[np.int64]


def encode_keys(keys: Iterable[str | bytes] | npt.NDArray[Any]) -> KeyArray:
    """Turn keys (str or bytes) into a fixed-width bytes array, the batch's key column.

    Strings are UTF-8 encoded.

    >>> encode_keys(["AAPL", "MSFT"])
    array([b'AAPL', b'MSFT'], dtype='|S4')
    >>> encode_keys(["Zürich"]).tolist() == ["Zürich".encode("utf-8")]
    True
    """
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "S":
        return keys
    items = keys if isinstance(keys, np.ndarray | list | tuple) else list(keys)
    if len(items) == 0:
        return np.empty(0, dtype="S1")
    try:
        # numpy encodes ASCII text in C, far faster than a Python loop over the keys.
        encoded: KeyArray = np.array(items, dtype=np.bytes_)
    except (UnicodeEncodeError, ValueError):  # non-ASCII text; ragged byte buffers
        return _encode_one_by_one(items)
    # numpy reads a bytearray key as a row of numbers, not as one bytes value.
    return encoded if encoded.ndim == 1 else _encode_one_by_one(items)


def _encode_one_by_one(keys: Iterable[Any]) -> KeyArray:
    return np.array([k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys],
                    dtype=np.bytes_)


@dataclass(frozen=True)
class Batch:
    """A columnar micro-batch; every column has one entry per record.

    ``partition`` and ``offset`` carry per-record lineage from a Kafka source where exactly-once
    publishing needs it; they are ``None`` elsewhere.

    >>> b = Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[10.0, 11.0])
    >>> len(b), b.schema
    (2, Schema(price: float64))
    >>> b.slice(1, 2).to_records()
    [{'ts': 2, 'key': 'b', 'price': 11.0}]
    """

    ts: TimeArray
    key: KeyArray
    columns: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)
    partition: npt.NDArray[np.int32] | None = None
    offset: npt.NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        n = len(self.ts)
        if self.ts.dtype != np.int64:
            raise SchemaMismatchError(f"batch ts must be int64 nanoseconds, got {self.ts.dtype}")
        if self.key.dtype.kind != "S":
            raise SchemaMismatchError(
                f"batch keys must be a bytes array (dtype S), got {self.key.dtype}; "
                "use encode_keys() to convert strings"
            )
        for name, column in [("key", self.key), *self.columns.items()]:
            if len(column) != n:
                raise SchemaMismatchError(
                    f"column {name!r} has {len(column)} entries but the batch has {n} records"
                )

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_columns(
        cls,
        ts: Sequence[int] | npt.NDArray[Any],
        key: Iterable[str | bytes] | npt.NDArray[Any],
        **columns: Sequence[Any] | npt.NDArray[Any],
    ) -> Batch:
        """Build a batch from Python sequences or arrays (floats become float64)."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name, values in columns.items():
            array = np.asarray(values)
            if array.dtype.kind == "f":
                array = array.astype(np.float64, copy=False)
            elif array.dtype.kind in "iu":
                array = array.astype(np.int64, copy=False)
            arrays[name] = array
        return cls(np.asarray(ts, dtype=np.int64), encode_keys(key), arrays)

    @classmethod
    def empty(cls, schema: Schema) -> Batch:
        """A batch with no records and the columns of ``schema``."""
        columns = {name: np.empty(0, dtype=schema.dtype(name)) for name in schema.names}
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype="S1"), columns)

    @classmethod
    def concat(cls, batches: Sequence[Batch]) -> Batch:
        """Join batches of one schema end to end (lineage kept only if all carry it)."""
        if not batches:
            raise ValueError("Batch.concat needs at least one batch")
        if len(batches) == 1:
            return batches[0]
        names = list(batches[0].columns)
        columns = {n: np.concatenate([b.columns[n] for b in batches]) for n in names}
        with_lineage = all(b.partition is not None and b.offset is not None for b in batches)
        return cls(
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.key for b in batches]),
            columns,
            np.concatenate([b.partition for b in batches if b.partition is not None])
            if with_lineage
            else None,
            np.concatenate([b.offset for b in batches if b.offset is not None])
            if with_lineage
            else None,
        )

    # -- shape ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ts)

    @property
    def schema(self) -> Schema:
        """The value schema implied by the column dtypes."""
        pairs = []
        for name, column in self.columns.items():
            kind = column.dtype.kind
            type_name = "float64" if kind == "f" else "int64" if kind in "iu" else "bool"
            pairs.append((name, type_name))
        return Schema(tuple(pairs))

    @property
    def nbytes(self) -> int:
        """Bytes held by the batch's arrays."""
        total = self.ts.nbytes + self.key.nbytes + sum(c.nbytes for c in self.columns.values())
        if self.partition is not None:
            total += self.partition.nbytes
        if self.offset is not None:
            total += self.offset.nbytes
        return int(total)

    # -- selection -----------------------------------------------------------------------
    def slice(self, start: int, stop: int) -> Batch:
        """Records ``start:stop``, sharing memory with this batch."""
        return Batch(
            self.ts[start:stop],
            self.key[start:stop],
            {n: c[start:stop] for n, c in self.columns.items()},
            None if self.partition is None else self.partition[start:stop],
            None if self.offset is None else self.offset[start:stop],
        )

    def take(self, index: npt.NDArray[Any]) -> Batch:
        """Records at ``index`` (an integer index array or a boolean mask)."""
        return Batch(
            self.ts[index],
            self.key[index],
            {n: c[index] for n, c in self.columns.items()},
            None if self.partition is None else self.partition[index],
            None if self.offset is None else self.offset[index],
        )

    def with_columns(self, columns: Mapping[str, npt.NDArray[Any]]) -> Batch:
        """The same records and lineage with ``columns`` replacing the value columns."""
        return Batch(self.ts, self.key, dict(columns), self.partition, self.offset)

    def sorted_by_time(self) -> Batch:
        """The records in event-time order; ties keep their arrival order."""
        if len(self) < 2 or bool(np.all(self.ts[1:] >= self.ts[:-1])):
            return self
        return self.take(np.argsort(self.ts, kind="stable"))

    def read_only(self) -> Batch:
        """The same records over read-only views of the arrays, as a Ray actor receives them
        (numba loads another kernel variant for a writable array than for a read-only one).

        >>> b = Batch.from_columns(ts=[1], key=["a"], price=[2.0]).read_only()
        >>> b.ts.flags.writeable, b.key.flags.writeable, b.columns["price"].flags.writeable
        (False, False, False)
        """
        def view(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
            if not array.flags.writeable:
                return array
            frozen = array.view()
            frozen.flags.writeable = False
            return frozen

        return Batch(view(self.ts), view(self.key),
                     {name: view(column) for name, column in self.columns.items()},
                     None if self.partition is None else view(self.partition),
                     None if self.offset is None else view(self.offset))

    def to_records(self) -> list[dict[str, Any]]:
        """The records as dicts (for tests and display, never on the hot path)."""
        keys = [k.decode("utf-8") for k in self.key.tolist()]
        columns = {n: c.tolist() for n, c in self.columns.items()}
        return [
            {"ts": int(t), "key": keys[i], **{n: v[i] for n, v in columns.items()}}
            for i, t in enumerate(self.ts.tolist())
        ]
