"""Counting events per key: a running count, and a rolling count over events or event time.

``running_count`` keeps one counter per key. ``rolling_count`` over a count window is the
running count capped at the window; over a time window it keeps each key's event times in a
growable ring (``operators.keyed_state``), which drops the times that left ``(t - W, t]`` as an
event at ``t`` arrives. Every event costs O(1) (amortized); the output is an int64 ``value``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.keyed_state import (
    GROWABLE_RING,
    RING_SIZE,
    WINDOW_PARAMS,
    KeyedState,
    KeyedStateLogic,
    StateArray,
    check_window,
    grow_ring,
    min_periods_of,
    push_event_time,
    ring_pools,
)
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import MAX_EVENTS, Param
from streamdag.schema import Schema

__all__ = ["COUNT_SCHEMA", "CountLogic", "RollingCountDef", "RunningCountDef"]

#: The output schema of the counting operators.
COUNT_SCHEMA = Schema.of(value="int64")


@njit(cache=True)
def _running_count_kernel(cap: int, min_periods: int, slots: Any, seen: Any, out: Any,
                          emitted: Any) -> None:
    # seen[s, 0]: the key's events so far; the count is that, capped at the window (if any).
    for r in range(slots.shape[0]):
        s = slots[r]
        n = seen[s, 0] + 1
        seen[s, 0] = n
        count = min(n, cap) if cap else n
        out[r] = count
        emitted[r] = count >= min_periods


@njit(cache=True)
def _time_count_kernel(time_window: int, min_periods: int, first: int, slots: Any, ts: Any,
                       ring: Any, positions: Any, out: Any, emitted: Any) -> int:
    # Returns the row whose key's ring is full (grow it, then resume there), or the row count.
    for r in range(first, slots.shape[0]):
        s = slots[r]
        events = push_event_time(ring, positions, s, ts[r], time_window)
        if events == 0:
            return r
        ring[s, RING_SIZE] = events
        out[r] = events
        emitted[r] = events >= min_periods
    rows: int = slots.shape[0]
    return rows


class CountLogic(KeyedStateLogic):
    """Runtime of ``running_count`` and ``rolling_count``: one kernel call per batch."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._window = int(config.params.get("window", 0))
        self._time_window = int(config.params.get("time_window", 0))
        self._min_periods = min_periods_of(config.params)
        per_key = {"seen": StateArray(1, np.int64, 0)}
        shared = {}
        if self._time_window:
            per_key = {"ring": GROWABLE_RING}
            shared = ring_pools()
        self._state = KeyedState(inputs=1, period=1, features=1, per_key=per_key,
                                 shared=shared, snapshot=snapshot)

    def update(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64]
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Count events (keys already mapped by ``slots``); each event's count and emit flag."""
        state = self._state
        state.check_slots(slots)
        out = np.empty(len(slots), dtype=np.int64)
        emitted = np.empty(len(slots), dtype=np.bool_)
        if not self._time_window:
            _running_count_kernel(self._window, self._min_periods, slots,
                                  state.per_key["seen"], out, emitted)
            return out, emitted
        ring, shared = state.per_key["ring"], state.shared
        row = 0
        while True:
            row = _time_count_kernel(self._time_window, self._min_periods, row, slots, ts, ring,
                                     shared["positions"], out, emitted)
            if row == len(slots):
                return out, emitted
            # The ring of slots[row]'s key is full: double it, then resume at that row.
            shared["positions"], shared["pool"] = grow_ring(
                ring, shared["positions"], shared["pool"], shared["used"], slots[row])

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The count at every event whose window holds enough events, at its ts and key."""
        batch = inputs[0]
        counts, emitted = self.update(self.slots(batch.key), batch.ts)
        output = batch.with_columns({"value": counts})
        return output if bool(emitted.all()) else output.take(emitted)


@register
class RunningCountDef(OperatorDef):
    """How many events each key has had, the event included, as an int64 ``value``.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.running_count(name="n")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a", "b", "a"], price=[1.0, 2.0, 3.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 1, 'key': 'a', 'value': 1}, {'ts': 2, 'key': 'b', 'value': 1},
     {'ts': 3, 'key': 'a', 'value': 2}]
    """

    type_name: ClassVar[str] = "running_count"
    keys_apart: ClassVar[bool] = True  # per-key state, moved by the key's events alone
    summary: ClassVar[str] = "events per key so far (int64)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("min_periods", "int", default=0, minimum=0, maximum=MAX_EVENTS,
              doc="emit from the key's min_periods-th event on (0 or 1: from its first)"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: int64}`` whatever the input carries."""
        return COUNT_SCHEMA

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``CountLogic`` without a window, fresh or restored from ``snapshot``."""
        return CountLogic(config, snapshot)


@register
class RollingCountDef(OperatorDef):
    """Events in each key's last ``window`` events or ``time_window`` of event time (int64).

    A count window emits once full, a time window on every event, unless ``min_periods``
    says otherwise (pandas' defaults).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.rolling_count(time_window=2, name="c")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3, 9], key=["a"] * 4, price=[0.0] * 4)
    >>> [r["value"] for r in logic.process([batch]).to_records()]  # (t - 2, t]
    [1, 2, 2, 1]
    """

    type_name: ClassVar[str] = "rolling_count"
    keys_apart: ClassVar[bool] = True  # per-key state, moved by the key's events alone
    summary: ClassVar[str] = "events per key over a count or time window (int64)"
    params: ClassVar[tuple[Param, ...]] = WINDOW_PARAMS

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: int64}``; ParamError unless exactly one of window and time_window is set."""
        check_window(cls.type_name, params, ", or use running_count for a count without end")
        return COUNT_SCHEMA

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``CountLogic`` over this window, fresh or restored from ``snapshot``."""
        return CountLogic(config, snapshot)
