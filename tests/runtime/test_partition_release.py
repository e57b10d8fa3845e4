"""Release by partition: over a source partitioned by key, a keyed node gets every key's events
exactly as the whole-input aligner gives them, only sooner.

A source's partitions hold disjoint keys, each partition's events in any time order. A schedule
reads random partitions in chunks of any size; the source drops what is behind an earlier event
of its partition (``partition_runs``) and sends each read partition's mark, then the
whole input's watermark (the smallest over the partitions). Whatever the schedule, and across a
checkpoint at any point, every key gets the same events in the same order from the partition
aligner as from the whole-input one, none is late in either, and which events the source drops
does not depend on how reads cut the partitions.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from connectors.watermarks import partition_runs
from runtime.dataplane.alignment import AlignerState, EventTimeAligner
from runtime.dataplane.messages import Barrier, EndOfStream, PartitionMarks, Payload, Watermark
from runtime.dataplane.partition_release import KeyPartitionedAligner, KeySpansPartitionsError
from runtime.dataplane.worker import NodeWorker, WorkerSnapshot
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


@st.composite
def _sharded(draw: st.DrawFn) -> tuple[list[list[Event]], list[int]]:
    """Partitions and the slot (source shard) reading each: every slot reads one at least."""
    partitions = draw(_partitions())
    slots = draw(st.integers(1, min(3, len(partitions))))
    owners = list(range(slots)) + draw(st.lists(st.integers(0, slots - 1),
                                                min_size=len(partitions) - slots,
                                                max_size=len(partitions) - slots))
    return partitions, draw(st.permutations(owners))


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


@dataclasses.dataclass(frozen=True)
class _Step:
    """What slot ``slot`` delivers: a read (its on-time records, the read partitions' marks,
    the slot's watermark, None until each of its partitions had an event), or that it went
    idle for good (all its partitions read), or that it ended."""

    slot: int
    status: str = "read"  # or "idle", "ended"
    batch: Batch | None = None
    marks: tuple[tuple[int, int], ...] = ()
    watermark: int | None = None


def _reads(partitions: list[list[Event]], owners: list[int], rng: random.Random,
           lateness: int) -> list[_Step]:
    """Each slot reads its own partitions as a source shard does, the slots in random turns;
    a slot whose partitions are all read may go idle, then end, at any later turn."""
    taken = [0] * len(partitions)
    newest: dict[int, int | None] = dict.fromkeys(range(len(partitions)))
    slots = max(owners) + 1
    mine = [[p for p, owner in enumerate(owners) if owner == slot] for slot in range(slots)]
    done: list[str] = ["reading"] * slots
    steps: list[_Step] = []
    while any(state != "ended" for state in done):
        slot = rng.choice([s for s in range(slots) if done[s] != "ended"])
        open_ = [p for p in mine[slot] if taken[p] < len(partitions[p])]
        if not open_:  # read up: idle for good, or ended
            done[slot] = "ended" if done[slot] == "idle" or rng.random() < 0.5 else "idle"
            steps.append(_Step(slot, done[slot]))
            continue
        events, read_from = [], []
        for p in sorted(rng.sample(open_, rng.randint(1, len(open_)))):
            size = rng.randint(1, 5)
            chunk = partitions[p][taken[p]:taken[p] + size]
            taken[p] += len(chunk)
            events += chunk
            read_from += [p] * len(chunk)
        batch = _batch(events, read_from)
        assert batch.partition is not None
        late = partition_runs(batch.ts, batch.partition, newest, lateness).late
        batch = batch.take(np.flatnonzero(~late))
        assert batch.partition is not None
        for p, ts in zip(batch.partition.tolist(), batch.ts.tolist(), strict=True):
            seen = newest[p]
            newest[p] = ts if seen is None else max(seen, ts)
        marks = tuple((p, stamp - lateness) for p in sorted(set(batch.partition.tolist()))
                      if (stamp := newest[p]) is not None)
        known = [stamp for p in mine[slot] if (stamp := newest[p]) is not None]
        watermark = min(known) - lateness if len(known) == len(mine[slot]) else None
        steps.append(_Step(slot, "read", batch, marks, watermark))
    return steps


def _on_time(partitions: list[list[Event]], lateness: int) -> list[Event]:
    """Every partition's records the source keeps, judged on the whole partition at once."""
    kept: list[Event] = []
    for p, events in enumerate(partitions):
        batch = _batch(events, [p] * len(events))
        assert batch.partition is not None
        late = partition_runs(batch.ts, batch.partition, {p: None}, lateness).late
        kept += [event for event, behind in zip(events, late.tolist(), strict=True)
                 if not behind]
    return kept


def _is_prefix(shorter: list[tuple[int, float]], longer: list[tuple[int, float]]) -> bool:
    return longer[:len(shorter)] == shorter


@settings(max_examples=300, deadline=None)
@given(sharded=_sharded(), seed=st.integers(0, 2**32 - 1), checkpoint_at=st.integers(0, 40),
       lateness=st.integers(0, 4))
def test_every_key_gets_what_the_whole_input_aligner_gives_whatever_the_reads_and_slots(
        sharded: tuple[list[list[Event]], list[int]], seed: int, checkpoint_at: int,
        lateness: int) -> None:
    partitions, owners = sharded
    slots = max(owners) + 1
    steps = _reads(partitions, owners, random.Random(seed), lateness)
    by_partition = KeyPartitionedAligner(SCHEMA, node="mean", slots=slots)
    whole = EventTimeAligner([SCHEMA] * slots)
    got: dict[str, list[Event]] = {"by partition": [], "whole": []}
    idle: set[int] = set()
    #: Every event delivered so far, with its partition; each partition's newest mark.
    delivered: list[tuple[int, int]] = []
    marked: dict[int, int] = {}

    def take(name: str, aligner: EventTimeAligner) -> None:
        released = aligner.release()
        if released is not None:
            got[name] += [event for batch in released for event in _records(batch)]

    for at, step in enumerate(steps):
        slot = step.slot
        if at == checkpoint_at:  # a checkpoint: rebuild from the state, lose nothing
            by_partition = KeyPartitionedAligner(SCHEMA, by_partition.state(), node="mean",
                                                 slots=slots)
            for quiet in idle:  # idleness is not in a checkpoint: its producer repeats it
                by_partition.set_idle(quiet, True)
        for name, aligner in (("by partition", by_partition), ("whole", whole)):
            if step.status == "idle":
                idle.add(slot)
                aligner.set_idle(slot, True)
            elif step.status == "ended":
                aligner.end(slot)
            else:
                assert step.batch is not None
                assert len(aligner.add(slot, step.batch)) == 0, f"{name}: late events"
                if isinstance(aligner, KeyPartitionedAligner):
                    aligner.advance_partitions(slot, step.marks)
                if step.watermark is not None:
                    aligner.advance(slot, step.watermark)
            take(name, aligner)
        if step.batch is not None:
            assert step.batch.partition is not None
            delivered += zip(step.batch.ts.tolist(), step.batch.partition.tolist(), strict=True)
            marked.update(step.marks)
        # Exactly the events below their partition's mark or the input's bound are out.
        bound = whole.released_below
        assert by_partition.released_below == bound
        assert by_partition.buffered == sum(
            ts >= max(marked.get(p, bound), bound) for ts, p in delivered)
        # Partition marks only ever release sooner: the whole input's output so far is a
        # prefix of each key's.
        sooner, later = _per_key(got["by partition"]), _per_key(got["whole"])
        assert all(_is_prefix(events, sooner.get(key, [])) for key, events in later.items())
    for aligner in (by_partition, whole):
        assert aligner.buffered == 0
    expected = _per_key(sorted(_on_time(partitions, lateness), key=lambda e: e[0]))
    assert _per_key(got["by partition"]) == expected
    assert _per_key(got["whole"]) == expected


def test_a_partition_is_released_by_its_own_mark_while_another_holds_the_watermark() -> None:
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch([(1, "a", 1.0), (2, "a", 2.0), (1, "b", 3.0)], [0, 0, 1]))
    assert aligner.advance_partitions(0, ((0, 2), (1, 1)))
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(1, "a", 1.0)]
    # Partition 1 says nothing more; partition 0 moves on alone.
    aligner.add(0, _batch([(7, "a", 4.0)], [0]))
    assert aligner.advance_partitions(0, ((0, 7),))
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(2, "a", 2.0)]
    assert not aligner.advance_partitions(0, ((0, 7),))  # no move, nothing to release
    assert aligner.release() is None
    assert aligner.buffered == 2  # (1, b) below nothing yet; (7, a) is its partition's newest
    assert aligner.advance(0, 5)  # the whole input's watermark releases every partition
    released = aligner.release()
    assert released is not None and _records(released[0]) == [(1, "b", 3.0)]


