"""NodeCache: a node's numba ring buffers, logically ``C[input, key, slot, feature]``."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.key_slots import KeySlots
from streamdag.errors import MissingDataError
from streamdag.operator import MissingPolicy

__all__ = ["LATE_FILL", "NodeCache"]

_POLICY_CODES = {"skip": 0, "fail": 1, "interpolate": 2}
_NO_BUCKET = np.iinfo(np.int64).min
#: The fill count ``append_windows`` gives a late event (one it dropped).
LATE_FILL = -1
_STORED, _LATE, _GAP = 0, 1, 2


@njit(cache=True, inline="always")
def _push(times: Any, values: Any, head: Any, count: Any, i: int, s: int, t: int, row: Any) -> None:
    period = times.shape[2]
    position = head[i, s]
    times[i, s, position] = t
    for f in range(values.shape[3]):
        values[i, s, position, f] = row[f]
    head[i, s] = (position + 1) % period
    if count[i, s] < period:
        count[i, s] += 1


@njit(cache=True, inline="always")
def _append_record(
    times: Any,
    values: Any,
    head: Any,
    count: Any,
    last_bucket: Any,
    newest: Any,
    stats: Any,
    input_index: int,
    s: int,
    t: int,
    row: Any,
    interval: int,
    policy: int,
    before: Any,
    filler: Any,
) -> int:
    # Returns _STORED, _LATE (older than the key's newest event: dropped and counted, so a
    # window never holds data newer than its event) or _GAP (a gap under `fail`: not stored).
    # stats: [gaps seen, buckets interpolated, late records dropped]. `before` and `filler` are
    # scratch rows owned by the caller, so appending never allocates per record.
    period = times.shape[2]
    if interval <= 0:
        _push(times, values, head, count, input_index, s, t, row)
        return _STORED
    if t < newest[input_index, s]:
        stats[2] += 1
        return _LATE
    bucket = (t // interval) * interval
    last = last_bucket[input_index, s]
    if last != _NO_BUCKET and bucket == last:
        newest[input_index, s] = t
        position = (head[input_index, s] - 1) % period
        for f in range(values.shape[3]):
            values[input_index, s, position, f] = row[f]
        return _STORED
    if last != _NO_BUCKET and bucket > last + interval:
        stats[0] += 1
        if policy == 1:
            return _GAP
        if policy == 2:
            position = (head[input_index, s] - 1) % period
            for f in range(values.shape[3]):
                before[f] = values[input_index, s, position, f]
            missing = (bucket - last) // interval - 1
            # Only the last `period` filled buckets can stay in the window.
            first = max(np.int64(1), missing - period + 1)
            for k in range(first, missing + 1):
                weight = k / (missing + 1.0)
                for f in range(values.shape[3]):
                    filler[f] = before[f] + (row[f] - before[f]) * weight
                _push(times, values, head, count, input_index, s, last + k * interval, filler)
                stats[1] += 1
    _push(times, values, head, count, input_index, s, bucket, row)
    last_bucket[input_index, s] = bucket
    newest[input_index, s] = t
    return _STORED


@njit(cache=True)
def _late_rows(newest: Any, input_index: int, slots: Any, ts: Any, scratch: Any,
               late: Any) -> None:
    # late[r]: the record is older than its key's newest event so far (the cache's, or an
    # earlier record's here). `scratch` holds _NO_BUCKET per slot on entry and again on exit.
    for r in range(slots.shape[0]):
        s = slots[r]
        seen = max(newest[input_index, s], scratch[s])
        late[r] = ts[r] < seen
        if not late[r]:
            scratch[s] = ts[r]
    for r in range(slots.shape[0]):
        scratch[slots[r]] = _NO_BUCKET


@njit(cache=True)
def _gather(times: Any, values: Any, head: Any, count: Any, input_index: int, s: int,
            feature: int, out: Any) -> int:
    # Writes the window oldest -> newest into the END of `out`; returns how many are valid.
    period = times.shape[2]
    n = count[input_index, s]
    start = (head[input_index, s] - n) % period
    width = out.shape[0]
    for k in range(width - n):
        out[k] = np.nan
    for k in range(n):
        out[width - n + k] = values[input_index, s, (start + k) % period, feature]
    return int(n)


@njit(cache=True)
def _gather_many(times: Any, values: Any, head: Any, count: Any, input_index: int, slots: Any,
                 feature: int, out: Any, filled: Any) -> None:
    for e in range(slots.shape[0]):
        filled[e] = _gather(times, values, head, count, input_index, slots[e], feature, out[e])


@njit(cache=True)
def _append(
    times: Any, values: Any, head: Any, count: Any, last_bucket: Any, newest: Any, stats: Any,
    input_index: int, slots: Any, ts: Any, rows: Any, interval: int, policy: int,
    windows: bool, feature: int, out: Any, filled: Any,
) -> int:
    # Returns -1, or the index of the record whose gap fails the `fail` policy (nothing from it
    # on is appended). With `windows`, out[r] / filled[r] receive the key's window of `feature`
    # right after record r; a late record gets a NaN row and LATE_FILL.
    before = np.empty(values.shape[3], dtype=np.float64)
    filler = np.empty(values.shape[3], dtype=np.float64)
    for r in range(slots.shape[0]):
        outcome = _append_record(times, values, head, count, last_bucket, newest, stats,
                                 input_index, slots[r], ts[r], rows[r], interval, policy,
                                 before, filler)
        if outcome == _GAP:
            return r
        if windows and outcome == _LATE:
            out[r, :] = np.nan
            filled[r] = LATE_FILL
        elif windows:
            filled[r] = _gather(times, values, head, count, input_index, slots[r], feature,
                                out[r])
    return -1


class NodeCache:
    """Per input and key, the last ``period`` events' time and feature values.

    Arrays are typed (int64 times, float64 values), sized ``[inputs, keys, period(, features)]``;
    key capacity doubles as keys arrive; appends are O(1); windows read oldest to newest across
    wraparound. With ``interval`` set, event times are bucketed to interval boundaries (the last
    event of a bucket wins), and a jump of more than one bucket is a gap handled by ``missing``:
    ``skip`` keeps going, ``fail`` raises MissingDataError, ``interpolate`` inserts linearly
    interpolated buckets. Events are taken in the order given; one older than its key's newest
    event on its input is late: it is dropped and counted (``stats``), never stored, so no
    window holds data newer than its event. A key's first buckets are no gap: gaps lie only
    between buckets the key has seen.

    >>> cache = NodeCache(inputs=1, period=3, features=1)
    >>> slots = cache.slots(np.array([b"a", b"a", b"a", b"a"]))
    >>> cache.append(0, slots, np.array([1, 2, 3, 4]), np.array([[1.0], [2.0], [3.0], [4.0]]))
    >>> cache.window(0, 0)
    (array([2, 3, 4]), array([2., 3., 4.]))
    """

    def __init__(
        self,
        inputs: int,
        period: int,
        features: int = 1,
        *,
        interval: int | None = None,
        missing: MissingPolicy = "skip",
        key_capacity: int = 64,
        key_slots: KeySlots | None = None,
    ) -> None:
        if inputs < 1 or period < 1 or features < 1:
            raise ValueError(
                f"NodeCache needs inputs, period and features >= 1, got {inputs}, {period}, "
                f"{features}"
            )
        self.inputs, self.period, self.features = inputs, period, features
        self.interval = interval or 0
        self.missing: MissingPolicy = missing
        self.key_slots = key_slots if key_slots is not None else KeySlots(key_capacity)
        capacity = max(key_capacity, self.key_slots.capacity)
        self.times = np.zeros((inputs, capacity, period), dtype=np.int64)
        self.values = np.zeros((inputs, capacity, period, features), dtype=np.float64)
        self.head = np.zeros((inputs, capacity), dtype=np.int64)
        self.count = np.zeros((inputs, capacity), dtype=np.int64)
        self.last_bucket = np.full((inputs, capacity), _NO_BUCKET, dtype=np.int64)
        #: Per input and key, the newest event time stored (interval caches only).
        self.newest = np.full((inputs, capacity), _NO_BUCKET, dtype=np.int64)
        #: [gaps seen, buckets interpolated, late records dropped]
        self.stats = np.zeros(3, dtype=np.int64)
        self._scratch = np.empty(0, dtype=np.int64)

    @property
    def key_capacity(self) -> int:
        """Keys that fit before the arrays double."""
        return int(self.times.shape[1])

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """Dense slots for ``keys`` (new keys get new slots); grows the arrays as needed."""
        slots = self.key_slots.slots(keys)
        self.ensure_keys(len(self.key_slots))
        return slots

    def ensure_keys(self, n: int) -> None:
        """Make room for ``n`` keys, doubling the key capacity as often as needed."""
        capacity = self.key_capacity
        if n <= capacity:
            return
        while capacity < n:
            capacity *= 2
        self.times = _grown(self.times, capacity, 0)
        self.values = _grown(self.values, capacity, 0.0)
        self.head = _grown(self.head, capacity, 0)
        self.count = _grown(self.count, capacity, 0)
        self.last_bucket = _grown(self.last_bucket, capacity, _NO_BUCKET)
        self.newest = _grown(self.newest, capacity, _NO_BUCKET)

    def append(
        self,
        input_index: int,
        slots: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        rows: npt.NDArray[np.float64],
    ) -> None:
        """Append events (``rows`` is events x features) for ``input_index``, in order."""
        gap = self._append(input_index, slots, ts, rows, windows=False, feature=0,
                           out=np.empty((0, 0)), filled=np.empty(0, dtype=np.int64))
        if gap >= 0:
            raise self._gap_error(input_index, int(slots[gap]), int(ts[gap]))

    def append_windows(
        self,
        input_index: int,
        slots: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        rows: npt.NDArray[np.float64],
        feature: int = 0,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Append events and return, per event, the window right after it and its fill count.

        The window array is events x period, oldest first, NaN-padded at the front while a
        key has fewer than ``period`` values. A late event (dropped) gets a NaN row and
        ``LATE_FILL``.
        """
        out, filled, gap = self.append_windows_until_gap(input_index, slots, ts, rows, feature)
        if gap >= 0:
            raise self._gap_error(input_index, int(slots[gap]), int(ts[gap]))
        return out, filled

    def append_windows_until_gap(
        self,
        input_index: int,
        slots: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        rows: npt.NDArray[np.float64],
        feature: int = 0,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], int]:
        """As ``append_windows``, but a gap under ``fail`` stops the append instead of raising.

        The third value is the failing event's position (it and the events after it are not
        appended, and their rows are undefined), or -1; ``describe_gap`` tells what happened.
        """
        out = np.empty((len(slots), self.period), dtype=np.float64)
        filled = np.zeros(len(slots), dtype=np.int64)
        gap = self._append(input_index, slots, ts, rows, windows=True, feature=feature,
                           out=out, filled=filled)
        return out, filled, gap

    def on_time(
        self, input_index: int, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Which events are not late: none older than its key's newest so far on this input.

        "So far" counts the cache and the earlier events given here. The late ones are counted
        as dropped (``stats``); append only the others. Without ``interval`` none is late.
        """
        late = np.zeros(len(slots), dtype=np.bool_)
        if self.interval:
            if len(self._scratch) < self.key_capacity:
                self._scratch = np.full(self.key_capacity, _NO_BUCKET, dtype=np.int64)
            _late_rows(self.newest, input_index, slots, ts, self._scratch, late)
            self.stats[2] += int(late.sum())
        return ~late

    def _append(
        self,
        input_index: int,
        slots: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        rows: npt.NDArray[np.float64],
        *,
        windows: bool,
        feature: int,
        out: npt.NDArray[np.float64],
        filled: npt.NDArray[np.int64],
    ) -> int:
        return int(_append(
            self.times, self.values, self.head, self.count, self.last_bucket, self.newest,
            self.stats, input_index, slots, ts, np.ascontiguousarray(rows, dtype=np.float64),
            self.interval, _POLICY_CODES[self.missing], windows, feature, out, filled,
        ))

    def window(
        self, input_index: int, slot: int, feature: int = 0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Times and values of one key's window, oldest to newest."""
        n = int(self.count[input_index, slot])
        start = (int(self.head[input_index, slot]) - n) % self.period
        order = (start + np.arange(n)) % self.period
        return (
            self.times[input_index, slot, order].copy(),
            self.values[input_index, slot, order, feature].copy(),
        )

    def gather(self, input_index: int, slot: int, feature: int = 0) -> npt.NDArray[np.float64]:
        """One key's current window as a length-``period`` row, NaN-padded at the front."""
        out = np.empty(self.period, dtype=np.float64)
        _gather(self.times, self.values, self.head, self.count, input_index, slot, feature, out)
        return out

    def gather_windows(
        self, input_index: int, slots: npt.NDArray[np.int64], feature: int = 0
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Each slot's current window (slots x period, as ``gather``) and its fill count."""
        out = np.empty((len(slots), self.period), dtype=np.float64)
        filled = np.empty(len(slots), dtype=np.int64)
        _gather_many(self.times, self.values, self.head, self.count, input_index, slots, feature,
                     out, filled)
        return out, filled

    def resident_bytes(self) -> int:
        """Bytes held by the ring buffers and the key table."""
        arrays = (self.times, self.values, self.head, self.count, self.last_bucket, self.newest,
                  self.stats, self._scratch)
        return int(sum(a.nbytes for a in arrays)) + self.key_slots.resident_bytes()

    def snapshot(self) -> bytes:
        """The whole cache as bytes; ``NodeCache.restore`` rebuilds it exactly."""
        n = len(self.key_slots)
        meta = {
            "inputs": self.inputs, "period": self.period, "features": self.features,
            "interval": self.interval, "missing": self.missing,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            keys=np.frombuffer(self.key_slots.snapshot(), dtype=np.uint8),
            times=self.times[:, :n], values=self.values[:, :n], head=self.head[:, :n],
            count=self.count[:, :n], last_bucket=self.last_bucket[:, :n],
            newest=self.newest[:, :n], stats=self.stats,
        )
        return buffer.getvalue()

    @classmethod
    def restore(cls, data: bytes) -> NodeCache:
        """Rebuild a cache from ``snapshot()`` bytes."""
        arrays = np.load(io.BytesIO(data))
        meta = json.loads(arrays["meta"].tobytes().decode())
        key_slots = KeySlots.restore(arrays["keys"].tobytes())
        cache = cls(
            meta["inputs"], meta["period"], meta["features"], interval=meta["interval"] or None,
            missing=meta["missing"], key_capacity=max(8, len(key_slots)), key_slots=key_slots,
        )
        n = len(key_slots)
        cache.ensure_keys(n)
        cache.times[:, :n] = arrays["times"]
        cache.values[:, :n] = arrays["values"]
        cache.head[:, :n] = arrays["head"]
        cache.count[:, :n] = arrays["count"]
        cache.last_bucket[:, :n] = arrays["last_bucket"]
        # A snapshot from before newest times were kept: a bucket's start is a safe lower bound.
        cache.newest[:, :n] = arrays["newest"] if "newest" in arrays else arrays["last_bucket"]
        cache.stats[:] = arrays["stats"]
        return cache

    def describe_gap(self, input_index: int, slot: int, ts: int) -> str:
        """What the gap before the event at ``ts`` of key ``slot`` is, and the fix."""
        key = self.key_slots.key_of(slot).decode("utf-8", "replace")
        last = int(self.last_bucket[input_index, slot])
        skipped = (ts // self.interval * self.interval - last) // self.interval - 1
        return (
            f"input {input_index}, key {key!r}: event at {ts} follows the bucket at {last}, "
            f"skipping {skipped} interval(s) of {self.interval} ns; the node's missing-data "
            "policy is 'fail'. Use missing='skip' or 'interpolate' to continue over gaps"
        )

    def _gap_error(self, input_index: int, slot: int, ts: int) -> MissingDataError:
        return MissingDataError(self.describe_gap(input_index, slot, ts))


def _grown(array: npt.NDArray[Any], capacity: int, fill: Any) -> npt.NDArray[Any]:
    shape = (array.shape[0], capacity, *array.shape[2:])
    grown = np.full(shape, fill, dtype=array.dtype)
    grown[:, : array.shape[1]] = array
    return grown
