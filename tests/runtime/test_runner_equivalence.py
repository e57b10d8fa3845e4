"""The local runner and the Ray runner agree exactly on a graph using every operator family."""

from __future__ import annotations

import numpy as np
import pytest

import streamdag as sd
from runtime.demo.synthetic import RandomWalk
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.testing import TestingSource


class _Script:
    def __init__(self, script: list[Batch]) -> None:
        self.script = script

    def __call__(self) -> TestingSource:
        return TestingSource(self.script)


@sd.udf(period=2)
def spread(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Latest fast minus latest slow value."""
    return fast[:, -1] - slow[:, -1]


@sd.udf(period=4, outputs=("low", "high"))
def band(prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest of the last 4 prices."""
    return prices.min(axis=1), prices.max(axis=1)


def _graph() -> sd.Graph:
    ticks = sd.source("ticks", topic="ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    fast = ticks.rolling_mean("price", window=5, name="fast")
    slow = ticks.ema("price", span=12, name="slow")
    cross = fast.crossover(slow, name="cross")
    z = ticks.zscore("price", window=8, name="z")
    joined = z.asof_join(cross, name="joined")
    bars = ticks.ohlcv(bar=50_000_000, name="bars")
    gap = spread(fast, slow, name="spread")
    # Several fields per node: a map of two expressions, a user function of two outputs, and
    # partial windows and counts combined on their shared events.
    priced = ticks.map(doubled="price * 2", notional="price * size", name="priced")
    low = ticks.rolling_min("price", time_window=20_000_000, min_periods=3, name="low")
    count = ticks.rolling_count(window=10, min_periods=2, name="count")
    row = sd.combine(low=low, n=count, notional=priced["notional"],
                     band_high=band(ticks["price"], name="band")["high"], name="row")
    return sd.Graph("all", outputs=[joined, bars, gap, row])


def _batches() -> list[Batch]:
    walk = RandomWalk(symbols=7, seed=5)
    return [walk.next_batch(n) for n in (300, 1, 450, 250)]


def test_diamond_user_function_computes_once_per_event_with_aligned_inputs() -> None:
    seen: list[tuple[int, float, float]] = []

    def record(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        seen.extend(zip(range(len(left)), left[:, -1].tolist(), right[:, -1].tolist(),
                        strict=True))
        return left[:, -1] + right[:, -1]

    ticks = sd.source("a", topic="a", key="k", schema={"value": "float64"})
    b = ticks.map("value * 10", name="b")
    c = ticks.map("value * 100", name="c")
    d = sd.udf(period=1, shareable=False)(record)(b, c, name="d")
    batch = Batch.from_columns(ts=[1, 2, 3], key=["x", "x", "x"], value=[1.0, 2.0, 3.0])
    result = LocalRunner().run(sd.Graph("diamond", outputs=[d]),
                               sources={"a": _Script([batch])})
    assert [(left, right) for _, left, right in seen] == [(10.0, 100.0), (20.0, 200.0),
                                                           (30.0, 300.0)]
    assert result.records("d") == [
        {"ts": 1, "key": "x", "value": 110.0},
        {"ts": 2, "key": "x", "value": 220.0},
        {"ts": 3, "key": "x", "value": 330.0},
    ]


@pytest.mark.integration
def test_local_and_ray_runners_produce_identical_outputs(ray_session: None) -> None:
    graph = _graph()
    local = LocalRunner().run(graph, sources={"ticks": _Script(_batches())})
    remote = RayRunner().run(graph, sources={"ticks": _Script(_batches())})
    for name in ("joined", "bars", "spread", "row"):
        assert local.records(name), f"{name} produced nothing"
        assert remote.records(name) == local.records(name), name
    # Every event reached the joined output once (z emits once its 8-event window is full).
    assert len(local.records("joined")) == 1001 - 7 * 7