def test_a_key_from_a_second_partition_fails_the_node_with_the_fix() -> None:
    aligner = KeyPartitionedAligner(SCHEMA, node="mean")
    aligner.add(0, _batch([(1, "a", 1.0)], [2]))
    aligner.advance_partitions(0, ((2, 1),))
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
    whole = partition_runs(ts, partitions, {0: None}, 1).late.tolist()
    assert whole == [False, True, False, False, True, False, False]
    for cut in range(1, len(ts)):
        first = partition_runs(ts[:cut], partitions[:cut], {0: None}, 1).late
        rest = partition_runs(ts[cut:], partitions[cut:], {0: int(ts[:cut].max())}, 1).late
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


def _sharded_mean_worker(slots: int) -> NodeWorker:
    """The mean fed by a source at ``parallelism=slots``: one input slot per source shard."""
    ticks = sd.source("ticks", topic="t", schema={"value": "float64"}, partitioned_by_key=True)
    config = ticks.rolling_mean(field="value", window=2, name="mean").config()
    return NodeWorker(dataclasses.replace(config, fan_in=(slots,)))


def _slot_outputs(worker: NodeWorker,
                  steps: Sequence[tuple[int, Payload]]) -> list[list[Event]]:
    """What each step released, per step."""
    return [[event for out in worker.feed(slot, payload) if isinstance(out, Batch)
             for event in _records(out)] for slot, payload in steps]


