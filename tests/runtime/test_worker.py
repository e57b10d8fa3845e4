"""NodeWorker: per-edge order, duplicates, incarnations, watermarks, barriers, end of stream,
event-time order of inputs, late events, held events in snapshots."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest

import streamdag as sd
from runtime.dataplane.messages import Barrier, EndOfStream, Envelope, Watermark
from runtime.dataplane.worker import END_OF_TIME, NodeWorker
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.schema import Schema
from streamdag.testing import TestingSource


def _ticks() -> sd.Node:
    return sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})


def _batch(ts: list[int], prices: list[float]) -> Batch:
    return Batch.from_columns(ts=ts, key=["a"] * len(ts), price=prices)


def _doubler() -> NodeWorker:
    node = _ticks().map("price * 2", name="double")
    worker = NodeWorker(node.config())
    worker.connect("e", 0)
    return worker


def _values(payloads: list[object]) -> list[float]:
    return [v for p in payloads if isinstance(p, Batch) for v in p.columns["value"].tolist()]


def test_envelopes_are_processed_in_seq_order_whatever_the_arrival_order() -> None:
    worker = _doubler()
    assert worker.accept(Envelope("e", 0, 1, _batch([2], [2.0]))) == []
    assert worker.accept(Envelope("e", 0, 2, _batch([3], [3.0]))) == []
    out = worker.accept(Envelope("e", 0, 0, _batch([1], [1.0])))
    assert _values(out) == [2.0, 4.0, 6.0]


def test_duplicates_and_stale_incarnations_are_dropped_and_counted() -> None:
    worker = _doubler()
    assert _values(worker.accept(Envelope("e", 0, 0, _batch([1], [1.0])))) == [2.0]
    assert worker.accept(Envelope("e", 0, 0, _batch([1], [1.0]))) == []
    worker.accept(Envelope("e", 0, 2, _batch([3], [3.0])))
    assert worker.accept(Envelope("e", 0, 2, _batch([3], [3.0]))) == []
    assert worker.accept(Envelope("e", -1, 1, _batch([2], [2.0]))) == []
    assert worker.stats.duplicates_dropped == 2
    assert worker.stats.stale_dropped == 1
    assert worker.stats.events_in == 1


def test_unknown_edge_is_refused_with_the_known_edges_named() -> None:
    worker = _doubler()
    try:
        worker.accept(Envelope("other", 0, 0, _batch([1], [1.0])))
    except KeyError as exc:
        assert "unknown edge 'other'" in str(exc) and "['e']" in str(exc)
    else:
        raise AssertionError("an unknown edge must be refused")


def test_watermarks_are_forwarded_once_and_end_of_stream_finishes() -> None:
    worker = _doubler()
    assert worker.accept(Envelope("e", 0, 0, Watermark(5))) == [Watermark(5)]
    assert worker.accept(Envelope("e", 0, 1, Watermark(3))) == []
    assert worker.accept(Envelope("e", 0, 2, EndOfStream())) == [EndOfStream()]
    assert worker.finished
    assert worker.stats.watermark == END_OF_TIME


def test_single_input_barrier_snapshots_and_is_forwarded_in_order() -> None:
    worker = _doubler()
    out = worker.accept(Envelope("e", 0, 0, _batch([1], [1.0])))
    out += worker.accept(Envelope("e", 0, 1, Barrier(7)))
    out += worker.accept(Envelope("e", 0, 2, _batch([2], [2.0])))
    assert [type(p).__name__ for p in out] == ["Batch", "Barrier", "Batch"]
    assert worker.snapshots[7].checkpoint_id == 7


@register
class _PairCount(OperatorDef):
    """Test-only two-input operator: emits, per call, one row counting each input's events."""

    type_name: ClassVar[str] = "test_pair_count"
    arity: ClassVar[int | None] = 2

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        return Schema.of(left="int64", right="int64")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        return _PairCountLogic()


class _PairCountLogic:
    def process(self, inputs: Sequence[Batch]) -> Batch:
        left, right = inputs
        ts = int(max([*left.ts.tolist(), *right.ts.tolist()]))
        return Batch.from_columns(ts=[ts], key=["all"], left=[len(left)], right=[len(right)])

    def on_watermark(self, watermark: int) -> Batch | None:
        return None

    def snapshot(self) -> bytes:
        return b"pair"


def _pair_worker() -> NodeWorker:
    left = _ticks().map("price * 1", name="left")
    right = _ticks().map("price * 3", name="right")
    worker = NodeWorker(left.apply("test_pair_count", right, name="pair").config())
    worker.connect("l", 0)
    worker.connect("r", 1)
    return worker


