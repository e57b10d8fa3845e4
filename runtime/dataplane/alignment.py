"""Event-time order for a node's inputs: events are held until the watermark passes them.

A source reads several partitions whose fetches interleave in an order that changes from run to
run, so one input may deliver ``t=100`` from one partition and then ``t=50`` from another. The
newest event time an input delivered therefore says nothing about what it may still deliver;
only its watermark does. The aligner holds every input's events and releases, for all inputs
at once, those below the smallest input watermark, each input's part sorted by event time
(stable: events of equal time keep their arrival order, so a key's order is kept). The
released sequence depends only on each input's events and the watermarks, never on how the
fetches, partitions or batches interleaved: a live run equals the replay of its records.

An idle input (``WatermarkStatus``: a source whose partitions all went quiet) is left out of
the bound until it is active again; once every input is idle, the bound is the highest of
their watermarks, so a quiet stream releases everything it delivered. The bound never moves
back: what a re-activated input delivers below it is late.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from streamdag.batch import Batch
from streamdag.schema import Schema

__all__ = ["NOTHING_RELEASED", "AlignerState", "EventTimeAligner", "combined_watermark"]

#: The release bound before any watermark: nothing has been released, nothing is late.
NOTHING_RELEASED = int(np.iinfo(np.int64).min)
_ENDED = int(np.iinfo(np.int64).max)


def combined_watermark(marks: Sequence[int | None], idle: Collection[int] = ()) -> int | None:
    """The watermark of several inputs (an ended one's is the largest int64), ``idle`` left out.

    The smallest over the inputs neither idle nor ended (None while one of them has none);
    once every input left is idle, the highest of their watermarks, as Flink's
    StatusWatermarkValve; once every input ended, the largest int64.

    >>> combined_watermark([5, None], idle={1}), combined_watermark([5, 9], idle={0, 1})
    (5, 9)
    >>> combined_watermark([None, 3]) is None, combined_watermark([_ENDED, 4], idle={1})
    (True, 4)
    """
    holding = [mark for index, mark in enumerate(marks) if mark != _ENDED and index not in idle]
    if holding:
        return None if any(mark is None for mark in holding) else min(
            mark for mark in holding if mark is not None)
    quiet = [mark for mark in marks if mark is not None and mark != _ENDED]
    if quiet:  # every input left is idle: what each delivered is final
        return max(quiet)
    return _ENDED if all(mark == _ENDED for mark in marks) else None


@dataclass(frozen=True)
class AlignerState:
    """What an aligner holds at a checkpoint, from which it is rebuilt exactly.

    ``held`` has one batch per input, in the order it would be released; ``watermarks`` has
    each input's watermark (None before the first; the largest int64 once the input ended).
    """

    held: tuple[Batch, ...]
    watermarks: tuple[int | None, ...]
    released_below: int
    #: Of a ``KeyPartitionedAligner``: per source partition, its newest mark and the bound
    #: its events were released below.
    partition_marks: tuple[tuple[int, int], ...] = ()
    partition_released: tuple[tuple[int, int], ...] = ()


class _Runs:
    """One input's held events: ts-sorted runs of consecutive arrivals, oldest first.

    A new run is merged into the one before it while that one is at most twice its size, so
    there are O(log n) runs and each event is merged O(log n) times. A release takes only the
    prefix below the bound of each run; what stays is not copied.
    """

    def __init__(self, held: Batch | None = None) -> None:
        self.runs: list[Batch] = [held] if held is not None and len(held) else []
        self.count = sum(len(run) for run in self.runs)

    def add(self, batch: Batch) -> None:
        """Hold ``batch`` (sorted by time already) as the newest run."""
        self.runs.append(batch)
        self.count += len(batch)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            newest = self.runs.pop()
            self.runs[-1] = _merge([self.runs[-1], newest])

    def take_below(self, bound: int) -> Batch | None:
        """Remove and return the events with ``ts < bound``, sorted; None when there are none."""
        taken: list[Batch] = []
        kept: list[Batch] = []
        for run in self.runs:
            cut = len(run) if bound == _ENDED else int(np.searchsorted(run.ts, bound, "left"))
            if cut:
                taken.append(run.slice(0, cut))
            if cut < len(run):
                kept.append(run.slice(cut, len(run)))
        self.runs = kept
        if not taken:
            return None
        released = _merge(taken)
        self.count -= len(released)
        return released

    def everything(self) -> Batch | None:
        """Every held event, sorted, without removing them (for a snapshot)."""
        if not self.runs:
            return None
        merged = _merge(self.runs)
        self.runs = [merged]
        return merged


def _merge(runs: Sequence[Batch]) -> Batch:
    # Runs are consecutive arrivals in order, so a stable sort of their concatenation orders
    # equal times by arrival; timsort merges the already sorted runs in linear time. A run
    # alone is sorted already (the common case: a batch released by the watermark after it).
    if len(runs) == 1:
        return runs[0]
    return Batch.concat(runs).sorted_by_time()


class EventTimeAligner:
    """Holds each input's events and releases, for all inputs at once, those below the bound.

    The bound is the smallest input watermark; an ended or idle input no longer holds it back
    (``set_idle``; see ``combined_watermark``), and once every input has ended everything is
    released. ``advance`` and ``end`` say whether the
    bound moved: only then can ``release`` give anything, so a starving input costs nothing
    per batch. An event below the bound already released is late: ``add`` hands it back,
    unbuffered, for the node's late policy.

    >>> aligner = EventTimeAligner([Schema.of(value="float64")] * 2)
    >>> aligner.add(0, Batch.from_columns(ts=[5, 1], key=["a", "a"], value=[5.0, 1.0])).ts.size
    0
    >>> aligner.advance(0, 6), aligner.release() is None  # input 1 has no watermark yet
    (False, True)
    >>> aligner.add(1, Batch.from_columns(ts=[2], key=["a"], value=[2.0])).ts.size
    0
    >>> aligner.advance(1, 3)
    True
    >>> [b.ts.tolist() for b in aligner.release()]
    [[1], [2]]
    >>> aligner.add(0, Batch.from_columns(ts=[0, 4], key=["a", "a"], value=[0.0, 4.0])).ts
    array([0])
    """

    def __init__(self, schemas: Sequence[Schema], state: AlignerState | None = None, *,
                 dynamic: bool = False, join_grace: int = 0) -> None:
        self._schemas = list(schemas)
        #: Inputs come and go (``add_input``, ``end``): one that ended no longer counts, and
        #: one that joined holds the bound where it was when it joined until its first
        #: watermark, but only while the others' watermark is less than ``join_grace`` past
        #: where it first stood after the join; then it counts from its first watermark on, and
        #: its events below the bound are late (an upstream that never sends a watermark
        #: cannot stall the node).
        self._dynamic = dynamic
        self._join_grace = join_grace
        #: Inputs that joined and have no watermark yet: (bound when they joined, the others'
        #: watermark up to which they hold it there, None until the others have one).
        self._joining: dict[int, tuple[int, int | None]] = {}
        #: Inputs that are idle now (``set_idle``); all active after a restore.
        self._idle: set[int] = set()
        if state is None:
            self._held = [_Runs() for _ in schemas]
            self._watermarks: list[int | None] = [None] * len(schemas)
            self._released_below = NOTHING_RELEASED
        else:
            if len(state.held) != len(schemas) or len(state.watermarks) != len(schemas):
                raise ValueError(
                    f"an aligner state of {len(state.held)} inputs cannot restore a node of "
                    f"{len(schemas)}; the snapshot belongs to another node"
                )
            self._held = [_Runs(batch) for batch in state.held]
            self._watermarks = list(state.watermarks)
            self._released_below = state.released_below
            if dynamic:  # inputs without a watermark at the cut join again
                self._joining = {index: (state.released_below, None)
                                 for index, mark in enumerate(self._watermarks) if mark is None}
        self._pending_bound = self._released_below

    @property
    def buffered(self) -> int:
        """Events held back, over all inputs."""
        return sum(runs.count for runs in self._held)

    @property
    def released_below(self) -> int:
        """Every event below this time has been released; a later one below it is late."""
        return self._released_below

    def add(self, input_index: int, batch: Batch) -> Batch:
        """Hold a batch of input ``input_index``; return its late events (often none)."""
        if not len(batch):
            return batch
        in_order = batch.sorted_by_time()
        if int(in_order.ts[0]) >= self._released_below:  # the common case: none is late
            self._held[input_index].add(in_order)
            return batch.slice(0, 0)
        late = batch.ts < self._released_below  # handed back in arrival order
        # The on-time events are the sorted batch's tail (equal times stay in arrival order).
        on_time = in_order.slice(int(np.searchsorted(in_order.ts, self._released_below)),
                                 len(in_order))
        if len(on_time):
            self._held[input_index].add(on_time)
        return batch.take(late)

    def advance(self, input_index: int, watermark: int) -> bool:
        """Input ``input_index`` promises no more events below ``watermark``; did the bound move?"""
        current = self._watermarks[input_index]
        if current is None or watermark > current:
            self._watermarks[input_index] = watermark
        self._joining.pop(input_index, None)
        return self._bound_moved()

    def set_idle(self, input_index: int, idle: bool) -> bool:
        """Input ``input_index`` went idle (or is active again); did the bound move?"""
        if idle:
            self._idle.add(input_index)
        else:
            self._idle.discard(input_index)
        return idle and self._bound_moved()

    def end(self, input_index: int) -> bool:
        """Input ``input_index`` has ended; did the bound move?"""
        self._watermarks[input_index] = _ENDED
        self._idle.discard(input_index)
        self._joining.pop(input_index, None)
        return self._bound_moved()

    def add_input(self, schema: Schema) -> int:
        """A further input, without a watermark yet; returns its index."""
        self._schemas.append(schema)
        self._held.append(_Runs())
        self._watermarks.append(None)
        self._joining[len(self._schemas) - 1] = (self._pending_bound, None)
        return len(self._schemas) - 1

    @property
    def bound(self) -> int | None:
        """Every input promises no more events below this time (None before any promise)."""
        return None if self._pending_bound == NOTHING_RELEASED else self._pending_bound

    def _bound_moved(self) -> bool:
        if self._dynamic:
            counted = [mark for index, mark in enumerate(self._watermarks)
                       if mark is not None and mark != _ENDED and index not in self._joining
                       and index not in self._idle]
            quiet = [mark for index, mark in enumerate(self._watermarks)
                     if mark is not None and mark != _ENDED and index in self._idle]
            if not counted and not quiet:
                return False
            others = bound = min(counted) if counted else max(quiet)
            for index, (held_at, until) in list(self._joining.items()):
                if until is None:
                    until = min(others + self._join_grace, _ENDED - 1)
                    self._joining[index] = (held_at, until)
                if others < until:
                    bound = min(bound, held_at)
                else:  # waited long enough: it counts from its first watermark on
                    del self._joining[index]
        else:
            combined = combined_watermark(self._watermarks, self._idle)
            if combined is None:
                return False
            bound = combined
        if bound <= self._pending_bound:
            return False
        self._pending_bound = bound
        return True

    def release(self) -> list[Batch] | None:
        """Every input's held events below the bound (one batch each), or None when none."""
        bound = self._pending_bound
        if bound <= self._released_below:
            return None
        self._released_below = bound
        released = [runs.take_below(bound) for runs in self._held]
        if all(batch is None for batch in released):
            return None
        return [Batch.empty(schema) if batch is None else batch
                for schema, batch in zip(self._schemas, released, strict=True)]

    def state(self) -> AlignerState:
        """What the aligner holds now, for a checkpoint (call ``release`` first)."""
        held = tuple(
            runs.everything() or Batch.empty(schema)
            for schema, runs in zip(self._schemas, self._held, strict=True)
        )
        return AlignerState(held, tuple(self._watermarks), self._released_below)
