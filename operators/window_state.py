"""What every window operator shares: per-window aggregates, their table, emitted results.

A window's aggregates live in one row of two packed arrays: ``meta`` (int64: key slot, start,
end, count, first and last event by (ts, arrival), times emitted; an emitted row also the
event time its values end at) and ``acc`` (float64: sum, shift and the shifted sums for the
variance, min, max, first and last value). Kernels fold
events into rows and write what they emit (a final result, an early update, a revision, a
side record) into an ``Emissions`` buffer as copies of the row at that moment, so results
never depend on how the events were batched. ``WindowTable`` finds a row by (key slot,
window start) through a hash index (``row_index``), and closes rows when the watermark passes
their end.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.key_labels import KeyLabels
from operators.row_index import EMPTY, empty_index, find_row, index_rows
from streamdag.batch import Batch
from streamdag.errors import ParamError
from streamdag.operator import require_fields
from streamdag.params import DAY_NS, Param
from streamdag.schema import Schema

__all__ = [
    "AGGREGATIONS",
    "LATE_POLICIES",
    "Emissions",
    "WindowKeys",
    "WindowTable",
    "late_params",
    "load_arrays",
    "save_arrays",
    "window_schema",
]

#: Aggregations a window node computes, and the type of each one's output column.
AGGREGATIONS: Mapping[str, str] = {
    "sum": "float64", "mean": "float64", "min": "float64", "max": "float64",
    "count": "int64", "first": "float64", "last": "float64", "std": "float64",
}
#: What happens to an event later than the allowed lateness: counted and dropped, or sent on
#: as a one-event record marked ``late``.
LATE_POLICIES = ("drop", "side")

NO_WATERMARK = int(np.iinfo(np.int64).min)
OK, GROW_ROWS, GROW_OUT, GROW_PANES = 0, 1, 2, 3
# meta columns; an emitted row has one more, BOUND: its values are its events with ts < BOUND
# (kept out of the window rows, whose width the fold kernels' speed follows)
SLOT, START, END, COUNT, FIRST_TS, FIRST_SEQ, LAST_TS, LAST_SEQ, EMITTED, BOUND = range(10)
META_COLUMNS = 9
EMITTED_META_COLUMNS = 10
# acc columns
# The variance uses shifted data: sums of x - K and (x - K)**2 with K the window's first
# value, which is stable while K is near the mean and costs no division per event.
SUM, SHIFT, SHIFTED, SQUARES, MIN, MAX, FIRST, LAST = range(8)
ACC_COLUMNS = 8
# emission kinds
FINAL, EARLY, SIDE = 0, 1, 2
NO_EMISSION = -1
#: The trigger of a window closed by the watermark: every event it took counts.
EVERY_ARRIVAL = int(np.iinfo(np.int64).max)


# -- aggregates of one row --------------------------------------------------------------------
@njit(cache=True, inline="always")
def open_row(meta: Any, acc: Any, row: int, slot: int, start: int, end: int, ts: int,
             seq: int, x: float) -> None:
    """Row ``row`` becomes a window holding the one event (ts, seq, x)."""
    meta[row, SLOT] = slot
    meta[row, START] = start
    meta[row, END] = end
    meta[row, COUNT] = 1
    meta[row, FIRST_TS] = ts
    meta[row, FIRST_SEQ] = seq
    meta[row, LAST_TS] = ts
    meta[row, LAST_SEQ] = seq
    meta[row, EMITTED] = 0
    acc[row, SUM] = x
    acc[row, SHIFT] = x
    acc[row, SHIFTED] = 0.0
    acc[row, SQUARES] = 0.0
    acc[row, MIN] = x
    acc[row, MAX] = x
    acc[row, FIRST] = x
    acc[row, LAST] = x


@njit(cache=True, inline="always")
def add_event(meta: Any, acc: Any, row: int, ts: int, seq: int, x: float) -> None:
    """Fold one event into row ``row``."""
    meta[row, COUNT] += 1
    acc[row, SUM] += x
    shifted = x - acc[row, SHIFT]
    acc[row, SHIFTED] += shifted
    acc[row, SQUARES] += shifted * shifted
    if x < acc[row, MIN]:
        acc[row, MIN] = x
    if x > acc[row, MAX]:
        acc[row, MAX] = x
    if ts < meta[row, FIRST_TS] or (ts == meta[row, FIRST_TS] and seq < meta[row, FIRST_SEQ]):
        meta[row, FIRST_TS] = ts
        meta[row, FIRST_SEQ] = seq
        acc[row, FIRST] = x
    if ts > meta[row, LAST_TS] or (ts == meta[row, LAST_TS] and seq > meta[row, LAST_SEQ]):
        meta[row, LAST_TS] = ts
        meta[row, LAST_SEQ] = seq
        acc[row, LAST] = x


@njit(cache=True, inline="always")
def merge_into(meta: Any, acc: Any, into: int, other_meta: Any, other_acc: Any,
               other: int) -> None:
    """Fold row ``other`` of (other_meta, other_acc) into row ``into`` of (meta, acc), its
    shifted sums moved to our shift; a row ``into`` without events takes the other's copy."""
    if meta[into, COUNT] == 0:
        for c in range(COUNT, EMITTED):
            meta[into, c] = other_meta[other, c]
        for c in range(ACC_COLUMNS):
            acc[into, c] = other_acc[other, c]
        return
    nb = other_meta[other, COUNT]
    d = other_acc[other, SHIFT] - acc[into, SHIFT]
    acc[into, SQUARES] += other_acc[other, SQUARES] + 2.0 * d * other_acc[other, SHIFTED] + (
        nb * d * d)
    acc[into, SHIFTED] += other_acc[other, SHIFTED] + nb * d
    acc[into, SUM] += other_acc[other, SUM]
    meta[into, COUNT] += nb
    acc[into, MIN] = min(acc[into, MIN], other_acc[other, MIN])
    acc[into, MAX] = max(acc[into, MAX], other_acc[other, MAX])
    if other_meta[other, FIRST_TS] < meta[into, FIRST_TS] or (
        other_meta[other, FIRST_TS] == meta[into, FIRST_TS]
        and other_meta[other, FIRST_SEQ] < meta[into, FIRST_SEQ]
    ):
        meta[into, FIRST_TS] = other_meta[other, FIRST_TS]
        meta[into, FIRST_SEQ] = other_meta[other, FIRST_SEQ]
        acc[into, FIRST] = other_acc[other, FIRST]
    if other_meta[other, LAST_TS] > meta[into, LAST_TS] or (
        other_meta[other, LAST_TS] == meta[into, LAST_TS]
        and other_meta[other, LAST_SEQ] > meta[into, LAST_SEQ]
    ):
        meta[into, LAST_TS] = other_meta[other, LAST_TS]
        meta[into, LAST_SEQ] = other_meta[other, LAST_SEQ]
        acc[into, LAST] = other_acc[other, LAST]