def test_two_input_barrier_is_aligned_and_the_snapshot_holds_what_waits_for_the_watermark(
) -> None:
    worker = _pair_worker()
    assert worker.accept(Envelope("l", 0, 0, Barrier(1))) == []
    # Input 0 is blocked at the barrier: its later data waits for the other input's barrier.
    assert worker.accept(Envelope("l", 0, 1, _batch([1, 2], [1.0, 2.0]))) == []
    assert worker.accept(Envelope("r", 0, 0, _batch([1], [9.0]))) == []
    out = worker.accept(Envelope("r", 0, 1, Barrier(1)))
    assert out == [Barrier(1)]
    snapshot = worker.snapshots[1]
    assert snapshot.logic == b"pair"
    # The right's event came before the cut and was not processed yet: it is in the snapshot.
    assert snapshot.aligner is not None
    assert [b.ts.tolist() for b in snapshot.aligner.held] == [[], [1]]
    out += worker.accept(Envelope("l", 0, 2, Watermark(2)))
    out += worker.accept(Envelope("r", 0, 2, Watermark(5)))
    out += worker.accept(Envelope("r", 0, 3, EndOfStream()))
    out += worker.accept(Envelope("l", 0, 3, EndOfStream()))
    rows = [r for p in out if isinstance(p, Batch) for r in p.to_records()]
    # Released by event time: first ts < 2 from both inputs, then the rest at the end.
    assert rows == [
        {"ts": 1, "key": "all", "left": 1, "right": 1},
        {"ts": 2, "key": "all", "left": 1, "right": 0},
    ]
    assert out[-1] == EndOfStream()


def test_multi_input_alignment_releases_equal_time_ranges_in_a_diamond() -> None:
    worker = _pair_worker()
    assert worker.accept(Envelope("l", 0, 0, _batch([1, 2, 3], [1.0, 2.0, 3.0]))) == []
    # Data alone releases nothing: only watermarks say an input has nothing older to come.
    assert worker.accept(Envelope("r", 0, 0, _batch([1, 2, 3], [1.0, 2.0, 3.0]))) == []
    out = worker.accept(Envelope("l", 0, 1, Watermark(3)))
    assert out == []  # the right input has no watermark yet
    out += worker.accept(Envelope("r", 0, 1, Watermark(3)))
    assert [r for p in out if isinstance(p, Batch) for r in p.to_records()] == [
        {"ts": 2, "key": "all", "left": 2, "right": 2}]
    assert out[-1] == Watermark(3)
    out = worker.accept(Envelope("l", 0, 2, Watermark(4)))
    out += worker.accept(Envelope("r", 0, 2, Watermark(4)))
    assert [r for p in out if isinstance(p, Batch) for r in p.to_records()] == [
        {"ts": 3, "key": "all", "left": 1, "right": 1}]
    assert out[-1] == Watermark(4)


# -- event-time order ----------------------------------------------------------------------
SECOND = 1_000_000_000


def _rows(payloads: list[object]) -> list[dict[str, object]]:
    return [r for p in payloads if isinstance(p, Batch) for r in p.to_records()]


def _sums(payloads: list[object]) -> list[tuple[object, object]]:
    return [(r["ts"], r["value"]) for r in _rows(payloads)]


def _rolling_sum_worker() -> NodeWorker:
    worker = NodeWorker(_ticks().rolling_sum("price", time_window="2s", name="sums").config())
    worker.connect("e", 0)
    return worker


def _out_of_order() -> Batch:
    return _batch([0, 3 * SECOND, SECOND, 4 * SECOND], [1.0, 10.0, 100.0, 1000.0])


def test_a_partition_behind_another_is_released_with_its_partners_not_before() -> None:
    # Each input delivers t=10 and t=30 from two partitions, then t=20 from the slower one.
    worker = _pair_worker()
    out = worker.accept(Envelope("l", 0, 0, _batch([10, 30], [1.0, 3.0])))
    out += worker.accept(Envelope("r", 0, 0, _batch([10, 30], [1.0, 3.0])))
    out += worker.accept(Envelope("l", 0, 1, _batch([20], [2.0])))
    out += worker.accept(Envelope("r", 0, 1, _batch([20], [2.0])))
    assert out == []
    out += worker.accept(Envelope("l", 0, 2, Watermark(31)))
    out += worker.accept(Envelope("r", 0, 2, Watermark(31)))
    assert _rows(out) == [{"ts": 30, "key": "all", "left": 3, "right": 3}]
    assert (worker.stats.late_events, worker.stats.held_events) == (0, 0)


