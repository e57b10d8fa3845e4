"""Crossover of two streams per key: +1 where fast crosses above slow, -1 where below.

The runtime hands the node one batch per input covering the same event-time range, each sorted
by ts. Rows are paired on equal (ts, key) — the common case is two indicators derived from one
source, whose rows match one to one; the k-th row of a (ts, key) in one input pairs with the
k-th in the other. Rows without a partner in the same call are ignored: pairing is a pure
function of the two batches, so replays give the same output however the input is split, as
long as partners arrive in the same call (which the alignment guarantees).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.keyed_state import (
    NUMERIC_TYPES,
    VALUE_SCHEMA,
    KeyedState,
    KeyedStateLogic,
    StateArray,
    float_column,
    rows_emitted,
)
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic, require_fields
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["CrossoverDef", "CrossoverLogic"]

_NO_ROW = -1


@njit(cache=True)
def _crossover_kernel(fast_ts: Any, fast_slots: Any, fast_xs: Any, slow_ts: Any,
                      slow_slots: Any, slow_xs: Any, difference: Any, pending: Any,
                      chained: Any, out: Any, emitted: Any) -> None:
    # pending[slot]: the first unpaired slow row of the current timestamp with that key;
    # chained[row]: the next slow row of the same timestamp and key. Both reset per timestamp,
    # so pairing costs O(rows) whatever the number of keys sharing a timestamp.
    emitted[:] = False
    j, slow_rows = 0, slow_ts.shape[0]
    i, fast_rows = 0, fast_ts.shape[0]
    while i < fast_rows:
        t = fast_ts[i]
        while j < slow_rows and slow_ts[j] < t:
            j += 1
        end = j
        while end < slow_rows and slow_ts[end] == t:
            end += 1
        for k in range(end - 1, j - 1, -1):
            chained[k] = pending[slow_slots[k]]
            pending[slow_slots[k]] = k
        while i < fast_rows and fast_ts[i] == t:
            s = fast_slots[i]
            k = pending[s]
            if k != _NO_ROW:
                pending[s] = chained[k]
                d = fast_xs[i] - slow_xs[k]
                previous = difference[s, 0]
                # NaN compares false both ways: a key's first pair, or one after a NaN, is 0.
                if previous <= 0.0 and d > 0.0:
                    out[i] = 1.0
                elif previous >= 0.0 and d < 0.0:
                    out[i] = -1.0
                else:
                    out[i] = 0.0
                difference[s, 0] = d
                emitted[i] = True
            i += 1
        for k in range(j, end):
            pending[slow_slots[k]] = _NO_ROW
        j = end


class CrossoverLogic(KeyedStateLogic):
    """Runtime of ``crossover``: pairs the two inputs' rows and keeps fast - slow per key."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._name = config.name
        self._fast_field = str(config.params["fast_field"])
        self._slow_field = str(config.params["slow_field"])
        self._state = KeyedState(inputs=1, period=1, features=1,
                                 per_key={"difference": StateArray(1, np.float64, np.nan)},
                                 snapshot=snapshot)

    def update(
        self, fast_ts: npt.NDArray[np.int64], fast_slots: npt.NDArray[np.int64],
        fast_xs: npt.NDArray[np.float64], slow_ts: npt.NDArray[np.int64],
        slow_slots: npt.NDArray[np.int64], slow_xs: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Pair ts-sorted rows on (ts, slot); the signal of each fast row and whether it paired."""
        state = self._state
        state.check_slots(fast_slots)
        state.check_slots(slow_slots)
        out = np.zeros(len(fast_ts), dtype=np.float64)
        emitted = np.empty(len(fast_ts), dtype=np.bool_)
        pending = np.full(state.cache.key_capacity, _NO_ROW, dtype=np.int64)
        chained = np.empty(len(slow_ts), dtype=np.int64)
        _crossover_kernel(fast_ts, fast_slots, fast_xs, slow_ts, slow_slots, slow_xs,
                          state.per_key["difference"], pending, chained, out, emitted)
        return out, emitted

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The signal at every fast row that has a slow partner, at the fast row's ts and key."""
        fast, slow = inputs[0].sorted_by_time(), inputs[1].sorted_by_time()
        fast_slots, slow_slots = self.slots(fast.key), self.slots(slow.key)
        values, emitted = self.update(
            fast.ts, fast_slots, float_column(fast, self._fast_field, self._name),
            slow.ts, slow_slots, float_column(slow, self._slow_field, self._name))
        return rows_emitted(fast, values, emitted)


@register
class CrossoverDef(OperatorDef):
    """+1.0 where fast - slow goes from <= 0 to > 0, -1.0 from >= 0 to < 0, else 0.0, per key.

    Inputs are (fast, slow); rows pair on equal (ts, key), unpaired rows are ignored, and a
    key's first pair gives 0.0. The output has the fast rows' ts and key.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> fast, slow = ticks.ema("price", span=2, name="f"), ticks.ema("price", span=5, name="s")
    >>> node = fast.crossover(slow, name="x")
    >>> logic = lookup(node.operator).create(node.config())
    >>> ts, keys = [1, 2, 3, 4], ["a"] * 4
    >>> fast_batch = sd.Batch.from_columns(ts=ts, key=keys, value=[1.0, 3.0, 2.0, 0.0])
    >>> slow_batch = sd.Batch.from_columns(ts=ts, key=keys, value=[2.0, 2.0, 2.0, 1.0])
    >>> [r["value"] for r in logic.process([fast_batch, slow_batch]).to_records()]
    [0.0, 1.0, 0.0, -1.0]
    """

    type_name: ClassVar[str] = "crossover"
    arity: ClassVar[int | None] = 2
    summary: ClassVar[str] = "+1/-1 where a fast stream crosses a slow one, per key"
    params: ClassVar[tuple[Param, ...]] = (
        Param("fast_field", "str", default="value", doc="field of the first (fast) input"),
        Param("slow_field", "str", default="value", doc="field of the second (slow) input"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: float64}``; both fields must be numeric."""
        require_fields(cls.type_name, inputs[0], [params["fast_field"]], NUMERIC_TYPES)
        require_fields(cls.type_name, inputs[1], [params["slow_field"]], NUMERIC_TYPES)
        return VALUE_SCHEMA

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``CrossoverLogic``, fresh or restored from ``snapshot``."""
        return CrossoverLogic(config, snapshot)
