"""A region whose sources went quiet checkpoints at once, so exactly-once output is published
when the data stops, not at the next interval (runtime.checkpoints.quiet)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from ema_oracle import expected, per_key, produce

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.checkpoints.coordinator import CheckpointCoordinator, CheckpointFigures
from runtime.checkpoints.quiet import QuietSources, QuietWatch, SourceQuiet
from runtime.checkpoints.store import CheckpointStore, SnapshotRef
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.config import CheckpointSettings
from streamdag.connector import SourceChunk
from streamdag.testing import ListSink, TestingSource, read_topic

KEYS = ("A", "B", "C")
WINDOW = 5
EVENTS = 600
LATENESS_NS = 50
RAY_EVENTS = 1000


def _batches() -> list[Batch]:
    """20 batches of 30 events, keys round robin, times 0..599."""
    batches = []
    for b in range(EVENTS // 30):
        n = np.arange(b * 30, (b + 1) * 30)
        batches.append(Batch.from_columns(ts=n, key=[KEYS[i % 3] for i in n.tolist()],
                                          price=((n * 7919) % 1000) / 10.0))
    return batches


class _GoesQuiet:
    """Reads its batches with a watermark ``LATENESS_NS`` behind the newest event, then stays
    idle (its watermark just past the newest event, as a Kafka source's idle partitions) until
    ``finishing`` is set: the last events are released only by the idleness."""

    def __init__(self, batches: Sequence[Batch]) -> None:
        self._batches = list(batches)
        self._index = 0
        self._newest = -1
        self.finishing = asyncio.Event()

    async def open(self) -> None:
        """Nothing to connect."""

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The next batch; once there is none, an idle chunk every 10 ms until finishing."""
        if self._index < len(self._batches):
            batch = self._batches[self._index]
            self._index += 1
            self._newest = int(batch.ts.max())
            return SourceChunk(batch, self._newest - LATENESS_NS)
        empty = self._batches[0].slice(0, 0)
        if self.finishing.is_set():
            return SourceChunk(empty, self._newest + 1, finished=True)
        await asyncio.sleep(0.01)
        return SourceChunk(empty, self._newest + 1, idle=True)

    def position(self) -> dict[int, int]:
        """Batches read so far."""
        return {0: self._index}

    async def close(self) -> None:
        """Nothing to release."""


def _graph() -> sd.Graph:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=WINDOW, name="mean")
    return sd.Graph("quiet", outputs=[mean.to_topic("out", name="out")])


def _rows(sink: ListSink) -> list[tuple[int, str, float]]:
    return [(int(str(r["ts"])), str(r["key"]), float(str(r["value"]))) for r in sink.records()]


EXPECTED_COUNT = EVENTS - len(KEYS) * (WINDOW - 1)


def test_exactly_once_output_is_published_once_the_source_is_idle_not_at_the_interval() -> None:
    # The oracle: the same events through a source that ends (EndOfStream publishes the rest).
    expected = ListSink()
    LocalRunner().run(_graph(), sources={"ticks": lambda: TestingSource(_batches())},
                      sinks={"out": lambda: expected}, timeout_s=30)
    assert len(expected.records()) == EXPECTED_COUNT

    async def scenario() -> tuple[int, list[tuple[int, str, float]]]:
        reader, sink = _GoesQuiet(_batches()), ListSink()
        # No interval checkpoint can come within the test: only the sources' quiet can.
        runner = LocalRunner(checkpoints=CheckpointSettings(interval_s=60.0, timeout_s=30.0))
        running = asyncio.ensure_future(runner.run_async(
            _graph(), {"ticks": lambda: reader}, {"out": lambda: sink}, timeout_s=60))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while len(sink.records()) < EXPECTED_COUNT and loop.time() < deadline:
            assert not running.done(), running.exception()
            await asyncio.sleep(0.01)
        published_while_running = len(sink.records())
        reader.finishing.set()
        await running
        return published_while_running, _rows(sink)

    published_while_running, rows = asyncio.run(scenario())
    assert published_while_running == EXPECTED_COUNT  # all of it, before the source ended
    assert rows == _rows(expected)  # nothing more at the end: exact, once, in order