def test_a_sharded_input_releases_each_slots_partitions_by_their_own_marks() -> None:
    # Source shard 0 reads partitions 0 and 2, shard 1 partition 1; no watermark comes before
    # the end, so only the marks release anything.
    steps: list[tuple[int, Payload]] = [
        (0, _batch([(1, "a", 1.0), (2, "a", 3.0), (3, "a", 5.0), (1, "c", 2.0),
                    (2, "c", 4.0)], [0, 0, 0, 2, 2])),
        (1, _batch([(1, "b", 7.0), (2, "b", 9.0), (3, "b", 11.0)], [1, 1, 1])),
        (0, PartitionMarks(((0, 3), (2, 2)))),
        (1, PartitionMarks(((1, 3),))),
        (0, Barrier(1)),
        (1, Barrier(1)),
        (0, _batch([(4, "a", 7.0), (3, "c", 6.0)], [0, 2])),
        (0, PartitionMarks(((0, 4), (2, 3)))),
        (1, EndOfStream()),
        (0, EndOfStream()),
    ]
    expected = [[], [], [(2, "a", 2.0)], [(2, "b", 8.0)], [], [], [],
                [(2, "c", 3.0), (3, "a", 4.0)], [],
                [(3, "c", 5.0), (3, "b", 10.0), (4, "a", 6.0)]]
    worker = _sharded_mean_worker(2)
    assert _slot_outputs(worker, steps) == expected
    assert worker.stats.late_events == 0
    # Restored from the barrier with the same slots, it goes on exactly.
    before = _sharded_mean_worker(2)
    _slot_outputs(before, steps[:6])
    restored = NodeWorker(before.config, snapshot=before.snapshots[1])
    assert _slot_outputs(restored, steps[6:]) == expected[6:]
    # Without the marks every key gets the same, all at the end.
    unmarked = [(slot, p) for slot, p in steps if not isinstance(p, PartitionMarks)]
    flat = [event for out in _slot_outputs(_sharded_mean_worker(2), unmarked) for event in out]
    assert _per_key(flat) == _per_key([event for out in expected for event in out])
    # Another slot count cannot restore it.
    with pytest.raises(ValueError, match="its snapshot has 2 input slot"):
        NodeWorker(dataclasses.replace(before.config, fan_in=(3,)),
                   snapshot=before.snapshots[1])


def test_a_key_from_partitions_of_two_source_shards_fails_the_sharded_node() -> None:
    worker = _sharded_mean_worker(2)
    worker.feed(0, _batch([(1, "a", 1.0)], [0]))
    worker.feed(0, PartitionMarks(((0, 1),)))
    with pytest.raises(KeySpansPartitionsError, match="key b'a' came from partitions 0 and 1 "):
        worker.feed(1, _batch([(2, "a", 2.0)], [1]))


def _double_worker(slots: int) -> NodeWorker:
    """A map fed by a node at ``parallelism=slots``: one input, one slot per shard."""
    ticks = sd.source("ticks", topic="t", schema={"value": "float64"})
    config = ticks.map("value * 2", name="twice").config()
    return NodeWorker(dataclasses.replace(config, fan_in=(slots,)))


def test_a_node_without_time_order_takes_each_slots_batches_as_they_arrive() -> None:
    # What a sharded mean released by partition goes on at once: a map or a sink (one actor
    # over every shard) does not wait for the slowest shard's watermark.
    worker = _double_worker(2)
    out = worker.feed(1, _batch([(5, "b", 1.0), (6, "b", 2.0)], [1, 1]))
    assert [_records(b) for b in out if isinstance(b, Batch)] == [[(5, "b", 2.0),
                                                                    (6, "b", 4.0)]]
    assert worker.feed(0, _batch([(1, "a", 3.0)], [0]))[0].to_records() == [
        {"ts": 1, "key": "a", "value": 6.0}]
    assert worker.feed(1, Watermark(6)) == []  # the input's watermark is the slots' smallest
    assert worker.feed(0, Watermark(2)) == [Watermark(2)]
    assert worker.stats.held_events == 0


def test_events_an_older_snapshot_held_for_such_a_node_come_out_first() -> None:
    # A checkpoint of a version that aligned this node's slots holds events back in it.
    held = (_batch([(4, "a", 1.0)], [0]), _batch([(3, "b", 2.0), (5, "b", 3.0)], [1, 1]))
    old = WorkerSnapshot(1, _double_worker(2).logic.snapshot(), (3, 6),
                         AlignerState(held, (3, 6), 3))
    restored = NodeWorker(_double_worker(2).config, snapshot=old)
    out = restored.feed(1, _batch([(7, "b", 4.0)], [1]))
    assert [_records(b) for b in out if isinstance(b, Batch)] == [
        [(3, "b", 4.0), (4, "a", 2.0), (5, "b", 6.0)], [(7, "b", 8.0)]]
