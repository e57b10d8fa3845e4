"""Release by partition: over a source partitioned by key, a keyed node gets every key's events
exactly as the whole-input aligner gives them, only sooner.

A source's partitions hold disjoint keys, each partition's events in any time order. A schedule
reads random partitions in chunks of any size; the source drops what is behind an earlier event
of its partition (``behind_their_partition``) and sends each read partition's mark, then the
whole input's watermark (the smallest over the partitions). Whatever the schedule, and across a
checkpoint at any point, every key gets the same events in the same order from the partition
aligner as from the whole-input one, none is late in either, and which events the source drops
does not depend on how reads cut the partitions.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from connectors.watermarks import behind_their_partition
from runtime.dataplane.alignment import EventTimeAligner
from runtime.dataplane.messages import Barrier, EndOfStream, PartitionMarks, Payload, Watermark
from runtime.dataplane.partition_release import KeyPartitionedAligner, KeySpansPartitionsError
from runtime.dataplane.worker import NodeWorker
from streamdag.batch import Batch
from streamdag.schema import Schema

SCHEMA = Schema.of(value="float64")
KEYS = ("a", "b", "c", "d", "e", "f")
Event = tuple[int, str, float]


@st.composite
def _partitions(draw: st.DrawFn) -> list[list[Event]]:
    """Events split over 1-4 partitions by key, in arrival (offset) order, times out of order."""
    count = draw(st.integers(1, 4))
    events = draw(st.lists(st.tuples(st.integers(0, 15), st.sampled_from(KEYS)), max_size=40))
    split: list[list[Event]] = [[] for _ in range(count)]
    for position, (ts, key) in enumerate(events):
        split[KEYS.index(key) % count].append((ts, key, float(position)))
    return split


def _batch(events: list[Event], partitions: list[int]) -> Batch:
    return Batch(np.array([e[0] for e in events], dtype=np.int64),
                 np.array([e[1].encode() for e in events], dtype="S1"),
                 {"value": np.array([e[2] for e in events], dtype=np.float64)},
                 np.array(partitions, dtype=np.int32), np.arange(len(events), dtype=np.int64))


def _records(batch: Batch) -> list[Event]:
    return [(int(r["ts"]), str(r["key"]), float(r["value"]))  # type: ignore[arg-type]
            for r in batch.to_records()]


def _per_key(events: list[Event]) -> dict[str, list[tuple[int, float]]]:
    keyed: dict[str, list[tuple[int, float]]] = {}
    for ts, key, value in events:
        keyed.setdefault(key, []).append((ts, value))
    return keyed


def _reads(partitions: list[list[Event]], rng: random.Random, lateness: int) -> list[tuple[
        Batch, tuple[tuple[int, int], ...], int | None]]:
    """What the source sends per read: the on-time records, the read partitions' marks, the
    whole input's watermark (None until every partition has had an event)."""
    taken = [0] * len(partitions)
    newest: dict[int, int | None] = dict.fromkeys(range(len(partitions)))
    reads = []
    while any(taken[p] < len(events) for p, events in enumerate(partitions)):
        open_ = [p for p, events in enumerate(partitions) if taken[p] < len(events)]
        events, owners = [], []
        for p in sorted(rng.sample(open_, rng.randint(1, len(open_)))):
            size = rng.randint(1, 5)
            chunk = partitions[p][taken[p]:taken[p] + size]
            taken[p] += len(chunk)
            events += chunk
            owners += [p] * len(chunk)
        batch = _batch(events, owners)
        assert batch.partition is not None
        late = behind_their_partition(batch.ts, batch.partition, newest, lateness)
        batch = batch.take(np.flatnonzero(~late))
        assert batch.partition is not None
        for p, ts in zip(batch.partition.tolist(), batch.ts.tolist(), strict=True):
            seen = newest[p]
            newest[p] = ts if seen is None else max(seen, ts)
        marks = tuple((p, stamp - lateness) for p in sorted(set(batch.partition.tolist()))
                      if (stamp := newest[p]) is not None)
        known = [stamp for stamp in newest.values() if stamp is not None]
        watermark = min(known) - lateness if len(known) == len(newest) else None
        reads.append((batch, marks, watermark))
    return reads


