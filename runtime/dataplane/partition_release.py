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

from runtime.dataplane.alignment import (
    NOTHING_RELEASED,
    AlignerState,
    EventTimeAligner,
    _Runs,
)
from streamdag.batch import Batch
from streamdag.errors import StreamdagError
from streamdag.schema import Schema

__all__ = ["KeyPartitionedAligner", "KeySpansPartitionsError"]

#: Where events are held before the first partition marks (or without lineage): the input's
#: watermark alone releases them.
_WHOLE = -1


class KeySpansPartitionsError(StreamdagError):
    """A key arrived from two partitions of a source declared ``partitioned_by_key``."""


class KeyPartitionedAligner(EventTimeAligner):
    """An ``EventTimeAligner`` for one input that releases each source partition's events by
    the partition's own mark, once the input carries marks (``advance_partitions``).

    Until the first marks, it is the whole-input aligner. From then on a partition's events
    are released below the larger of its mark and the input's bound, and every key is checked
    to come from one partition.

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
        #: Per partition, its events held, sorted by time (``_WHOLE``: before any marks).
        self._parts: dict[int, _Runs] = {}
        #: Per partition, the newest mark it promised and the bound it was released below.
        self._marks: dict[int, int] = {}
        self._part_released: dict[int, int] = {}
        #: Each key seen since the marks began, and its partition (the source's promise).
        self._key_partition: dict[bytes, int] = {}
        if state is not None:
            self._marks = dict(state.partition_marks)
            self._part_released = dict(state.partition_released)
        held = self._held[0].everything()
        self._held = [_Runs()]  # held here per partition instead
        if held is not None:
            self._hold(held)

    @property
    def buffered(self) -> int:
        """Events held back, over all partitions."""
        return sum(runs.count for runs in self._parts.values())

    def add(self, input_index: int, batch: Batch) -> Batch:
        """Hold a batch; return its late events (below their partition's release bound)."""
        if not len(batch):
            return batch
        if not self._marks or batch.partition is None:
            late = self._late(batch, np.array([self._released_below]), None)
        else:
            self._check_keys(batch.key, batch.partition)
            present = np.unique(batch.partition)
            bounds = np.array([max(self._released_below,
                                   self._part_released.get(p, NOTHING_RELEASED))
                               for p in present.tolist()])
            late = self._late(batch, bounds, np.searchsorted(present, batch.partition))
        if late is None:  # the common case: none is late
            self._hold(batch)
            return batch.slice(0, 0)
        on_time = np.flatnonzero(~late)
        if len(on_time):
            self._hold(batch.take(on_time))
        return batch.take(np.flatnonzero(late))

    def advance_partitions(self, marks: Sequence[tuple[int, int]]) -> bool:
        """Partitions promise no more events below their marks; did one move?"""
        first = not self._marks
        moved = False
        for partition, mark in marks:
            if mark > self._marks.get(partition, NOTHING_RELEASED):
                self._marks[partition] = mark
                moved = True
        if first and moved:  # the first marks: what is held goes to its partitions
            whole = self._parts.pop(_WHOLE, None)
            held = whole.everything() if whole is not None else None
            if held is not None:
                if held.partition is not None:
                    self._check_keys(held.key, held.partition)
                self._hold(held)
        return moved

    def _bound_moved(self) -> bool:
        moved = super()._bound_moved()
        return moved or any(self._release_bound(p) > self._part_released.get(p, NOTHING_RELEASED)
                            for p in self._parts)

    def release(self) -> list[Batch] | None:
        """Each partition's held events below its bound, as one batch (a partition's events
        in time order, partitions one after the other), or None when none."""
        self._released_below = max(self._released_below, self._pending_bound)
        taken: list[Batch] = []
        for partition in sorted(self._parts):
            bound = self._release_bound(partition)
            if bound <= self._part_released.get(partition, NOTHING_RELEASED):
                continue
            self._part_released[partition] = bound
            part = self._parts[partition].take_below(bound)
            if part is not None:
                taken.append(part)
        if not taken:
            return None
        return [taken[0] if len(taken) == 1 else Batch.concat(taken)]

    def state(self) -> AlignerState:
        """What the aligner holds now, with each partition's mark and release bound."""
        kept = [batch for runs in self._parts.values()
                if (batch := runs.everything()) is not None]
        held = (Batch.concat(kept).sorted_by_time() if len(kept) > 1 else
                kept[0] if kept else Batch.empty(self._schemas[0]))
        return AlignerState((held,), tuple(self._watermarks), self._released_below,
                            partition_marks=tuple(sorted(self._marks.items())),
                            partition_released=tuple(sorted(self._part_released.items())))

    def _release_bound(self, partition: int) -> int:
        return max(self._pending_bound, self._marks.get(partition, NOTHING_RELEASED))

    @staticmethod
    def _late(batch: Batch, bounds: npt.NDArray[np.int64],
              which: npt.NDArray[np.int64] | None) -> npt.NDArray[np.bool_] | None:
        """Which events are below their bound (``bounds[which]``); None when none is."""
        if int(batch.ts.min()) >= int(bounds.max()):
            return None
        return batch.ts < (bounds[0] if which is None else bounds[which])

    def _hold(self, batch: Batch) -> None:
        """Hold ``batch`` (arrival order) per partition once marks came, each part sorted."""
        partitions = batch.partition
        if not self._marks or partitions is None:
            self._parts.setdefault(_WHOLE, _Runs()).add(batch.sorted_by_time())
            return
        first = int(partitions[0])
        if bool((partitions == first).all()):
            self._parts.setdefault(first, _Runs()).add(batch.sorted_by_time())
            return
        order = np.argsort(partitions, kind="stable")
        for rows in np.split(order, np.flatnonzero(np.diff(partitions[order])) + 1):
            self._parts.setdefault(int(partitions[rows[0]]), _Runs()).add(
                batch.take(rows).sorted_by_time())

    def _check_keys(self, keys: npt.NDArray[np.bytes_],
                    partitions: npt.NDArray[np.int32]) -> None:
        """Fail the node when a key arrives from a second partition (the promise broke)."""
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        known = self._key_partition
        expected = np.array([known.setdefault(key, partition) for key, partition
                             in zip(unique.tolist(), partitions[first].tolist(), strict=True)])
        spread = np.flatnonzero(partitions != expected[inverse])
        if len(spread):
            row = int(spread[0])
            key = bytes(keys[row])
            low, high = sorted((known[key], int(partitions[row])))
            raise KeySpansPartitionsError(
                f"node {self._node!r}: key {key!r} came from partitions {low} and {high} of "
                "a source declared partitioned_by_key: every record of a key must be in one "
                "partition (produce with the key as the message key), or drop "
                "partitioned_by_key from the source")
