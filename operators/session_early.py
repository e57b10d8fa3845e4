"""Early updates by event time on session windows: boundaries at multiples of ``interval``.

When the watermark passes a boundary ``b = k * interval``, each session of a key still open
at ``b`` (an event before ``b``, and its end, last event + gap, after ``b``) gives its partial
result over exactly its events with ts < ``b``. That is deterministic: once the watermark
passes ``b`` every on-time event before ``b`` has arrived, and how they split into sessions
follows from their own gaps (an event at or after ``b`` can extend the last of them, never
join two). Sessions of a key are disjoint runs ``[start, last ts]``, so a session's events
before ``b`` are exactly its key's events in ``[start, b)``, and at most one session of a
key is open at ``b``.

With ``W`` the latest boundary the watermark passed, each event of a live session sits in
one of three places, by row number (parallel arrays) or by (key, pane):

* the session's **prefix**: its events with ts < ``W``;
* the session's **head**: its events in its own first pane ``[p, p + interval)`` (p: its
  start rounded down to a boundary), when ``p >= W``; its START and END are that pane's;
* the key's **pane** ``p`` (``p >= W``): the key's other events in ``[p, p + interval)``.
  A pane thus holds events of one session only: the one that started before ``p`` and
  reaches into it (two such would overlap).

When the watermark passes ``b``, every session merges its head (when its first pane ends at
``b``) or the key's pane ending at ``b`` (when it started before it and reaches it) into its
prefix, which is then its events before ``b``. When sessions merge, prefixes add up; the
later session's head joins the earlier one's head (same first pane) or goes to the key's pane
(the merged session started before it); a session extended back to an earlier pane moves its
head to the key's pane the same way. Each costs O(1) per event, per merge and per boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.row_index import EMPTY, find_row
from operators.window_early import EarlyPanes, emit_prefix, follow_rows, grown_rows
from operators.window_state import (
    ACC_COLUMNS,
    COUNT,
    EMITTED,
    END,
    LAST_TS,
    META_COLUMNS,
    NO_WATERMARK,
    SLOT,
    START,
    Emissions,
    WindowTable,
    add_event,
    find_or_merge,
    find_or_open,
    merge_into,
    open_row,
)

__all__ = ["SessionEarlyPanes", "early_merge", "early_route", "early_start_moved",
           "panes_needed"]


@njit(cache=True, inline="always")
def _fold_into(meta: Any, acc: Any, row: int, slot: int, t: int, seq: int, x: float) -> None:
    if meta[row, COUNT] == 0:
        open_row(meta, acc, row, slot, t, t, t, seq, x)
    else:
        add_event(meta, acc, row, t, seq, x)


@njit(cache=True, inline="always")
def _head_to_pane(head_meta: Any, head_acc: Any, row: int, pane_meta: Any, pane_acc: Any,
                  pane_index: Any, pane_size: Any, slot: int, pane: int,
                  interval: int) -> None:
    # The head of row ``row`` joins the key's pane ``pane``; the caller made room for one.
    if head_meta[row, COUNT] == 0:
        return
    find_or_merge(pane_meta, pane_acc, pane_index, pane_size, slot, pane, pane + interval,
                  head_meta, head_acc, row)
    head_meta[row, COUNT] = 0


@njit(cache=True)
def panes_needed(meta: Any, size: int, slot: int, t: int, gap: int) -> int:
    """Panes an event at ``t`` of key ``slot`` may open: one, plus one per session it merges
    (each merged session's head may move to a pane)."""
    overlapping = 0
    for other in range(size):
        if meta[other, SLOT] == slot and meta[other, START] - gap < t < meta[other, END]:
            overlapping += 1
    return 1 + overlapping


@njit(cache=True, inline="always")
def early_route(prefix_meta: Any, prefix_acc: Any, head_meta: Any, head_acc: Any,
                pane_meta: Any, pane_acc: Any, pane_index: Any, pane_size: Any,
                pane_latest: Any, row: int, slot: int, start: int, t: int, seq: int, x: float,
                interval: int, passed: int) -> None:
    """Fold event (t, seq, x) of session row ``row`` (starting at ``start``) into its prefix,
    its head or its key's pane; ``passed``: the latest boundary the watermark passed."""
    if passed != NO_WATERMARK and t < passed:
        _fold_into(prefix_meta, prefix_acc, row, slot, t, seq, x)
        return
    # The key's latest pane and the head keep their bounds: no division while they hold t.
    cached = pane_latest[slot]
    if (0 <= cached < pane_size[0] and pane_meta[cached, SLOT] == slot
            and start < pane_meta[cached, START] <= t < pane_meta[cached, END]):
        add_event(pane_meta, pane_acc, cached, t, seq, x)
        return
    if head_meta[row, COUNT] > 0 and head_meta[row, START] <= t < head_meta[row, END]:
        add_event(head_meta, head_acc, row, t, seq, x)
        return
    pane = t // interval * interval
    if pane == start // interval * interval:
        if head_meta[row, COUNT] == 0:
            open_row(head_meta, head_acc, row, slot, pane, pane + interval, t, seq, x)
        else:
            add_event(head_meta, head_acc, row, t, seq, x)
        return
    pane_latest[slot] = find_or_open(pane_meta, pane_acc, pane_index, pane_size, slot, pane,
                                     pane + interval, t, seq, x)


@njit(cache=True, inline="always")
def early_start_moved(head_meta: Any, head_acc: Any, pane_meta: Any, pane_acc: Any,
                      pane_index: Any, pane_size: Any, row: int, slot: int, start: int,
                      new_start: int, interval: int) -> None:
    """Session row ``row`` now starts at ``new_start`` (< ``start``): a head left behind in
    another pane joins the key's pane there."""
    pane = start // interval * interval
    if new_start // interval * interval != pane:
        _head_to_pane(head_meta, head_acc, row, pane_meta, pane_acc, pane_index, pane_size,
                      slot, pane, interval)


@njit(cache=True, inline="always")
def early_merge(meta: Any, prefix_meta: Any, prefix_acc: Any, head_meta: Any, head_acc: Any,
                pane_meta: Any, pane_acc: Any, pane_index: Any, pane_size: Any, kept: int,
                gone: int, interval: int) -> None:
    """Session row ``gone`` (starting no earlier) merges into row ``kept``: prefixes add up,
    and ``gone``'s head joins ``kept``'s head or the key's pane it lies in."""
    if prefix_meta[gone, COUNT] > 0:
        merge_into(prefix_meta, prefix_acc, kept, prefix_meta, prefix_acc, gone)
        prefix_meta[gone, COUNT] = 0
    if head_meta[gone, COUNT] == 0:
        return
    pane = meta[gone, START] // interval * interval
    if pane == meta[kept, START] // interval * interval:
        # The same first pane: kept's head holds kept's first event, so it has the bounds.
        merge_into(head_meta, head_acc, kept, head_meta, head_acc, gone)
        head_meta[gone, COUNT] = 0
    else:
        _head_to_pane(head_meta, head_acc, gone, pane_meta, pane_acc, pane_index, pane_size,
                      meta[gone, SLOT], pane, interval)


@njit(cache=True)
def _emit_boundaries(meta: Any, size: int, prefix_meta: Any, prefix_acc: Any, head_meta: Any,
                     head_acc: Any, pane_meta: Any, pane_acc: Any, pane_index: Any,
                     passed: int, reached: int, interval: int, gap: int, out_meta: Any,
                     out_acc: Any, out_size: Any) -> None:
    # Boundaries in (passed, reached] (both boundaries; passed may be NO_WATERMARK), each live
    # row's in time order: pane [b - interval, b) into the prefix, then the row if open at b.
    for row in range(size):
        slot, start, end = meta[row, SLOT], meta[row, START], meta[row, END]
        if slot < 0:
            continue
        first = start // interval
        if passed != NO_WATERMARK:
            first = max(first, passed // interval)
        for p in range(first, reached // interval):
            pane = p * interval
            boundary = pane + interval
            if pane <= start:  # the session's first pane: its head
                merge_into(prefix_meta, prefix_acc, row, head_meta, head_acc, row)
                head_meta[row, COUNT] = 0
            elif pane <= meta[row, LAST_TS]:
                found, _ = find_row(pane_meta, pane_index, slot, pane)
                if found != EMPTY:
                    merge_into(prefix_meta, prefix_acc, row, pane_meta, pane_acc, found)
            if boundary >= end:
                break  # closed at b; later panes hold none of its events
            if prefix_meta[row, COUNT] == 0:
                continue
            # The session as its events before b make it: its end follows their last one.
            emit_prefix(prefix_meta, prefix_acc, row, slot, start,
                        prefix_meta[row, LAST_TS] + gap, meta[row, EMITTED], boundary,
                        out_meta, out_acc, out_size)


class SessionEarlyPanes(EarlyPanes):
    """Prefixes, heads and panes of a session node with ``early_interval`` (see the module)."""

    def __init__(self, interval: int, gap: int,
                 arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> None:
        super().__init__(interval, arrays)
        self.gap = gap
        if arrays is None or "head_meta" not in arrays:
            self.head_meta = np.zeros((1, META_COLUMNS), dtype=np.int64)
            self.head_acc = np.zeros((1, ACC_COLUMNS), dtype=np.float64)
        else:
            self.head_meta = arrays["head_meta"].copy()
            self.head_acc = arrays["head_acc"].copy()

    def passed(self, watermark: int) -> int:
        """The latest boundary ``watermark`` passed (NO_WATERMARK for none)."""
        if watermark == NO_WATERMARK:
            return NO_WATERMARK
        return watermark // self.interval * self.interval

    def fit(self, capacity: int) -> None:
        """Make room for a prefix and a head per row of a table of ``capacity`` rows."""
        super().fit(capacity)
        self.head_meta, self.head_acc = grown_rows(self.head_meta, self.head_acc, capacity)

    def emit(self, passed: int, watermark: int, table: WindowTable,
             emissions: Emissions) -> None:
        """Write the early update of every session open at each boundary the watermark
        passed moving from ``passed`` to ``watermark``."""
        before, reached = self.passed(passed), self.passed(watermark)
        if before == reached:
            return
        live = table.meta[: len(table)]
        start, end = live[:, START], live[:, END]
        # Room for the boundaries b in (before, reached] with start < b < end, per row.
        first = start // self.interval
        if before != NO_WATERMARK:
            first = np.maximum(first, before // self.interval)
        last = np.minimum(reached // self.interval, (end - 1) // self.interval) - 1
        emissions.reserve(int(np.maximum(last - first + 1, 0).sum()))
        _emit_boundaries(table.meta, len(table), self.prefix_meta, self.prefix_acc,
                         self.head_meta, self.head_acc, self.panes.meta, self.panes.acc,
                         self.panes.index, before, reached, self.interval, self.gap,
                         emissions.meta, emissions.acc, emissions.size)

    def settle(self, moved: npt.NDArray[np.int64] | None, watermark: int) -> None:
        """As ``EarlyPanes.settle``; heads follow their rows too."""
        follow_rows(moved, self.head_meta, self.head_acc)
        super().settle(moved, watermark)

    def arrays(self, rows: int) -> dict[str, npt.NDArray[Any]]:
        """Prefixes, heads and panes, for a snapshot."""
        return {**super().arrays(rows), "head_meta": self.head_meta[:rows],
                "head_acc": self.head_acc[:rows]}
