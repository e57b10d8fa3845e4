"""Early updates by event time: a window's partial result each time the watermark passes one
of its boundaries ``start + k * early_interval`` (k >= 1, before its end).

The update at boundary ``b`` holds exactly the window's events with ts < ``b`` that arrived
before the watermark passed ``b``, however the events were batched and whether events at or
after ``b`` had already arrived. Two pieces of state make that exact, as Flink's slicing
windows do:

* a **prefix** per window row (same row number, in a parallel pair of arrays): the aggregate
  of its events with ts before its latest boundary the watermark passed;
* **panes** per key: the aggregate of the key's events in ``[p, p + interval)`` for every
  boundary ``p + interval`` not passed yet. Windows whose boundaries fall on the same times
  share a pane, since its content is the key's events in that span.

An event goes into each of its windows' prefix when it is before the window's passed
boundary (a late event), else into one pane (when the pane ends before the window's end); when
the watermark passes ``b``, each window merges pane ``b - interval`` into its prefix and emits
the prefix if it holds any event. Both cost O(1) per event and per boundary. Session windows,
whose boundaries are the multiples of the interval, add a head per session (session_early).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.row_index import EMPTY, find_row
from operators.window_state import (
    ACC_COLUMNS,
    BOUND,
    COUNT,
    EARLY,
    EMITTED,
    END,
    EVERY_ARRIVAL,
    FIRST_SEQ,
    LAST_SEQ,
    META_COLUMNS,
    NO_WATERMARK,
    SLOT,
    START,
    Emissions,
    WindowTable,
    add_event,
    find_or_open,
    merge_into,
    open_row,
)

__all__ = ["EarlyPanes", "emit_prefix", "fold_early", "follow_rows", "grown_rows"]


@njit(cache=True, inline="always")
def fold_early(meta: Any, prefix_meta: Any, prefix_acc: Any, pane_meta: Any, pane_acc: Any,
               pane_index: Any, pane_size: Any, pane_latest: Any, row: int, fresh: bool,
               t: int, seq: int, x: float, interval: int, watermark: int, owns_pane: bool,
               aligned: bool) -> None:
    """Fold event (t, seq, x), just folded into window row ``row``, into the row's prefix or
    its pane; ``fresh``: the row was just opened; ``owns_pane``: of the event's windows
    sharing that pane, this one folds it; ``pane_latest``: each key slot's latest pane row
    (a cache, checked before use); ``aligned``: every window's boundaries fall on the same
    times. The caller made room for a new pane."""
    start, end = meta[row, START], meta[row, END]
    if fresh:
        prefix_meta[row, COUNT] = 0
    # Only a late event (t < watermark) can precede a boundary the watermark passed; min()
    # keeps the arithmetic in range under a watermark near the int64 maximum.
    if (watermark != NO_WATERMARK and t < watermark
            and t < start + (min(watermark, end) - start) // interval * interval):
        if prefix_meta[row, COUNT] == 0:
            open_row(prefix_meta, prefix_acc, row, meta[row, SLOT], start, end, t, seq, x)
        else:
            add_event(prefix_meta, prefix_acc, row, t, seq, x)
        return
    if not owns_pane:
        return
    slot = meta[row, SLOT]
    cached = pane_latest[slot]
    if (0 <= cached < pane_size[0] and pane_meta[cached, SLOT] == slot
            and pane_meta[cached, START] <= t < pane_meta[cached, END]
            and (aligned or (pane_meta[cached, START] - start) % interval == 0)):
        # A live pane holding t on this window's boundaries: opened by a window of them that
        # holds t and starts no later than this one, so the pane ends before this one does.
        add_event(pane_meta, pane_acc, cached, t, seq, x)
        return
    pane = start + (t - start) // interval * interval
    if pane + interval < end:
        pane_latest[slot] = find_or_open(pane_meta, pane_acc, pane_index, pane_size, slot,
                                         pane, pane + interval, t, seq, x)


@njit(cache=True, inline="always")
def emit_prefix(prefix_meta: Any, prefix_acc: Any, row: int, slot: int, start: int, end: int,
                emitted: int, boundary: int, out_meta: Any, out_acc: Any,
                out_size: Any) -> None:
    """Write the prefix of row ``row`` as the early update at ``boundary`` of the window
    (``slot``, ``start``, ``end``), emitted ``emitted`` times so far."""
    o = out_size[0]
    for c in range(META_COLUMNS):
        out_meta[o, c] = prefix_meta[row, c]
    for c in range(ACC_COLUMNS):
        out_acc[o, c] = prefix_acc[row, c]
    out_meta[o, SLOT], out_meta[o, START], out_meta[o, END] = slot, start, end
    out_meta[o, EMITTED] = emitted
    out_meta[o, FIRST_SEQ] = EARLY
    out_meta[o, LAST_SEQ] = EVERY_ARRIVAL
    out_meta[o, BOUND] = boundary
    out_size[0] = o + 1


@njit(cache=True)
def _emit_boundaries(meta: Any, size: int, prefix_meta: Any, prefix_acc: Any, pane_meta: Any,
                     pane_acc: Any, pane_index: Any, passed: int, watermark: int,
                     interval: int, out_meta: Any, out_acc: Any, out_size: Any) -> None:
    # Every live row's boundaries in (passed, watermark], in row order, each by time.
    for row in range(size):
        slot, start, end = meta[row, SLOT], meta[row, START], meta[row, END]
        if slot < 0:
            continue
        first = 1
        if passed != NO_WATERMARK and passed >= start:
            first = (min(passed, end) - start) // interval + 1
        last = (min(watermark, end - 1) - start) // interval if watermark >= start else 0
        for k in range(first, last + 1):
            boundary = start + k * interval
            pane, _ = find_row(pane_meta, pane_index, slot, boundary - interval)
            if pane != EMPTY:
                merge_into(prefix_meta, prefix_acc, row, pane_meta, pane_acc, pane)
            if prefix_meta[row, COUNT] == 0:
                continue
            emit_prefix(prefix_meta, prefix_acc, row, slot, start, end, meta[row, EMITTED],
                        boundary, out_meta, out_acc, out_size)



def grown_rows(meta: npt.NDArray[np.int64], acc: npt.NDArray[np.float64], capacity: int
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``meta`` and ``acc`` (a row per window) with room for ``capacity`` rows, copied if grown.

    >>> meta, acc = grown_rows(np.zeros((1, META_COLUMNS), np.int64),
    ...                        np.zeros((1, ACC_COLUMNS)), 4)
    >>> len(meta), len(acc)
    (4, 4)
    """
    if len(meta) >= capacity:
        return meta, acc
    more_meta = np.zeros((capacity, META_COLUMNS), dtype=np.int64)
    more_acc = np.zeros((capacity, ACC_COLUMNS), dtype=np.float64)
    more_meta[: len(meta)] = meta
    more_acc[: len(acc)] = acc
    return more_meta, more_acc

