"""Session windows per key: events closer than ``gap`` in event time share a session.

Each event opens the window ``[ts, ts + gap)``; overlapping windows of a key merge, as in
Flink's event-time session windows, so a session covers ``[first ts, last ts + gap)``. In
event-time order an event can only extend its key's latest session or start a new one: one
check per event. Only an event arriving before its key's latest session started (late) looks
through the key's other sessions, and may merge two of them. Early updates by event time
(``early_interval``) keep their state in ``session_early``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.session_early import (
    SessionEarlyPanes,
    early_merge,
    early_route,
    early_start_moved,
    panes_needed,
)
from operators.window_logic import EventTimeWindowDef, EventTimeWindowLogic
from operators.window_state import (
    COUNT,
    END,
    EVERY_ARRIVAL,
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
    merge_rows,
    open_row,
)
from operators.windows import MAX_EARLY_PER_WINDOW
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig
from streamdag.operator_registry import register
from streamdag.params import MAX_SPAN_NS, Param
from streamdag.schema import Schema

__all__ = ["SessionWindowDef", "SessionWindowLogic"]

_DEAD = -1  # the slot of a row merged into another; compacted away at the next watermark


@njit(cache=True, inline="always")
def _is_session_of(meta: Any, size: Any, row: int, slot: int) -> bool:
    return bool(0 <= row < size[0] and meta[row, SLOT] == slot)


@njit(cache=True, inline="always")
def _pane_room(pane_meta: Any, pane_index: Any, pane_size: Any, extra: int) -> bool:
    return bool(pane_size[0] + extra <= pane_meta.shape[0]
                and 2 * (pane_size[0] + extra) <= pane_index.shape[0])


@njit(cache=True)
def _find_and_merge(meta: Any, acc: Any, size: Any, latest: Any, slot: int, t: int,
                    gap: int, prefix_meta: Any, prefix_acc: Any, head_meta: Any,
                    head_acc: Any, pane_meta: Any, pane_acc: Any, pane_index: Any,
                    pane_size: Any, interval: int) -> int:
    # The key's session that the event's window [t, t + gap) overlaps, after merging every
    # session it overlaps into the earliest of them; -1 when it overlaps none. With an early
    # interval the merged sessions' prefixes and heads follow (session_early).
    found = -1
    for other in range(size[0]):
        if meta[other, SLOT] != slot or not meta[other, START] - gap < t < meta[other, END]:
            continue
        if found < 0:
            found = other
            continue
        kept, gone = (found, other) if meta[found, START] <= meta[other, START] else (other,
                                                                                       found)
        merge_rows(meta, acc, kept, gone)
        if interval > 0:
            early_merge(meta, prefix_meta, prefix_acc, head_meta, head_acc, pane_meta,
                        pane_acc, pane_index, pane_size, kept, gone, interval)
        meta[kept, START] = min(meta[kept, START], meta[gone, START])
        meta[kept, END] = max(meta[kept, END], meta[gone, END])
        meta[gone, SLOT] = _DEAD
        meta[gone, COUNT] = 0
        if latest[slot] == gone:
            latest[slot] = kept
        found = kept
    return found


@njit(cache=True)
def _fold(meta: Any, acc: Any, size: Any, latest: Any, out_meta: Any, out_acc: Any,
          out_size: Any, slots: Any, ts: Any, values: Any, kept: Any, first: int, sequence: int,
          gap: int, lateness: int, watermark: int, early_every: int, side: bool,
          prefix_meta: Any, prefix_acc: Any, head_meta: Any, head_acc: Any, pane_meta: Any,
          pane_acc: Any, pane_index: Any, pane_size: Any, pane_latest: Any, interval: int,
          passed: int) -> tuple[int, int, int]:
    # Returns (status, event to resume from, events dropped). With an early interval (> 0)
    # each event also goes into its session's prefix or head or its key's pane, ``passed``
    # being the latest boundary the watermark passed (session_early).
    dropped = 0
    for i in range(first, slots.shape[0]):
        if size[0] + 1 > meta.shape[0]:
            return GROW_ROWS, i, dropped
        if out_size[0] + 1 > out_meta.shape[0]:
            return GROW_OUT, i, dropped
        if interval > 0 and not _pane_room(pane_meta, pane_index, pane_size, 1):
            return GROW_PANES, i, dropped
        slot, t, x = slots[i], ts[i], values[i]
        row = latest[slot]
        if row < 0:
            pass  # the key has no live session: its latest would have outlived any other
        elif _is_session_of(meta, size, row, slot) and t >= meta[row, START]:
            if t >= meta[row, END]:
                row = -1  # a new session after the key's latest one
        else:
            if interval > 0 and not _pane_room(pane_meta, pane_index, pane_size,
                                               panes_needed(meta, size[0], slot, t, gap)):
                return GROW_PANES, i, dropped
            row = _find_and_merge(meta, acc, size, latest, slot, t, gap, prefix_meta,
                                  prefix_acc, head_meta, head_acc, pane_meta, pane_acc,
                                  pane_index, pane_size, interval)
        kept[i] = True
        if row >= 0:
            add_event(meta, acc, row, t, sequence + i, x)
            if interval > 0:
                if t < meta[row, START]:
                    early_start_moved(head_meta, head_acc, pane_meta, pane_acc, pane_index,
                                      pane_size, row, slot, meta[row, START], t, interval)
                    meta[row, START] = t
                early_route(prefix_meta, prefix_acc, head_meta, head_acc, pane_meta,
                            pane_acc, pane_index, pane_size, pane_latest, row, slot,
                            meta[row, START], t, sequence + i, x, interval, passed)
            meta[row, START] = min(meta[row, START], t)
            meta[row, END] = max(meta[row, END], t + gap)
        elif watermark != NO_WATERMARK and t + gap + lateness <= watermark:
            dropped += 1
            kept[i] = False
            if side:
                k = out_size[0]
                open_row(out_meta, out_acc, k, slot, t, t + gap, t, SIDE, x)
                out_size[0] = k + 1
            continue
        else:
            row = size[0]
            size[0] = row + 1
            open_row(meta, acc, row, slot, t, t + gap, t, sequence + i, x)
            if interval > 0:
                prefix_meta[row, COUNT] = 0
                head_meta[row, COUNT] = 0
                early_route(prefix_meta, prefix_acc, head_meta, head_acc, pane_meta,
                            pane_acc, pane_index, pane_size, pane_latest, row, slot, t, t,
                            sequence + i, x, interval, passed)
            latest_row = latest[slot]
            if not _is_session_of(meta, size, latest_row, slot) or meta[latest_row, START] < t:
                latest[slot] = row
        kind = emission_after_event(meta[row, END], meta[row, COUNT], watermark, early_every)
        if kind != NO_EMISSION:
            emit_row(meta, acc, row, out_meta, out_acc, out_size, kind, sequence + i)
    return OK, slots.shape[0], dropped


class SessionWindowLogic(EventTimeWindowLogic):
    """Runtime logic of a ``session_window`` node: ``latest`` is each key's latest session."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._gap = int(config.params["gap"])
        super().__init__(config, snapshot)
        self._no_panes = WindowTable(8)

    def _early_panes(self, interval: int,
                     arrays: Mapping[str, npt.NDArray[Any]] | None) -> SessionEarlyPanes:
        """Prefixes, heads and panes of early updates at multiples of ``interval``."""
        return SessionEarlyPanes(interval, self._gap, arrays)

    def _kernel(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                values: npt.NDArray[np.float64], kept: npt.NDArray[np.bool_],
                first: int) -> tuple[int, int, int]:
        table, out = self._table, self._emissions
        early = self._early
        if isinstance(early, SessionEarlyPanes):
            panes, interval = early.panes, early.interval
            prefix_meta, prefix_acc = early.prefix_meta, early.prefix_acc
            head_meta, head_acc = early.head_meta, early.head_acc
            pane_latest, passed = early.pane_latest, early.passed(self._watermark)
        else:
            # Without early updates by event time the kernel gets an empty table's arrays.
            panes, interval, passed = self._no_panes, 0, NO_WATERMARK
            prefix_meta = head_meta = panes.meta
            prefix_acc = head_acc = panes.acc
            pane_latest = self._latest
        return _fold(
            table.meta, table.acc, table.size, self._latest, out.meta, out.acc, out.size,
            slots, ts, values, kept, first, self._sequence, self._gap, self._lateness,
            self._watermark, self._early_every, self._side, prefix_meta, prefix_acc,
            head_meta, head_acc, panes.meta, panes.acc, panes.index, panes.size, pane_latest,
            interval, passed,
        )

    def _forget_before(self) -> int:
        # Sessions of a key hold every one of its events from their start on.
        live = self._table.meta[: len(self._table)]
        alive = live[live[:, SLOT] != _DEAD]
        return int(alive[:, START].min()) if len(alive) else EVERY_ARRIVAL