def _on_time(partitions: list[list[Event]], lateness: int) -> list[Event]:
    """Every partition's records the source keeps, judged on the whole partition at once."""
    kept: list[Event] = []
    for p, events in enumerate(partitions):
        batch = _batch(events, [p] * len(events))
        assert batch.partition is not None
        late = behind_their_partition(batch.ts, batch.partition, {p: None}, lateness)
        kept += [event for event, behind in zip(events, late.tolist(), strict=True)
                 if not behind]
    return kept


@settings(max_examples=200, deadline=None)
@given(partitions=_partitions(), seed=st.integers(0, 2**32 - 1),
       checkpoint_at=st.integers(0, 40), lateness=st.integers(0, 4))
def test_every_key_gets_what_the_whole_input_aligner_gives_whatever_the_reads(
        partitions: list[list[Event]], seed: int, checkpoint_at: int, lateness: int) -> None:
    reads = _reads(partitions, random.Random(seed), lateness)
    by_partition = KeyPartitionedAligner(SCHEMA, node="mean")
    whole = EventTimeAligner([SCHEMA])
    got: dict[str, list[Event]] = {"by partition": [], "whole": []}
    for step, (batch, marks, watermark) in enumerate(reads):
        if step == checkpoint_at:  # a checkpoint: rebuild from the state, lose nothing
            by_partition = KeyPartitionedAligner(SCHEMA, by_partition.state(), node="mean")
        assert len(by_partition.add(0, batch)) == 0
        assert len(whole.add(0, batch)) == 0
        by_partition.advance_partitions(marks)
        for name, aligner in (("by partition", by_partition), ("whole", whole)):
            if watermark is not None:
                aligner.advance(0, watermark)
            released = aligner.release()
            if released is not None:
                got[name] += _records(released[0])
    for name, aligner in (("by partition", by_partition), ("whole", whole)):
        aligner.end(0)
        released = aligner.release()
        if released is not None:
            got[name] += _records(released[0])
        assert aligner.buffered == 0
    expected = _per_key(sorted(_on_time(partitions, lateness), key=lambda e: e[0]))
    assert _per_key(got["by partition"]) == expected
    assert _per_key(got["whole"]) == expected


def test_a_partition_is_released_by_its_own_mark_while_another_holds_the_watermark() -> None:
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch([(1, "a", 1.0), (2, "a", 2.0), (1, "b", 3.0)], [0, 0, 1]))
    assert aligner.advance_partitions(((0, 2), (1, 1)))
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(1, "a", 1.0)]
    # Partition 1 says nothing more; partition 0 moves on alone.
    aligner.add(0, _batch([(7, "a", 4.0)], [0]))
    assert aligner.advance_partitions(((0, 7),))
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(2, "a", 2.0)]
    assert not aligner.advance_partitions(((0, 7),))  # no move, nothing to release
    assert aligner.release() is None
    assert aligner.buffered == 2  # (1, b) below nothing yet; (7, a) is its partition's newest
    assert aligner.advance(0, 5)  # the whole input's watermark releases every partition
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(1, "b", 3.0)]


def test_a_key_from_a_second_partition_fails_the_node_with_the_fix() -> None:
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch([(1, "a", 1.0)], [2]))
    aligner.advance_partitions(((2, 1),))
    with pytest.raises(KeySpansPartitionsError) as refused:
        aligner.add(0, _batch([(2, "b", 2.0), (3, "a", 3.0)], [1, 1]))
    assert str(refused.value) == (
        "node 'mean': key b'a' came from partitions 1 and 2 of a source declared "
        "partitioned_by_key: every record of a key must be in one partition (produce with the "
        "key as the message key), or drop partitioned_by_key from the source")


