"""ohlcv bars against a plain-Python reference, under every lateness policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from operators.bars import OHLCV_SCHEMA, RECOMPUTE_RETAINED_BARS, OhlcvLogic
from streamdag.errors import ParamError, SchemaMismatchError
from streamdag.operator import OperatorLogic
from streamdag.operator_registry import lookup

Event = tuple[int, str, float, float]  # ts, key, price, size
Record = dict[str, Any]


def _ticks(**schema: str) -> sd.Node:
    return sd.source("ticks", topic="ticks", key="symbol",
                     schema=schema or {"price": "float64", "size": "float64"})


def _logic(bar: int = 10, lateness: int = 0, late: str = "drop",
           snapshot: bytes | None = None) -> OperatorLogic:
    node = _ticks().ohlcv(bar=bar, lateness=lateness, late=late, name="bars")
    return lookup("ohlcv").create(node.config(), snapshot)


def _batch(events: list[Event]) -> sd.Batch:
    if not events:
        return sd.Batch.empty(sd.Schema.of(price="float64", size="float64"))
    ts, keys, prices, sizes = zip(*events, strict=True)
    return sd.Batch.from_columns(ts=list(ts), key=list(keys), price=list(prices),
                                 size=list(sizes))


class ReferenceBars:
    """Bars computed from the list of events each bar received, in plain Python."""

    def __init__(self, bar: int, lateness: int, late: str) -> None:
        self.bar, self.lateness, self.late = bar, lateness, late
        self.open: dict[tuple[int, str], list[tuple[int, int, float, float]]] = {}
        self.emitted: dict[tuple[int, str], tuple[list[tuple[int, int, float, float]], int]] = {}
        self.watermark: int | None = None
        self.arrivals = 0
        self.late_dropped = 0

    def _closed(self, start: int) -> bool:
        return self.watermark is not None and start + self.bar + self.lateness <= self.watermark

    def _retired(self, start: int) -> bool:
        return self._closed(start + RECOMPUTE_RETAINED_BARS * self.bar)

    @staticmethod
    def record(start: int, key: str, events: list[tuple[int, int, float, float]],
               revision: int, late: bool) -> Record:
        volume = events[0][3]
        for event in events[1:]:
            volume += event[3]
        return {
            "ts": start, "key": key,
            "open": min(events, key=lambda e: (e[0], e[1]))[2],
            "high": max(e[2] for e in events), "low": min(e[2] for e in events),
            "close": max(events, key=lambda e: (e[0], e[1]))[2],
            "volume": volume, "count": len(events), "revision": revision, "late": late,
        }

    def process(self, events: list[Event]) -> list[Record]:
        side: list[Record] = []
        touched: set[tuple[int, str]] = set()
        for ts, key, price, size in events:
            arrival = self.arrivals
            self.arrivals += 1
            start = ts // self.bar * self.bar
            event = (ts, arrival, price, size)
            if not self._closed(start):
                self.open.setdefault((start, key), []).append(event)
            elif self.late == "drop" or (self.late == "recompute" and self._retired(start)):
                self.late_dropped += 1
            elif self.late == "side":
                side.append(self.record(start, key, [event], 0, True))
            else:
                received, revision = self.emitted.get((start, key), ([], -1))
                self.emitted[start, key] = ([*received, event], revision)
                touched.add((start, key))
        if self.late == "side":
            return sorted(side, key=lambda r: r["ts"])
        out = []
        for start, key in sorted(touched):
            received, revision = self.emitted[start, key]
            self.emitted[start, key] = (received, revision + 1)
            out.append(self.record(start, key, received, revision + 1, False))
        return out

    def on_watermark(self, watermark: int) -> list[Record] | None:
        self.watermark = max(watermark, self.watermark if self.watermark is not None else watermark)
        closed = sorted(ident for ident in self.open if self._closed(ident[0]))
        out = [self.record(start, key, self.open[start, key], 0, False) for start, key in closed]
        for ident in closed:
            received = self.open.pop(ident)
            if self.late == "recompute":
                self.emitted[ident] = (received, 0)
        for ident in [i for i in self.emitted if self._retired(i[0])]:
            del self.emitted[ident]
        return out or None


_event = st.tuples(
    st.integers(-30, 150),
    st.sampled_from(["A", "B", "CC"]),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.floats(0, 1e3, allow_nan=False, allow_infinity=False),
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), st.lists(_event, max_size=12)),
        st.tuples(st.just("watermark"), st.integers(-20, 200)),
    ),
    max_size=14,
)


def _run(logic: OperatorLogic, steps: list[tuple[str, Any]]) -> list[list[Record] | None]:
    outputs: list[list[Record] | None] = []
    for kind, payload in steps:
        if kind == "batch":
            result = logic.process([_batch(payload)])
            assert result.schema == OHLCV_SCHEMA
            outputs.append(result.to_records())
        else:
            emitted = logic.on_watermark(payload)
            outputs.append(None if emitted is None else emitted.to_records())
    return outputs


def _run_reference(reference: ReferenceBars,
                   steps: list[tuple[str, Any]]) -> list[list[Record] | None]:
    return [reference.process(payload) if kind == "batch" else reference.on_watermark(payload)
            for kind, payload in steps]


@settings(max_examples=150, deadline=None)
@given(steps=_steps, late=st.sampled_from(["drop", "recompute", "side"]),
       lateness=st.sampled_from([0, 5, 25]), bar=st.sampled_from([1, 10, 40]))
def test_matches_reference_with_out_of_order_events(
    steps: list[tuple[str, Any]], late: str, lateness: int, bar: int
) -> None:
    logic = _logic(bar=bar, lateness=lateness, late=late)
    reference = ReferenceBars(bar, lateness, late)
    assert _run(logic, steps) == _run_reference(reference, steps)
    assert isinstance(logic, OhlcvLogic)
    assert logic.late_dropped == reference.late_dropped


@settings(max_examples=80, deadline=None)
@given(before=_steps, after=_steps, late=st.sampled_from(["drop", "recompute", "side"]),
       lateness=st.sampled_from([0, 15]))
def test_snapshot_restore_carries_on_exactly(
    before: list[tuple[str, Any]], after: list[tuple[str, Any]], late: str, lateness: int
) -> None:
    uninterrupted = _logic(lateness=lateness, late=late)
    _run(uninterrupted, before)
    first = _logic(lateness=lateness, late=late)
    _run(first, before)
    resumed = _logic(lateness=lateness, late=late, snapshot=first.snapshot())
    assert _run(resumed, after) == _run(uninterrupted, after)
    assert isinstance(resumed, OhlcvLogic) and isinstance(uninterrupted, OhlcvLogic)
    assert resumed.late_dropped == uninterrupted.late_dropped


def test_bar_is_emitted_once_the_watermark_passes_end_plus_lateness() -> None:
    logic = _logic(bar=10, lateness=5)
    assert len(logic.process([_batch([(3, "A", 1.0, 1.0), (12, "A", 2.0, 1.0)])])) == 0
    assert logic.on_watermark(14) is None
    emitted = logic.on_watermark(15)
    assert emitted is not None
    assert emitted.to_records() == [
        {"ts": 0, "key": "A", "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
         "volume": 1.0, "count": 1, "revision": 0, "late": False},
    ]
    # Within the lateness an out-of-order event still joins its open bar, as its new open.
    logic.process([_batch([(11, "A", 0.5, 2.0)])])
    emitted = logic.on_watermark(25)
    assert emitted is not None
    assert emitted.to_records() == [
        {"ts": 10, "key": "A", "open": 0.5, "high": 2.0, "low": 0.5, "close": 2.0,
         "volume": 3.0, "count": 2, "revision": 0, "late": False},
    ]


def test_bars_come_out_in_start_then_key_order() -> None:
    logic = _logic(bar=10)
    logic.process([_batch([(15, "B", 1.0, 1.0), (2, "C", 1.0, 1.0), (11, "A", 1.0, 1.0),
                           (4, "A", 1.0, 1.0)])])
    emitted = logic.on_watermark(100)
    assert emitted is not None
    assert [(r["ts"], r["key"]) for r in emitted.to_records()] == [
        (0, "A"), (0, "C"), (10, "A"), (10, "B"),
    ]


def test_drop_counts_late_events() -> None:
    logic = _logic(bar=10, late="drop")
    logic.process([_batch([(1, "A", 1.0, 1.0)])])
    logic.on_watermark(10)
    assert len(logic.process([_batch([(2, "A", 9.0, 1.0), (9, "B", 9.0, 1.0)])])) == 0
    assert isinstance(logic, OhlcvLogic)
    assert logic.late_dropped == 2


def test_side_emits_each_late_event_as_a_late_bar() -> None:
    logic = _logic(bar=10, late="side")
    logic.process([_batch([(1, "A", 1.0, 1.0)])])
    logic.on_watermark(10)
    side = logic.process([_batch([(12, "A", 5.0, 1.0), (2, "A", 9.0, 3.0)])])
    assert side.to_records() == [
        {"ts": 0, "key": "A", "open": 9.0, "high": 9.0, "low": 9.0, "close": 9.0,
         "volume": 3.0, "count": 1, "revision": 0, "late": True},
    ]


def test_recompute_reemits_the_corrected_bar_with_the_next_revision() -> None:
    logic = _logic(bar=10, late="recompute")
    logic.process([_batch([(1, "A", 1.0, 1.0), (5, "A", 3.0, 1.0)])])
    logic.on_watermark(10)
    first = logic.process([_batch([(0, "A", 0.5, 2.0)])]).to_records()
    second = logic.process([_batch([(9, "A", 4.0, 1.0), (3, "B", 7.0, 1.0)])]).to_records()
    assert first == [
        {"ts": 0, "key": "A", "open": 0.5, "high": 3.0, "low": 0.5, "close": 3.0,
         "volume": 4.0, "count": 3, "revision": 1, "late": False},
    ]
    assert second == [
        {"ts": 0, "key": "A", "open": 0.5, "high": 4.0, "low": 0.5, "close": 4.0,
         "volume": 5.0, "count": 4, "revision": 2, "late": False},
        {"ts": 0, "key": "B", "open": 7.0, "high": 7.0, "low": 7.0, "close": 7.0,
         "volume": 1.0, "count": 1, "revision": 0, "late": False},
    ]


def test_recompute_forgets_bars_past_the_retention() -> None:
    logic = _logic(bar=10, late="recompute")
    logic.process([_batch([(1, "A", 1.0, 1.0)])])
    logic.on_watermark(10 + RECOMPUTE_RETAINED_BARS * 10 - 1)
    assert logic.process([_batch([(2, "A", 2.0, 1.0)])]).to_records()[0]["revision"] == 1
    logic.on_watermark(10 + RECOMPUTE_RETAINED_BARS * 10)
    assert len(logic.process([_batch([(3, "A", 3.0, 1.0)])])) == 0
    assert isinstance(logic, OhlcvLogic)
    assert logic.late_dropped == 1


def test_empty_batches_and_quiet_watermarks() -> None:
    logic = _logic()
    empty = logic.process([_batch([])])
    assert len(empty) == 0 and empty.schema == OHLCV_SCHEMA
    assert logic.on_watermark(1_000) is None


def test_many_keys_and_bars() -> None:
    keys = [f"k{i:04d}" for i in range(3000)]
    rng = np.random.default_rng(7)
    prices = rng.integers(1, 100, size=(3000, 4)).astype(float)
    logic = _logic(bar=10)
    for step in range(4):
        logic.process([_batch([(step * 2 + 1, k, prices[i, step], 1.0)
                               for i, k in enumerate(keys)])])
    emitted = logic.on_watermark(10)
    assert emitted is not None
    records = emitted.to_records()
    assert [r["key"] for r in records] == keys
    assert [r["open"] for r in records] == prices[:, 0].tolist()
    assert [r["close"] for r in records] == prices[:, 3].tolist()
    assert [r["high"] for r in records] == prices.max(axis=1).tolist()
    assert [r["low"] for r in records] == prices.min(axis=1).tolist()
    assert {r["count"] for r in records} == {4}


def test_integer_price_and_size_fields_are_accepted() -> None:
    node = _ticks(price="int64", size="int64").ohlcv(bar="1s", name="bars")
    logic = lookup("ohlcv").create(node.config())
    logic.process([sd.Batch.from_columns(ts=[1, 2], key=["A", "A"], price=[3, 5], size=[2, 2])])
    emitted = logic.on_watermark(1_000_000_000)
    assert emitted is not None
    assert emitted.to_records()[0]["volume"] == 4.0


def test_declaration_is_checked_when_the_graph_is_built() -> None:
    with pytest.raises(ParamError, match="'bar'"):
        _ticks().ohlcv(bar=0)
    with pytest.raises(ParamError, match="'late'"):
        _ticks().ohlcv(bar=10, late="ignore")
    with pytest.raises(SchemaMismatchError, match="'volume'"):
        _ticks().ohlcv(bar=10, size="volume")
