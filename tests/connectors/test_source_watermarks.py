"""Per-partition watermarks: bounded lateness, idleness, finished partitions, monotonicity."""

from __future__ import annotations

from connectors.watermarks import PartitionWatermarks, ReadingClock


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