def follow_rows(moved: npt.NDArray[np.int64] | None, meta: npt.NDArray[np.int64],
                acc: npt.NDArray[np.float64]) -> None:
    """Move the rows of ``meta`` and ``acc`` (parallel to a window table) in place as the
    table's rows moved when it closed (``moved``, see ``WindowTable.close``; None: none did).

    >>> meta, acc = np.arange(3).reshape(3, 1), np.zeros((3, 1))
    >>> follow_rows(np.array([-1, 0, 1]), meta, acc)
    >>> meta[:2, 0].tolist()
    [1, 2]
    """
    if moved is not None:
        kept = moved >= 0
        count = int(kept.sum())
        meta[:count] = meta[: len(moved)][kept]
        acc[:count] = acc[: len(moved)][kept]


class EarlyPanes:
    """The prefixes and panes of a window node with ``early_interval`` (see the module)."""

    def __init__(self, interval: int,
                 arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> None:
        self.interval = interval
        if arrays is None or "prefix_meta" not in arrays:
            self.prefix_meta = np.zeros((1, META_COLUMNS), dtype=np.int64)
            self.prefix_acc = np.zeros((1, ACC_COLUMNS), dtype=np.float64)
            self.panes = WindowTable()
        else:
            self.prefix_meta = arrays["prefix_meta"].copy()
            self.prefix_acc = arrays["prefix_acc"].copy()
            self.panes = WindowTable.from_arrays(
                {"meta": arrays["pane_meta"], "acc": arrays["pane_acc"]})
        # Each key slot's latest pane row: a cache, so a restored one starts empty too.
        self.pane_latest = np.empty(0, dtype=np.int64)

    def fit_keys(self, count: int) -> None:
        """Make room in the pane cache for ``count`` key slots."""
        if len(self.pane_latest) < count:
            grown = np.full(2 * count, -1, dtype=np.int64)
            grown[: len(self.pane_latest)] = self.pane_latest
            self.pane_latest = grown

    def fit(self, capacity: int) -> None:
        """Make room for a prefix per row of a window table of ``capacity`` rows."""
        self.prefix_meta, self.prefix_acc = grown_rows(self.prefix_meta, self.prefix_acc,
                                                       capacity)

    def emit(self, passed: int, watermark: int, table: WindowTable,
             emissions: Emissions) -> None:
        """Write the early update of every boundary of ``table``'s windows the watermark
        passed moving from ``passed`` to ``watermark``."""
        # Room for exactly the boundaries each window passed (as _emit_boundaries counts).
        live = table.meta[: len(table)]
        start, end = live[:, START], live[:, END]
        first = np.ones(len(live), dtype=np.int64)
        if passed != NO_WATERMARK:
            after = passed >= start
            first[after] = (np.minimum(passed, end[after]) - start[after]) // self.interval + 1
        last = np.where(watermark >= start,
                        (np.minimum(watermark, end - 1) - start) // self.interval, 0)
        emissions.reserve(int(np.maximum(last - first + 1, 0).sum()))
        _emit_boundaries(table.meta, len(table), self.prefix_meta, self.prefix_acc,
                         self.panes.meta, self.panes.acc, self.panes.index, passed, watermark,
                         self.interval, emissions.meta, emissions.acc, emissions.size)

    def settle(self, moved: npt.NDArray[np.int64] | None, watermark: int) -> None:
        """After the window table closed: prefixes follow their rows (``moved``, see
        ``WindowTable.close``), and panes the watermark passed are forgotten."""
        follow_rows(moved, self.prefix_meta, self.prefix_acc)
        live = self.panes.meta[: len(self.panes)]
        passed = live[:, END] <= watermark
        if passed.any():
            keep = ~passed
            self.panes = WindowTable.from_arrays(
                {"meta": live[keep], "acc": self.panes.acc[: len(self.panes)][keep]})

    def arrays(self, rows: int) -> dict[str, npt.NDArray[Any]]:
        """The prefixes of the first ``rows`` window rows and the panes, for a snapshot."""
        panes = self.panes.arrays()
        return {"prefix_meta": self.prefix_meta[:rows], "prefix_acc": self.prefix_acc[:rows],
                "pane_meta": panes["meta"], "pane_acc": panes["acc"]}