def test_a_time_window_over_out_of_order_events_sees_them_in_event_time_order() -> None:
    ticks = _ticks()
    sums = ticks.rolling_sum("price", time_window="2s", name="sums")
    result = LocalRunner().run(sd.Graph("sums", outputs=[sums]),
                               sources={"ticks": lambda: TestingSource([_out_of_order()])})
    # Windows (t - 2 s, t]: at 3 s the event at 1 s has left, at 4 s only 3 s and 4 s remain.
    assert result.records("sums") == [
        {"ts": 0, "key": "a", "value": 1.0},
        {"ts": SECOND, "key": "a", "value": 101.0},
        {"ts": 3 * SECOND, "key": "a", "value": 10.0},
        {"ts": 4 * SECOND, "key": "a", "value": 1010.0},
    ]
    assert (result.stats["sums"].late_events, result.stats["sums"].late_dropped) == (0, 0)


def test_disorder_across_batches_within_the_lateness_is_put_in_order() -> None:
    ticks = _ticks()
    graph = sd.Graph("sums", outputs=[ticks.rolling_sum("price", time_window="2s", name="sums")])
    script = [_out_of_order().slice(0, 2), _out_of_order().slice(2, 4)]
    result = LocalRunner().run(graph, sources={
        "ticks": lambda: TestingSource(script, lateness_ns=2 * SECOND)})
    assert [(r["ts"], r["value"]) for r in result.records("sums")] == [
        (0, 1.0), (SECOND, 101.0), (3 * SECOND, 10.0), (4 * SECOND, 1010.0)]


def test_an_event_behind_the_watermark_is_dropped_and_counted() -> None:
    ticks = _ticks()
    graph = sd.Graph("sums", outputs=[ticks.rolling_sum("price", time_window="2s", name="sums")])
    script = [_out_of_order().slice(0, 2), _out_of_order().slice(2, 4)]
    result = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource(script)})
    # The first batch's watermark (3 s) already released its input up to 3 s: 1 s is late.
    assert [(r["ts"], r["value"]) for r in result.records("sums")] == [
        (0, 1.0), (3 * SECOND, 10.0), (4 * SECOND, 1010.0)]
    stats = result.stats["sums"]
    assert (stats.events_in, stats.late_events, stats.late_dropped) == (4, 1, 1)


