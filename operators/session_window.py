"""Session windows per key: events closer than ``gap`` in event time share a session.

Each event opens the window ``[ts, ts + gap)``; overlapping windows of a key merge, as in
Flink's event-time session windows, so a session covers ``[first ts, last ts + gap)``. In
event-time order an event can only extend its key's latest session or start a new one: one
check per event. Only an event arriving before its key's latest session started (late) looks
through the key's other sessions, and may merge two of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.window_logic import EventTimeWindowDef, EventTimeWindowLogic
from operators.window_state import (
    COUNT,
    EARLY,
    END,
    EVERY_ARRIVAL,
    FINAL,
    GROW_OUT,
    GROW_ROWS,
    NO_WATERMARK,
    OK,
    SIDE,
    SLOT,
    START,
    add_event,
    emit_row,
    merge_rows,
    open_row,
)
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


@njit(cache=True)
def _find_and_merge(meta: Any, acc: Any, size: Any, latest: Any, slot: int, t: int,
                    gap: int) -> int:
    # The key's session that the event's window [t, t + gap) overlaps, after merging every
    # session it overlaps into the earliest of them; -1 when it overlaps none.
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
          gap: int,
          lateness: int, watermark: int, early_every: int, side: bool) -> tuple[int, int, int]:
    # Returns (status, event to resume from, events dropped).
    dropped = 0
    for i in range(first, slots.shape[0]):
        if size[0] + 1 > meta.shape[0]:
            return GROW_ROWS, i, dropped
        if out_size[0] + 1 > out_meta.shape[0]:
            return GROW_OUT, i, dropped
        slot, t, x = slots[i], ts[i], values[i]
        kept[i] = True
        row = latest[slot]
        if row < 0:
            pass  # the key has no live session: its latest would have outlived any other
        elif _is_session_of(meta, size, row, slot) and t >= meta[row, START]:
            if t >= meta[row, END]:
                row = -1  # a new session after the key's latest one
        else:
            row = _find_and_merge(meta, acc, size, latest, slot, t, gap)
        if row >= 0:
            add_event(meta, acc, row, t, sequence + i, x)
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
            latest_row = latest[slot]
            if not _is_session_of(meta, size, latest_row, slot) or meta[latest_row, START] < t:
                latest[slot] = row
        if watermark != NO_WATERMARK and meta[row, END] <= watermark:
            emit_row(meta, acc, row, out_meta, out_acc, out_size, FINAL,
                     sequence + i)  # a revision
        elif early_every > 0 and meta[row, COUNT] % early_every == 0:
            emit_row(meta, acc, row, out_meta, out_acc, out_size, EARLY,
                     sequence + i)
    return OK, slots.shape[0], dropped


class SessionWindowLogic(EventTimeWindowLogic):
    """Runtime logic of a ``session_window`` node: ``latest`` is each key's latest session."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._gap = int(config.params["gap"])
        super().__init__(config, snapshot)

    def _kernel(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                values: npt.NDArray[np.float64], kept: npt.NDArray[np.bool_],
                first: int) -> tuple[int, int, int]:
        table, out = self._table, self._emissions
        return _fold(
            table.meta, table.acc, table.size, self._latest, out.meta, out.acc, out.size,
            slots, ts, values, kept, first, self._sequence, self._gap, self._lateness,
            self._watermark, self._early_every, self._side,
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
    True. ``early_every=N`` emits a session's partial result every N of its events;
    ``early_interval`` is refused (a session's start, and so its boundaries, can move).

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
        """As every event-time window's; refuses early updates by event time."""
        if int(params["early_interval"]):
            raise ParamError(
                "session_window: early_interval is not supported: a session's start moves "
                "when a late event extends it back or joins two sessions, so its boundaries "
                "start + k * early_interval would move after their updates were emitted; use "
                "early_every=N (a session's partial result every N of its events), or a "
                "tumbling_window or hopping_window with early_interval")
        return super().output_schema(params, inputs)
