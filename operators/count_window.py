"""Count windows per key: aggregates over every ``count`` consecutive events of a key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.window_state import (
    ACC_COLUMNS,
    COUNT,
    END,
    FINAL,
    META_COLUMNS,
    Emissions,
    WindowKeys,
    add_event,
    emit_row,
    load_arrays,
    open_row,
    save_arrays,
    window_schema,
)
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import MAX_EVENTS, Param
from streamdag.schema import Schema

__all__ = ["CountWindowDef", "CountWindowLogic"]


@njit(cache=True)
def _fold(meta: Any, acc: Any, out_meta: Any, out_acc: Any, out_size: Any, slots: Any,
          ts: Any, values: Any, sequence: int, count: int) -> None:
    # Row s holds key slot s's open window; the caller made room for every possible emission.
    for i in range(slots.shape[0]):
        slot, t = slots[i], ts[i]
        if meta[slot, COUNT] == 0:
            open_row(meta, acc, slot, slot, t, t + 1, t, sequence + i, values[i])
        else:
            add_event(meta, acc, slot, t, sequence + i, values[i])
            meta[slot, END] = t + 1
        if meta[slot, COUNT] == count:
            emit_row(meta, acc, slot, out_meta, out_acc, out_size, FINAL,
                         sequence + i)
            meta[slot, COUNT] = 0


class CountWindowLogic:
    """Runtime logic of a ``count_window`` node: each key's open window."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        params = config.params
        self._field = str(params["field"])
        self._aggregations = tuple(params["agg"])
        self._count = int(params["count"])
        self._emissions = Emissions()
        if snapshot is None:
            self._keys = WindowKeys()
            self._meta = np.zeros((0, META_COLUMNS), dtype=np.int64)
            self._acc = np.zeros((0, ACC_COLUMNS), dtype=np.float64)
            self._sequence = 0
        else:
            arrays = load_arrays(snapshot)
            self._keys = WindowKeys(arrays["keys"].tobytes())
            self._meta, self._acc = arrays["meta"].copy(), arrays["acc"].copy()
            self._sequence = int(arrays["sequence"][0])

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Fold events in; every key's ``count``-th event since its last window emits one."""
        batch = inputs[0]
        if not len(batch):
            return self._keys.results(*self._emissions.take(), self._aggregations)
        return self.fold(self.slots(batch.key), batch.ts,
                         np.ascontiguousarray(batch.columns[self._field], dtype=np.float64))

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """The slot of every key, making room for new keys' open windows."""
        slots = self._keys.slots(keys)
        if len(self._meta) < self._keys.count:
            capacity = 2 * self._keys.count
            self._meta = np.concatenate(
                [self._meta, np.zeros((capacity - len(self._meta), META_COLUMNS), np.int64)])
            self._acc = np.concatenate(
                [self._acc, np.zeros((capacity - len(self._acc), ACC_COLUMNS), np.float64)])
        return slots

    def fold(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
             values: npt.NDArray[np.float64]) -> Batch:
        """Fold events of known key slots (see ``slots``); the windows they closed."""
        self._emissions.reserve(len(slots))  # at most one window closes per event
        _fold(self._meta, self._acc, self._emissions.meta, self._emissions.acc,
              self._emissions.size, slots, ts, values, self._sequence, self._count)
        self._sequence += len(slots)
        return self._keys.results(*self._emissions.take(), self._aggregations)

    def on_watermark(self, watermark: int) -> Batch | None:
        """Count windows close on events, not on time: nothing."""
        return None

    def snapshot(self) -> bytes:
        """Key table, each key's open window and the arrival counter."""
        return save_arrays(keys=self._keys.snapshot(), meta=self._meta, acc=self._acc,
                           sequence=np.array([self._sequence], dtype=np.int64))


@register
class CountWindowDef(OperatorDef):
    """Aggregates of ``field`` per key over every ``count`` consecutive events of the key.

    Events are taken in event-time order (ties by arrival); each key's ``count``-th event
    since its last window emits one record with ts = that event's ts, ``start`` the ts of the
    window's first event and ``end`` the ts of its last + 1, one column per aggregation in
    ``agg`` (as ``tumbling_window``), ``revision`` 0, ``early`` and ``late`` False. A key's
    unfinished window is kept (across snapshots) and never emitted on its own. Events later
    than the watermark are dropped and counted by the runtime, as for any ordered node.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> node = ticks.count_window(2, agg=["first", "last"], field="price", name="pairs")
    >>> logic = lookup("count_window").create(node.config())
    >>> trades = sd.Batch.from_columns(ts=[1, 2, 3, 4], key=["A", "B", "A", "A"],
    ...                                price=[1.0, 2.0, 3.0, 4.0])
    >>> logic.process([trades]).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 3, 'key': 'A', 'start': 1, 'end': 4, 'first': 1.0, 'last': 3.0, 'revision': 0,
      'early': False, 'late': False}]
    """

    type_name: ClassVar[str] = "count_window"
    summary: ClassVar[str] = "aggregates per key over every N consecutive events"
    params: ClassVar[tuple[Param, ...]] = (
        Param("count", "int", minimum=1, maximum=MAX_EVENTS, size=True,
              doc="events per window"),
        Param("agg", "str_list", doc="aggregations: sum, mean, min, max, count, first, last, std"),
        Param("field", "str", default="value", doc="field aggregated"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """start, end, the aggregations, revision, early, late."""
        return window_schema(cls.type_name, params, inputs)

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        return CountWindowLogic(config, snapshot)
