"""Per-partition watermarks with bounded lateness and idleness, as a Kafka source emits them.

Each partition's watermark is the largest event time seen on it minus the allowed lateness.
The source's watermark is the smallest over the partitions that still hold it back: a
partition that has had no records for ``idle_timeout_s`` (or has reached its end) stops
holding it back, and a partition that has seen nothing yet holds it back until it goes idle.
Once every partition is idle or finished, the watermark passes the newest event seen: what was
read is final, so the last events of a quiet stream are released too, and the source is
``idle``: the runtime tells its subscribers (``WatermarkStatus``), so that in a sharded graph
or a join a quiet source holds back no other input's events either.
The watermark never moves backwards.

A partition with records still to read (its log end past the reader's position) is never
quiet: the broker serving it slowly is no reason to leave it out; nor is one nothing has come
back about yet (no fetch answer, no log end measured), as just after a restore. Quiet time
counts only while the source is reading (``ReadingClock``): a reader held back by
backpressure, or not started yet, has not looked, so its partitions are not idle for it; else
the first records read after such a pause would fall below a watermark that overtook them.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "PartitionRuns",
    "PartitionWatermarks",
    "ReadingClock",
    "partition_runs",
]


class ReadingClock:
    """Seconds spent inside ``reading()`` spans: the clock partitions' quiet time is kept on.

    >>> now = [0.0]
    >>> clock = ReadingClock(lambda: now[0])
    >>> with clock.reading():
    ...     now[0] = 2.0
    >>> now[0] = 50.0; clock()          # not reading: the clock stands still
    2.0
    >>> with clock.reading():
    ...     now[0] = 51.5; clock()
    3.5
    """

    def __init__(self, base: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._spent = 0.0
        self._since: float | None = None

    def __call__(self) -> float:
        """Reading time so far, including the span in progress."""
        if self._since is None:
            return self._spent
        return self._spent + self._base() - self._since

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A span during which the source is reading (spans do not nest)."""
        self._since = self._base()
        try:
            yield
        finally:
            self._spent = self()
            self._since = None


