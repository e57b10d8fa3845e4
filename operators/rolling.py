"""Rolling statistics per key: sum, mean, std, min and max over the last N events or a time span.

Every kernel is one numba loop over the batch that updates per-key state in O(1) (amortized):

- **count windows** (``window=N``) keep the last N values in the node's ``NodeCache`` ring; the
  value that falls out of the window is read from the ring as the new one overwrites it.
- **time windows** (``time_window=W``) keep each key's events in its own ring, which doubles
  when full; events with ``ts <= t - W`` leave from the front as an event at ``t`` arrives, so
  the window is ``(t - W, t]`` in arrival order (the runtime delivers ts-sorted batches).
- **sum, mean** keep a Neumaier-compensated running total (Kahan's method, robust when a term
  is larger than the total): a spike leaving the window leaves no trace, and the error stays
  at the rounding of the window's own values however long the stream runs (the compensation
  carries each step's rounding exactly), so the total is never recomputed.
- **std** (and zscore) keep compensated sums of ``x - shift`` and its square. They are
  recomputed from the window in two passes around its mean (which becomes the new shift)
  once per window of a key's events, and at once when more than 20 of the 53 bits of the
  centered sum of squares have cancelled (a spike left, or the level moved far from the shift).
  Both cost O(window) at most once per window of events in any realistic stream (the second
  repeats only while the spread keeps shrinking by 2**20 from one event to the next).
- NaN and infinities are kept out of the sums; the sequence number of the latest one of each
  kind tells whether one is in the window, and the result is then what IEEE arithmetic over the
  window gives (NaN, +inf or -inf for sum and mean; NaN for std).
- **min, max** keep a monotonic deque per key (a fixed ring for count windows, a growable one
  for time windows): each value is pushed and popped at most once. NaN in the window gives NaN.
- **min_periods** (pandas' meaning): an event emits once its key's window holds at least that
  many events, over those it holds. By default a count window emits once full and a time window
  on every event. A time window's min and max count the events their deque dropped in a second
  growable ring of event times, kept only when ``min_periods`` is above 1.

Per-key state, growable rings and the shared helpers live in ``operators.keyed_state``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.keyed_state import (
    GROWABLE_RING,
    NUMERIC_TYPES,
    RING_CAPACITY,
    RING_OLDEST,
    RING_SIZE,
    RING_START,
    VALUE_SCHEMA,
    WINDOW_PARAMS,
    KeyedState,
    KeyedStateLogic,
    StateArray,
    check_window,
    compensated_add,
    float_column,
    grow_ring,
    min_periods_of,
    push_history,
    ring_pools,
    rows_emitted,
)
from operators.rolling_extremes import count_extreme_kernel, time_extreme_kernel
from streamdag.batch import Batch
from streamdag.operator import (
    NodeConfig,
    OperatorDef,
    OperatorLogic,
    require_fields,
)
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = [
    "RollingLogic",
    "RollingMaxDef",
    "RollingMeanDef",
    "RollingMinDef",
    "RollingStdDef",
    "RollingSumDef",
]

_SUM, _MEAN, _STD, _ZSCORE = 0, 1, 2, 3
_STATISTICS = {"sum": _SUM, "mean": _MEAN, "std": _STD, "zscore": _ZSCORE}
_EXTREME_SIGNS = {"max": 1.0, "min": -1.0}
# Columns of the per-key ``moments`` (float64) and ``tally`` (int64) arrays. Sum and mean use
# the plain compensated total; std and zscore sums of x - shift and its square, and the peak
# of the squares since they were last recomputed. The *_AFTER columns hold 1 + the sequence
# number of the latest NaN / +inf / -inf, 0 for none.
_LAST, _TOTAL, _TOTAL_COMP, _SHIFT, _SUM1, _COMP1, _SUM2, _COMP2, _PEAK = range(9)
_MOMENTS = 9
_SEQUENCE, _SINCE, _RUN, _NAN_AFTER, _PINF_AFTER, _NINF_AFTER = 0, 1, 2, 3, 4, 5
#: Recompute std sums when their centered part falls below this fraction of their peak.
_CANCELLATION = 2.0**-20
_NEVER = np.iinfo(np.int64).min


# -- sum, mean, std, zscore ------------------------------------------------------------------
@njit(cache=True, inline="always")
def _note_value(tally: Any, s: int, x: float) -> int:
    # Counts the event and remembers it when non-finite; returns its 1-based sequence number.
    # Stores are unconditional selects: a store under a branch here halves the kernel's speed.
    sequence: int = tally[s, _SEQUENCE] + 1
    tally[s, _SEQUENCE] = sequence
    finite = math.isfinite(x)
    tally[s, _NAN_AFTER] = sequence if not finite and x != x else tally[s, _NAN_AFTER]
    tally[s, _PINF_AFTER] = sequence if not finite and x > 0 else tally[s, _PINF_AFTER]
    tally[s, _NINF_AFTER] = sequence if not finite and x < 0 else tally[s, _NINF_AFTER]
    return sequence


@njit(cache=True, inline="always")
def _slide_total(moments: Any, s: int, leaving: float, arriving: float) -> None:
    # NaN stands for "no value": non-finite values never enter the sums.
    total, compensation = moments[s, _TOTAL], moments[s, _TOTAL_COMP]
    if math.isfinite(leaving):
        total, compensation = compensated_add(total, compensation, -leaving)
    if math.isfinite(arriving):
        total, compensation = compensated_add(total, compensation, arriving)
    moments[s, _TOTAL], moments[s, _TOTAL_COMP] = total, compensation


@njit(cache=True, inline="always")
def _slide_squares(moments: Any, s: int, leaving: float, arriving: float) -> None:
    shift = moments[s, _SHIFT]
    sum1, comp1 = moments[s, _SUM1], moments[s, _COMP1]
    sum2, comp2 = moments[s, _SUM2], moments[s, _COMP2]
    if math.isfinite(leaving):
        d = leaving - shift
        sum1, comp1 = compensated_add(sum1, comp1, -d)
        sum2, comp2 = compensated_add(sum2, comp2, -d * d)
    if math.isfinite(arriving):
        d = arriving - shift
        sum1, comp1 = compensated_add(sum1, comp1, d)
        sum2, comp2 = compensated_add(sum2, comp2, d * d)
    moments[s, _SUM1], moments[s, _COMP1] = sum1, comp1
    moments[s, _SUM2], moments[s, _COMP2] = sum2, comp2
    moments[s, _PEAK] = max(moments[s, _PEAK], sum2)


@njit(cache=True)
def _recompute_squares(moments: Any, s: int, ring: Any, oldest: int, n: int) -> None:
    # Two passes over the window (ring[oldest:] then its start): its mean becomes the shift.
    length = ring.shape[0]
    total = compensation = 0.0
    finite = 0
    for j in range(n):
        value = ring[oldest + j if oldest + j < length else oldest + j - length]
        if math.isfinite(value):
            total, compensation = compensated_add(total, compensation, value)
            finite += 1
    shift = (total + compensation) / finite if finite else 0.0
    sum1 = comp1 = sum2 = comp2 = 0.0
    for j in range(n):
        value = ring[oldest + j if oldest + j < length else oldest + j - length]
        if math.isfinite(value):
            d = value - shift
            sum1, comp1 = compensated_add(sum1, comp1, d)
            sum2, comp2 = compensated_add(sum2, comp2, d * d)
    moments[s, _SHIFT] = shift
    moments[s, _SUM1], moments[s, _COMP1] = sum1, comp1
    moments[s, _SUM2], moments[s, _COMP2] = sum2, comp2
    moments[s, _PEAK] = sum2


@njit(cache=True, inline="always")
def _centered_squares(moments: Any, s: int, n: int) -> float:
    # n * variance of the window's finite values, from the shifted sums.
    sum1 = moments[s, _SUM1] + moments[s, _COMP1]
    result: float = (moments[s, _SUM2] + moments[s, _COMP2]) - sum1 * sum1 / n
    return result


@njit(cache=True, inline="always")
def _squares_stale(moments: Any, tally: Any, s: int, x: float, n: int, sequence: int) -> bool:
    # Tracks the run of equal values; True when the squares must be recomputed from the window.
    tally[s, _RUN] = tally[s, _RUN] + 1 if x == moments[s, _LAST] else 1
    moments[s, _LAST] = x
    since = tally[s, _SINCE] + 1
    clean = max(tally[s, _NAN_AFTER], tally[s, _PINF_AFTER], tally[s, _NINF_AFTER]) <= sequence - n
    # Over 20 of 53 bits cancelled (a spike left, or the level moved far from the shift): the
    # sums are noise at the scale of the result, so rebuild them now.
    cancelled = clean and _centered_squares(moments, s, n) < moments[s, _PEAK] * _CANCELLATION
    stale: bool = since >= n or cancelled
    tally[s, _SINCE] = 0 if stale else since
    return stale


@njit(cache=True, inline="always")
def _moments_result(statistic: int, moments: Any, tally: Any, s: int, n: int, x: float) -> float:
    first = tally[s, _SEQUENCE] - n  # 1 + sequence number of the event before the window
    has_nan = tally[s, _NAN_AFTER] > first
    has_pinf = tally[s, _PINF_AFTER] > first
    has_ninf = tally[s, _NINF_AFTER] > first
    if statistic <= _MEAN:
        total: float = moments[s, _TOTAL] + moments[s, _TOTAL_COMP]
        value = total if statistic == _SUM else total / n
        value = np.inf if has_pinf else value
        value = -np.inf if has_ninf else value
        return np.nan if has_nan or (has_pinf and has_ninf) else value
    if has_nan or has_pinf or has_ninf or n < 2:
        return np.nan
    if tally[s, _RUN] >= n:
        return 0.0  # every value in the window is equal: exactly zero, not rounding noise
    variance = _centered_squares(moments, s, n) / (n - 1)
    if variance <= 0.0:
        return 0.0
    std = math.sqrt(variance)
    if statistic == _STD:
        return std
    sum1 = moments[s, _SUM1] + moments[s, _COMP1]
    centered: float = (x - moments[s, _SHIFT]) - sum1 / n
    return centered / std


@njit(cache=True)
def _count_sums_kernel(statistic: int, window: int, min_periods: int, slots: Any, ts: Any,
                       xs: Any, times: Any, values: Any, head: Any, count: Any, moments: Any,
                       tally: Any, out: Any, emitted: Any) -> None:
    for r in range(slots.shape[0]):
        s, x = slots[r], xs[r]
        leaving, n, _ = push_history(times, values, head, count, window, s, ts[r], x)
        _note_value(tally, s, x)
        _slide_total(moments, s, leaving, x)
        emitted[r] = n >= min_periods
        out[r] = _moments_result(statistic, moments, tally, s, n, x)


@njit(cache=True)
def _count_squares_kernel(statistic: int, window: int, min_periods: int, slots: Any, ts: Any,
                          xs: Any, times: Any, values: Any, head: Any, count: Any, moments: Any,
                          tally: Any, out: Any, emitted: Any) -> None:
    for r in range(slots.shape[0]):
        s, x = slots[r], xs[r]
        leaving, n, h = push_history(times, values, head, count, window, s, ts[r], x)
        sequence = _note_value(tally, s, x)
        _slide_squares(moments, s, leaving, x)
        if _squares_stale(moments, tally, s, x, n, sequence):
            oldest = h + 1 - n
            _recompute_squares(moments, s, values[0, s, :, 0],
                               oldest if oldest >= 0 else oldest + window, n)
        emitted[r] = n >= min_periods
        out[r] = _moments_result(statistic, moments, tally, s, n, x)


@njit(cache=True, inline="always")
def _push_time_event(squares: bool, moments: Any, s: int, t: int, x: float, time_window: int,
                     ring: Any, positions: Any, pool: Any) -> int:
    # Slides key s's events at or before t - time_window out of its sums (the squares' or
    # the total's), then pushes (t, x) into its ring: the events now in the window, or 0
    # when the ring is full (grow it, then push again).
    start, mask = ring[s, RING_START], ring[s, RING_CAPACITY] - 1
    oldest, size = ring[s, RING_OLDEST], ring[s, RING_SIZE]
    while size > 0 and positions[start + oldest] <= t - time_window:
        if squares:
            _slide_squares(moments, s, pool[start + oldest], np.nan)
        else:
            _slide_total(moments, s, pool[start + oldest], np.nan)
        oldest, size = (oldest + 1) & mask, size - 1
    ring[s, RING_OLDEST], ring[s, RING_SIZE] = oldest, size
    if size == mask + 1:
        return 0
    positions[start + ((oldest + size) & mask)] = t
    pool[start + ((oldest + size) & mask)] = x
    events: int = size + 1
    ring[s, RING_SIZE] = events
    return events


@njit(cache=True)
def _time_sums_kernel(statistic: int, time_window: int, min_periods: int, first: int,
                      slots: Any, ts: Any, xs: Any, moments: Any, tally: Any, ring: Any,
                      positions: Any, pool: Any, out: Any, emitted: Any) -> int:
    # Returns the row whose key's ring is full (grow it, then resume there), or the row count.
    for r in range(first, slots.shape[0]):
        s, x = slots[r], xs[r]
        n = _push_time_event(False, moments, s, ts[r], x, time_window, ring, positions, pool)
        if n == 0:
            return r
        _note_value(tally, s, x)
        _slide_total(moments, s, np.nan, x)
        emitted[r] = n >= min_periods
        out[r] = _moments_result(statistic, moments, tally, s, n, x)
    rows: int = slots.shape[0]
    return rows


@njit(cache=True)
def _time_squares_kernel(statistic: int, time_window: int, min_periods: int, first: int,
                         slots: Any, ts: Any, xs: Any, moments: Any, tally: Any, ring: Any,
                         positions: Any, pool: Any, out: Any, emitted: Any) -> int:
    # As _time_sums_kernel; a separate loop because the recomputation call slows the sums'.
    for r in range(first, slots.shape[0]):
        s, x = slots[r], xs[r]
        n = _push_time_event(True, moments, s, ts[r], x, time_window, ring, positions, pool)
        if n == 0:
            return r
        sequence = _note_value(tally, s, x)
        _slide_squares(moments, s, np.nan, x)
        if _squares_stale(moments, tally, s, x, n, sequence):
            start = ring[s, RING_START]
            _recompute_squares(moments, s, pool[start : start + ring[s, RING_CAPACITY]],
                               ring[s, RING_OLDEST], n)
        emitted[r] = n >= min_periods
        out[r] = _moments_result(statistic, moments, tally, s, n, x)
    rows: int = slots.shape[0]
    return rows


# -- runtime logic ---------------------------------------------------------------------------
class RollingLogic(KeyedStateLogic):
    """Runtime of the rolling family and zscore: one kernel call per batch, state per key."""

    def __init__(self, config: NodeConfig, statistic: str, snapshot: bytes | None = None) -> None:
        self._name = config.name
        self._field = str(config.params["field"])
        self._window = int(config.params["window"])
        self._time_window = int(config.params.get("time_window", 0))
        self._min_periods = min_periods_of(config.params)
        self._sign = _EXTREME_SIGNS.get(statistic, 0.0)
        self._statistic = _STATISTICS.get(statistic, -1)
        window = self._window
        per_key: dict[str, StateArray] = {}
        if self._sign:
            per_key["nan_at"] = StateArray(1, np.int64, _NEVER)
            if window:
                per_key["deque"] = StateArray(3, np.int64, 0)
                per_key["deque_at"] = StateArray(window, np.int64, 0)
                per_key["deque_values"] = StateArray(window, np.float64, 0.0)
        else:
            per_key["moments"] = StateArray(_MOMENTS, np.float64, 0.0)
            per_key["tally"] = StateArray(6, np.int64, 0)
        shared = {}
        if not window:
            per_key["ring"] = GROWABLE_RING
            shared = ring_pools()
        if not window and self._sign:
            per_key["counted"] = GROWABLE_RING
            shared.update({f"counted_{name}": pool for name, pool in ring_pools().items()})
        self._state = KeyedState(inputs=1, period=max(window, 1), features=1,
                                 per_key=per_key, shared=shared, snapshot=snapshot)

    def update(
        self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64], xs: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Fold events (keys already mapped by ``slots``) in; each event's value and emit flag."""
        self._state.check_slots(slots)
        out = np.empty(len(slots), dtype=np.float64)
        if self._window:
            return out, self._update_count_window(slots, ts, xs, out)
        return out, self._update_time_window(slots, ts, xs, out)

    def _update_count_window(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                             xs: npt.NDArray[np.float64],
                             out: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        cache, key = self._state.cache, self._state.per_key
        emitted = np.empty(len(slots), dtype=np.bool_)
        history = (slots, ts, xs, cache.times, cache.values, cache.head, cache.count)
        if self._sign:
            count_extreme_kernel(self._sign, self._window, self._min_periods, *history,
                                  key["deque"], key["deque_at"], key["deque_values"],
                                  key["nan_at"], out, emitted)
        else:
            kernel = _count_squares_kernel if self._statistic >= _STD else _count_sums_kernel
            kernel(self._statistic, self._window, self._min_periods, *history, key["moments"],
                   key["tally"], out, emitted)
        return emitted

    def _update_time_window(
        self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
        xs: npt.NDArray[np.float64], out: npt.NDArray[np.float64],
    ) -> npt.NDArray[np.bool_]:
        key, shared = self._state.per_key, self._state.shared
        kernel = _time_squares_kernel if self._statistic >= _STD else _time_sums_kernel
        emitted = np.empty(len(slots), dtype=np.bool_)
        row = 0
        while True:
            if self._sign:
                row = time_extreme_kernel(self._sign, self._time_window, self._min_periods, row,
                                           slots, ts, xs, key["nan_at"], key["ring"],
                                           shared["positions"], shared["pool"], key["counted"],
                                           shared["counted_positions"], out, emitted)
            else:
                row = kernel(self._statistic, self._time_window, self._min_periods, row, slots,
                             ts, xs, key["moments"], key["tally"], key["ring"],
                             shared["positions"], shared["pool"], out, emitted)
            if row == len(slots):
                return emitted
            ring, prefix = key["ring"], ""
            if row < 0:  # the counting ring of the key is full, not its deque
                row, ring, prefix = -1 - row, key["counted"], "counted_"
            # That ring of slots[row]'s key is full: double it, then resume at that row.
            shared[f"{prefix}positions"], shared[f"{prefix}pool"] = grow_ring(
                ring, shared[f"{prefix}positions"], shared[f"{prefix}pool"],
                shared[f"{prefix}used"], slots[row])

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The statistic for every event whose window is ready, at that event's ts and key."""
        batch = inputs[0]
        values, emitted = self.update(self.slots(batch.key), batch.ts,
                                      float_column(batch, self._field, self._name))
        return rows_emitted(batch, values, emitted)


# -- declarations ----------------------------------------------------------------------------
class _RollingDef(OperatorDef):
    """Shared declaration of the rolling family: a field, and a count or a time window."""

    statistic: ClassVar[str]
    keys_apart: ClassVar[bool] = True  # per-key state, moved by the key's events alone
    params: ClassVar[tuple[Param, ...]] = (
        Param("field", "str", default="value", doc="input field to aggregate"),
        *WINDOW_PARAMS,
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: float64}``; ParamError unless exactly one of window and time_window is set."""
        check_window(cls.type_name, params)
        require_fields(cls.type_name, inputs[0], [params["field"]], NUMERIC_TYPES)
        return VALUE_SCHEMA

    @classmethod
    def history(cls, params: Mapping[str, Any]) -> int:
        """A count window keeps ``window`` events; a time window's rings are its own."""
        return max(int(params["window"]), 1)

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``RollingLogic`` for this statistic, fresh or restored from ``snapshot``."""
        return RollingLogic(config, cls.statistic, snapshot)


@register
class RollingSumDef(_RollingDef):
    """Sum of a field over each key's last ``window`` events or ``time_window`` of event time.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.rolling_sum("price", time_window="2s", name="s")
    >>> logic = lookup(node.operator).create(node.config())
    >>> second = 1_000_000_000
    >>> batch = sd.Batch.from_columns(ts=[0, second, 2 * second], key=["a", "a", "a"],
    ...                               price=[1.0, 2.0, 4.0])
    >>> logic.process([batch]).to_records()  # (t - 2s, t]: the event at 0 leaves at 2s
    [{'ts': 0, 'key': 'a', 'value': 1.0}, {'ts': 1000000000, 'key': 'a', 'value': 3.0},
     {'ts': 2000000000, 'key': 'a', 'value': 6.0}]
    """

    type_name: ClassVar[str] = "rolling_sum"
    statistic: ClassVar[str] = "sum"
    summary: ClassVar[str] = "rolling sum per key over a count or time window"


@register
class RollingMeanDef(_RollingDef):
    """Mean of a field over each key's last ``window`` events or ``time_window`` of event time.

    A count window emits once the key has ``window`` events; a time window emits every event.
    With ``min_periods``, a window emits once it holds that many events (pandas' meaning).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.rolling_mean("price", window=2, name="m")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3, 4], key=["a", "b", "a", "a"],
    ...                               price=[1.0, 5.0, 2.0, 4.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 3, 'key': 'a', 'value': 1.5}, {'ts': 4, 'key': 'a', 'value': 3.0}]
    >>> partial = ticks.rolling_mean("price", window=2, min_periods=1, name="m1")
    >>> [r["value"] for r in lookup("rolling_mean").create(partial.config()).process([batch])
    ...  .to_records()]
    [1.0, 5.0, 1.5, 3.0]
    """

    type_name: ClassVar[str] = "rolling_mean"
    statistic: ClassVar[str] = "mean"
    summary: ClassVar[str] = "rolling mean per key over a count or time window"


@register
class RollingStdDef(_RollingDef):
    """Sample standard deviation (ddof=1) of a field over each key's rolling window.

    A window of one event gives NaN; a window of equal values gives exactly 0.0.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.rolling_std("price", window=3, name="sd")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3, 4], key=["a"] * 4, price=[1.0, 2.0, 3.0, 5.0])
    >>> [round(r["value"], 6) for r in logic.process([batch]).to_records()]
    [1.0, 1.527525]
    """

    type_name: ClassVar[str] = "rolling_std"
    statistic: ClassVar[str] = "std"
    summary: ClassVar[str] = "rolling sample standard deviation per key"


@register
class RollingMinDef(_RollingDef):
    """Minimum of a field over each key's rolling window (NaN while a NaN is in the window).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.rolling_min("price", window=2, name="lo")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a"] * 3, price=[3.0, 1.0, 2.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 2, 'key': 'a', 'value': 1.0}, {'ts': 3, 'key': 'a', 'value': 1.0}]
    """

    type_name: ClassVar[str] = "rolling_min"
    statistic: ClassVar[str] = "min"
    summary: ClassVar[str] = "rolling minimum per key (monotonic deque)"


@register
class RollingMaxDef(_RollingDef):
    """Maximum of a field over each key's rolling window (NaN while a NaN is in the window).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.rolling_max("price", window=2, name="hi")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a"] * 3, price=[3.0, 1.0, 2.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 2, 'key': 'a', 'value': 3.0}, {'ts': 3, 'key': 'a', 'value': 2.0}]
    """

    type_name: ClassVar[str] = "rolling_max"
    statistic: ClassVar[str] = "max"
    summary: ClassVar[str] = "rolling maximum per key (monotonic deque)"