@njit(cache=True, inline="always")
def merge_rows(meta: Any, acc: Any, into: int, other: int) -> None:
    """Fold row ``other``'s aggregates and times emitted into row ``into`` of the same table."""
    merge_into(meta, acc, into, meta, acc, other)
    meta[into, EMITTED] = max(meta[into, EMITTED], meta[other, EMITTED])


@njit(cache=True, inline="always")
def emit_row(meta: Any, acc: Any, row: int, out_meta: Any, out_acc: Any, out_size: Any,
             kind: int, trigger: int) -> None:
    """Copy row ``row`` into the emission buffer as ``kind``, emitted by arrival ``trigger``
    (the row's events up to it are the window's values); a final one counts as emitted."""
    k = out_size[0]
    for c in range(META_COLUMNS):
        out_meta[k, c] = meta[row, c]
    for c in range(ACC_COLUMNS):
        out_acc[k, c] = acc[row, c]
    # The buffer keeps the kind and the trigger where the row keeps arrivals.
    out_meta[k, FIRST_SEQ] = kind
    out_meta[k, LAST_SEQ] = trigger
    out_meta[k, BOUND] = meta[row, END]
    if kind == FINAL:
        meta[row, EMITTED] += 1
    out_size[0] = k + 1


@njit(cache=True, inline="always")
def emission_after_event(end: int, count: int, watermark: int, early_every: int) -> int:
    """What a window (ending at ``end``, holding ``count`` events) emits after it took an
    event: FINAL (a revision) when the watermark already passed its end, EARLY every
    ``early_every`` events, else NO_EMISSION."""
    if watermark != NO_WATERMARK and end <= watermark:
        return FINAL
    if early_every > 0 and count % early_every == 0:
        return EARLY
    return NO_EMISSION


