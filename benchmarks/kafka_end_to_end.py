"""End to end over Kafka: streamdag beside two plain aiokafka loops, in one run, one broker.

Throughput (issue workload): Kafka -> rolling mean of 20 per key -> Kafka, 500k JSON records,
100 keys, 4 partitions, replayed from the topic. Latency: a steady 10k events/s live stream,
measured producer -> Kafka -> streamdag -> Kafka -> consumer from the event time stamped at
production. Run: ``python -m benchmarks.kafka_end_to_end [--records N] [--rate R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

import streamdag as sd
from benchmarks.data_plane import events_per_second
from benchmarks.kafka_baselines import produce_input, run_batched_loop, run_per_record_loop
from connectors.broker import EmbeddedBroker
from connectors.source_bounds import Timestamp
from connectors.topics import ensure_topics
from runtime.dataplane.host import RuntimeSettings
from runtime.demo.job import TickProducer
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner, ensure_ray

__all__ = ["events_per_second", "live_latencies", "main"]


def _replay_graph(source: str, sink: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=source, key="key", time="ts", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=20, name="mean")
    return sd.Graph("replay", outputs=[mean.to_topic(sink, name="out")])


def _streamdag_replay(bootstrap: str, source: str, records: int, runner: str) -> float:
    # The replay publishes to its own graph's topic, on purpose (replay_prefix="").
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, start="earliest",
                           end=Timestamp(time.time_ns()), replay_prefix="")
    graph = _replay_graph(source, f"{source}.streamdag-{runner}")
    settings = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.005)
    if runner == "local":
        result = LocalRunner(settings, *binding.defaults()).run(graph, timeout_s=600)
    else:
        result = RayRunner(settings, *binding.defaults()).run(graph, timeout_s=600)
    # Every record was read; the mean emits from the 20th event of each of the 100 keys on.
    assert result.stats["ticks"].events_out == records, result.stats["ticks"].events_out
    assert result.stats["out"].events_in == records - 100 * 19
    return events_per_second(result, records)


async def _latencies(bootstrap: str, topic: str, seconds: float) -> list[float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in
                      sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        samples: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=50)
            now = time.time_ns()
            for records in fetched.values():
                samples.extend((now - json.loads(r.value)["ts"]) / 1e6 for r in records)
        return samples
    finally:
        await consumer.stop()


def live_latencies(bootstrap: str, topic: str, build: Callable[[sd.Node, str], sd.Graph],
                   settings: RuntimeSettings, rate: float, seconds: float,
                   settle_s: float) -> list[float]:
    """End-to-end latencies (ms) of a live tick stream through ``build(ticks, output_topic)``.

    ``rate`` ticks/s go to ``topic``; the graph runs on Ray; samples are taken for ``seconds``
    once ``settle_s`` have passed.
    """
    loop = asyncio.new_event_loop()
    output_topic = f"{topic}.out"
    loop.run_until_complete(ensure_topics(bootstrap, {topic: 4, output_topic: 4}))
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=5, start="latest")
    running = RayRunner(settings, *binding.defaults()).start(build(ticks, output_topic))
    producer = TickProducer(bootstrap, topic, rate, symbols=100)
    try:
        produce = loop.create_task(producer.run())
        loop.run_until_complete(asyncio.sleep(settle_s))  # settle: warm caches, steady rate
        samples = loop.run_until_complete(_latencies(bootstrap, output_topic, seconds))
        producer.stop()
        loop.run_until_complete(produce)
    finally:
        running.stop()
        loop.close()
    return samples


def _live_graph(ticks: sd.Node, output_topic: str) -> sd.Graph:
    mean = ticks.rolling_mean("price", window=20, name="mean")
    return sd.Graph("live", outputs=[mean.to_topic(output_topic, name="out")])


def _live_latency(bootstrap: str, rate: float, seconds: float) -> tuple[float, float, int]:
    settings = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.002)
    samples = live_latencies(bootstrap, f"bench.live.{time.strftime('%H%M%S')}", _live_graph,
                             settings, rate, seconds, settle_s=3.0)
    p50, p99 = np.percentile(samples, [50, 99])
    return float(p50), float(p99), len(samples)


def _run(bootstrap: str, records: int, rate: float, live_s: float) -> None:
    source = f"bench.e2e.{time.strftime('%H%M%S')}"
    asyncio.run(produce_input(bootstrap, source, records))
    per_record = asyncio.run(run_per_record_loop(bootstrap, source, f"{source}.pr", records))
    batched = asyncio.run(run_batched_loop(bootstrap, source, f"{source}.batched", records))
    ensure_ray(num_cpus=2)
    ours_ray = _streamdag_replay(bootstrap, source, records, "ray")
    ours_local = _streamdag_replay(bootstrap, source, records, "local")
    print(f"\nthroughput: {records:,} JSON records, 100 keys, 4 partitions, rolling mean of 20")
    print(f"{'pipeline':<34} {'events/s':>10} {'vs per-record':>14} {'vs batched':>11}")
    for name, value in [("aiokafka per-record loop (send)", per_record),
                        ("aiokafka batched loop", batched),
                        ("streamdag, Ray (actor per node)", ours_ray),
                        ("streamdag, local runner", ours_local)]:
        print(f"{name:<34} {value:>10,.0f} {value / per_record:>13.2f}x "
              f"{value / batched:>10.2f}x")
    p50, p99, count = _live_latency(bootstrap, rate, live_s)
    print(f"\nlatency at a steady {rate:,.0f} events/s over {live_s:.0f} s ({count:,} outputs), "
          f"producer -> Kafka -> streamdag (Ray) -> Kafka -> consumer:")
    print(f"  p50 {p50:.1f} ms   p99 {p99:.1f} ms")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the throughput and latency comparison on an embedded broker (or --bootstrap)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--live-seconds", type=float, default=15.0)
    parser.add_argument("--bootstrap", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.bootstrap:
        _run(args.bootstrap, args.records, args.rate, args.live_seconds)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            _run(broker.bootstrap_servers, args.records, args.rate, args.live_seconds)


if __name__ == "__main__":
    main()
