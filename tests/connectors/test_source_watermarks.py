"""Per-partition watermarks: bounded lateness, idleness, finished partitions, monotonicity."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from connectors.watermarks import PartitionWatermarks, ReadingClock, partition_runs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_min_over_partitions_minus_lateness() -> None:
    clock = Clock()
    marks = PartitionWatermarks([0, 1, 2], lateness_ns=5, idle_timeout_s=10.0, clock=clock)
    marks.observe(0, 100)
    marks.observe(1, 70)
    assert marks.current() is None  # partition 2 has seen nothing and is not idle yet
    marks.observe(2, 90)
    assert marks.current() == 65
    marks.observe(1, 120)
    assert marks.current() == 85


def test_idle_partitions_stop_holding_the_watermark_back() -> None:
    clock = Clock()
    marks = PartitionWatermarks([0, 1], lateness_ns=0, idle_timeout_s=2.0, clock=clock)
    marks.observe(0, 50)
    marks.observe(1, 10)
    assert marks.current() == 10
    clock.now = 1.5
    marks.observe(0, 60)
    clock.now = 2.5  # partition 1 silent for 2.5 s, partition 0 for 1 s
    assert marks.current() == 60
    clock.now = 10.0  # everything idle: past the largest known time, so all of it is final
    marks_before = marks.current()
    marks.observe(1, 30)  # partition 1 wakes up behind: the watermark never goes back
    assert (marks_before, marks.current()) == (61, 61)


def test_activity_without_event_time_keeps_a_partition_active() -> None:
    clock = Clock()
    marks = PartitionWatermarks([0, 1], idle_timeout_s=1.0, clock=clock)
    marks.observe(0, 100)
    marks.observe(1, 20)
    clock.now = 5.0
    marks.observe(1, None)  # only poison records arrived
    assert marks.current() == 20


def test_finished_partitions_do_not_hold_back_and_none_means_never_idle() -> None:
    clock = Clock()
    marks = PartitionWatermarks([0, 1], idle_timeout_s=None, clock=clock)
    marks.observe(0, 100)
    clock.now = 1e9
    assert marks.current() is None
    marks.finish(1)
    assert marks.current() == 100
    marks.reopen(1)
    marks.observe(1, 200)
    assert marks.current() == 100


def test_time_not_spent_reading_makes_no_partition_idle() -> None:
    # A reader held back (backpressure, or not started) has not looked at its partitions: on
    # the reading clock they stay active, so the next read cannot fall below the watermark.
    now = [0.0]
    reading = ReadingClock(lambda: now[0])
    marks = PartitionWatermarks([0, 1], idle_timeout_s=1.0, clock=reading)
    with reading.reading():
        marks.observe(0, 100)
        marks.observe(1, 50)
    now[0] = 60.0  # a minute held back
    with reading.reading():
        now[0] = 60.5
        marks.observe(0, 200)
        assert (marks.current(), marks.idle()) == (50, False)
        now[0] = 61.2  # partition 1 quiet for 1.2 s of reading: now it is idle
        assert (marks.current(), marks.idle()) == (200, False)


def _runs_reference(ts: list[int], partitions: list[int], newest: dict[int, int | None],
                    lateness: int, drop_late: bool) -> tuple[list[bool], list[int], list[int]]:
    """Row by row: late flags, then each run's partition and newest kept time."""
    late: list[bool] = []
    kept: list[tuple[int, int]] = []  # (run, time) of every kept row
    runs: list[int] = []
    before: int | None = None
    for row, (stamp, partition) in enumerate(zip(ts, partitions, strict=True)):
        if row == 0 or partitions[row - 1] != partition:
            runs.append(partition)
            before = newest.get(partition)
        behind = drop_late and before is not None and stamp < before - lateness
        late.append(behind)
        if not behind:
            kept.append((len(runs) - 1, stamp))
        before = stamp if before is None else max(before, stamp)
    kept_runs = sorted({run for run, _ in kept})
    return (late, [runs[run] for run in kept_runs],
            [max(stamp for r, stamp in kept if r == run) for run in kept_runs])


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(-10, 10)), max_size=40),
    newest=st.dictionaries(st.integers(0, 4), st.none() | st.integers(-12, 12)),
    lateness=st.integers(0, 5),
    drop_late=st.booleans(),
)
@example(rows=[(0, 5), (0, 3)], newest={}, lateness=2, drop_late=True)  # exactly the lateness
def test_partition_runs_equal_a_row_by_row_reference(
    rows: list[tuple[int, int]], newest: dict[int, int | None], lateness: int, drop_late: bool
) -> None:
    rows = sorted(rows, key=lambda row: row[0])  # grouped by partition, as a read's rows are
    ts = [stamp for _, stamp in rows]
    partitions = [partition for partition, _ in rows]
    runs = partition_runs(np.array(ts, dtype=np.int64), np.array(partitions, dtype=np.int32),
                          newest, lateness, drop_late=drop_late)
    late, kept_partitions, kept_newest = _runs_reference(ts, partitions, newest, lateness,
                                                         drop_late)
    assert runs.late.tolist() == late
    assert runs.late_count == sum(late)
    assert (runs.partitions, runs.newest) == (kept_partitions, kept_newest)


def test_partition_runs_of_ungrouped_rows_judge_each_run_afresh() -> None:
    # Partition 0 comes back after partition 1: its second run starts from ``newest`` again.
    runs = partition_runs(np.array([10, 20, 5, 3], dtype=np.int64),
                          np.array([0, 1, 0, 0], dtype=np.int32), {0: 4}, 0)
    assert runs.late.tolist() == [False, False, False, True]
    assert (runs.partitions, runs.newest) == ([0, 1, 0], [10, 20, 5])