@register
class SessionWindowDef(EventTimeWindowDef):
    """Aggregates of ``field`` per key over sessions: runs of events less than ``gap`` apart.

    A session covers ``[first ts, last ts + gap)`` and is emitted once the watermark reaches
    its end, as one record with ts = end - 1, ``start``, ``end``, one column per aggregation
    in ``agg`` (as ``tumbling_window``), ``revision`` 0, ``early`` and ``late`` False; sessions
    come out by end, sessions ending together in the order they opened.

    Late events: until the watermark passes ``end + lateness`` a session keeps its state; a
    late event that overlaps it (within ``gap``) joins it and, once the session has closed,
    re-emits it at once with ``revision`` + 1. A late event can join two sessions into one,
    which carries the larger revision. A late event overlapping no live session opens one
    unless its own ``ts + gap + lateness`` is already passed: then it is counted in
    ``late_dropped`` and, under ``late="side"``, sent on as a one-event record with ``late``
    True. ``early_every=N`` emits a session's partial result every N of its events.

    ``early_interval=T`` also emits, each time the watermark passes a boundary ``b = k * T``
    (multiples of T in event time, not counted from the session's start, which can move),
    the partial result of every session open at ``b`` (it has events before ``b`` and its
    last one before ``b`` is less than ``gap`` before it, or it goes on past ``b``) over
    exactly its events with ts < ``b``: ``early`` True, ts = b - 1, ``end`` = its last event
    before ``b`` + gap. That is the same whatever the batching and whether events after ``b``
    had already arrived. As with ``tumbling_window``, a session gives an update at every
    boundary it is open at, changed or not; ``early_every`` updates come as events arrive and
    ``early_interval`` ones as the watermark passes their boundary, an update at a boundary
    before a final result at that time. Late events revise the final result as above and go
    into later updates; they re-issue none. Each event keeps its session open over at most
    gap / T boundaries, which may not exceed ``MAX_EARLY_PER_WINDOW`` (1000).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> clicks = sd.source("clicks", topic="c", key="user", schema={"ms": "float64"})
    >>> node = clicks.session_window(gap=10, agg=["count", "sum"], field="ms", name="s")
    >>> logic = lookup("session_window").create(node.config())
    >>> events = sd.Batch.from_columns(ts=[1, 5, 30], key=["u", "u", "u"], ms=[2.0, 3.0, 4.0])
    >>> len(logic.process([events]))
    0
    >>> logic.on_watermark(31).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 14, 'key': 'u', 'start': 1, 'end': 15, 'count': 2, 'sum': 5.0, 'revision': 0,
      'early': False, 'late': False}]

    With ``early_interval=4`` the session of events at 1, 5 and 7 updates at 4 (the event at
    1 only), 8, 12 and 16 (all three), then closes at 17; the event at 30 is another session:

    >>> node = clicks.session_window(gap=10, agg="sum", field="ms", early_interval=4, name="e")
    >>> logic = lookup("session_window").create(node.config())
    >>> len(logic.process([sd.Batch.from_columns(ts=[1, 5, 7, 30], key=["u"] * 4,
    ...                                          ms=[1.0, 2.0, 4.0, 8.0])]))
    0
    >>> [(r["ts"], r["end"], r["sum"], r["early"]) for r in logic.on_watermark(20).to_records()]
    ... # doctest: +NORMALIZE_WHITESPACE
    [(3, 11, 1.0, True), (7, 17, 7.0, True), (11, 17, 7.0, True), (15, 17, 7.0, True),
     (16, 17, 7.0, False)]
    """

    type_name: ClassVar[str] = "session_window"
    summary: ClassVar[str] = "aggregates per key over sessions of events closer than a gap"
    logic = SessionWindowLogic
    handles_events: ClassVar[str] = (
        "groups events into sessions by its own gap=, not by a node interval"
    )
    interval_hint: ClassVar[str] = "set the inactivity gap with gap= instead"
    params: ClassVar[tuple[Param, ...]] = (
        Param("gap", "duration", minimum=1, maximum=MAX_SPAN_NS, size=True,
              doc="inactivity that closes a session"),
        *EventTimeWindowDef.window_params(),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """As every event-time window's; refuses an early interval that fires too often."""
        gap, interval = int(params["gap"]), int(params["early_interval"])
        if interval and -(-gap // interval) > MAX_EARLY_PER_WINDOW:
            raise ParamError(
                f"session_window: early_interval {interval} ns gives each event up to "
                f"{-(-gap // interval)} early updates (its gap of {gap} ns / early_interval), "
                f"over the maximum of {MAX_EARLY_PER_WINDOW}; use a larger early_interval")
        return super().output_schema(params, inputs)
