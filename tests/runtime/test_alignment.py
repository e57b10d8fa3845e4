"""EventTimeAligner: the same release whatever the interleaving of fetches, partitions, batches.

Each input's events live in partitions (a key always in the same one, each partition in event
time order), as a Kafka source reads them. A delivery schedule interleaves fetches of any
partitions of any input, in chunks of any size, with watermarks that never overtake what is
still to come, and ends the inputs in any order; a checkpoint may rebuild the aligner from its
state at any point. Whatever the schedule, every key gets the same events in the same order,
equal times of all inputs are released together, and a node's output is the same.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from runtime.dataplane.alignment import AlignerState, EventTimeAligner
from runtime.dataplane.messages import EndOfStream, Payload, Watermark
from runtime.dataplane.worker import NodeWorker
from streamdag.batch import Batch
from streamdag.operator_registry import lookup
from streamdag.schema import Schema

SCHEMA = Schema.of(value="float64")
KEYS = ("a", "b", "c", "d", "e")
#: One step of a schedule: a fetch (input, partition -> records taken), a watermark, an end.
Step = tuple[str, int, dict[int, int]]


@dataclass(frozen=True)
class _Input:
    """One input's events per partition, each partition sorted by time."""

    partitions: tuple[tuple[tuple[int, str, float], ...], ...]

    def events(self) -> list[tuple[int, str, float]]:
        return [event for partition in self.partitions for event in partition]


@st.composite
def _inputs(draw: st.DrawFn, count: int = 2) -> list[_Input]:
    made = []
    for index in range(count):
        partitions = draw(st.integers(1, 3))
        events = draw(st.lists(st.tuples(st.integers(0, 12), st.sampled_from(KEYS)),
                               max_size=30))
        split: list[list[tuple[int, str, float]]] = [[] for _ in range(partitions)]
        for position, (ts, key) in enumerate(events):
            # Unique values, so a test sees exactly which event went where.
            split[KEYS.index(key) % partitions].append((ts, key, index * 1000.0 + position))
        made.append(_Input(tuple(tuple(sorted(p, key=lambda e: e[0])) for p in split)))
    return made


def _schedule(inputs: list[_Input], rng: random.Random) -> list[Step]:
    """Fetches of random partitions and sizes, honest watermarks, ends in random order."""
    taken = [[0] * len(source.partitions) for source in inputs]
    steps: list[Step] = []

    def remaining(i: int) -> list[int]:
        return [p for p, events in enumerate(inputs[i].partitions) if taken[i][p] < len(events)]

    def honest_watermark(i: int) -> int:
        # Nothing below the next undelivered time of any partition is still to come.
        upcoming = [inputs[i].partitions[p][taken[i][p]][0] for p in remaining(i)]
        return (min(upcoming) if upcoming else 13) - rng.randint(0, 2)

    while any(remaining(i) for i in range(len(inputs))):
        i = rng.randrange(len(inputs))
        if rng.random() < 0.3:
            steps.append(("watermark", i, {0: honest_watermark(i)}))
            continue
        open_partitions = remaining(i)
        if not open_partitions:
            continue
        fetched = rng.sample(open_partitions, rng.randint(1, len(open_partitions)))
        chunk = {}
        for p in fetched:
            size = rng.randint(1, 6)
            chunk[p] = size
            taken[i][p] = min(taken[i][p] + size, len(inputs[i].partitions[p]))
        steps.append(("fetch", i, chunk))
    for i in rng.sample(range(len(inputs)), len(inputs)):
        if rng.random() < 0.5:
            steps.append(("watermark", i, {0: honest_watermark(i)}))
        steps.append(("end", i, {}))
    return steps


def _batch(events: list[tuple[int, str, float]]) -> Batch:
    return Batch.from_columns(ts=[e[0] for e in events], key=[e[1] for e in events],
                              value=np.array([e[2] for e in events], dtype=np.float64))


def _drive(inputs: list[_Input], steps: list[Step], deliver: Callable[[int, Payload], None]
           ) -> None:
    """Turn a schedule into payloads per input: a fetch's partitions in the order drawn."""
    taken = [[0] * len(source.partitions) for source in inputs]
    for kind, i, detail in steps:
        if kind == "fetch":
            events = []
            for p, size in detail.items():
                partition = inputs[i].partitions[p]
                events.extend(partition[taken[i][p]:taken[i][p] + size])
                taken[i][p] += size
            if events:
                deliver(i, _batch(events))
        elif kind == "watermark":
            deliver(i, Watermark(detail[0]))
        else:
            deliver(i, EndOfStream())


def _per_key(events: list[tuple[int, str, float]]) -> dict[str, list[tuple[int, float]]]:
    keyed: dict[str, list[tuple[int, float]]] = {}
    for ts, key, value in events:
        keyed.setdefault(key, []).append((ts, value))
    return keyed


def _records(batch: Batch) -> list[tuple[int, str, float]]:
    return [(int(r["ts"]), str(r["key"]), float(r["value"]))  # type: ignore[arg-type]
            for r in batch.to_records()]


