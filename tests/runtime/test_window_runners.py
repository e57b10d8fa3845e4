"""Window and join nodes in the runners: late events through the worker, Local vs Ray."""

from __future__ import annotations

import math
from typing import Any

import pytest

import streamdag as sd
from runtime.demo.synthetic import RandomWalk
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.testing import TestingSource

SECOND = 1_000_000_000
MS = SECOND // 1000


class _Script:
    def __init__(self, script: list[Batch]) -> None:
        self.script = script

    def __call__(self) -> TestingSource:
        return TestingSource(self.script)


def test_late_events_revise_a_window_or_go_to_the_side_output_and_are_counted() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    windows = ticks.tumbling_window("1s", agg=["sum", "count"], field="price", lateness="1s",
                                    late="side", name="w")
    script = [
        Batch.from_columns(ts=[100 * MS, 1500 * MS], key=["a", "a"], price=[1.0, 2.0]),
        Batch.from_columns(ts=[500 * MS, 2200 * MS], key=["a", "a"], price=[4.0, 8.0]),
        Batch.from_columns(ts=[700 * MS, 3000 * MS], key=["a", "a"], price=[16.0, 32.0]),
    ]
    result = LocalRunner().run(sd.Graph("w", outputs=[windows]),
                               sources={"ticks": _Script(script)})
    rows = [(r["ts"], r["start"], r["sum"], r["count"], r["revision"], r["late"])
            for r in result.records("w")]
    assert rows == [
        (SECOND - 1, 0, 1.0, 1, 0, False),
        (SECOND - 1, 0, 5.0, 2, 1, False),  # 0.5 s came after [0, 1 s) closed: a revision
        (2 * SECOND - 1, SECOND, 2.0, 1, 0, False),
        (700 * MS, 0, 16.0, 1, 0, True),  # 0.7 s came after 1 s + 1 s of lateness: side
        (3 * SECOND - 1, 2 * SECOND, 8.0, 1, 0, False),
        (4 * SECOND - 1, 3 * SECOND, 32.0, 1, 0, False),
    ]
    stats = result.stats["w"]
    assert (stats.late_events, stats.late_dropped) == (2, 1)


def _nan_as_text(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # NaN (std of a one-event window) never equals itself; compare it as text.
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in records]


def _graph() -> sd.Graph:
    ticks = sd.source("ticks", topic="ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    aggs = ["sum", "mean", "min", "max", "count", "first", "last", "std"]
    return sd.Graph("windows", outputs=[
        ticks.tumbling_window("50ms", agg=aggs, field="price", name="tumbling"),
        ticks.hopping_window("60ms", "20ms", agg=["mean", "count"], field="price",
                             early_interval="15ms", name="hopping"),
        ticks.session_window("9ms", agg=["sum", "last"], field="size", name="sessions"),
        ticks.session_window("9ms", agg=["sum", "count"], field="size", early_interval="4ms",
                             name="early_sessions"),
        ticks.count_window(9, agg=["first", "std"], field="price", name="counts"),
        ticks.interval_join(ticks.map("size * 2", output="double", name="double"),
                            lower="2ms", upper="1ms", name="pairs"),
        # Each tick with the next tick of its symbol whose size is over 50 (or the nearest).
        ticks.asof_join(ticks.filter("size > 50", name="big"), direction="forward",
                        tolerance="30ms", prefix="big_", name="ahead"),
        ticks.asof_join(ticks.filter("size > 50", name="big"), direction="nearest",
                        tolerance="5ms", prefix="big_", name="nearest"),
        # A table of each symbol's latest big tick, looked up as of each tick's time.
        ticks.lookup_join(ticks.filter("size > 90", name="huge"), prefix="row_", name="rows"),
    ])


def _batches() -> list[Batch]:
    walk = RandomWalk(symbols=7, seed=11)
    return [walk.next_batch(n) for n in (300, 1, 450, 250)]


@pytest.mark.integration
def test_local_and_ray_runners_agree_on_every_window_and_join_node(ray_session: None) -> None:
    graph = _graph()
    local = LocalRunner().run(graph, sources={"ticks": _Script(_batches())})
    remote = RayRunner().run(graph, sources={"ticks": _Script(_batches())})
    for name in ("tumbling", "hopping", "sessions", "early_sessions", "counts", "pairs",
                 "ahead", "nearest", "rows"):
        assert local.records(name), f"{name} produced nothing"
        assert _nan_as_text(remote.records(name)) == _nan_as_text(local.records(name)), name
    # 1001 ticks 1 ms apart, round robin over 7 symbols: 20 windows of 50 ms for each symbol,
    # and the tick at 1 s alone in the 21st; 143 ticks per symbol make 15 count windows of 9.
    assert any(r["early"] for r in local.records("hopping"))
    # A symbol's ticks 7 ms apart make one session (gap 9 ms), updated every 4 ms.
    assert sum(r["early"] for r in local.records("early_sessions")) > 7 * 200
    assert len(local.records("tumbling")) == 7 * 20 + 1
    assert sum(r["count"] for r in local.records("tumbling")) == 1001
    assert len(local.records("counts")) == 7 * 15
    # A symbol ticks every 7 ms: within [-2 ms, +1 ms] each tick pairs with its own double.
    assert [(r["left_ts"], r["right_double"]) for r in local.records("pairs")] == [
        (r["ts"], r["size"] * 2) for r in local.records("pairs")]
    assert len(local.records("pairs")) == 1001
    # A lookup by event time: each tick with its symbol's newest big tick at or before it
    # (itself when it is one), whatever the transport; the same on both runners.
    latest: dict[str, float] = {}
    expected = []
    for b in _batches():
        for ts, key, price, size in zip(b.ts.tolist(), b.key.astype(str).tolist(),
                                        b.columns["price"].tolist(), b.columns["size"].tolist(),
                                        strict=True):
            if size > 90:
                latest[key] = price
            expected.append((ts, key, latest.get(key, math.nan)))
    for result in (local, remote):
        rows = [(r["ts"], r["key"], r["row_price"]) for r in result.records("rows")]
        assert repr(sorted(rows)) == repr(sorted(expected))  # NaN equals NaN as text
    assert any(not math.isnan(row[2]) for row in expected)
    ahead = local.records("ahead")
    assert [r["ts"] for r in ahead] == sorted(r["ts"] for r in ahead) and len(ahead) == 1001
    assert all(r["big_size"] > 50 or math.isnan(r["big_size"]) for r in ahead)