@njit(cache=True)
def _close(meta: Any, acc: Any, index: Any, size: Any, passed: int, watermark: int,
           retire_to: int, out_meta: Any, out_acc: Any, out_size: Any, moved: Any) -> None:
    # One pass over the live rows: emit those whose end the watermark passed, keep (compacted,
    # in order) those not yet past their lateness; moved[row] is the row's new place or -1.
    n = size[0]
    kept = 0
    for row in range(n):
        end = meta[row, END]
        if meta[row, SLOT] < 0:  # merged into another row
            moved[row] = -1
            continue
        if passed < end <= watermark:
            emit_row(meta, acc, row, out_meta, out_acc, out_size, FINAL, EVERY_ARRIVAL)
        if end <= retire_to:
            moved[row] = -1
            continue
        if kept != row:
            for c in range(META_COLUMNS):
                meta[kept, c] = meta[row, c]
            for c in range(ACC_COLUMNS):
                acc[kept, c] = acc[row, c]
        moved[row] = kept
        kept += 1
    size[0] = kept
    if kept != n:
        index[:] = EMPTY
        index_rows(meta, index, 0, kept)


@njit(cache=True, inline="always")
def claim_row(meta: Any, index: Any, size: Any, slot: int, start: int) -> tuple[int, bool]:
    """The row of window (slot, start), and whether it is new: a new row is claimed at the
    table's end and entered into the index, for the caller to fill.

    The caller has checked that a new row and its index entry fit.
    """
    row, position = find_row(meta, index, slot, start)
    if row != EMPTY:
        return row, False
    row = size[0]
    size[0] = row + 1
    index[position] = row
    return row, True


@njit(cache=True, inline="always")
def find_or_open(meta: Any, acc: Any, index: Any, size: Any, slot: int, start: int, end: int,
                 ts: int, seq: int, x: float) -> int:
    """The row of window (slot, start) with the event folded in; opened when absent.

    The caller has checked that a new row and its index entry fit.
    """
    row, new = claim_row(meta, index, size, slot, start)
    if new:
        open_row(meta, acc, row, slot, start, end, ts, seq, x)
    else:
        add_event(meta, acc, row, ts, seq, x)
    return row


@njit(cache=True, inline="always")
def find_or_merge(meta: Any, acc: Any, index: Any, size: Any, slot: int, start: int, end: int,
                  other_meta: Any, other_acc: Any, other: int) -> int:
    """The row of window (slot, start) with row ``other`` of (other_meta, other_acc) merged
    in; opened as a copy of it when absent.

    The caller has checked that a new row and its index entry fit.
    """
    row, new = claim_row(meta, index, size, slot, start)
    if new:
        meta[row, SLOT] = slot
        meta[row, START] = start
        meta[row, END] = end
        meta[row, COUNT] = 0
        meta[row, EMITTED] = 0
    merge_into(meta, acc, row, other_meta, other_acc, other)
    return row


