"""What ``KeyPartitionedAligner`` remembers between batches (its keys' partitions, its release
bounds as arrays) answers exactly as working them out afresh would: a known key arriving from
another partition still fails the node, and a partition's new release bound makes what is
below it late at once."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.dataplane.alignment import AlignerState
from runtime.dataplane.partition_release import KeyPartitionedAligner, KeySpansPartitionsError
from streamdag.batch import Batch
from streamdag.schema import Schema

SCHEMA = Schema.of(value="float64")


def _batch(events: list[tuple[int, str, int]]) -> Batch:
    """A batch of (time, key, partition) events, each valued by its position."""
    return Batch(np.array([e[0] for e in events], dtype=np.int64),
                 np.array([e[1].encode() for e in events]),
                 {"value": np.arange(len(events), dtype=np.float64)},
                 np.array([e[2] for e in events], dtype=np.int32),
                 np.arange(len(events), dtype=np.int64))


def _marked(*events: tuple[int, str, int]) -> KeyPartitionedAligner:
    """An aligner holding ``events`` that has had its first marks (it checks keys from then)."""
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch(list(events)))
    aligner.advance_partitions(0, ((0, 0), (1, 0)))
    return aligner


def test_a_batch_of_known_keys_one_of_them_from_another_partition_fails_the_node() -> None:
    aligner = _marked((1, "a", 0), (1, "b", 1))
    aligner.add(0, _batch([(2, "a", 0), (2, "b", 1)]))  # every key known, in its partition
    with pytest.raises(KeySpansPartitionsError) as refused:
        aligner.add(0, _batch([(3, "b", 1), (3, "a", 1)]))  # known keys; a moved to 1
    assert str(refused.value) == (
        "node 'mean': key b'a' came from partitions 0 and 1 of a source declared "
        "partitioned_by_key: every record of a key must be in one partition (produce with the "
        "key as the message key), or drop partitioned_by_key from the source")


def test_a_key_longer_than_every_known_one_is_a_new_key_not_a_known_one() -> None:
    aligner = _marked((1, "a", 0))
    aligner.add(0, _batch([(2, "ab", 1), (2, "a", 0)]))  # "ab" sorts after "a": new, in 1
    with pytest.raises(KeySpansPartitionsError, match="key b'ab' came from partitions 0 and 1"):
        aligner.add(0, _batch([(3, "ab", 0)]))


def test_a_partitions_new_release_bound_makes_what_is_below_it_late_at_once() -> None:
    aligner = _marked((1, "a", 0), (1, "b", 1))
    assert aligner.advance_partitions(0, ((0, 5),))
    released = aligner.release()
    assert released is not None and released[0].ts.tolist() == [1]
    late = aligner.add(0, _batch([(4, "a", 0), (4, "b", 1), (6, "a", 0)]))
    assert late.ts.tolist() == [4] and late.key.tolist() == [b"a"]  # partition 1 is at 0
    assert aligner.advance_partitions(0, ((1, 5),))
    assert aligner.release() is not None
    assert aligner.add(0, _batch([(3, "b", 1)])).ts.tolist() == [3]  # moved: late too
    assert aligner.buffered == 1  # (6, a)


def test_a_restored_aligner_judges_lateness_by_the_release_bounds_of_its_checkpoint() -> None:
    state = AlignerState((Batch.empty(SCHEMA),), (None,), -2**63,
                         partition_marks=((0, 5),), partition_released=((0, 5),))
    aligner = KeyPartitionedAligner(SCHEMA, state, node="mean")
    late = aligner.add(0, _batch([(4, "a", 0), (5, "a", 0), (4, "b", 1)]))
    assert late.ts.tolist() == [4] and late.key.tolist() == [b"a"]
    assert aligner.buffered == 2


def test_the_watermark_releases_a_partition_without_marks_held_after_a_quiet_release() -> None:
    aligner = _marked((1, "a", 0), (1, "b", 1))
    assert aligner.advance_partitions(0, ((0, 10), (1, 10)))
    released = aligner.release()
    assert released is not None and sorted(released[0].key.tolist()) == [b"a", b"b"]
    assert aligner.advance(0, 2) and aligner.release() is None  # below every partition's
    aligner.add(0, _batch([(3, "c", 2), (12, "a", 0)]))  # partition 2 has no marks yet
    assert aligner.advance(0, 4)  # the input's watermark moves, still below 0's and 1's
    released = aligner.release()
    assert released is not None and released[0].key.tolist() == [b"c"]
    assert aligner.buffered == 1


def test_the_watermark_releases_events_without_lineage_held_after_a_quiet_release() -> None:
    aligner = _marked((1, "a", 0))
    assert aligner.advance_partitions(0, ((0, 9),))
    assert aligner.release() is not None
    assert aligner.advance(0, 2) and aligner.release() is None
    aligner.add(0, Batch.from_columns(ts=[3, 4], key=["z", "z"], value=[1.0, 2.0]))
    assert aligner.advance(0, 4)
    released = aligner.release()
    assert released is not None and released[0].ts.tolist() == [3]


def test_what_a_partition_mark_releases_comes_sorted_by_time_then_arrival() -> None:
    aligner = _marked((0, "a", 0))
    aligner.add(0, _batch([(5, "a", 0), (2, "a", 0), (9, "b", 1), (2, "b", 1), (7, "a", 0)]))
    assert aligner.advance_partitions(0, ((0, 7), (1, 9)))
    released = aligner.release()
    assert released is not None
    assert released[0].ts.tolist() == [0, 2, 2, 5]
    assert released[0].key.tolist() == [b"a", b"a", b"b", b"a"]
    assert released[0].columns["value"].tolist() == [0.0, 1.0, 3.0, 0.0]
    assert aligner.buffered == 2


def test_a_partition_whose_marks_come_later_gets_its_own_release_bound() -> None:
    aligner = _marked((1, "a", 0), (1, "b", 1))
    assert aligner.advance_partitions(0, ((0, 2), (1, 2)))
    assert aligner.release() is not None
    aligner.add(0, _batch([(4, "c", 2), (6, "c", 2)]))
    assert aligner.advance_partitions(0, ((2, 6),))  # partition 2's first mark
    released = aligner.release()
    assert released is not None and released[0].ts.tolist() == [4]
    assert aligner.add(0, _batch([(5, "c", 2)])).ts.tolist() == [5]  # below 2's bound: late
    assert aligner.add(0, _batch([(5, "a", 0)])).ts.tolist() == []  # 0's bound is 2


def test_a_partition_between_two_marked_ones_without_marks_of_its_own_is_not_marked() -> None:
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch([(1, "a", 0), (1, "b", 2)]))
    assert aligner.advance_partitions(0, ((0, 10), (2, 10)))  # not partition 1
    assert aligner.release() is not None
    assert aligner.advance(0, 2) and aligner.release() is None
    aligner.add(0, _batch([(3, "c", 1), (12, "a", 0)]))
    assert aligner.advance(0, 4)
    released = aligner.release()
    assert released is not None and released[0].key.tolist() == [b"c"]
