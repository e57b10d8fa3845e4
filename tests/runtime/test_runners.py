"""Both runners over the same hosts: identical output, backpressure, fan-out, testing markers."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import streamdag as sd
from runtime.dataplane.channels import LocalTarget
from runtime.dataplane.host import NodeHost, RuntimeSettings
from runtime.demo.synthetic import RandomWalk, RandomWalkSource
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.testing import ABORT, END, PAUSE, ListSink, SourceAbortedError, TestingSource


def _ticks() -> sd.Node:
    return sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64",
                                                                      "size": "float64"})


def _chain_graph() -> sd.Graph:
    ticks = _ticks()
    notional = ticks.map("price * size", output="notional", name="notional")
    big = notional.filter("notional > 2000", name="big")
    scaled = big.map("notional / 100", name="scaled")
    return sd.Graph("chain", outputs=[scaled.to_topic("out.scaled", name="out")])


class _Script:
    """A picklable source factory over a fixed script (Ray ships it to the source's actor)."""

    def __init__(self, script: list[Batch | object]) -> None:
        self.script = script

    def __call__(self) -> TestingSource:
        return TestingSource(self.script)  # type: ignore[arg-type]


def _expected(batches: list[Batch]) -> list[dict[str, object]]:
    rows = []
    for batch in batches:
        for record in batch.to_records():
            notional = record["price"] * record["size"]
            if notional > 2000:
                rows.append({**record, "notional": notional, "value": notional / 100})
    return rows


def test_local_runner_output_is_exact() -> None:
    walk = RandomWalk(symbols=5, seed=3)
    batches = [walk.next_batch(500) for _ in range(4)]
    sink = ListSink()
    LocalRunner().run(_chain_graph(), sources={"ticks": _Script(batches)},
                      sinks={"out": lambda: sink})
    assert sink.records() == _expected(batches)


@pytest.mark.integration
def test_ray_runner_and_local_runner_give_identical_output(ray_session: None) -> None:
    walk = RandomWalk(symbols=20, seed=11)
    batches = [walk.next_batch(2_000) for _ in range(5)]
    graph = _chain_graph()
    local = LocalRunner().run(graph, sources={"ticks": _Script(batches)},
                              sinks={"out": ListSink})
    remote = RayRunner().run(graph, sources={"ticks": _Script(batches)}, sinks={"out": ListSink})
    assert local.records("out") == _expected(batches)
    assert remote.records("out") == local.records("out")
    assert remote.stats["big"].events_in == 10_000
    assert remote.stats["out"].events_in == len(_expected(batches))


class _SlowSink(ListSink):
    """Takes `delay` seconds per batch: the slow consumer that creates backpressure."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def write(self, batch: Batch) -> None:
        await asyncio.sleep(self.delay)  # simulated slow work, not a wait for a condition
        self.batches.append(batch.slice(0, 0))


class _SlowSinkFactory:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self) -> _SlowSink:
        return _SlowSink(self.delay)


class _WalkFactory:
    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self) -> RandomWalkSource:
        return RandomWalkSource(self.total, symbols=100)


@pytest.mark.integration
def test_backpressure_bounds_queues_and_memory_under_10x_overload(ray_session: None) -> None:
    # The sink takes 5 ms per 2,000-event batch (400k events/s at best); the source could
    # generate ~20M events/s, so it offers far more than 10x what the sink can take.
    settings = RuntimeSettings(credits=2, max_batch_records=2_000, linger_s=0.001)
    ticks = _ticks()
    graph = sd.Graph("slow", outputs=[ticks.map("price * 2", name="double").to_topic(
        "out.slow", name="out")])
    running = RayRunner(settings).start(
        graph, sources={"ticks": _WalkFactory(2_000_000)}, sinks={"out": _SlowSinkFactory(0.005)}
    )
    try:
        samples: list[dict[str, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(samples) < 6:
            stats = running.stats()
            if stats["out"].events_in >= (len(samples) + 1) * 40_000:
                samples.append({name: s.rss_bytes for name, s in stats.items()})
        assert len(samples) == 6, "the sink did not make progress"
        stats = running.stats()
        for name, node in stats.items():
            # At most `credits` pushes wait in any node's queue per input edge.
            assert node.max_queue_depth <= settings.credits, (name, node.max_queue_depth)
        # The source is held back: it has produced only what the sink could take plus the
        # batches in flight on the two channels (credits x hops x batch size).
        in_flight_bound = 2 * settings.credits * settings.max_batch_records + 2 * 2_000
        assert stats["ticks"].events_out - stats["out"].events_in <= in_flight_bound
        assert stats["ticks"].backpressure_wait_seconds > 0.1
        for name in samples[0]:
            growth = samples[-1][name] - samples[1][name]
            assert growth < 20 * 2**20, f"{name} grew by {growth / 2**20:.1f} MiB"
    finally:
        running.stop()


def test_fan_out_subscribers_can_be_added_and_removed_while_running() -> None:
    async def scenario() -> tuple[list[float], list[float]]:
        ticks = _ticks()
        double = ticks.map("price * 2", name="double")
        producer = NodeHost(double.config(), settings=RuntimeSettings(credits=1))
        first = NodeHost(double.map("value + 0", name="first").config(), capture=True)
        second = NodeHost(double.map("value + 1", name="second").config(), capture=True)
        for host in (producer, first, second):
            await host.ready()
        producer.connect_input("in", 0)
        first.connect_input("p->first", 0)
        second.connect_input("p->second", 0)
        producer.subscribe("p->first", LocalTarget(first.push))
        from runtime.dataplane.messages import Envelope

        def tick(seq: int) -> Envelope:
            batch = Batch.from_columns(ts=[seq], key=["a"], price=[float(seq)], size=[1.0])
            return Envelope("in", 0, seq, batch)

        await producer.push(tick(0))
        producer.subscribe("p->second", LocalTarget(second.push))
        await producer.push(tick(1))
        await producer.unsubscribe("p->first")
        await producer.push(tick(2))
        await producer.drain()
        first_values = [v for b in first.results() for v in b.columns["value"].tolist()]
        second_values = [v for b in second.results() for v in b.columns["value"].tolist()]
        for host in (producer, first, second):
            await host.stop()
        return first_values, second_values

    first_values, second_values = asyncio.run(scenario())
    assert first_values == [0.0, 2.0]
    assert second_values == [3.0, 5.0]


def test_testing_source_markers_end_abort_pause() -> None:
    batch = Batch.from_columns(ts=[1, 2, 3], key=["a", "a", "a"], value=[1.0, 2.0, 3.0])

    async def read_all(source: TestingSource) -> list[int]:
        seen: list[int] = []
        while True:
            chunk = await source.read(2, 0.0)
            seen.extend(chunk.batch.ts.tolist())
            if chunk.finished:
                return seen

    assert asyncio.run(read_all(TestingSource([batch, END, batch]))) == [1, 2, 3]
    aborting = TestingSource([batch, ABORT, batch])
    with pytest.raises(SourceAbortedError, match="scripted abort at item 1"):
        asyncio.run(read_all(aborting))
    assert aborting.position() == {0: 2}
    resumed = TestingSource([batch, ABORT, batch], resume_from={0: 2})
    assert asyncio.run(read_all(resumed)) == [1, 2, 3]

    async def paused() -> tuple[bool, list[int]]:
        source = TestingSource([batch, PAUSE, batch])
        first = await source.read(10, 0.0)
        pending = asyncio.ensure_future(source.read(10, 0.0))
        await asyncio.sleep(0)
        waiting = not pending.done()
        source.resume()
        second = await pending
        return waiting, first.batch.ts.tolist() + second.batch.ts.tolist()

    waiting, seen = asyncio.run(paused())
    assert waiting and seen == [1, 2, 3, 1, 2, 3]
    assert np.array_equal(batch.ts, [1, 2, 3])


def test_an_unbound_source_or_sink_is_refused_before_anything_runs() -> None:
    graph = _chain_graph()
    with pytest.raises(sd.StreamdagError) as caught:
        LocalRunner().run(graph, sinks={"out": ListSink})
    assert str(caught.value) == (
        "source 'ticks' (topic 'ticks') has no reader: pass sources={'ticks': factory} or run "
        "with Kafka configured"
    )
    with pytest.raises(sd.StreamdagError) as caught:
        LocalRunner().run(graph, sources={"ticks": _Script([])})
    assert str(caught.value) == (
        "sink 'out' (topic 'out.scaled') has no writer: pass sinks={'out': factory} or run "
        "with Kafka configured"
    )
    with pytest.raises(sd.StreamdagError, match=r"has no node\(s\) \['nope'\]"):
        LocalRunner().run(graph, sources={"nope": _Script([])})