class PartitionWatermarks:
    """Tracks event time per partition and derives the source watermark.

    >>> now = [0.0]
    >>> marks = PartitionWatermarks([0, 1], lateness_ns=10, idle_timeout_s=5.0,
    ...                             clock=lambda: now[0])
    >>> marks.observe(0, 100); marks.current() is None   # partition 1 has seen nothing yet
    True
    >>> now[0] = 6.0; marks.current()                    # ...and is idle now; so is 0
    101
    >>> marks.idle()
    True
    >>> marks.observe(1, 50); marks.current(), marks.idle()  # never backwards; 1 is active
    (101, False)
    """

    def __init__(
        self,
        partitions: Iterable[int],
        *,
        lateness_ns: int = 0,
        idle_timeout_s: float | None = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lateness_ns = lateness_ns
        self._idle_timeout_s = math.inf if idle_timeout_s is None else idle_timeout_s
        self._clock = clock
        started = clock()
        self._max_event_ns: dict[int, int | None] = dict.fromkeys(partitions)
        self._last_activity: dict[int, float] = dict.fromkeys(self._max_event_ns, started)
        self._finished: set[int] = set()
        self._emitted: int | None = None

    def observe(self, partition: int, max_event_ns: int | None) -> None:
        """Note that records arrived on ``partition``; ``max_event_ns`` is their largest time.

        ``None`` means records arrived without a usable event time (e.g. all poison): the
        partition is active, but its event time does not move.
        """
        self._last_activity[partition] = self._clock()
        if max_event_ns is not None:
            self.observe_time(partition, max_event_ns)

    def event_times(self) -> dict[int, int | None]:
        """Per partition, the newest event time seen (what a checkpoint keeps of this state)."""
        return dict(self._max_event_ns)

    def restore_event_times(self, event_times: dict[int, int | None]) -> None:
        """Continue from a checkpoint's ``event_times``: a restored stream that stays quiet
        must still release its last events once idle, which needs the newest time seen."""
        for partition, newest in event_times.items():
            if partition in self._max_event_ns and newest is not None:
                self.observe_time(partition, newest)

    def observe_time(self, partition: int, max_event_ns: int) -> None:
        """Raise ``partition``'s newest event time without counting it as activity."""
        previous = self._max_event_ns.get(partition)
        if previous is None or max_event_ns > previous:
            self._max_event_ns[partition] = max_event_ns

    def finish(self, partition: int) -> None:
        """Mark ``partition`` as at its end: it no longer holds the watermark back."""
        self._finished.add(partition)

    def reopen(self, partition: int) -> None:
        """Undo ``finish`` (after a seek back): the partition holds the watermark again."""
        self._finished.discard(partition)
        self._last_activity[partition] = self._clock()

    def idle(self) -> bool:
        """Whether every partition is idle or finished (so is a source with none at all)."""
        now = self._clock()
        return all(partition in self._finished
                   or now - self._last_activity[partition] >= self._idle_timeout_s
                   for partition in self._max_event_ns)

    def current(self) -> int | None:
        """The source watermark now, or None while no partition allows one."""
        now = self._clock()
        holding: list[int | None] = []
        for partition, max_event in self._max_event_ns.items():
            idle = now - self._last_activity[partition] >= self._idle_timeout_s
            if partition in self._finished or idle:
                continue
            holding.append(None if max_event is None else max_event - self._lateness_ns)
        if holding:
            if any(mark is None for mark in holding):
                return self._emitted
            candidate = min(mark for mark in holding if mark is not None)
        else:
            # Every partition is idle or finished: nothing seen so far can be overtaken any
            # more, so the newest event itself is final (else a quiet stream would hold its
            # last events, and every window they close, until traffic resumed).
            known = [mark for mark in self._max_event_ns.values() if mark is not None]
            if not known:
                return self._emitted
            candidate = max(known) + 1
        if self._emitted is None or candidate > self._emitted:
            self._emitted = candidate
        return self._emitted


@dataclass(frozen=True)
class PartitionRuns:
    """A read's rows judged per partition: which are late, and what each partition kept.

    ``partitions`` are those with a row kept, in row order, and ``newest`` the newest event
    time of each one's kept rows.
    """

    late: npt.NDArray[np.bool_]
    late_count: int
    partitions: list[int]
    newest: list[int]


def partition_runs(ts: npt.NDArray[np.int64], partitions: npt.NDArray[np.int32],
                   newest: Mapping[int, int | None], lateness_ns: int, *,
                   drop_late: bool = True) -> PartitionRuns:
    """Which records are late (none unless ``drop_late``) and each partition's newest kept
    event time, in one compiled pass over the rows.

    A record is late when it is more than ``lateness_ns`` behind an earlier event of its
    partition. Rows are grouped by partition, each group in offset order; ``newest`` is each
    partition's newest event time before these rows. The answer depends on each partition's
    records alone, in their order, never on how reads cut them: a live run and its replay drop
    the same records.

    >>> runs = partition_runs(np.array([5, 3, 9, 4, 2]), np.array([0, 0, 0, 1, 1], np.int32),
    ...                       {0: None, 1: 3}, 1)
    >>> runs.late.tolist(), runs.late_count, runs.partitions, runs.newest
    ([False, True, False, False, True], 2, [0, 1], [9, 4])
    """
    count = len(ts)
    late = np.zeros(count, dtype=np.bool_)
    if not count:
        return PartitionRuns(late, 0, [], [])
    # An unknown newest time judges as the smallest int64 does: nothing is behind it.
    seen = [(partition, stamp) for partition, stamp in newest.items() if stamp is not None]
    seen_partitions = np.array([partition for partition, _ in seen], dtype=np.int64)
    seen_times = np.array([stamp for _, stamp in seen], dtype=np.int64)
    run_partitions = np.empty(count, dtype=np.int64)
    run_newest = np.empty(count, dtype=np.int64)
    runs, late_count = _judge_runs(np.asarray(ts, dtype=np.int64), partitions, seen_partitions,
                                   seen_times, lateness_ns, drop_late, late, run_partitions,
                                   run_newest)
    return PartitionRuns(late, late_count, run_partitions[:runs].tolist(),
                         run_newest[:runs].tolist())


@njit(cache=True)
def _judge_runs(ts: Any, partitions: Any, seen_partitions: Any, seen_times: Any,
                lateness_ns: int, drop_late: bool, late: Any, run_partitions: Any,
                run_newest: Any) -> tuple[int, int]:
    """Fills ``late`` and, per run of one partition with a row kept, its partition and newest
    kept time; returns (runs filled, late rows)."""
    count = ts.shape[0]
    runs = 0
    late_count = 0
    row = 0
    while row < count:
        partition = partitions[row]
        before = np.iinfo(np.int64).min
        for j in range(seen_partitions.shape[0]):
            if seen_partitions[j] == partition:
                before = seen_times[j]
                break
        kept = False
        newest = before
        while row < count and partitions[row] == partition:
            stamp = ts[row]
            # ts < before - lateness, without running below the smallest int64
            if drop_late and stamp < before and before - stamp > lateness_ns:
                late[row] = True
                late_count += 1
            elif not kept or stamp > newest:
                kept = True
                newest = stamp
            before = max(before, stamp)
            row += 1
        if kept:
            run_partitions[runs] = partition
            run_newest[runs] = newest
            runs += 1
    return runs, late_count
