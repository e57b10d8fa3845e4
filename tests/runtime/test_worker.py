"""NodeWorker: per-edge order, duplicates, incarnations, watermarks, barriers, end of stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import streamdag as sd
import streamdag.operators.map_filter
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.registry import register
from streamdag.runtime.messages import Barrier, EndOfStream, Envelope, Watermark
from streamdag.runtime.worker import END_OF_TIME, NodeWorker
from streamdag.schema import Schema


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


def test_two_input_barrier_is_aligned_before_it_is_forwarded() -> None:
    worker = _pair_worker()
    assert worker.accept(Envelope("l", 0, 0, Barrier(1))) == []
    # Input 0 is blocked at the barrier: its later data waits for the other input's barrier.
    assert worker.accept(Envelope("l", 0, 1, _batch([1, 2], [1.0, 2.0]))) == []
    assert worker.accept(Envelope("r", 0, 0, _batch([1], [9.0]))) == []
    out = worker.accept(Envelope("r", 0, 1, Barrier(1)))
    assert out[0] == Barrier(1)
    assert worker.snapshots[1].logic == b"pair"
    out += worker.accept(Envelope("r", 0, 2, EndOfStream()))
    out += worker.accept(Envelope("l", 0, 2, EndOfStream()))
    rows = [r for p in out if isinstance(p, Batch) for r in p.to_records()]
    # Released by event time: first ts < 2 from both inputs (after the right's data), then the rest.
    assert rows == [
        {"ts": 1, "key": "all", "left": 1, "right": 1},
        {"ts": 2, "key": "all", "left": 1, "right": 0},
    ]
    assert out[-1] == EndOfStream()


def test_multi_input_alignment_releases_equal_time_ranges_in_a_diamond() -> None:
    worker = _pair_worker()
    assert worker.accept(Envelope("l", 0, 0, _batch([1, 2, 3], [1.0, 2.0, 3.0]))) == []
    out = worker.accept(Envelope("r", 0, 0, _batch([1, 2, 3], [1.0, 2.0, 3.0])))
    out += worker.accept(Envelope("l", 0, 1, Watermark(4)))
    out += worker.accept(Envelope("r", 0, 1, Watermark(4)))
    rows = [r for p in out if isinstance(p, Batch) for r in p.to_records()]
    assert rows == [
        {"ts": 2, "key": "all", "left": 2, "right": 2},
        {"ts": 3, "key": "all", "left": 1, "right": 1},
    ]
    assert out[-1] == Watermark(4)
