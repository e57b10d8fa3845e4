"""Event-time order per source partition, for a keyed node over a source partitioned by key.

A source declared ``partitioned_by_key`` promises that every record of a key is in one of its
partitions. A node whose operator keeps its keys apart (``OperatorDef.keys_apart``: each key's
output depends on that key's events alone, in event-time order) then needs each key's events
in time order, not all keys' events together: it may release a partition's events as soon as
that partition's own watermark (``PartitionMarks``) passes them, instead of waiting for the
slowest partition, which at thin traffic costs about one fetch cycle of latency per event.

The node's one input may come over several slots, one per shard of a sharded producer (a
source at ``parallelism=N``, each shard reading its own group of partitions). A slot delivers
in order (a batch before the marks sent after it), so a partition's mark covers the events of
that partition its own slot delivered: marks and release bounds are kept per (slot,
partition) pair, and a key comes from one pair.

Each key's released sequence is the one the whole-input aligner gives: its events sorted by
time, equal times in arrival order (a partition's order; a key comes from one slot). The
source drops a record behind an earlier one of its partition as late
(``connectors.watermarks.partition_runs``), so no event is late here that the
whole-input aligner would have taken, and a replay (which merges partitions by time and
releases by the input's watermark) gives every key the same output.

The node checks the promise: a key arriving from two partitions fails it, with the fix.
The input's watermark (the smallest over its slots) still releases too (a partition gone idle
holds nothing back), and what is held and each partition's release bound are part of its
checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.dataplane.alignment import NOTHING_RELEASED, AlignerState, EventTimeAligner
from streamdag.batch import Batch
from streamdag.errors import StreamdagError
from streamdag.schema import Schema

__all__ = ["KeyPartitionedAligner", "KeySpansPartitionsError"]

#: The partition of events that came without lineage: the input's watermark alone releases
#: them.
_WHOLE = -1
#: A (slot, partition) pair is one int64: the slot above these bits, the partition in them,
#: so that slot 0's pairs are its partitions (a one-slot checkpoint reads the same).
_PARTITION_BITS = 32
_PARTITION_MASK = (1 << _PARTITION_BITS) - 1


class KeySpansPartitionsError(StreamdagError):
    """A key arrived from two partitions of a source declared ``partitioned_by_key``."""


class KeyPartitionedAligner(EventTimeAligner):
    """An ``EventTimeAligner`` for one input, over one slot or several (a sharded producer's),
    that releases each source partition's events by the partition's own mark, once the input
    carries marks (``advance_partitions``).

    Until the first marks, it is the whole-input aligner. From then on an event is released
    once it is below the larger of its partition's mark and the input's bound, and every key
    is checked to come from one partition. What is released is one batch sorted by time, then
    by slot (stable: a partition's equal times keep their order), as the worker merges the
    whole-input aligner's slots.

    >>> aligner = KeyPartitionedAligner(Schema.of(value="float64"), node="mean")
    >>> batch = Batch(np.array([5, 7]), np.array([b"a", b"b"]), {"value": np.array([1., 2.])},
    ...               np.array([0, 1], np.int32), np.array([10, 20]))
    >>> aligner.add(0, batch).ts.size
    0
    >>> aligner.advance_partitions(0, ((0, 6), (1, 7)))  # partition 1 still holds t=7
    True
    >>> [b.ts.tolist() for b in aligner.release()]
    [[5]]
    >>> aligner.add(0, Batch(np.array([4]), np.array([b"b"]), {"value": np.array([3.])},
    ...                      np.array([0], np.int32), np.array([11])))
    Traceback (most recent call last):
    ...
    runtime.dataplane.partition_release.KeySpansPartitionsError: node 'mean': key b'b' came ...
    """

    def __init__(self, schema: Schema, state: AlignerState | None = None, *,
                 node: str, slots: int = 1) -> None:
        super().__init__([schema] * slots, state)
        self._node = node
        #: Once marks came: every event held, in arrival order, and its (slot, partition).
        self._waiting: Batch | None = None
        self._units = np.empty(0, dtype=np.int64)
        #: Per (slot, partition), the newest mark it promised and the bound it was released
        #: below.
        self._marks: dict[int, int] = {}
        self._part_released: dict[int, int] = {}
        #: ``_part_released`` as arrays (units sorted, their bounds) and its highest bound,
        #: rebuilt once it changed (``_released_changed``), not on every batch.
        self._released_order: list[int] = []
        #: When the units with a bound are one range, its ends (else None).
        self._released_range: tuple[int, int] | None = None
        self._released_units = np.empty(0, dtype=np.int64)
        self._released_bounds = np.empty(0, dtype=np.int64)
        self._released_highest = NOTHING_RELEASED
        #: Whether nothing held can be released until a partition's release bound moves:
        #: every held event is at or above its partition's bound, and every partition held
        #: has marks (so the input's bound alone releases none of them).
        self._settled = False
        #: Keys seen since the marks began (sorted) and the (slot, partition) of each.
        self._keys = np.empty(0, dtype="S1")
        self._key_units = np.empty(0, dtype=np.int64)
        if state is not None and state.partition_marks:
            self._marks = dict(state.partition_marks)
            self._part_released = dict(state.partition_released)
            self._released_changed()
            self._hold_by_partition()

    @property
    def buffered(self) -> int:
        """Events held back."""
        return super().buffered + (0 if self._waiting is None else len(self._waiting))

    def add(self, input_index: int, batch: Batch) -> Batch:
        """Hold a batch of slot ``input_index``; return its late events (below their
        partition's release bound)."""
        if not self._marks:
            return super().add(input_index, batch)
        if not len(batch):
            return batch
        batch = _with_partitions(batch)
        units = _units(input_index, batch)
        self._check_keys(batch.key, units)
        if self._settled and not self._all_marked(units):
            self._settled = False
        highest = max(self._released_below, self._released_highest)
        if int(np.minimum.reduce(batch.ts)) >= highest:  # the common case: none is late
            self._wait(batch, units)
            return batch.slice(0, 0)
        late = batch.ts < self._bounds(self._released_below, units)
        if late.any():
            on_time = np.flatnonzero(~late)
            self._wait(batch.take(on_time), units[on_time])
            return batch.take(np.flatnonzero(late))
        self._wait(batch, units)
        return batch.slice(0, 0)

    def advance_partitions(self, input_index: int, marks: Sequence[tuple[int, int]]) -> bool:
        """Partitions read through slot ``input_index`` promise no more events below their
        marks; did one move?"""
        if not marks:
            return False
        if not self._marks:  # the first marks: hold by partition what is held so far too
            self._hold_by_partition()
            if self._waiting is not None:
                self._check_keys(self._waiting.key, self._units)
        moved = False
        base = input_index << _PARTITION_BITS
        for partition, mark in marks:
            unit = base | (partition & _PARTITION_MASK)
            if unit not in self._marks or mark > self._marks[unit]:
                self._marks[unit] = mark
                moved = True
        return moved

    def _bound_moved(self) -> bool:
        moved = super()._bound_moved()
        return moved or any(mark > self._part_released.get(unit, NOTHING_RELEASED)
                            for unit, mark in self._marks.items())

    def release(self) -> list[Batch] | None:
        """The held events below their bounds: once marks came one batch, sorted by time then
        slot; before, one per slot as the whole-input aligner; None when none."""
        if not self._marks:
            return super().release()
        bound = self._pending_bound
        self._released_below = max(self._released_below, bound)
        part_released = self._part_released
        changed = False
        for unit, mark in self._marks.items():
            now = max(mark, bound, part_released.get(unit, bound))
            if part_released.get(unit) != now:
                part_released[unit] = now
                changed = True
        if changed:
            self._released_changed()
        elif self._settled and len(part_released) == len(self._marks):
            return None  # no partition's bound moved, and the input's bound is below them
        waiting, units = self._waiting, self._units
        if waiting is None:
            self._settled = True
            return None
        ready = waiting.ts < self._bounds(bound, units)
        count = np.count_nonzero(ready)
        if not count:
            self._settled = self._all_marked(units)
            return None
        slots = len(self._schemas)
        if count == len(ready):
            self._waiting, self._units, self._settled = None, units[:0], True
            return [_in_order(waiting, units, slots)]
        taken, kept = np.flatnonzero(ready), np.flatnonzero(~ready)
        self._waiting, self._units = waiting.take(kept), units[kept]
        self._settled = self._all_marked(self._units)
        return [_in_order_at(waiting, taken, units, slots)]

    def state(self) -> AlignerState:
        """What the aligner holds now, with each partition's mark and release bound."""
        if not self._marks:
            return super().state()
        held = []
        for slot, schema in enumerate(self._schemas):
            if self._waiting is None:
                held.append(Batch.empty(schema))
                continue
            mine = np.flatnonzero((self._units >> _PARTITION_BITS) == slot)
            held.append(self._waiting.take(mine).sorted_by_time() if len(mine)
                        else Batch.empty(schema))
        return AlignerState(tuple(held), tuple(self._watermarks), self._released_below,
                            partition_marks=tuple(sorted(self._marks.items())),
                            partition_released=tuple(sorted(self._part_released.items())))

    def _hold_by_partition(self) -> None:
        """Move what the whole-input aligner holds into ``_waiting``, with each event's
        (slot, partition)."""
        for slot, runs in enumerate(self._held):
            held = runs.everything()
            self._held[slot] = type(runs)()
            if held is not None and len(held):
                held = _with_partitions(held)
                self._wait(held, _units(slot, held))
        self._settled = False  # held without a look at the release bounds

    def _wait(self, batch: Batch, units: npt.NDArray[np.int64]) -> None:
        if not len(batch):
            return
        if self._waiting is None:
            self._waiting, self._units = batch, units
        else:
            self._waiting = Batch.concat([self._waiting, batch])
            self._units = np.concatenate([self._units, units])

    def _released_changed(self) -> None:
        """``_part_released`` changed: rebuild its arrays and highest bound."""
        released = self._part_released
        if len(released) != len(self._released_order):  # units are only ever added
            order = self._released_order = sorted(released)
            self._released_units = np.array(order, dtype=np.int64)
            self._released_range = ((order[0], order[-1])
                                    if order and order[-1] - order[0] + 1 == len(order)
                                    else None)
        bounds = [released[unit] for unit in self._released_order]
        self._released_bounds = np.array(bounds, dtype=np.int64)
        self._released_highest = max(bounds, default=NOTHING_RELEASED)

    def _all_marked(self, units: npt.NDArray[np.int64]) -> bool:
        """Whether every one of ``units`` has a release bound of its own."""
        known = self._released_units
        if not len(units):
            return True
        if not len(known):
            return False
        if self._released_range is not None:  # the usual units: tested by two reductions
            low, high = self._released_range
            return (int(np.minimum.reduce(units)) >= low
                    and int(np.maximum.reduce(units)) <= high)
        return bool((known[_positions(known, units)] == units).all())

    def _bounds(self, floor: int,
                units: npt.NDArray[np.int64]) -> npt.NDArray[np.int64] | int:
        """Each event's bound: its (slot, partition)'s release bound, or ``floor`` where that
        is higher."""
        known = self._released_units
        if not len(known):
            return floor
        values = np.maximum(self._released_bounds, floor)
        at = _positions(known, units)
        return np.where(known[at] == units, values[at], floor)

    def _check_keys(self, keys: npt.NDArray[np.bytes_], units: npt.NDArray[np.int64]) -> None:
        """Fail the node when a key arrives from a second partition (the promise broke)."""
        if len(self._keys):  # the common case: every key known, each from its own unit
            at = _positions(self._keys, keys)
            same = self._keys[at] == keys
            same &= self._key_units[at] == units
            if np.count_nonzero(same) == len(same):
                return
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        expected = units[first]
        if len(self._keys):
            at = _positions(self._keys, unique)
            known = self._keys[at] == unique
            expected[known] = self._key_units[at[known]]
        else:
            known = np.zeros(len(unique), bool)
        spread = np.flatnonzero(units != expected[inverse])
        if len(spread):
            row = int(spread[0])
            raise KeySpansPartitionsError(_spread_message(
                self._node, bytes(keys[row]), int(expected[inverse[row]]), int(units[row])))
        if not known.all():
            keys_now = np.concatenate([self._keys, unique[~known]])
            order = np.argsort(keys_now, kind="stable")
            self._keys = keys_now[order]
            self._key_units = np.concatenate([self._key_units, expected[~known]])[order]


def _spread_message(node: str, key: bytes, one: int, other: int) -> str:
    """The fix for a key from two (slot, partition) pairs, naming their partitions."""
    low, high = sorted(_partition_of(unit) for unit in (one, other))
    where = (f"partitions {low} and {high}" if low != high
             else f"partition {low} through two shards")
    return (f"node {node!r}: key {key!r} came from {where} of a source declared "
            "partitioned_by_key: every record of a key must be in one partition (produce with "
            "the key as the message key), or drop partitioned_by_key from the source")


def _partition_of(unit: int) -> int:
    partition = unit & _PARTITION_MASK
    return _WHOLE if partition == _PARTITION_MASK else partition


def _units(slot: int, batch: Batch) -> npt.NDArray[np.int64]:
    """Each event's (slot, partition) as one int64 (``batch`` carries lineage)."""
    assert batch.partition is not None
    units = batch.partition.astype(np.int64)
    units &= _PARTITION_MASK
    if slot:
        units |= slot << _PARTITION_BITS
    return units


def _positions(known: npt.NDArray[Any], wanted: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """Where each of ``wanted`` is, or would go, in the sorted, non-empty ``known``, kept
    inside it: ``known[at] == wanted`` tells which are there."""
    at = known.searchsorted(wanted)
    np.minimum(at, len(known) - 1, out=at)
    return at


def _in_order(batch: Batch, units: npt.NDArray[np.int64], slots: int) -> Batch:
    """``batch`` sorted by time, equal times by slot, then in arrival order."""
    if slots == 1:
        return batch.sorted_by_time()
    return batch.take(np.lexsort((units >> _PARTITION_BITS, batch.ts)))


def _in_order_at(batch: Batch, at: npt.NDArray[np.intp], units: npt.NDArray[np.int64],
                 slots: int) -> Batch:
    """``batch``'s events at ``at`` (ascending) as ``_in_order`` gives them, in one take."""
    ts = batch.ts[at]
    if slots > 1:
        return batch.take(at[np.lexsort((units[at] >> _PARTITION_BITS, ts))])
    # A fetch's records come partition by partition: rarely in time order already.
    return batch.take(at[ts.argsort(kind="stable")])


def _with_partitions(batch: Batch) -> Batch:
    """``batch`` with lineage: events without a known partition are held as ``_WHOLE``'s."""
    if batch.partition is not None and batch.offset is not None:
        return batch
    return Batch(batch.ts, batch.key, batch.columns,
                 np.full(len(batch), _WHOLE, dtype=np.int32), np.zeros(len(batch), np.int64))
