"""Rolling min and max per key: monotonic deques over a count or a time window.

Each key keeps a deque of (position, sign * value) with values decreasing from the front
(``sign`` is -1 for min): a fixed ring of at most ``window`` entries for count windows, a
growable ring (``operators.keyed_state``) for time windows. Every value is pushed and popped at
most once, so an event costs O(1) amortized. NaN in the window gives NaN. With ``min_periods``
above 1, a time window also keeps its events' times in a second growable ring to count them.
The runtime logic and declarations are in ``operators.rolling``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from operators.keyed_state import (
    RING_CAPACITY,
    RING_SIZE,
    RING_START,
    evict_expired,
    push_event_time,
    push_history,
)

__all__ = ["count_extreme_kernel", "time_extreme_kernel"]

# Columns of the per-key ``deque`` array of count-window min/max.
_SEQUENCE, _FRONT, _LENGTH = 0, 1, 2


@njit(cache=True)
def count_extreme_kernel(sign: float, window: int, min_periods: int, slots: Any, ts: Any,
                          xs: Any, times: Any, values: Any, head: Any, count: Any, deque: Any,
                          deque_at: Any, deque_values: Any, nan_at: Any, out: Any,
                          emitted: Any) -> None:
    # Per key, a ring of (sequence number, sign * value) with values decreasing from the
    # front; it never holds more than `window` entries, as the oldest leaves before a push.
    for r in range(slots.shape[0]):
        s, x = slots[r], xs[r]
        _, n, _ = push_history(times, values, head, count, window, s, ts[r], x)
        position = deque[s, _SEQUENCE]
        deque[s, _SEQUENCE] = position + 1
        front, size = deque[s, _FRONT], deque[s, _LENGTH]
        if size > 0 and deque_at[s, front] <= position - window:
            front = front + 1 if front + 1 < window else 0
            size -= 1
        v = sign * x
        nan_at[s, 0] = position if math.isnan(v) else nan_at[s, 0]
        if not math.isnan(v):
            while size > 0:
                last = front + size - 1
                if deque_values[s, last if last < window else last - window] > v:
                    break
                size -= 1
            back = front + size if front + size < window else front + size - window
            deque_at[s, back], deque_values[s, back] = position, v
            size += 1
        deque[s, _FRONT], deque[s, _LENGTH] = front, size
        emitted[r] = n >= min_periods
        nan_inside = nan_at[s, 0] > position - window
        out[r] = np.nan if nan_inside else sign * deque_values[s, front]


@njit(cache=True)
def time_extreme_kernel(sign: float, time_window: int, min_periods: int, first: int,
                         slots: Any, ts: Any, xs: Any, nan_at: Any, ring: Any, positions: Any,
                         pool: Any, counted: Any, counted_positions: Any, out: Any,
                         emitted: Any) -> int:
    # Per key, a growable ring of (ts, sign * value) with values decreasing from the front,
    # and (with min_periods above 1) a growable ring of the window's event times, to count
    # them. Returns the row whose key's deque ring is full, or -1 - that row when its counting
    # ring is full (grow it, then resume there), or the row count.
    for r in range(first, slots.shape[0]):
        s, t, x = slots[r], ts[r], xs[r]
        events = 0
        if min_periods > 1:
            events = push_event_time(counted, counted_positions, s, t, time_window)
            if events == 0:
                return -1 - r
        start, mask = ring[s, RING_START], ring[s, RING_CAPACITY] - 1
        oldest, size = evict_expired(ring, positions, s, t - time_window)
        v = sign * x
        if not math.isnan(v):
            while size > 0 and pool[start + ((oldest + size - 1) & mask)] <= v:
                size -= 1
            ring[s, RING_SIZE] = size
            if size == mask + 1:
                return r
            back = start + ((oldest + size) & mask)
            positions[back], pool[back] = t, v
            ring[s, RING_SIZE] = size + 1
        # The counting ring took the event only now that the deque could take it too.
        if min_periods > 1:
            counted[s, RING_SIZE] = events
        nan_at[s, 0] = t if math.isnan(v) else nan_at[s, 0]
        emitted[r] = min_periods <= 1 or events >= min_periods
        out[r] = np.nan if nan_at[s, 0] > t - time_window else sign * pool[start + oldest]
    rows: int = slots.shape[0]
    return rows
