"""A partition's bounds: which ends reading to the log's end can reach."""

from __future__ import annotations

from aiokafka import TopicPartition

from connectors.source_bounds import PartitionBounds, Timestamp

_TP = TopicPartition("t", 0)


def test_only_an_end_offset_or_a_past_end_time_ends_by_the_log() -> None:
    assert not PartitionBounds(_TP, 0).ends_by_log  # unbounded
    assert PartitionBounds(_TP, 0, end_offset=10).ends_by_log
    assert PartitionBounds(_TP, 0, end=Timestamp(5), end_in_past=True).ends_by_log
    # A future end time ends at its first record at or after it, never by the log alone.
    assert not PartitionBounds(_TP, 0, end=Timestamp(5)).ends_by_log
    assert not PartitionBounds(_TP, 0, start=Timestamp(5)).ends_by_log