def test_a_watch_reports_news_until_the_barrier_that_covers_it() -> None:
    watch = QuietWatch()
    watch.read(records=0, idle=True, barrier=None)  # idle from the start: that releases too
    assert watch.state == SourceQuiet(idle=True, news=True, barrier=0)
    watch.read(records=0, idle=True, barrier=3)
    assert watch.state == SourceQuiet(idle=True, news=False, barrier=3)
    watch.read(records=0, idle=True, barrier=None)  # staying idle is no news
    assert watch.state == SourceQuiet(idle=True, news=False, barrier=3)
    watch.read(records=10, idle=False, barrier=None)
    assert watch.state == SourceQuiet(idle=False, news=True, barrier=3)
    watch.read(records=0, idle=False, barrier=4)  # the interval's barrier came first
    watch.read(records=0, idle=True, barrier=None)  # ... the idleness after it is news
    assert watch.state == SourceQuiet(idle=True, news=True, barrier=4)


def test_a_watch_answers_at_once_when_changed_and_on_change_or_timeout_otherwise() -> None:
    async def scenario() -> list[SourceQuiet]:
        watch = QuietWatch()
        first = await watch.changed(None)
        waiting = asyncio.ensure_future(watch.changed(first))
        await asyncio.sleep(0)
        assert not waiting.done()
        watch.read(records=1, idle=False, barrier=None)
        changed = await waiting
        unchanged = await watch.changed(changed, timeout_s=0.01)
        return [first, changed, unchanged]

    assert asyncio.run(scenario()) == [SourceQuiet(), SourceQuiet(news=True),
                                       SourceQuiet(news=True)]


@pytest.mark.parametrize(("states", "last_barrier", "quiet"), [
    ({"a": SourceQuiet(True, True, 2), "b": SourceQuiet(True, False, 2)}, 2, True),
    ({"a": SourceQuiet(True, True, 2), "b": SourceQuiet(False, False, 2)}, 2, False),  # b reads
    ({"a": SourceQuiet(True, False, 2), "b": SourceQuiet(True, False, 2)}, 2, False),  # no news
    ({"a": SourceQuiet(True, True, 1), "b": SourceQuiet(True, False, 2)}, 2, False),  # a's is old
    ({"a": SourceQuiet(True, True, 2)}, 2, False),  # b not heard yet
])
def test_sources_are_quiet_when_all_idle_past_the_last_barrier_with_news(
        states: dict[str, SourceQuiet], last_barrier: int, quiet: bool) -> None:
    async def ask(key: str, known: SourceQuiet | None) -> SourceQuiet:
        if key not in states or known == states[key]:
            await asyncio.Event().wait()  # no change: the long poll never answers
        return states[key]

    async def scenario() -> bool:
        sources = QuietSources(["a", "b"], ask)
        sources.start()
        for _ in range(5):
            await asyncio.sleep(0)
        found = sources.quiet(last_barrier)
        sources.stop()
        return found

    assert asyncio.run(scenario()) is quiet


def test_a_source_that_could_not_be_asked_is_asked_again() -> None:
    answers: list[SourceQuiet | Exception] = [RuntimeError("the actor died"),
                                              SourceQuiet(True, True, 0)]

    async def ask(key: str, known: SourceQuiet | None) -> SourceQuiet:
        if not answers:
            await asyncio.Event().wait()
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario() -> bool:
        sources = QuietSources(["a"], ask, retry_s=0.0)
        sources.start()
        await asyncio.wait_for(sources.until_quiet(0), 5.0)
        sources.stop()
        return sources.quiet(0)

    assert asyncio.run(scenario())


@pytest.mark.integration
def test_ray_exactly_once_output_is_published_once_the_kafka_source_is_idle(
        ray_session: None, bootstrap: str, tmp_path: Path) -> None:
    """Through Ray actors and the broker: the sources' quiet reaches the coordinator over
    actor calls, and its checkpoint publishes every output long before the interval."""
    topic, out = f"quiet-in-{uuid.uuid4().hex[:8]}", f"quiet-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    asyncio.run(produce(bootstrap, topic, 0, RAY_EVENTS))
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, idle_timeout_s=0.2)
    runner = RayRunner(checkpoints=CheckpointSettings(url=tmp_path.as_uri(), interval_s=60.0),
                       default_source=binding.source_for, default_sink=binding.sink_for)
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    graph = sd.Graph("ema", outputs=[ticks.ema("price", span=7, name="smooth")
                                     .to_topic(out, name="out")])
    running = runner.start(graph)
    try:
        # Every output, read while the graph runs on: no interval checkpoint comes in 60 s.
        records = asyncio.run(read_topic(bootstrap, out, RAY_EVENTS, timeout_s=30))
        figures = running.checkpoints
    finally:
        running.stop()
    assert len(records) == RAY_EVENTS  # 0 lost, 0 duplicated
    assert per_key(records) == expected(RAY_EVENTS)  # per-key order and exact values
    assert figures is not None and figures.started_early >= 1


