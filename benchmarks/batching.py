"""How sources cut batches: throughput by batch size, latency by linger (chooses the defaults).

Throughput: the data-plane graph (source -> 3 operators -> sink, 100 keys) on Ray for several
``max_batch_records``. Latency: a thin live Kafka stream (1,000 events/s) for several
``linger`` values, end to end. Run: ``python -m benchmarks.batching``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import numpy as np

import streamdag as sd
from benchmarks.data_plane import (
    CountingSink,
    WalkSource,
    build_graph,
    events_per_second,
)
from benchmarks.kafka_end_to_end import live_latencies
from connectors.broker import EmbeddedBroker
from runtime.dataplane.host import RuntimeSettings
from runtime.runners.ray_runner import RayRunner, ensure_ray

__all__ = ["main"]


def _throughput(batch: int, events: int) -> float:
    runner = RayRunner(RuntimeSettings(credits=4, max_batch_records=batch))
    result = runner.run(build_graph(), sources={"ticks": WalkSource(events)},
                        sinks={"out": CountingSink}, timeout_s=600)
    return events_per_second(result, events)


def _thin_graph(ticks: sd.Node, output_topic: str) -> sd.Graph:
    return sd.Graph("thin", outputs=[ticks.map("price * 1", name="copy").to_topic(
        output_topic, name="out")])


def _latency(bootstrap: str, linger_s: float, rate: float, seconds: float) -> tuple[float, float]:
    topic = f"bench.linger.{int(linger_s * 1e3)}.{time.strftime('%H%M%S')}"
    settings = RuntimeSettings(credits=4, max_batch_records=100_000, linger_s=linger_s)
    samples = live_latencies(bootstrap, topic, _thin_graph, settings, rate, seconds, settle_s=2.0)
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99)


def main(argv: Sequence[str] | None = None) -> None:
    """Sweep batch sizes and lingers; print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batches", default="5000,20000,50000,100000,200000")
    parser.add_argument("--lingers-ms", default="1,5,20")
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray(num_cpus=2)
    _throughput(50_000, 200_000)  # load the kernels into the cache before measuring
    print(f"{'max_batch_records':>17} {'events/s (Ray)':>15}")
    for batch in (int(b) for b in args.batches.split(",")):
        print(f"{batch:>17,} {_throughput(batch, args.events):>15,.0f}", flush=True)
    with EmbeddedBroker.start(".state/bench-broker") as broker:
        print(f"\nthin traffic, {args.rate:,.0f} events/s, Kafka -> map -> Kafka:")
        print(f"{'linger ms':>9} {'p50 ms':>7} {'p99 ms':>7}")
        for linger in (float(x) for x in args.lingers_ms.split(",")):
            p50, p99 = _latency(broker.bootstrap_servers, linger / 1e3, args.rate, args.seconds)
            print(f"{linger:>9.0f} {p50:>7.1f} {p99:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
