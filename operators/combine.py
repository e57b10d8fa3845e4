"""Combine: fields of several streams computed on the same events, side by side in one stream.

The runtime hands the node one batch per input covering the same event-time range (the
alignment of multi-input nodes, as for a diamond). Rows pair on equal (ts, key) as in
``operators.crossover``: the k-th row of a (ts, key) in the first input pairs with the k-th in
every other. A row of the first input is emitted when every other input has its partner in
the same call, with the first input's ts, key and lineage; rows without partners are dropped,
so a stream that starts later (a full window, a filter) holds the combination back until it
has a value. Pairing is a pure function of the batches: no state, an empty snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.map_filter import StatelessLogic
from streamdag.batch import Batch
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic, require_fields
from streamdag.operator_registry import register
from streamdag.params import OrderedMapParam, Param
from streamdag.schema import FIELD_TYPES, Schema

__all__ = ["CombineDef", "CombineLogic", "parse_column_source"]

_NO_ROW = -1


@njit(cache=True)
def _pair_rows(base_ts: Any, base_keys: Any, other_ts: Any, other_keys: Any, pending: Any,
               chained: Any, partner: Any) -> None:
    # partner[i]: the row of `other` paired with base row i, or -1. pending[key]: the first
    # unpaired `other` row of the current timestamp with that key; chained[row]: the next one.
    # Both reset per timestamp, so pairing costs O(rows) however many keys share a timestamp.
    j, other_rows = 0, other_ts.shape[0]
    i, base_rows = 0, base_ts.shape[0]
    while i < base_rows:
        t = base_ts[i]
        while j < other_rows and other_ts[j] < t:
            j += 1
        end = j
        while end < other_rows and other_ts[end] == t:
            end += 1
        for k in range(end - 1, j - 1, -1):
            chained[k] = pending[other_keys[k]]
            pending[other_keys[k]] = k
        while i < base_rows and base_ts[i] == t:
            k = pending[base_keys[i]]
            partner[i] = k
            if k != _NO_ROW:
                pending[base_keys[i]] = chained[k]
            i += 1
        for k in range(j, end):
            pending[other_keys[k]] = _NO_ROW
        j = end


def parse_column_source(text: str) -> tuple[int, str]:
    """``"2.price"`` -> ``(2, "price")``: the input index and field a column is taken from."""
    index, _, field = text.partition(".")
    if not index.isdigit() or not field.isidentifier():
        raise ParamError(
            f"combine column source {text!r} is not '<input index>.<field>', e.g. '0.value'"
        )
    return int(index), field


class CombineLogic(StatelessLogic):
    """Runtime of ``combine``: pairs every input's rows with the first input's, per call."""

    def __init__(self, columns: Sequence[tuple[str, int, str]]) -> None:
        self.columns = tuple(columns)

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The first input's rows that have a partner in every input, with the named columns."""
        batches = [batch.sorted_by_time() for batch in inputs]
        base = batches[0]
        # Dense per-call key codes: pairing needs no state across calls.
        _, codes = np.unique(np.concatenate([batch.key for batch in batches]),
                             return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        bounds = np.cumsum([0, *(len(batch) for batch in batches)])
        keep = np.ones(len(base), dtype=np.bool_)
        partners: list[npt.NDArray[np.int64]] = [np.arange(len(base), dtype=np.int64)]
        pending = np.full(int(codes.max()) + 1 if len(codes) else 0, _NO_ROW, dtype=np.int64)
        for index, other in enumerate(batches[1:], start=1):
            partner = np.empty(len(base), dtype=np.int64)
            _pair_rows(base.ts, codes[: bounds[1]], other.ts,
                       codes[bounds[index] : bounds[index + 1]], pending,
                       np.empty(len(other), dtype=np.int64), partner)
            keep &= partner != _NO_ROW
            partners.append(partner)
        rows = [partner[keep] for partner in partners]
        output = base.take(keep)
        return output.with_columns({
            name: batches[index].columns[field][rows[index]]
            for name, index, field in self.columns
        })


@register
class CombineDef(OperatorDef):
    """Named fields of several streams over the same events, as one multi-field stream.

    ``columns`` maps each output field to ``"<input index>.<field>"``; ``sd.combine`` builds
    it from streams and columns. Rows pair on (ts, key); see the module's description.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> sma = ticks.rolling_mean("price", window=2, name="sma")
    >>> row = sd.combine(sma=sma, n=ticks.running_count(name="n"), price=ticks["price"])
    >>> row.output_schema
    Schema(sma: float64, n: int64, price: float64)
    >>> logic = lookup(row.operator).create(row.config())
    >>> ts, keys = [1, 2, 3], ["a", "b", "a"]
    >>> logic.process([sd.Batch.from_columns(ts=[3], key=["a"], value=[2.0]),
    ...                sd.Batch.from_columns(ts=ts, key=keys, value=[1, 1, 2]),
    ...                sd.Batch.from_columns(ts=ts, key=keys, price=[1.0, 5.0, 3.0])]).to_records()
    [{'ts': 3, 'key': 'a', 'sma': 2.0, 'n': 2, 'price': 3.0}]
    """

    type_name: ClassVar[str] = "combine"
    arity: ClassVar[int | None] = None
    summary: ClassVar[str] = "fields of several streams over the same events, in one stream"
    params: ClassVar[tuple[Param, ...]] = (
        OrderedMapParam("columns", "str_map",
                        doc="output field -> '<input index>.<field>', in output order"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One field per column, typed as its source field; every input must give one."""
        columns = params["columns"]
        if not columns:
            raise ParamError("combine needs at least one column; pass e.g. sma=<stream>")
        fields: list[tuple[str, str]] = []
        used: set[int] = set()
        for name, source in columns:
            index, field = parse_column_source(source)
            if index >= len(inputs):
                raise ParamError(
                    f"combine column {name!r} reads input {index}, but the node has "
                    f"{len(inputs)} input(s); number them from 0"
                )
            require_fields("combine", inputs[index], [field], tuple(FIELD_TYPES))
            fields.append((name, inputs[index].type_of(field)))
            used.add(index)
        unused = sorted(set(range(len(inputs))) - used)
        if unused:
            raise ParamError(
                f"combine input {unused[0]} gives no column; take a field of it or remove it"
            )
        return Schema(tuple(fields))

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``CombineLogic`` for these columns; combine keeps no state to restore."""
        return CombineLogic([(name, *parse_column_source(source))
                             for name, source in config.params["columns"]])
