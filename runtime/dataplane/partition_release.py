"""Event-time order per source partition, for a keyed node over a source partitioned by key.

A source declared ``partitioned_by_key`` promises that every record of a key is in one of its
partitions. A node whose operator keeps its keys apart (``OperatorDef.keys_apart``: each key's
output depends on that key's events alone, in event-time order) then needs each key's events
in time order, not all keys' events together: it may release a partition's events as soon as
that partition's own watermark (``PartitionMarks``) passes them, instead of waiting for the
slowest partition, which at thin traffic costs about one fetch cycle of latency per event.

Each key's released sequence is the one the whole-input aligner gives: its events sorted by
time, equal times in arrival order (a partition's order). The source drops a record behind an
earlier one of its partition as late (``connectors.watermarks.behind_their_partition``), so no
event is late here that the whole-input aligner would have taken, and a replay (which merges
partitions by time and releases by the input's watermark) gives every key the same output.

The node checks the promise: a key arriving from two partitions fails it, with the fix.
The whole-input watermark still releases too (a partition gone idle holds nothing back),
and what is held and each partition's release bound are part of its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class KeySpansPartitionsError(StreamdagError):
    """A key arrived from two partitions of a source declared ``partitioned_by_key``."""


class KeyPartitionedAligner(EventTimeAligner):
    """An ``EventTimeAligner`` for one input that releases each source partition's events by
    the partition's own mark, once the input carries marks (``advance_partitions``).

    Until the first marks, it is the whole-input aligner. From then on an event is released
    once it is below the larger of its partition's mark and the input's bound, and every key
    is checked to come from one partition. What is released is sorted by time (stable: a
    partition's equal times keep their order).

    >>> aligner = KeyPartitionedAligner(Schema.of(value="float64"), node="mean")
    >>> batch = Batch(np.array([5, 7]), np.array([b"a", b"b"]), {"value": np.array([1., 2.])},
    ...               np.array([0, 1], np.int32), np.array([10, 20]))
    >>> aligner.add(0, batch).ts.size
    0
    >>> aligner.advance_partitions(((0, 6), (1, 7)))  # partition 1 still holds t=7
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
                 node: str) -> None:
        super().__init__([schema], state)
        self._node = node
        #: Every event held, in arrival order, with its partition (``_WHOLE``: none known).
        self._waiting: Batch | None = None
        #: Per partition, the newest mark it promised and the bound it was released below.
        self._marks: dict[int, int] = {}
        self._part_released: dict[int, int] = {}
        #: Keys seen since the marks began (sorted) and the partition of each.
        self._keys = np.empty(0, dtype="S1")
        self._key_partitions = np.empty(0, dtype=np.int32)
        if state is not None:
            self._marks = dict(state.partition_marks)
            self._part_released = dict(state.partition_released)
        held = self._held[0].everything()
        self._held[0] = type(self._held[0])()  # held in ``_waiting`` instead
        if held is not None and len(held):
            self._waiting = _with_partitions(held)

    @property
    def buffered(self) -> int:
        """Events held back."""
        return 0 if self._waiting is None else len(self._waiting)

    def add(self, input_index: int, batch: Batch) -> Batch:
        """Hold a batch; return its late events (below their partition's release bound)."""
        if not len(batch):
            return batch
        batch = _with_partitions(batch)
        assert batch.partition is not None
        if self._marks:
            self._check_keys(batch.key, batch.partition)
        highest = max([self._released_below, *self._part_released.values()])
        if int(batch.ts.min()) >= highest:  # the common case: none is late
            self._wait(batch)
            return batch.slice(0, 0)
        late = batch.ts < self._bounds(self._part_released, self._released_below,
                                       batch.partition)
        if late.any():
            self._wait(batch.take(np.flatnonzero(~late)))
            return batch.take(np.flatnonzero(late))
        self._wait(batch)
        return batch.slice(0, 0)

    def advance_partitions(self, marks: Sequence[tuple[int, int]]) -> bool:
        """Partitions promise no more events below their marks; did one move?"""
        if not self._marks and marks and self._waiting is not None:
            held = self._waiting  # the first marks: what is held so far is checked too
            assert held.partition is not None
            self._check_keys(held.key, held.partition)
        moved = False
        for partition, mark in marks:
            if mark > self._marks.get(partition, NOTHING_RELEASED):
                self._marks[partition] = mark
                moved = True
        return moved

    def _bound_moved(self) -> bool:
        moved = super()._bound_moved()
        return moved or any(mark > self._part_released.get(partition, NOTHING_RELEASED)
                            for partition, mark in self._marks.items())

    def release(self) -> list[Batch] | None:
        """The held events below their bounds, sorted by time, or None when none."""
        bound = self._pending_bound
        self._released_below = max(self._released_below, bound)
        for partition, mark in self._marks.items():
            self._part_released[partition] = max(mark, bound,
                                                 self._part_released.get(partition, bound))
        waiting = self._waiting
        if waiting is None:
            return None
        assert waiting.partition is not None
        ready = waiting.ts < self._bounds(self._part_released, bound, waiting.partition)
        if not ready.any():
            return None
        if ready.all():
            self._waiting = None
            return [waiting.sorted_by_time()]
        self._waiting = waiting.take(np.flatnonzero(~ready))
        return [waiting.take(np.flatnonzero(ready)).sorted_by_time()]

    def state(self) -> AlignerState:
        """What the aligner holds now, with each partition's mark and release bound."""
        held = (self._waiting.sorted_by_time() if self._waiting is not None
                else Batch.empty(self._schemas[0]))
        return AlignerState((held,), tuple(self._watermarks), self._released_below,
                            partition_marks=tuple(sorted(self._marks.items())),
                            partition_released=tuple(sorted(self._part_released.items())))

    def _wait(self, batch: Batch) -> None:
        if len(batch):
            self._waiting = batch if self._waiting is None else Batch.concat(
                [self._waiting, batch])

    @staticmethod
    def _bounds(per_partition: dict[int, int], floor: int,
                partitions: npt.NDArray[np.int32]) -> npt.NDArray[np.int64] | int:
        """Each event's bound: its partition's, or ``floor`` where that is higher."""
        if not per_partition:
            return floor
        known = np.array(sorted(per_partition), dtype=np.int32)
        values = np.maximum(np.array([per_partition[p] for p in known.tolist()],
                                     dtype=np.int64), floor)
        at = np.minimum(np.searchsorted(known, partitions), len(known) - 1)
        return np.where(known[at] == partitions, values[at], floor)

    def _check_keys(self, keys: npt.NDArray[np.bytes_],
                    partitions: npt.NDArray[np.int32]) -> None:
        """Fail the node when a key arrives from a second partition (the promise broke)."""
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        expected = partitions[first]
        at = np.minimum(np.searchsorted(self._keys, unique), max(len(self._keys) - 1, 0))
        known = (self._keys[at] == unique) if len(self._keys) else np.zeros(len(unique), bool)
        expected[known] = self._key_partitions[at[known]]
        spread = np.flatnonzero(partitions != expected[inverse])
        if len(spread):
            row = int(spread[0])
            low, high = sorted((int(expected[inverse[row]]), int(partitions[row])))
            raise KeySpansPartitionsError(
                f"node {self._node!r}: key {bytes(keys[row])!r} came from partitions {low} and "
                f"{high} of a source declared partitioned_by_key: every record of a key must be "
                "in one partition (produce with the key as the message key), or drop "
                "partitioned_by_key from the source")
        if not known.all():
            keys_now = np.concatenate([self._keys, unique[~known]])
            order = np.argsort(keys_now, kind="stable")
            self._keys = keys_now[order]
            self._key_partitions = np.concatenate(
                [self._key_partitions, expected[~known]])[order]


def _with_partitions(batch: Batch) -> Batch:
    """``batch`` with lineage: events without a known partition are held as ``_WHOLE``'s."""
    if batch.partition is not None and batch.offset is not None:
        return batch
    return Batch(batch.ts, batch.key, batch.columns,
                 np.full(len(batch), _WHOLE, dtype=np.int32), np.zeros(len(batch), np.int64))