class _OneSource:
    """A region of one source node, in process: it reports what the test tells it, emits each
    barrier as soon as it is asked, and acknowledges every checkpoint."""

    def __init__(self) -> None:
        self.watch = QuietWatch()
        self.barriers: list[int] = []
        self.committed: list[int] = []

    async def inject_barrier(self, key: str, checkpoint_id: int) -> bool:
        self.barriers.append(checkpoint_id)
        self.watch.read(records=0, idle=self.watch.state.idle, barrier=checkpoint_id)
        return True

    async def checkpoint_done(self, key: str, checkpoint_id: int) -> SnapshotRef:
        return SnapshotRef(f"{key}/{checkpoint_id}", 1, "0" * 64)

    async def commit_checkpoint(self, key: str, checkpoint_id: int) -> None:
        self.committed.append(checkpoint_id)

    async def source_quiet(self, key: str, known: SourceQuiet | None) -> SourceQuiet:
        return await self.watch.changed(known)


def test_an_early_checkpoint_is_an_ordinary_one_and_only_news_starts_another() -> None:
    async def until(condition: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + 10.0
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.001)

    async def scenario() -> tuple[list[int], list[int], CheckpointFigures]:
        region = _OneSource()
        coordinator = CheckpointCoordinator(
            "r", CheckpointStore(f"memory://quiet-{uuid.uuid4().hex}"), region, ["s"], ["s"],
            interval_s=60.0)
        running = asyncio.ensure_future(coordinator.run())
        # Step 1: records, then idleness: the first checkpoint starts without the interval.
        region.watch.read(records=5, idle=False, barrier=None)
        region.watch.read(records=0, idle=True, barrier=None)
        await until(lambda: region.committed == [1])
        # Step 2: idle and nothing new since barrier 1: no other checkpoint, however long.
        for _ in range(50):
            await asyncio.sleep(0)
        assert region.barriers == [1]
        # Step 3: a new burst and idleness again: the next one, with the next id.
        region.watch.read(records=3, idle=False, barrier=None)
        region.watch.read(records=0, idle=True, barrier=None)
        await until(lambda: region.committed == [1, 2])
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        return region.barriers, region.committed, coordinator.figures

    barriers, committed, figures = asyncio.run(scenario())
    assert barriers == committed == [1, 2]
    assert (figures.completed, figures.abandoned, figures.started_early) == (2, 0, 2)
    assert figures.last_completed_id == 2 and figures.last_started_early


class _Stuck(_OneSource):
    """A region whose source never answers the barrier call of checkpoint 1, and whose node
    never answers the commit of checkpoint 2 (a stuck actor)."""

    async def inject_barrier(self, key: str, checkpoint_id: int) -> bool:
        if checkpoint_id == 1:
            await asyncio.Event().wait()
        return await super().inject_barrier(key, checkpoint_id)

    async def commit_checkpoint(self, key: str, checkpoint_id: int) -> None:
        if checkpoint_id == 2:
            await asyncio.Event().wait()
        await super().commit_checkpoint(key, checkpoint_id)


def test_a_node_that_never_answers_cannot_stop_the_region_checkpointing() -> None:
    async def scenario() -> tuple[list[bool], list[int], CheckpointFigures]:
        region = _Stuck()
        coordinator = CheckpointCoordinator(
            "r", CheckpointStore(f"memory://stuck-{uuid.uuid4().hex}"), region, ["s"], ["s"],
            interval_s=60.0, timeout_s=0.2)
        outcomes = [await coordinator.checkpoint() for _ in range(3)]
        return outcomes, region.committed, coordinator.figures

    outcomes, committed, figures = asyncio.run(asyncio.wait_for(scenario(), 30))
    # 1: its barrier never went out, given up; 2: complete (the manifest is written), its
    # commit not taken in time; 3: complete, and its commit publishes 2's epochs too.
    assert outcomes == [False, True, True]
    assert committed == [3]
    assert (figures.completed, figures.abandoned, figures.last_completed_id) == (2, 1, 3)
