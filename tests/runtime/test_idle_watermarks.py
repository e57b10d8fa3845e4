"""Idle watermarks (``WatermarkStatus``): an idle input holds nothing back, in a worker, in a
sharded consumer's slots, and in a live sharded graph on both runners."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import streamdag as sd
from runtime.dataplane.alignment import EventTimeAligner
from runtime.dataplane.messages import (
    ACTIVE,
    IDLE,
    Barrier,
    EndOfStream,
    Envelope,
    Payload,
    Watermark,
)
from runtime.dataplane.worker import IDLE_REPEAT_S, NodeWorker
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.schema import Schema
from streamdag.testing import ListSink

QUOTES = sd.source("quotes", topic="q", key="k", schema={"bid": "float64"})
TRADES = sd.source("trades", topic="t", key="k", schema={"size": "float64"})


def _batch(ts: list[int], field: str, values: list[float], key: str = "x") -> Batch:
    return Batch.from_columns(ts=ts, key=[key] * len(ts), **{field: values})


def _rows(payloads: list[Payload]) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for p in payloads if isinstance(p, Batch) for r in p.to_records()]


def _controls(payloads: list[Payload]) -> list[Payload]:
    return [p for p in payloads if not isinstance(p, Batch)]


class _Edges:
    """Pushes on named edges, each with its own sequence."""

    def __init__(self, worker: NodeWorker) -> None:
        self.worker = worker
        self.seq: dict[str, int] = {}

    def __call__(self, edge: str, payload: Payload) -> list[Payload]:
        seq = self.seq.get(edge, 0)
        self.seq[edge] = seq + 1
        return self.worker.accept(Envelope(edge, 0, seq, payload))


def _join(clock: list[float] | None = None) -> tuple[NodeWorker, _Edges]:
    now = clock if clock is not None else [0.0]
    worker = NodeWorker(TRADES.asof_join(QUOTES, prefix="q_", name="j").config(),
                        clock=lambda: now[0])
    worker.connect("trades", 0)
    worker.connect("quotes", 1)
    return worker, _Edges(worker)


def test_an_idle_input_releases_the_other_input_up_to_its_own_watermark() -> None:
    worker, push = _join()
    assert push("trades", _batch([1, 5, 9], "size", [1.0, 5.0, 9.0])) == []
    assert push("trades", Watermark(10)) == []
    assert push("quotes", _batch([2], "bid", [20.0])) == []
    out = push("quotes", Watermark(3))
    assert repr(_rows(out)) == repr([(1, "x", 1.0, float("nan"))])
    assert _controls(out) == [Watermark(3)]
    # The quotes go quiet: the trades come out up to their own watermark.
    out = push("quotes", IDLE)
    assert _rows(out) == [(5, "x", 5.0, 20.0), (9, "x", 9.0, 20.0)]
    assert _controls(out) == [Watermark(10)]
    # Both idle: the node goes by the highest watermark, and says it is idle.
    assert push("trades", IDLE) == [IDLE]
    # A quote behind what was released is late (dropped, counted), and the node is active.
    assert push("quotes", _batch([4], "bid", [40.0])) == [ACTIVE]
    assert worker.stats.late_dropped == 1
    # A resume holds every input again, the trades too, until they repeat that they are idle.
    assert push("quotes", Watermark(12)) == []
    assert push("trades", IDLE) == [Watermark(12)]
    assert push("trades", _batch([15], "size", [15.0])) == []
    assert push("trades", Watermark(20)) == []
    assert push("quotes", _batch([16], "bid", [160.0])) == []
    out = push("quotes", Watermark(30))
    assert _rows(out) == [(15, "x", 15.0, 20.0)] and _controls(out) == [Watermark(20)]
    push("trades", EndOfStream())
    assert push("quotes", EndOfStream())[-1] == EndOfStream()


def test_an_idle_status_repeated_or_a_watermark_repeated_changes_nothing() -> None:
    _, push = _join()
    push("trades", Watermark(10))
    push("quotes", Watermark(3))
    assert push("quotes", IDLE) == [Watermark(10)]
    assert push("quotes", IDLE) == []
    # An idle source repeats its watermark at every read: it stays idle.
    assert push("quotes", Watermark(3)) == []
    assert push("trades", IDLE) == [IDLE]
    assert push("trades", Watermark(10)) == [] and push("trades", IDLE) == []
    assert push("trades", ACTIVE) == [ACTIVE]


def test_a_resumed_source_holds_its_other_path_idle_no_more() -> None:
    # Both inputs come from one source over paths of different speeds (a diamond). The source
    # resumes; the fast path's watermark must not release past what the slow path still brings.
    worker, push = _join()
    push("trades", Watermark(10))
    push("quotes", Watermark(10))
    push("trades", IDLE)
    assert push("quotes", IDLE) == [IDLE]
    assert push("quotes", ACTIVE) == [ACTIVE]
    assert push("quotes", _batch([20], "bid", [200.0])) == []
    assert push("quotes", Watermark(30)) == []  # the trades hold the bound again
    assert push("trades", _batch([25], "size", [25.0])) == []
    out = push("trades", Watermark(30))
    assert _rows(out) == [(25, "x", 25.0, 200.0)] and _controls(out) == [Watermark(30)]
    assert worker.stats.late_events == 0


def test_an_idle_node_passes_on_repeated_idles_at_most_every_half_second() -> None:
    clock = [0.0]
    _, push = _join(clock)
    push("trades", IDLE)
    assert push("quotes", IDLE) == [IDLE]
    assert push("quotes", IDLE) == []
    clock[0] = IDLE_REPEAT_S
    assert push("quotes", IDLE) == [IDLE] and push("trades", IDLE) == []
    clock[0] += IDLE_REPEAT_S
    assert push("trades", IDLE) == [IDLE]


def test_a_sharded_input_whose_one_shard_is_idle_is_released_by_the_other() -> None:
    node = TRADES.rolling_sum("size", window=1, name="sum")
    worker = NodeWorker(dataclasses.replace(node.config(), fan_in=(2,)))
    worker.connect("s0", 0)
    worker.connect("s1", 1)
    push = _Edges(worker)
    push("s0", _batch([1, 2], "size", [1.0, 2.0], key="a"))
    push("s0", Watermark(3))
    push("s1", _batch([5, 8], "size", [5.0, 8.0], key="b"))
    out = push("s1", Watermark(9))
    assert _rows(out) == [(1, "a", 1.0), (2, "a", 2.0)] and _controls(out) == [Watermark(3)]
    out = push("s0", IDLE)
    assert _rows(out) == [(5, "b", 5.0), (8, "b", 8.0)] and _controls(out) == [Watermark(9)]


def test_barriers_still_wait_for_an_idle_input() -> None:
    worker, push = _join()
    push("quotes", IDLE)
    assert push("trades", Barrier(1)) == []
    assert push("quotes", Barrier(1)) == [Barrier(1)]
    assert 1 in worker.snapshots


def test_an_input_ending_while_the_rest_is_idle_moves_the_watermark_then_goes_idle() -> None:
    _, push = _join()
    push("trades", _batch([4, 7], "size", [4.0, 7.0]))
    push("trades", Watermark(8))
    push("trades", IDLE)
    push("quotes", _batch([1], "bid", [10.0]))
    assert _controls(push("quotes", Watermark(2))) == [Watermark(2)]
    # The table ends (a bounded read): the idle trades go by their own watermark at once.
    out = push("quotes", EndOfStream())
    assert _rows(out) == [(4, "x", 4.0, 10.0), (7, "x", 7.0, 10.0)]
    assert _controls(out) == [Watermark(8), IDLE]


def test_a_dynamic_aligner_leaves_idle_inputs_out_and_goes_by_the_highest_once_all_are() -> None:
    schema = Schema.of(value="float64")
    aligner = EventTimeAligner([], dynamic=True, join_grace=100)
    first, second = aligner.add_input(schema), aligner.add_input(schema)
    aligner.add(first, Batch.from_columns(ts=[3, 9], key=["a", "a"], value=[3.0, 9.0]))
    assert aligner.advance(first, 10) is False  # the second holds the bound until its first
    assert aligner.advance(second, 4) and aligner.bound == 4
    assert aligner.set_idle(second, True) and aligner.bound == 10
    assert [b.ts.tolist() for b in aligner.release() or []] == [[3, 9], []]
    assert aligner.set_idle(first, True) is False and aligner.bound == 10  # highest of both
    aligner.set_idle(second, False)
    assert aligner.add(second, Batch.from_columns(ts=[6], key=["b"], value=[6.0])).ts.tolist() \
        == [6]  # behind what was released: late


@dataclass(frozen=True)
class _LiveShards:
    """A live source of one shard per script, each reading its script and then waiting for
    more, idle (``idle[s]``: as a Kafka source whose partitions went quiet) or not, until the
    file ``stop`` exists. Its watermark is the newest event time seen; once its script is
    read, one past it (what a quiet Kafka source reports)."""

    scripts: tuple[tuple[Batch, ...], ...]
    idle: tuple[bool, ...]
    stop: str

    def shard(self, index: int, count: int) -> Callable[[], _LiveReader]:
        assert count == len(self.scripts)
        return lambda: _LiveReader(list(self.scripts[index]), self.idle[index], self.stop)

    def __call__(self) -> _LiveReader:
        raise AssertionError("read by shard only")


class _LiveReader:
    def __init__(self, script: list[Batch], idle: bool, stop: str) -> None:
        self.script, self.idle, self.stop = script, idle, Path(stop)
        self.read_items = 0
        self.newest: int | None = None

    async def open(self) -> None:
        """Nothing to connect."""

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        if self.read_items < len(self.script):
            batch = self.script[self.read_items]
            self.read_items += 1
            self.newest = int(batch.ts.max())
            return SourceChunk(batch, self.newest)
        empty = self.script[0].slice(0, 0)
        if self.stop.exists():
            return SourceChunk(empty, None, finished=True)
        await asyncio.sleep(0.02)  # a live source's poll
        assert self.newest is not None
        return SourceChunk(empty, self.newest + 1, idle=self.idle)

    def position(self) -> dict[int, int]:
        return {0: self.read_items}

    async def close(self) -> None:
        """Nothing to release."""


def _live_graph(sink: bool) -> sd.Graph:
    ticks = sd.source("ticks", topic="ticks", key="k", schema={"size": "float64"}
                      ).with_options(parallelism=2)
    summed = ticks.rolling_sum("size", window=2, name="sum")
    return sd.Graph("live", outputs=[summed.to_topic("out", name="out") if sink else summed])


def _shards(stop: Path) -> _LiveShards:
    # Shard 0 reads a, which ends early, and goes quiet; shard 1 reads b, later, and stays
    # active: without the idle status shard 0's watermark (4) would hold b's events back.
    return _LiveShards(
        ((_batch([1, 2], "size", [1.0, 2.0], key="a"), _batch([3], "size", [3.0], key="a")),
         (_batch([10, 11, 12], "size", [10.0, 11.0, 12.0], key="b"),
          _batch([13], "size", [13.0], key="b"))),
        idle=(True, False), stop=str(stop))


EXPECTED = [(2, "a", 3.0), (3, "a", 5.0), (11, "b", 21.0), (12, "b", 23.0), (13, "b", 25.0)]


def _wait_for(count: Callable[[], int], want: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (seen := count()) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_a_live_two_shard_graph_whose_one_shard_is_idle_releases_every_event(
        tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    sink = ListSink()
    result: list[Any] = []
    run = threading.Thread(target=lambda: result.append(LocalRunner().run(
        _live_graph(sink=True), sources={"ticks": _shards(stop)}, sinks={"out": lambda: sink},
        timeout_s=60)))
    run.start()
    try:
        # Every event comes out while both shards are still live.
        assert _wait_for(lambda: len(sink.records()), len(EXPECTED)) == len(EXPECTED)
    finally:
        stop.touch()
        run.join(60)
    assert [tuple(r.values()) for r in sink.records()] == EXPECTED


@pytest.mark.integration
def test_the_ray_runner_releases_a_live_idle_shard_graph_alike(ray_session: None,
                                                               tmp_path: Path) -> None:
    import ray

    stop = tmp_path / "stop"
    running = RayRunner().start(_live_graph(sink=False), sources={"ticks": _shards(stop)})
    try:
        def released() -> int:
            batches = ray.get(running.actor("sum").results.remote())
            return sum(len(batch) for batch in batches)

        assert _wait_for(released, len(EXPECTED)) == len(EXPECTED)
        stop.touch()
        result = running.wait(60)
    finally:
        stop.touch()
        running.stop()
    assert [tuple(r.values()) for r in result.records("sum")] == EXPECTED
