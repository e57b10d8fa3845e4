"""As-of joins that look ahead: ``forward`` (the first right event at or after each left
event) and ``nearest`` (the closer of that and the latest one at or before it).

A left event whose match may still come waits, linked in its key's chain, until a right event
of its key arrives or the watermark passes the point where none can win; left events come out
in their own order (time, then arrival) once every earlier one is settled, so the output never
depends on how releases and watermarks were cut. Until then the node holds its output
watermark at the oldest waiting event (``holds_from``), so nothing it emits is late downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

from operators.key_slots import KeySlots
from operators.latest_rows import join_output, right_rows
from operators.window_state import load_arrays, save_arrays
from streamdag.batch import Batch
from streamdag.operator import NodeConfig

__all__ = ["AsofAheadLogic"]

_NO_TIME = np.iinfo(np.int64).min
_END = np.iinfo(np.int64).max


@njit(cache=True, inline="always")
def _settle(e: int, s: int, ahead: Any, p_ts: Any, p_back_ts: Any, p_back: Any,
            p_match: Any, p_resolved: Any, nearest: bool, tolerance: int) -> None:
    # Left e's match is the right event at s (values ``ahead``), or for nearest its backward
    # candidate when that is as close (ties go backward); NaN when the best is too far.
    t = p_ts[e]
    use_back = False
    distance = s - t
    if nearest and p_back_ts[e] != _NO_TIME and t - p_back_ts[e] <= distance:
        use_back = True
        distance = t - p_back_ts[e]
    for f in range(p_match.shape[1]):
        if tolerance > 0 and distance > tolerance:
            p_match[e, f] = np.nan
        elif use_back:
            p_match[e, f] = p_back[e, f]
        else:
            p_match[e, f] = ahead[f]
    p_resolved[e] = True


@njit(cache=True)
def _merge(l_ts: Any, l_slot: Any, r_ts: Any, r_slot: Any, r_values: Any, last_ts: Any,
           last_values: Any, first_values: Any, head: Any, tail: Any, p_ts: Any, p_slot: Any,
           p_next: Any, p_resolved: Any, p_match: Any, p_back_ts: Any, p_back: Any, n: int,
           nearest: bool, tolerance: int) -> None:
    # Both sides in time order, a right event before a left one of the same time; the new
    # left events go to pending rows n, n + 1, ...
    i = 0
    j = 0
    while i < l_ts.shape[0] or j < r_ts.shape[0]:
        if j < r_ts.shape[0] and (i >= l_ts.shape[0] or r_ts[j] <= l_ts[i]):
            k, s = r_slot[j], r_ts[j]
            e = head[k]
            while e >= 0:  # every waiting left event of the key is settled by this one
                if not p_resolved[e]:
                    _settle(e, s, r_values[j], p_ts, p_back_ts, p_back, p_match, p_resolved,
                            nearest, tolerance)
                e = p_next[e]
            head[k] = -1
            tail[k] = -1
            if s != last_ts[k]:
                first_values[k] = r_values[j]
            last_ts[k] = s
            last_values[k] = r_values[j]
            j += 1
        else:
            k, t = l_slot[i], l_ts[i]
            e = n
            n += 1
            p_slot[e], p_next[e], p_resolved[e] = k, -1, False  # p_ts holds the new ones
            p_back_ts[e] = last_ts[k]
            p_back[e] = last_values[k]
            if last_ts[k] == t:  # a right event at the same time: nothing can be closer
                _settle(e, t, first_values[k], p_ts, p_back_ts, p_back, p_match, p_resolved,
                        nearest, tolerance)
            elif tail[k] < 0:
                head[k] = e
                tail[k] = e
            else:
                p_next[tail[k]] = e
                tail[k] = e
            i += 1


@njit(cache=True)
def _expire(watermark: int, p_ts: Any, p_back_ts: Any, p_back: Any, p_match: Any,
            p_resolved: Any, nearest: bool, tolerance: int) -> None:
    # No right event below ``watermark`` is still to come: settle every waiting left event
    # that no later right event could match (or beat its backward candidate).
    for e in range(p_ts.shape[0]):
        if p_resolved[e]:
            continue
        t = p_ts[e]
        late = watermark == _END or (tolerance > 0 and watermark - t > tolerance)
        behind = nearest and p_back_ts[e] != _NO_TIME and watermark - t >= t - p_back_ts[e]
        if not (late or behind):
            continue
        if nearest and p_back_ts[e] != _NO_TIME and (
                tolerance == 0 or t - p_back_ts[e] <= tolerance):
            for f in range(p_match.shape[1]):
                p_match[e, f] = p_back[e, f]
        else:
            for f in range(p_match.shape[1]):
                p_match[e, f] = np.nan
        p_resolved[e] = True


@njit(cache=True)
def _relink(p_slot: Any, p_resolved: Any, p_next: Any, head: Any, tail: Any) -> None:
    head[:] = -1
    tail[:] = -1
    for e in range(p_slot.shape[0]):
        p_next[e] = -1
        if p_resolved[e]:
            continue
        k = p_slot[e]
        if tail[k] < 0:
            head[k] = e
        else:
            p_next[tail[k]] = e
        tail[k] = e


class AsofAheadLogic:
    """Runtime logic of an ``asof_join`` node with direction ``forward`` or ``nearest``."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._tolerance = int(config.params["tolerance"])
        self._nearest = config.params["direction"] == "nearest"
        prefix = str(config.params["prefix"])
        self._left_schema, right_schema = config.input_schemas
        self._right_fields = right_schema.names
        self._output_names = [prefix + name for name in self._right_fields]
        fields = len(self._right_fields)
        if snapshot is None:
            self._keys = KeySlots()
            self._last_ts = np.empty(0, dtype=np.int64)
            self._last = np.empty((0, fields), dtype=np.float64)
            self._first = np.empty((0, fields), dtype=np.float64)
            self._pending = Batch.empty(self._left_schema)
            self._p_slot = np.empty(0, dtype=np.int64)
            self._p_resolved = np.empty(0, dtype=np.bool_)
            self._p_match = np.empty((0, fields), dtype=np.float64)
            self._p_back_ts = np.empty(0, dtype=np.int64)
            self._p_back = np.empty((0, fields), dtype=np.float64)
        else:
            a = load_arrays(snapshot)
            self._keys = KeySlots.restore(a["keys"].tobytes())
            self._last_ts, self._last, self._first = a["last_ts"], a["last"], a["first"]
            self._pending = Batch(a["p_ts"], a["p_key"], {
                name: a[f"p_field_{name}"] for name in self._left_schema.names})
            self._p_slot, self._p_resolved = a["p_slot"], a["p_resolved"]
            self._p_match, self._p_back_ts, self._p_back = a["p_match"], a["p_back_ts"], a["p_back"]
        self._head = np.empty(0, dtype=np.int64)
        self._tail = np.empty(0, dtype=np.int64)
        self._grow()
        self._p_next = np.empty(len(self._p_slot), dtype=np.int64)
        _relink(self._p_slot, self._p_resolved, self._p_next, self._head, self._tail)

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Settle what the new events decide; the settled prefix of left events, in order."""
        left, right = inputs[0].sorted_by_time(), inputs[1].sorted_by_time()
        l_slot, r_slot = self._keys.slots(left.key), self._keys.slots(right.key)
        self._grow()
        fields = len(self._right_fields)
        r_values = right_rows(right, self._right_fields)
        n, extra = len(self._pending), len(left)
        if extra:
            self._pending = Batch.concat([self._pending, left]) if n else left
            self._p_slot = np.concatenate([self._p_slot, l_slot])
            self._p_next = np.concatenate([self._p_next, np.full(extra, -1, np.int64)])
            self._p_resolved = np.concatenate([self._p_resolved, np.zeros(extra, np.bool_)])
            self._p_match = np.concatenate([self._p_match, np.zeros((extra, fields))])
            self._p_back_ts = np.concatenate([self._p_back_ts, np.zeros(extra, np.int64)])
            self._p_back = np.concatenate([self._p_back, np.zeros((extra, fields))])
        _merge(left.ts, l_slot, right.ts, r_slot, r_values, self._last_ts, self._last,
               self._first, self._head, self._tail, self._pending.ts, self._p_slot,
               self._p_next, self._p_resolved, self._p_match, self._p_back_ts, self._p_back, n,
               self._nearest, self._tolerance)
        return self._settled()

    def on_watermark(self, watermark: int) -> Batch | None:
        """Settle the left events no right event still to come can match; emit the prefix."""
        _expire(int(watermark), self._pending.ts, self._p_back_ts, self._p_back, self._p_match,
                self._p_resolved, self._nearest, self._tolerance)
        settled = self._settled()
        return settled if len(settled) else None

    def holds_from(self) -> int | None:
        """The time of the oldest left event not yet emitted: the output watermark waits."""
        return int(self._pending.ts[0]) if len(self._pending) else None

    def snapshot(self) -> bytes:
        """Keys, each key's last right event, and the waiting left events."""
        return save_arrays(
            keys=np.frombuffer(self._keys.snapshot(), dtype=np.uint8), last_ts=self._last_ts,
            last=self._last, first=self._first, p_ts=self._pending.ts, p_key=self._pending.key,
            **{f"p_field_{n}": self._pending.columns[n] for n in self._left_schema.names},
            p_slot=self._p_slot, p_resolved=self._p_resolved, p_match=self._p_match,
            p_back_ts=self._p_back_ts, p_back=self._p_back,
        )

    def _settled(self) -> Batch:
        waiting = np.flatnonzero(~self._p_resolved)
        cut = int(waiting[0]) if len(waiting) else len(self._p_resolved)
        out = join_output(self._pending.slice(0, cut), self._output_names,
                          self._p_match[:cut].copy())
        if cut:
            self._pending = self._pending.slice(cut, len(self._pending))
            self._p_slot, self._p_resolved = self._p_slot[cut:], self._p_resolved[cut:]
            self._p_match, self._p_back = self._p_match[cut:], self._p_back[cut:]
            self._p_back_ts, self._p_next = self._p_back_ts[cut:], self._p_next[cut:]
            _relink(self._p_slot, self._p_resolved, self._p_next, self._head, self._tail)
        return out

    def _grow(self) -> None:
        capacity = self._keys.capacity
        held = len(self._last_ts)
        if capacity > held:
            fields = self._last.shape[1]
            self._last_ts = np.concatenate([self._last_ts, np.full(capacity - held, _NO_TIME)])
            self._last = np.concatenate([self._last, np.full((capacity - held, fields), np.nan)])
            self._first = np.concatenate([self._first,
                                          np.full((capacity - held, fields), np.nan)])
        if len(self._head) < capacity:
            self._head = np.full(capacity, -1, dtype=np.int64)
            self._tail = np.full(capacity, -1, dtype=np.int64)
            if hasattr(self, "_p_next"):
                _relink(self._p_slot, self._p_resolved, self._p_next, self._head, self._tail)