@settings(max_examples=200, deadline=None)
@given(inputs=_inputs(), seed=st.integers(0, 2**32 - 1), checkpoint_at=st.integers(0, 80))
def test_any_interleaving_releases_every_key_in_order_and_equal_times_together(
    inputs: list[_Input], seed: int, checkpoint_at: int
) -> None:
    steps = _schedule(inputs, random.Random(seed))
    aligner = EventTimeAligner([SCHEMA, SCHEMA])
    releases: list[list[list[tuple[int, str, float]]]] = []
    late: list[Batch] = []
    count = [0]

    def deliver(i: int, payload: Payload) -> None:
        nonlocal aligner
        count[0] += 1
        if count[0] == checkpoint_at:  # a checkpoint: rebuild from the state, lose nothing
            state = aligner.state()
            aligner = EventTimeAligner([SCHEMA, SCHEMA], AlignerState(
                state.held, state.watermarks, state.released_below))
        if isinstance(payload, Batch):
            late.append(aligner.add(i, payload))
            return
        moved = aligner.end(i) if isinstance(payload, EndOfStream) else aligner.advance(
            i, payload.timestamp)
        released = aligner.release()
        if not moved:
            assert released is None  # a bound that did not move releases nothing
        if released is not None:
            releases.append([_records(batch) for batch in released])

    _drive(inputs, steps, deliver)
    assert all(len(batch) == 0 for batch in late)
    assert aligner.buffered == 0
    for i, source in enumerate(inputs):
        got = [event for release in releases for event in release[i]]
        # Every key: its events once each, in time order, ties in arrival (partition) order.
        expected = _per_key(sorted(source.events(), key=lambda e: e[0]))
        assert _per_key(got) == expected
    # Every call covers one time range for all inputs: ranges of later calls start after it.
    spans = [[e[0] for part in release for e in part] for release in releases]
    for earlier, later in itertools.pairwise(spans):
        assert max(earlier) < min(later)
    for release in releases:
        for part in release:
            assert [e[0] for e in part] == sorted(e[0] for e in part)


def _crossover_config() -> sd.Node:
    ticks = sd.source("ticks", topic="t", key="k", schema={"value": "float64"})
    return ticks.map("value * 1", name="fast").crossover(ticks.map("value * 1", name="slow"),
                                                         name="cross")


def _sorted_once(inputs: list[_Input]) -> list[tuple[int, str, float]]:
    """The node's output when it gets each input whole and sorted, in one call."""
    node = _crossover_config()
    logic = lookup(node.operator).create(node.config())
    whole = [_batch(sorted(source.events(), key=lambda e: e[0])) for source in inputs]
    return _records(logic.process(whole))


@settings(max_examples=100, deadline=None)
@given(inputs=_inputs(), seed=st.integers(0, 2**32 - 1))
def test_a_crossover_gives_the_same_signals_whatever_the_interleaving(
    inputs: list[_Input], seed: int
) -> None:
    worker = NodeWorker(_crossover_config().config())
    out: list[Payload] = []
    _drive(inputs, _schedule(inputs, random.Random(seed)),
           lambda i, payload: out.extend(worker.feed(i, payload)))
    got = [event for p in out if isinstance(p, Batch) for event in _records(p)]
    assert _per_key(got) == _per_key(_sorted_once(inputs))
    assert worker.stats.late_events == 0


def test_an_event_below_the_released_bound_is_handed_back_as_late() -> None:
    aligner = EventTimeAligner([SCHEMA])
    assert len(aligner.add(0, _batch([(5, "a", 1.0), (2, "a", 2.0)]))) == 0
    assert aligner.advance(0, 4)
    assert [_records(b) for b in aligner.release() or []] == [[(2, "a", 2.0)]]
    late = aligner.add(0, _batch([(3, "a", 3.0), (4, "a", 4.0), (1, "b", 5.0)]))
    assert _records(late) == [(3, "a", 3.0), (1, "b", 5.0)]
    assert aligner.buffered == 2
    assert not aligner.advance(0, 4)  # the same watermark again: the bound did not move
    assert aligner.end(0)
    assert [_records(b) for b in aligner.release() or []] == [[(4, "a", 4.0), (5, "a", 1.0)]]


def test_an_input_without_a_watermark_holds_the_others_back_until_it_ends() -> None:
    aligner = EventTimeAligner([SCHEMA, SCHEMA])
    for t in range(50):
        aligner.add(0, _batch([(t, "a", float(t))]))
    assert not aligner.advance(0, 100)
    assert aligner.release() is None
    assert aligner.buffered == 50
    assert aligner.end(1)
    released = aligner.release()
    assert released is not None
    assert released[0].ts.tolist() == list(range(50)) and len(released[1]) == 0


def test_a_state_of_another_shape_is_refused() -> None:
    state = EventTimeAligner([SCHEMA]).state()
    try:
        EventTimeAligner([SCHEMA, SCHEMA], state)
    except ValueError as error:
        assert "1 inputs cannot restore a node of 2" in str(error)
    else:
        raise AssertionError("a state of one input must not restore two")
