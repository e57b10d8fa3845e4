"""Data plane: in-memory source -> 3 operators -> in-memory sink, 100 keys, Ray vs local.

Run: ``python -m benchmarks.data_plane [--events N] [--batch N]``. Prints events/s, per-hop batch
latency (p50/p99 from the hosts' histograms) and the peak resident memory of every actor.
"""

from __future__ import annotations

import argparse
import os
import time

import streamdag as sd
from runtime.dataplane.host import RuntimeSettings
from runtime.demo.synthetic import RandomWalkSource
from runtime.planning.wiring import RunResult
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner, ensure_ray
from streamdag.batch import Batch
from streamdag.testing import ListSink

__all__ = ["CountingSink", "WalkSource", "build_graph", "events_per_second", "main"]


class CountingSink(ListSink):
    """Keeps only counts, so the sink is not the bottleneck being measured."""

    def __init__(self) -> None:
        super().__init__()
        self.events = 0

    async def write(self, batch: Batch) -> None:
        self.events += len(batch)


class WalkSource:
    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self) -> RandomWalkSource:
        return RandomWalkSource(self.total, symbols=100)


def events_per_second(result: RunResult, events: int) -> float:
    """``events`` over the time from source ``ticks``' first output to sink ``out``'s last."""
    seconds = result.stats["out"].last_output_at - result.stats["ticks"].first_output_at
    return events / seconds


def build_graph() -> sd.Graph:
    """source -> rolling mean -> zscore-like map -> filter -> sink, keyed by 100 symbols."""
    ticks = sd.source("ticks", topic="bench.ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    mean = ticks.rolling_mean("price", window=20, name="sma20")
    spread = mean.map("value * 1.0001 - 0.01", name="spread")
    signal = spread.filter("value > 0", name="signal")
    return sd.Graph("bench", outputs=[signal.to_topic("bench.out", name="out")])


def _report(label: str, events: int, result: RunResult) -> None:
    # Steady state, so actor start-up (reported separately as the wall time) is not counted.
    seconds = events / events_per_second(result, events)
    hops = [s.hop_latency for name, s in result.stats.items() if name != "ticks"]
    p50 = max(h.quantile(0.5) for h in hops) * 1e3
    p99 = max(h.quantile(0.99) for h in hops) * 1e3
    rss = max(s.rss_bytes for s in result.stats.values()) / 2**20
    print(f"{label:<8} {events:>11,} {seconds:>8.2f} {events / seconds:>14,.0f} "
          f"{p50:>8.2f} {p99:>8.2f} {rss:>9.0f}")


def main(argv: list[str] | None = None) -> None:
    """Run the graph on both runners and print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--credits", type=int, default=4)
    args = parser.parse_args(argv)
    settings = RuntimeSettings(credits=args.credits, max_batch_records=args.batch)
    graph = build_graph()
    # Compile the kernels before timing (compile time is reported by benchmarks.kernels).
    LocalRunner(settings).run(graph, sources={"ticks": WalkSource(1_000)},
                              sinks={"out": CountingSink})
    print(f"{'runner':<8} {'events':>11} {'seconds':>8} {'events/s':>14} "
          f"{'hop p50':>8} {'hop p99':>8} {'max RSS':>9}")
    print(f"{'':<8} {'':>11} {'':>8} {'':>14} {'(ms)':>8} {'(ms)':>8} {'(MiB)':>9}")
    started = time.perf_counter()
    result = LocalRunner(settings).run(graph, sources={"ticks": WalkSource(args.events)},
                                       sinks={"out": CountingSink})
    print(f"(local wall time incl. start-up: {time.perf_counter() - started:.2f} s)")
    _report("local", args.events, result)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray(num_cpus=2)
    runner = RayRunner(settings)
    runner.run(graph, sources={"ticks": WalkSource(200_000)}, sinks={"out": CountingSink})
    started = time.perf_counter()
    result = runner.run(graph, sources={"ticks": WalkSource(args.events)},
                        sinks={"out": CountingSink}, timeout_s=600)
    print(f"(ray wall time incl. actor start-up: {time.perf_counter() - started:.2f} s)")
    _report("ray", args.events, result)


if __name__ == "__main__":
    main()
