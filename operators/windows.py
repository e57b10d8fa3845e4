"""Tumbling and hopping event-time windows per key, with allowed lateness and early updates.

A hopping window of ``size`` starts every ``step`` of event time (epoch-aligned: at multiples
of ``step``) and covers ``[start, start + size)``; a tumbling window is one whose step is its
size. One numba pass folds a whole batch into the windows' aggregates (``window_state``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.window_early import fold_early
from operators.window_logic import EventTimeWindowDef, EventTimeWindowLogic
from operators.window_state import (
    COUNT,
    END,
    GROW_OUT,
    GROW_PANES,
    GROW_ROWS,
    NO_EMISSION,
    NO_WATERMARK,
    OK,
    SIDE,
    SLOT,
    START,
    WindowTable,
    add_event,
    emission_after_event,
    emit_row,
    find_or_open,
    open_row,
)
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig
from streamdag.operator_registry import register
from streamdag.params import MAX_SPAN_NS, Param
from streamdag.schema import Schema

__all__ = [
    "MAX_EARLY_PER_WINDOW",
    "MAX_WINDOWS_PER_EVENT",
    "HoppingWindowDef",
    "TumblingWindowDef",
    "WindowLogic",
]

#: Most hopping windows one event may fall in (size / step): each costs a fold per event.
MAX_WINDOWS_PER_EVENT = 1_000
#: Most early updates by event time one window may give (size / early_interval).
MAX_EARLY_PER_WINDOW = 1_000
_MAX_WAYS = 8


@njit(cache=True)
def _fold(meta: Any, acc: Any, index: Any, size: Any, latest: Any, out_meta: Any,
          out_acc: Any, out_size: Any, slots: Any, ts: Any, values: Any, kept: Any, first: int,
          sequence: int, length: int, step: int, lateness: int, watermark: int,
          early_every: int, side: bool, ways: int, prefix_meta: Any, prefix_acc: Any,
          pane_meta: Any, pane_acc: Any, pane_index: Any, pane_size: Any, pane_latest: Any,
          interval: int, period: int) -> tuple[int, int, int]:
    # Returns (status, event to resume from, events dropped). Each event is folded whole or
    # not at all: room for all its windows, panes and emissions is checked before it starts.
    # With an early interval, of an event's windows the first ``period`` (latest starts) have
    # their boundaries at different times; later ones repeat theirs and share their panes.
    per_event = (length + step - 1) // step
    dropped = 0
    for i in range(first, slots.shape[0]):
        if size[0] + per_event > meta.shape[0] or 2 * (size[0] + per_event) > index.shape[0]:
            return GROW_ROWS, i, dropped
        if out_size[0] + per_event + 1 > out_meta.shape[0]:
            return GROW_OUT, i, dropped
        if interval > 0 and (pane_size[0] + per_event > pane_meta.shape[0]
                             or 2 * (pane_size[0] + per_event) > pane_index.shape[0]):
            return GROW_PANES, i, dropped
        slot, t, x = slots[i], ts[i], values[i]
        row = latest[slot]
        # (Not with early updates by event time: their code here cost the plain fold 5%.)
        if (ways == 1 and interval == 0 and 0 <= row < size[0] and meta[row, SLOT] == slot
                and meta[row, START] <= t < meta[row, END]):
            # A tumbling window's event in its key's latest window: no division, no lookup.
            add_event(meta, acc, row, t, sequence + i, x)
            kept[i] = True
            kind = emission_after_event(meta[row, END], meta[row, COUNT], watermark, early_every)
            if kind != NO_EMISSION:
                emit_row(meta, acc, row, out_meta, out_acc, out_size, kind, sequence + i)
            continue
        # Window j (start j * step) of a key is cached at latest[slot * ways + j % ways]: the
        # windows of a key open at once are consecutive, so they rarely evict each other.
        j = t // step
        latest_start = j * step
        start = latest_start
        covered = False
        folded = False
        visited = 0
        while start + length > t:
            covered = True
            end = start + length
            if watermark != NO_WATERMARK and end + lateness <= watermark:
                break  # this and every earlier window are past their lateness
            cached = slot * ways + (j & (ways - 1))
            row = latest[cached]
            if 0 <= row < size[0] and meta[row, SLOT] == slot and meta[row, START] == start:
                add_event(meta, acc, row, t, sequence + i, x)
            else:
                row = find_or_open(meta, acc, index, size, slot, start, end, t, sequence + i, x)
                latest[cached] = row
            folded = True
            if interval > 0:
                fold_early(meta, prefix_meta, prefix_acc, pane_meta, pane_acc, pane_index,
                           pane_size, pane_latest, row, meta[row, COUNT] == 1, t,
                           sequence + i, x, interval, watermark, visited < period,
                           period == 1)
            visited += 1
            kind = emission_after_event(end, meta[row, COUNT], watermark, early_every)
            if kind != NO_EMISSION:
                emit_row(meta, acc, row, out_meta, out_acc, out_size, kind, sequence + i)
            start -= step
            j -= 1
        kept[i] = folded
        if covered and not folded:
            dropped += 1
            if side:
                k = out_size[0]
                open_row(out_meta, out_acc, k, slot, latest_start, latest_start + length, t,
                         SIDE, x)
                out_size[0] = k + 1
    return OK, slots.shape[0], dropped


class WindowLogic(EventTimeWindowLogic):
    """Runtime logic of a tumbling or hopping window node."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._size = int(config.params["size"])
        self._step = int(config.params.get("step", self._size))
        # Cached window rows per key: a power of two covering the windows an event falls in.
        self.ways = 1 << (min(-(-self._size // self._step), _MAX_WAYS) - 1).bit_length()
        interval = int(config.params.get("early_interval", 0))
        # Windows whose starts are a multiple of the interval apart share boundaries.
        self._period = interval // math.gcd(interval, self._step) if interval else 0
        super().__init__(config, snapshot)
        self._no_panes = WindowTable(8)

    def _kernel(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                values: npt.NDArray[np.float64], kept: npt.NDArray[np.bool_],
                first: int) -> tuple[int, int, int]:
        table, out, early = self._table, self._emissions, self._early
        # Without early updates by event time the kernel gets an empty table's arrays.
        panes = self._no_panes if early is None else early.panes
        prefix_meta, prefix_acc = (panes.meta, panes.acc) if early is None else (
            early.prefix_meta, early.prefix_acc)
        return _fold(
            table.meta, table.acc, table.index, table.size, self._latest, out.meta, out.acc,
            out.size, slots, ts, values, kept, first, self._sequence, self._size, self._step,
            self._lateness, self._watermark, self._early_every, self._side, self.ways,
            prefix_meta, prefix_acc, panes.meta, panes.acc, panes.index, panes.size,
            self._latest if early is None else early.pane_latest,
            0 if early is None else early.interval, self._period,
        )

    def _forget_before(self) -> int:
        # An event's windows all end by ts + size: past the lateness, none takes events.
        return max(NO_WATERMARK, self._watermark - self._lateness - self._size + 1)


class _WindowDef(EventTimeWindowDef):
    """What the tumbling and hopping window declarations share."""

    logic = WindowLogic
    handles_events: ClassVar[str] = (
        "buckets events into windows of its own size= (and step=), not by a node interval"
    )
    interval_hint: ClassVar[str] = "set the window length with size= instead"

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """As every event-time window's; refuses an early interval that never fires or fires
        too often."""
        size, interval = int(params["size"]), int(params["early_interval"])
        if interval and interval >= size:
            raise ParamError(
                f"{cls.type_name}: early_interval {interval} ns is not shorter than the window "
                f"size {size} ns, so no early update would ever fire; use an early_interval "
                "below size, or 0 for none")
        if interval and -(-size // interval) - 1 > MAX_EARLY_PER_WINDOW:
            raise ParamError(
                f"{cls.type_name}: early_interval {interval} ns gives each window of {size} ns "
                f"{-(-size // interval) - 1} early updates, over the maximum of "
                f"{MAX_EARLY_PER_WINDOW}; use a larger early_interval")
        return super().output_schema(params, inputs)


@register
class TumblingWindowDef(_WindowDef):
    """Aggregates of ``field`` per key over consecutive windows of ``size`` of event time.

    A window ``[start, start + size)`` (starts at multiples of ``size``) is emitted once the
    watermark reaches its end, as one record with ts = end - 1, its ``start`` and ``end``,
    one column per aggregation in ``agg`` (count as int64; std is the sample one, NaN below
    two events), ``revision`` 0, ``early`` and ``late`` False. Windows come out by end,
    those ending together in the order they opened. First and last are by event time, ties
    by arrival.

    Late events: until the watermark passes ``end + lateness`` a window keeps its state, and
    every late event for it re-emits it at once with ``revision`` + 1 (a window first opened
    by a late event comes out as revision 0). Later events are counted in ``late_dropped``
    and, under ``late="side"``, sent on at once as a one-event record with ``late`` True (its
    window's start and end, ts its own). ``early_every=N`` also emits a window's partial
    result (``early`` True) each time it has taken another N events before it closes.

    ``early_interval=T`` (a duration, as ``size``) also emits, each time the watermark
    passes a boundary ``start + k * T`` (k >= 1) before the window's end, the partial result
    over exactly the window's events with ts < that boundary (``early`` True, ts = that
    boundary - 1; none while the window has no such event), however the events were batched
    and whether events after the boundary had already arrived. The two combine:
    ``early_every`` updates come as events arrive, ``early_interval`` ones as the watermark
    passes their boundary; one watermark step emits in order of time, an update at a
    boundary before a final result at that time.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> node = ticks.tumbling_window(10, agg=["mean", "count"], field="price", name="w")
    >>> logic = lookup("tumbling_window").create(node.config())
    >>> trades = sd.Batch.from_columns(ts=[1, 4, 12], key=["A", "A", "A"],
    ...                                price=[10.0, 12.0, 13.0])
    >>> len(logic.process([trades]))
    0
    >>> logic.on_watermark(10).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 9, 'key': 'A', 'start': 0, 'end': 10, 'mean': 11.0, 'count': 2, 'revision': 0,
      'early': False, 'late': False}]

    With ``early_interval=5`` the update at 5 holds the event at 1, not the one at 6 that
    arrived with it:

    >>> node = ticks.tumbling_window(10, agg="sum", field="price", early_interval=5, name="e")
    >>> logic = lookup("tumbling_window").create(node.config())
    >>> len(logic.process([sd.Batch.from_columns(ts=[1, 6, 12], key=["A", "A", "A"],
    ...                                          price=[1.0, 2.0, 4.0])]))
    0
    >>> [(r["ts"], r["sum"], r["early"]) for r in logic.on_watermark(10).to_records()]
    [(4, 1.0, True), (9, 3.0, False)]
    """

    type_name: ClassVar[str] = "tumbling_window"
    summary: ClassVar[str] = "aggregates per key over consecutive event-time windows"
    params: ClassVar[tuple[Param, ...]] = (
        Param("size", "duration", minimum=1, maximum=MAX_SPAN_NS, size=True,
              doc="window length"),
        *_WindowDef.window_params(),
    )


@register
class HoppingWindowDef(_WindowDef):
    """Aggregates of ``field`` per key over windows of ``size`` starting every ``step``.

    As ``tumbling_window`` (emission, lateness, early updates, each window's boundaries for
    ``early_interval`` counted from its own start), but windows start at every
    multiple of ``step``, so an event falls in about size / step of them (at most
    ``MAX_WINDOWS_PER_EVENT``); with step > size, events between windows fall in none and are
    ignored, as in Flink.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> node = ticks.hopping_window(10, step=5, agg="max", field="price", name="w")
    >>> logic = lookup("hopping_window").create(node.config())
    >>> trades = sd.Batch.from_columns(ts=[3, 7], key=["A", "A"], price=[1.0, 2.0])
    >>> len(logic.process([trades]))
    0
    >>> [(r["start"], r["end"], r["max"]) for r in logic.on_watermark(15).to_records()]
    [(-5, 5, 1.0), (0, 10, 2.0), (5, 15, 2.0)]
    """

    type_name: ClassVar[str] = "hopping_window"
    summary: ClassVar[str] = "aggregates per key over overlapping event-time windows"
    params: ClassVar[tuple[Param, ...]] = (
        Param("size", "duration", minimum=1, maximum=MAX_SPAN_NS, size=True,
              doc="window length"),
        Param("step", "duration", minimum=1, maximum=MAX_SPAN_NS, size=True,
              doc="time between window starts"),
        *_WindowDef.window_params(),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """As a tumbling window's; refuses a step giving too many windows per event."""
        size, step = int(params["size"]), int(params["step"])
        if -(-size // step) > MAX_WINDOWS_PER_EVENT:
            raise ParamError(
                f"hopping_window: size {size} ns and step {step} ns put each event in "
                f"{-(-size // step)} windows, over the maximum of {MAX_WINDOWS_PER_EVENT}; "
                "use a larger step (or a rolling operator for a window per event)"
            )
        return super().output_schema(params, inputs)