def test_ohlcv_applies_its_own_late_policy_to_late_events() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    bars = ticks.ohlcv(bar="1s", late="side", name="bars")
    first = Batch.from_columns(ts=[SECOND // 10, 3 * SECOND // 2, 22 * SECOND // 10],
                               key=["a"] * 3, price=[1.0, 2.0, 3.0], size=[1.0, 1.0, 1.0])
    late = Batch.from_columns(ts=[SECOND // 2, 31 * SECOND // 10], key=["a"] * 2,
                              price=[4.0, 5.0], size=[2.0, 1.0])
    result = LocalRunner().run(sd.Graph("bars", outputs=[bars]),
                               sources={"ticks": lambda: TestingSource([first, late])})
    bar = {"revision": 0, "count": 1, "volume": 1.0, "key": "a"}
    assert result.records("bars") == [
        {**bar, "ts": 0, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "late": False},
        {**bar, "ts": SECOND, "open": 2.0, "high": 2.0, "low": 2.0, "close": 2.0, "late": False},
        # 0.5 s came after bar 0 closed: handed to ohlcv, which emits it as a side bar.
        {**bar, "ts": 0, "open": 4.0, "high": 4.0, "low": 4.0, "close": 4.0, "volume": 2.0,
         "late": True},
        {**bar, "ts": 2 * SECOND, "open": 3.0, "high": 3.0, "low": 3.0, "close": 3.0,
         "late": False},
        {**bar, "ts": 3 * SECOND, "open": 5.0, "high": 5.0, "low": 5.0, "close": 5.0,
         "late": False},
    ]
    stats = result.stats["bars"]
    assert (stats.late_events, stats.late_dropped) == (1, 0)


def test_a_stateless_map_is_not_held_for_the_watermark() -> None:
    worker = _doubler()
    out = worker.accept(Envelope("e", 0, 0, _batch([3, 1], [3.0, 1.0])))
    assert _values(out) == [6.0, 2.0]
    assert worker.stats.held_events == 0


def test_a_restored_worker_resumes_with_the_events_it_held_at_the_barrier() -> None:
    worker = _rolling_sum_worker()
    assert worker.accept(Envelope("e", 0, 0, _out_of_order())) == []
    assert worker.stats.held_events == 4
    before = worker.accept(Envelope("e", 0, 1, Watermark(SECOND + 1)))
    assert worker.accept(Envelope("e", 0, 2, Barrier(4))) == [Barrier(4)]
    restored = NodeWorker(worker.config, snapshot=worker.snapshots[4], incarnation=1)
    restored.connect("e", 0)
    assert (restored.stats.held_events, restored.stats.watermark) == (2, SECOND + 1)
    # The released bound came back too: an event below it is still late.
    assert restored.accept(Envelope("e", 1, 0, _batch([SECOND], [7.0]))) == []
    after = restored.accept(Envelope("e", 1, 1, EndOfStream()))
    assert _sums(before) == [(0, 1.0), (SECOND, 101.0)]
    assert _sums(after) == [(3 * SECOND, 10.0), (4 * SECOND, 1010.0)]
    assert (restored.stats.late_dropped, restored.stats.watermark) == (1, END_OF_TIME)
    assert after[-1] == EndOfStream()


@register
class _FailsOnReadOnlyInput(OperatorDef):
    """Test-only operator that writes into its input: it fails on warm-up's read-only batch."""

    type_name: ClassVar[str] = "test_writes_its_input"

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        return Schema.of(value="float64")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        return _WritesItsInput()


class _WritesItsInput:
    def process(self, inputs: Sequence[Batch]) -> Batch:
        prices = inputs[0].columns["price"]
        prices *= 2  # in place: refused on a read-only array
        return Batch(inputs[0].ts, inputs[0].key, {"value": prices})

    def on_watermark(self, watermark: int) -> Batch | None:
        return None

    def snapshot(self) -> bytes:
        return b""


def test_a_failed_warm_up_is_logged_and_the_node_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = NodeWorker(_ticks().apply("test_writes_its_input", name="writer").config())
    worker.connect("e", 0)
    with caplog.at_level(logging.WARNING, logger="streamdag.worker"):
        worker.warm_up()
    out = worker.accept(Envelope("e", 0, 0, _batch([1], [1.5])))
    out += worker.accept(Envelope("e", 0, 1, Watermark(2)))
    assert [r.getMessage() for r in caplog.records] == [
        "node 'writer' (test_writes_its_input): warming its kernels up failed; they compile on "
        "the first batch instead"]
    assert caplog.records[0].exc_info is not None
    assert caplog.records[0].exc_info[0] is ValueError
    assert _values(out) == [3.0]


def test_a_barrier_waiting_for_an_input_that_ends_completes_at_its_end() -> None:
    worker = _pair_worker()
    out = worker.accept(Envelope("l", 0, 0, Barrier(3)))  # the left input is blocked at 3
    blocked = worker.accept(Envelope("l", 0, 1, _batch([5], [5.0])))
    out += worker.accept(Envelope("r", 0, 0, EndOfStream()))  # the right one never gets it

    assert blocked == []
    assert [type(p).__name__ for p in out][:1] == ["Barrier"]
    assert worker.snapshots[3].checkpoint_id == 3
    assert worker.stats.events_in == 1  # the held batch was replayed after the barrier


def test_a_newer_barrier_overtakes_an_alignment_that_can_never_complete() -> None:
    # Checkpoint 1 reached the left input only (its trigger failed on the right's source):
    # the right delivers barrier 2. Waiting for 1 would block both inputs for good.
    worker = _pair_worker()
    assert worker.accept(Envelope("l", 0, 0, Barrier(1))) == []
    assert worker.accept(Envelope("l", 0, 1, _batch([1], [1.0]))) == []  # held behind 1
    assert worker.accept(Envelope("l", 0, 2, Barrier(2))) == []
    out = worker.accept(Envelope("r", 0, 0, Barrier(2)))

    assert out == [Barrier(2)]
    assert sorted(worker.snapshots) == [2]
    assert worker.stats.alignments_abandoned == 1
    assert worker.stats.events_in == 1  # the held batch came before the cut at 2
    assert [b.ts.tolist() for b in worker.snapshots[2].aligner.held] == [[1], []]


def test_a_barrier_older_than_the_alignment_in_progress_is_dropped() -> None:
    worker = _pair_worker()
    assert worker.accept(Envelope("r", 0, 0, Barrier(2))) == []
    assert worker.accept(Envelope("l", 0, 0, Barrier(1))) == []  # given up on: dropped
    assert worker.accept(Envelope("l", 0, 1, _batch([1], [1.0]))) == []  # not blocked
    out = worker.accept(Envelope("l", 0, 2, Barrier(2)))

    assert out == [Barrier(2)]
    assert worker.stats.barriers_dropped == 1
    assert worker.stats.alignments_abandoned == 0
    assert worker.stats.events_in == 1
    assert worker.accept(Envelope("l", 0, 3, Barrier(2))) == []  # at the last cut: stale
    assert worker.stats.barriers_dropped == 2