class Emissions:
    """A growable buffer of emitted rows: copies of window rows plus what kind each one is."""

    def __init__(self, capacity: int = 64) -> None:
        self.meta = np.zeros((capacity, EMITTED_META_COLUMNS), dtype=np.int64)
        self.acc = np.zeros((capacity, ACC_COLUMNS), dtype=np.float64)
        self.size = np.zeros(1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.size[0])

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more rows."""
        needed = len(self) + extra
        if needed <= len(self.meta):
            return
        capacity = max(needed, 2 * len(self.meta))
        meta = np.zeros((capacity, EMITTED_META_COLUMNS), dtype=np.int64)
        acc = np.zeros((capacity, ACC_COLUMNS), dtype=np.float64)
        meta[: len(self)] = self.meta[: len(self)]
        acc[: len(self)] = self.acc[: len(self)]
        self.meta, self.acc = meta, acc

    def take(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The rows emitted so far (copies), emptying the buffer."""
        n = len(self)
        taken = self.meta[:n].copy(), self.acc[:n].copy()
        self.size[0] = 0
        return taken


class WindowTable:
    """Window rows keyed by (key slot, window start): packed aggregates plus a hash index.

    Capacity doubles when full; removing rows compacts them and rebuilds the index, so the
    cost follows the live windows, never the history.
    """

    def __init__(self, capacity: int = 64) -> None:
        capacity = max(8, 1 << (max(capacity, 1) - 1).bit_length())
        self.meta = np.zeros((capacity, META_COLUMNS), dtype=np.int64)
        self.acc = np.zeros((capacity, ACC_COLUMNS), dtype=np.float64)
        self.index = empty_index(capacity)
        self.size = np.zeros(1, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.size[0])

    def grow(self) -> None:
        """Double the capacity, keeping every live row."""
        self._rebuild(self.meta[: len(self)].copy(), self.acc[: len(self)].copy(),
                      2 * len(self.meta))

    def close(self, passed: int, watermark: int, lateness: int, emissions: Emissions,
              latest: npt.NDArray[np.int64], emitted_from: int | None = None
              ) -> npt.NDArray[np.int64] | None:
        """The watermark moved from ``passed`` to ``watermark``: emit, retire, compact.

        Rows whose end it passed are emitted; the emissions from ``emitted_from`` (default:
        these) are then ordered by the time they fire (``BOUND``), ties in the order they were
        written, which for rows is the order they opened. Rows past ``end + lateness`` (and rows
        merged away) are dropped, the rest compacted; ``latest`` (rows by key slot, -1 for
        none) follows the rows that moved. Returns each old row's new place (-1: dropped), or
        None when none moved.
        """
        n = len(self)
        first = len(emissions) if emitted_from is None else emitted_from
        emissions.reserve(n)
        moved = np.empty(n, dtype=np.int64)
        _close(self.meta, self.acc, self.index, self.size, passed, watermark,
               max(NO_WATERMARK, watermark - lateness), emissions.meta, emissions.acc,
               emissions.size, moved)
        emitted = emissions.meta[first : len(emissions)]
        if len(emitted) > 1:
            # A stable sort by firing time gives one order however finely the watermark
            # advanced.
            order = np.argsort(emitted[:, BOUND], kind="stable")
            emitted[:] = emitted[order]
            emitted_acc = emissions.acc[first : len(emissions)]
            emitted_acc[:] = emitted_acc[order]
        if len(self) == n:
            return None
        pointing = (latest >= 0) & (latest < n)
        latest[pointing] = moved[latest[pointing]]
        return moved

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The live rows, for a snapshot."""
        n = len(self)
        return {"meta": self.meta[:n], "acc": self.acc[:n]}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> WindowTable:
        """Rebuild a table from ``arrays()``."""
        table = cls(len(arrays["meta"]))
        table._rebuild(arrays["meta"], arrays["acc"], len(table.meta))
        return table

    def _rebuild(self, meta: npt.NDArray[np.int64], acc: npt.NDArray[np.float64],
                 capacity: int) -> None:
        n = len(meta)
        while n > capacity:
            capacity *= 2
        self.meta = np.zeros((capacity, META_COLUMNS), dtype=np.int64)
        self.acc = np.zeros((capacity, ACC_COLUMNS), dtype=np.float64)
        self.meta[:n] = meta
        self.acc[:n] = acc
        self.index = empty_index(capacity)
        self.size[0] = n
        index_rows(self.meta, self.index, 0, n)


class WindowKeys(KeyLabels):
    """Key slots plus the key bytes of every slot, and emitted window rows as a batch."""

    def results(self, meta: npt.NDArray[np.int64], acc: npt.NDArray[np.float64],
                aggregations: Sequence[str],
                extra: Mapping[str, npt.NDArray[Any]] | None = None) -> Batch:
        """Emitted rows as the output batch: ts = end - 1 (an early update by event time: its
        boundary - 1; a side record: its event's ts)."""
        kind = meta[:, FIRST_SEQ]
        count = meta[:, COUNT]
        side = kind == SIDE
        ts = np.where(side, meta[:, LAST_TS], meta[:, BOUND] - 1)
        columns: dict[str, npt.NDArray[Any]] = {"start": meta[:, START], "end": meta[:, END]}
        with np.errstate(invalid="ignore", divide="ignore"):
            for name in aggregations:
                if name == "count":
                    columns[name] = count
                elif name == "mean":
                    columns[name] = acc[:, SUM] / count
                elif name == "std":
                    squares = acc[:, SQUARES] - acc[:, SHIFTED] ** 2 / count
                    columns[name] = np.where(
                        count > 1, np.sqrt(np.maximum(squares, 0.0) / (count - 1)), np.nan)
                else:
                    columns[name] = acc[:, {"sum": SUM, "min": MIN, "max": MAX, "first": FIRST,
                                            "last": LAST}[name]]
        columns.update(extra or {})
        columns["revision"] = np.where(side, 0, meta[:, EMITTED])  # emissions before this one
        columns["early"] = kind == EARLY
        columns["late"] = side
        return Batch(ts, self.by_slot[meta[:, SLOT]], columns)


def window_schema(node_operator: str, params: Mapping[str, Any], inputs: Sequence[Schema]
                  ) -> Schema:
    """start, end, one column per aggregation, revision, early, late; checks field and aggs."""
    aggregations = tuple(params["agg"])
    output = str(params.get("function_output", ""))
    require_fields(node_operator, inputs[0], [params["field"]], types=("float64", "int64"))
    if not aggregations and not output:
        raise ParamError(f"{node_operator}: agg is empty; name at least one of "
                         f"{list(AGGREGATIONS)}, e.g. agg='mean' or agg=['min', 'max']")
    for name in aggregations:
        if name not in AGGREGATIONS:
            raise ParamError(f"{node_operator}: unknown aggregation {name!r} in agg; expected "
                             f"some of {list(AGGREGATIONS)}")
    if len(set(aggregations)) != len(aggregations):
        raise ParamError(f"{node_operator}: agg {list(aggregations)} names an aggregation twice; "
                         "name each once")
    fields = [("start", "int64"), ("end", "int64")]
    fields += [(name, AGGREGATIONS[name]) for name in aggregations]
    if output:
        if output in AGGREGATIONS or output in ("start", "end", "revision", "early", "late"):
            raise ParamError(f"{node_operator}: the window function's column {output!r} is "
                             "taken by another output column; rename the function")
        fields.append((output, "float64"))
    fields += [("revision", "int64"), ("early", "bool"), ("late", "bool")]
    return Schema(tuple(fields))


def late_params() -> tuple[Param, ...]:
    """The lateness and user-function params every event-time window node declares."""
    return (
        Param("function_output", "str", default="",
              doc="column of the user function over window values (the SDK sets it)"),
        Param("lateness", "duration", default=0, minimum=0, maximum=DAY_NS, size=True,
              doc="how long after its end a window still takes late events and re-emits"),
        Param("late", "str", default="drop", choices=LATE_POLICIES,
              doc="events later than that: drop (counted) or side (sent on, marked late)"),
    )


def save_arrays(**arrays: npt.NDArray[Any]) -> bytes:
    """Named arrays as one npz blob (a snapshot)."""
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def load_arrays(snapshot: bytes) -> dict[str, npt.NDArray[Any]]:
    """The arrays ``save_arrays`` stored."""
    with np.load(io.BytesIO(snapshot)) as arrays:
        return {name: arrays[name] for name in arrays.files}
