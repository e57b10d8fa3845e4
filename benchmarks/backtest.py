"""Backtest: the streaming replay vs the batch executor vs pandas, the cache, and sweeps.

Recorded ticks (a seeded random walk, 100 symbols, 1 ms apart) go through the example momentum
and mean-reversion graphs (``runtime/demo/graphs``), given in memory so the figures are the
executors' own (reading a topic is measured by ``benchmarks.kafka_decode``):

1. events/s of the streaming replay (the local runner, 8,192-record micro-batches), the batch
   executor, and a plain pandas groupby-rolling implementation of the same two strategies (the
   tool users would pick instead; pandas is not a streamdag dependency: ``pip install pandas``,
   the row is skipped without it). Both executors' outputs are checked equal.
2. the cache: a second identical backtest against the first; a rerun after one param change
   (``sma20.window=21``): which nodes were computed, and their seconds against the cached rest.
3. a 20-scenario sweep of a 15-node graph whose variants share 80% of their nodes (12 of 15),
   run together, against 20 separate runs: wall time and CPU time of this process.

Run with ``python -m benchmarks.backtest`` (1M ticks, ~1-2 min here), ``--ticks 10000000`` for
the 10M-tick run, ``--sweep-ticks N`` for the sweep's input size.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import streamdag as sd
from runtime.backtest import (
    BacktestOptions,
    BacktestResult,
    RecordedInput,
    ResultCache,
    Scenario,
    SweepResult,
    backtest,
    parse_sweeps,
)
from runtime.demo import EXAMPLE_GRAPHS_DIR
from runtime.demo.synthetic import RandomWalk
from streamdag.batch import Batch
from streamdag.graph import Graph
from streamdag.spec import load_graph

__all__ = ["main"]

SYMBOLS = 100


def _ticks(count: int) -> Batch:
    return RandomWalk(symbols=SYMBOLS, seed=3).next_batch(count)


def _timed(run: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = run()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def _run(graph: Graph, ticks: Batch | RecordedInput, **kw: Any) -> BacktestResult:
    batch = ticks.batch if isinstance(ticks, RecordedInput) else ticks
    end = int(batch.ts[-1]) + 1
    options = BacktestOptions(executor=kw.pop("executor", "batch"))
    result = backtest(graph, 0, end, inputs={"ticks": ticks}, options=options, **kw)
    assert isinstance(result, BacktestResult)
    return result


def _pandas_strategies(ticks: Batch) -> int:
    """Momentum (sma20/sma50 crossover) and mean reversion (z-score 20, price/sma20 cross)."""
    pd = importlib.import_module("pandas")

    frame = pd.DataFrame({"ts": ticks.ts, "symbol": ticks.key, "price": ticks.columns["price"]})
    by_symbol = frame.groupby("symbol", sort=False)["price"]

    def rolling(window: int, statistic: str) -> Any:
        rolled = getattr(by_symbol.rolling(window), statistic)()
        return rolled.reset_index(level=0, drop=True).sort_index()

    def crossings(fast: Any, slow: Any) -> Any:
        side = np.sign(fast - slow)
        before = side.groupby(frame["symbol"]).shift(1)
        return side.where(side != before, 0.0)

    sma20, sma50, std20 = rolling(20, "mean"), rolling(50, "mean"), rolling(20, "std")
    momentum = crossings(sma20, sma50).dropna()
    zscore = (frame["price"] - sma20) / std20
    reversion = pd.DataFrame({"z": zscore, "cross": crossings(frame["price"], sma20)}).dropna()
    return len(momentum) + len(reversion)


def _sweep_graph() -> Graph:
    """15 nodes; a variant of ``fast.window`` changes fast, cross and out: 12 of 15 shared."""
    ticks = sd.source("ticks", topic="bench.ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    shared = [ticks.rolling_mean("price", window=w, name=f"sma{w}") for w in (20, 50, 100, 200,
                                                                              500)]
    shared += [ticks.zscore("price", window=20, name="z20"),
               ticks.rolling_std("price", window=50, name="std50"),
               ticks.vwap(window=20, name="vwap20"), ticks.ohlcv(bar="1s", name="bars"),
               ticks.rolling_max("price", window=50, name="max50"),
               ticks.rolling_min("price", window=50, name="min50")]
    fast = ticks.rolling_mean("price", window=10, name="fast")
    out = fast.crossover(shared[1], name="cross").to_topic("bench.signals", name="out")
    return sd.Graph("sweep", outputs=[out, *shared])


def _row(name: str, events: int, seconds: float, cpu: float,
         baseline: tuple[float, float] | None) -> str:
    ratios = ("", "") if baseline is None else (f"{baseline[0] / seconds:.2f}x",
                                                f"{baseline[1] / cpu:.2f}x")
    return (f"{name:<32}{events / seconds:>12,.0f}{seconds:>8.2f}{events / cpu:>12,.0f}"
            f"{cpu:>8.2f}{ratios[0]:>9}{ratios[1]:>9}")


def main(argv: list[str] | None = None) -> None:
    """Print the three tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backtest")
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--sweep-ticks", type=int, default=200_000)
    parser.add_argument("--variants", type=int, default=20)
    args = parser.parse_args(argv)
    ticks = _ticks(args.ticks)
    graphs = [load_graph(EXAMPLE_GRAPHS_DIR / f"{name}.toml")
              for name in ("momentum", "mean_reversion")]
    _run(graphs[0], ticks.slice(0, 10_000))  # compile (cached by numba) outside the figures
    _run(graphs[1], ticks.slice(0, 10_000), executor="streaming")

    # 1. executors against pandas.
    print(f"\n1. {args.ticks:,} ticks x 2 graphs (momentum, mean_reversion); events/s = "
          "ticks x graphs / s")
    print("(the machine is shared: CPU seconds of this process are the steadier figure)")
    print(f"{'run':<32}{'events/s':>12}{'wall s':>8}{'ev/cpu-s':>12}{'cpu s':>8}"
          f"{'/pandas':>9}{'cpu':>9}")
    events = args.ticks * len(graphs)
    pandas_s: tuple[float, float] | None = None
    if importlib.util.find_spec("pandas") is None:  # only this benchmark uses it
        print("pandas                             not installed: pip install pandas")
    else:
        _, wall, cpu = _timed(lambda: _pandas_strategies(ticks))
        pandas_s = (wall, cpu)
        print(_row("pandas groupby-rolling", events, wall, cpu, pandas_s))
    streamed, streaming_s, streaming_cpu = _timed(
        lambda: [_run(g, ticks, executor="streaming") for g in graphs])
    batched, batch_s, batch_cpu = _timed(lambda: [_run(g, ticks) for g in graphs])
    print(_row("streaming replay (local runner)", events, streaming_s, streaming_cpu, pandas_s))
    print(_row("batch executor", events, batch_s, batch_cpu, pandas_s))
    assert [r.digests() for r in streamed] == [r.digests() for r in batched]
    print(f"batch executor vs streaming replay: {streaming_s / batch_s:.2f}x wall, "
          f"{streaming_cpu / batch_cpu:.2f}x cpu; outputs equal")

    # 2. the cache.
    # The recorded ticks named by what made them (as a topic's log ends name what it holds).
    recorded = RecordedInput(ticks, f"random-walk seed 3, {SYMBOLS} symbols, {args.ticks}")
    cache = ResultCache(max_bytes=8 << 30)
    momentum = graphs[0]
    first, first_s, _ = _timed(lambda: _run(momentum, recorded, cache=cache))
    second, second_s, _ = _timed(lambda: _run(momentum, recorded, cache=cache))
    assert second.digests() == first.digests() and not second.figures["computed"]
    changed, changed_s, _ = _timed(lambda: backtest(
        momentum, 0, int(ticks.ts[-1]) + 1, inputs={"ticks": recorded}, cache=cache,
        scenarios=[Scenario.parse(["sma20.window=21"])]))
    assert isinstance(changed, SweepResult)
    seconds = changed.figures["node_seconds"]
    print(f"\n2. cache (momentum, {args.ticks:,} ticks)")
    print(f"first backtest {first_s:.3f} s; identical second {second_s:.4f} s: "
          f"{first_s / second_s:,.0f}x faster")
    print(f"after sma20.window=21: {changed_s:.3f} s; computed {changed.figures['computed']} "
          f"({sum(seconds.values()):.3f} s), from the cache {changed.figures['cached']}")
    before = first.figures["node_seconds"]
    print("first run's seconds per node: " + ", ".join(
        f"{name} {before[name]:.3f}" for name in sorted(before)))

    # 3. a sweep against separate runs.
    sweep_ticks = _ticks(args.sweep_ticks)
    graph = _sweep_graph()
    windows = ",".join(str(w) for w in range(5, 5 + args.variants))
    variants = parse_sweeps([f"fast.window={windows}"])
    end = int(sweep_ticks.ts[-1]) + 1
    together, together_s, together_cpu = _timed(lambda: backtest(
        graph, 0, end, inputs={"ticks": sweep_ticks}, scenarios=variants))
    separate, separate_s, separate_cpu = _timed(lambda: [backtest(
        graph, 0, end, inputs={"ticks": sweep_ticks}, scenarios=[v]) for v in variants])
    assert isinstance(together, SweepResult)
    for variant, alone in zip(variants, separate, strict=True):
        assert isinstance(alone, SweepResult)
        assert together[variant.name].digests() == alone[variant.name].digests()
    print(f"\n3. {len(variants)}-scenario sweep, {len(graph.nodes)} nodes, 80% shared, "
          f"{args.sweep_ticks:,} ticks; nodes computed together: "
          f"{len(together.figures['computed'])} (separately: {len(variants) * len(graph.nodes)})")
    print(f"{'run':<34}{'wall s':>10}{'cpu s':>10}")
    print(f"{f'{len(variants)} separate runs':<34}{separate_s:>10.2f}{separate_cpu:>10.2f}")
    print(f"{'one sweep':<34}{together_s:>10.2f}{together_cpu:>10.2f}")
    print(f"sweep vs separate: {separate_s / together_s:.2f}x wall, "
          f"{separate_cpu / together_cpu:.2f}x cpu")


if __name__ == "__main__":
    main()