def test_before_any_marks_it_is_the_whole_input_aligner_and_keys_may_span_partitions() -> None:
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch([(3, "a", 1.0), (1, "a", 2.0)], [0, 1]))  # a source not by key
    assert aligner.advance(0, 2)
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(1, "a", 2.0)]
    assert _records(aligner.add(0, _batch([(0, "a", 3.0)], [1]))) == [(0, "a", 3.0)]  # late


def _mean_worker() -> NodeWorker:
    ticks = sd.source("ticks", topic="t", schema={"value": "float64"}, partitioned_by_key=True)
    return NodeWorker(ticks.rolling_mean(field="value", window=2, name="mean").config())


def test_a_rolling_mean_emits_on_its_partition_mark_before_the_watermark_moves() -> None:
    worker = _mean_worker()
    batch = _batch([(1, "a", 1.0), (2, "a", 3.0), (3, "a", 5.0), (1, "b", 7.0)], [0, 0, 0, 1])
    assert worker.feed(0, batch) == []
    out = worker.feed(0, PartitionMarks(((0, 3), (1, 1))))
    assert [_records(b) for b in out if isinstance(b, Batch)] == [[(2, "a", 2.0)]]
    assert worker.feed(0, Watermark(1)) == [Watermark(1)]  # the watermark itself is unchanged
    tail = worker.feed(0, EndOfStream())
    assert [_records(b) for b in tail if isinstance(b, Batch)] == [[(3, "a", 4.0)]]
    assert worker.stats.late_events == 0


def test_a_node_that_does_not_keep_keys_apart_ignores_partition_marks() -> None:
    ticks = sd.source("ticks", topic="t", schema={"value": "float64"}, partitioned_by_key=True)
    worker = NodeWorker(ticks.crossover(ticks.map("value * 2", name="twice"),
                                        name="cross").config())
    assert worker.feed(0, PartitionMarks(((0, 9),))) == []


def test_what_the_source_drops_does_not_depend_on_how_reads_cut_a_partition() -> None:
    ts = np.array([5, 3, 6, 6, 2, 9, 8], dtype=np.int64)
    partitions = np.zeros(len(ts), dtype=np.int32)
    whole = behind_their_partition(ts, partitions, {0: None}, 1).tolist()
    assert whole == [False, True, False, False, True, False, False]
    for cut in range(1, len(ts)):
        first = behind_their_partition(ts[:cut], partitions[:cut], {0: None}, 1)
        rest = behind_their_partition(ts[cut:], partitions[cut:], {0: int(ts[:cut].max())}, 1)
        assert [*first.tolist(), *rest.tolist()] == whole


def test_a_node_restored_from_its_checkpoint_goes_on_releasing_by_partition_exactly() -> None:
    first = _batch([(1, "a", 1.0), (2, "a", 3.0), (5, "a", 5.0), (1, "b", 7.0)], [0, 0, 0, 1])
    second = _batch([(6, "a", 9.0), (2, "b", 11.0), (3, "b", 13.0)], [0, 1, 1])
    steps: list[Payload] = [first, PartitionMarks(((0, 5), (1, 1))), Barrier(1), second,
                            PartitionMarks(((0, 6), (1, 3))), EndOfStream()]

    def outputs(worker: NodeWorker, payloads: list[Payload]) -> list[Event]:
        return [event for payload in payloads for out in worker.feed(0, payload)
                if isinstance(out, Batch) for event in _records(out)]

    whole = _mean_worker()
    expected = outputs(whole, steps)
    # Each release comes sorted by time: a key's order is all that partitions promise.
    assert expected == [(2, "a", 2.0), (2, "b", 9.0), (5, "a", 4.0), (3, "b", 12.0),
                        (6, "a", 7.0)]
    before = _mean_worker()
    got = outputs(before, steps[:3])
    restored = NodeWorker(before.config, snapshot=before.snapshots[1])
    got += outputs(restored, steps[3:])
    assert got == expected
