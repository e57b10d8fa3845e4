"""Plain aiokafka loops on the reference workload: the baselines streamdag is measured against.

Workload: Kafka -> rolling mean of the last 20 prices per key -> Kafka; JSON records
``{"ts", "key", "price"}``, 100 keys, 4 partitions, 500,000 records already in the topic (a
replay: throughput, not latency). Two hand-written loops a competent user would write:

* per-record: ``getmany``, ``json.loads`` each record, a Python rolling mean, ``send()`` each
  output (what BROKER.md measured at ~43k events/s on this machine);
* batched: ``getmany`` with large batches, the same decode and compute, and output through
  ``create_batch`` / ``send_batch`` per partition (Kafka's murmur2 partition cached per key).

``produce_input``, ``run_per_record_loop`` and ``run_batched_loop`` are public so another
benchmark can run streamdag beside them in the same process. Run:
``python -m benchmarks.kafka_baselines [--records N] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from connectors.broker import EmbeddedBroker
from connectors.topics import ensure_topics

__all__ = [
    "main",
    "produce_input",
    "run_batched_loop",
    "run_live_batched_loop",
    "run_per_record_loop",
]

WINDOW = 20
_PRODUCE_CHUNK = 5_000


async def produce_input(
    bootstrap: str, topic: str, n: int, keys: int = 100, partitions: int = 4
) -> None:
    """Create ``topic`` and write ``n`` JSON ticks over ``keys`` keys, partitioned by key."""
    await ensure_topics(bootstrap, {topic: partitions})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=512 * 1024)
    await producer.start()
    rng = np.random.default_rng(42)
    key_names = [f"key{k}" for k in range(keys)]
    key_partition = [(murmur2(name.encode()) & 0x7FFFFFFF) % partitions for name in key_names]
    try:
        for first in range(0, n, _PRODUCE_CHUNK):
            count = min(_PRODUCE_CHUNK, n - first)
            prices = np.round(100.0 + rng.standard_normal(count).cumsum() * 0.01, 4).tolist()
            builders = [producer.create_batch() for _ in range(partitions)]
            deliveries = []
            for i, price in enumerate(prices):
                k = (first + i) % keys
                value = json.dumps({"ts": 1_700_000_000_000_000_000 + (first + i) * 1_000,
                                    "key": key_names[k], "price": price}).encode()
                builder = builders[key_partition[k]]
                if builder.append(key=key_names[k].encode(), value=value, timestamp=None) is None:
                    deliveries.append(await producer.send_batch(builder, topic,
                                                                partition=key_partition[k]))
                    builders[key_partition[k]] = builder = producer.create_batch()
                    builder.append(key=key_names[k].encode(), value=value, timestamp=None)
            for partition, builder in enumerate(builders):
                if builder.record_count():
                    deliveries.append(await producer.send_batch(builder, topic,
                                                                partition=partition))
            await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


class _RollingMeans:
    """The mean of the last WINDOW prices of each key, in plain Python."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._sums: dict[str, float] = {}

    def update(self, key: str, price: float) -> float:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque()
            self._sums[key] = 0.0
        window.append(price)
        total = self._sums[key] + price
        if len(window) > WINDOW:
            total -= window.popleft()
        self._sums[key] = total
        return total / len(window)


async def _assigned_consumer(bootstrap: str, topic: str, max_records: int | None) -> Any:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10,
                                enable_auto_commit=False, max_poll_records=max_records,
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    await consumer.topics()
    partitions = sorted(consumer.partitions_for_topic(topic) or [])
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


async def run_per_record_loop(bootstrap: str, source: str, sink: str, n: int) -> float:
    """Events/s of the per-record loop over the first ``n`` records of ``source``."""
    partitions = (await ensure_topics(bootstrap, {sink: 4}, strict=False))[sink]
    consumer = await _assigned_consumer(bootstrap, source, None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    means = _RollingMeans()
    processed = 0
    try:
        started = time.perf_counter()
        while processed < n:
            fetched = await consumer.getmany(timeout_ms=100)
            for records in fetched.values():
                for record in records:
                    tick = json.loads(record.value)
                    mean = means.update(tick["key"], tick["price"])
                    out = json.dumps({"ts": tick["ts"], "key": tick["key"], "mean": mean})
                    await producer.send(sink, out.encode(), key=record.key)
                    processed += 1
        await producer.flush()
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
    assert partitions == 4
    return processed / elapsed


class _BatchedMeans:
    """The batched loop's work on one fetch: rolling means out in one producer batch per partition.

    Kafka's murmur2 partition of each output key is cached, as a competent hand-written loop
    would; ``key_field`` names the input field that holds the key.
    """

    def __init__(self, producer: Any, sink: str, partitions: int, key_field: str) -> None:
        self._producer = producer
        self._sink = sink
        self._partitions = partitions
        self._key_field = key_field
        self._means = _RollingMeans()
        self._partition_of: dict[bytes, int] = {}

    async def send(self, fetched: Mapping[Any, Sequence[Any]]) -> tuple[int, list[Any]]:
        """Compute and send the outputs of ``fetched``; (records read, delivery futures)."""
        producer, sink = self._producer, self._sink
        builders: dict[int, Any] = {}
        deliveries = []
        count = 0
        for records in fetched.values():
            for record in records:
                tick = json.loads(record.value)
                key = tick[self._key_field]
                mean = self._means.update(key, tick["price"])
                out = json.dumps({"ts": tick["ts"], "key": key, "mean": mean}).encode()
                partition = self._partition_of.get(record.key)
                if partition is None:
                    partition = (murmur2(record.key) & 0x7FFFFFFF) % self._partitions
                    self._partition_of[record.key] = partition
                builder = builders.get(partition)
                if builder is None:
                    builder = builders[partition] = producer.create_batch()
                if builder.append(key=record.key, value=out, timestamp=None) is None:
                    deliveries.append(await producer.send_batch(builder, sink,
                                                                partition=partition))
                    builder = builders[partition] = producer.create_batch()
                    builder.append(key=record.key, value=out, timestamp=None)
            count += len(records)
        for partition, builder in builders.items():
            deliveries.append(await producer.send_batch(builder, sink, partition=partition))
        return count, deliveries


async def run_batched_loop(bootstrap: str, source: str, sink: str, n: int) -> float:
    """Events/s of the batched loop over the first ``n`` records of ``source``."""
    partitions = (await ensure_topics(bootstrap, {sink: 4}, strict=False))[sink]
    consumer = await _assigned_consumer(bootstrap, source, 20_000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=512 * 1024)
    await producer.start()
    batched = _BatchedMeans(producer, sink, partitions, "key")
    processed = 0
    in_flight: Sequence[Any] = []
    try:
        started = time.perf_counter()
        while processed < n:
            count, deliveries = await batched.send(await consumer.getmany(timeout_ms=100))
            processed += count
            # Keep one fetch's output in flight while the next fetch is processed.
            await asyncio.gather(*in_flight)
            in_flight = deliveries
        await asyncio.gather(*in_flight)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
    return processed / elapsed


async def run_live_batched_loop(bootstrap: str, source: str, sink: str) -> None:
    """The batched loop on a live stream of ``{"symbol", "ts", "price"}`` ticks, until killed.

    Reads ``source`` from its end, writes ``{"ts", "key", "mean"}`` to ``sink`` (the event
    time passed on, so a consumer measures end-to-end latency), and prints ``ready`` once its
    consumer is positioned. The latency baseline streamdag is measured against.
    """
    partitions = (await ensure_topics(bootstrap, {sink: 4}, strict=False))[sink]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5,
                                enable_auto_commit=False)
    await consumer.start()
    await consumer.topics()
    tps = [TopicPartition(source, p) for p in sorted(consumer.partitions_for_topic(source) or [])]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=512 * 1024)
    await producer.start()
    print("ready", flush=True)
    batched = _BatchedMeans(producer, sink, partitions, "symbol")
    in_flight: Sequence[Any] = []
    try:
        while True:
            _, deliveries = await batched.send(await consumer.getmany(timeout_ms=50))
            await asyncio.gather(*in_flight)
            in_flight = deliveries
    finally:
        await producer.stop()
        await consumer.stop()


async def _run(bootstrap: str, records: int) -> list[tuple[str, float]]:
    stamp = time.strftime("%H%M%S")
    source = f"bench.ticks.{stamp}"
    started = time.perf_counter()
    await produce_input(bootstrap, source, records)
    print(f"produced {records:,} records in {time.perf_counter() - started:.1f} s", flush=True)
    per_record = await run_per_record_loop(bootstrap, source, f"{source}.per-record", records)
    batched = await run_batched_loop(bootstrap, source, f"{source}.batched", records)
    return [("aiokafka per-record loop", per_record), ("aiokafka batched loop", batched)]


def main(argv: Sequence[str] | None = None) -> None:
    """Run both baselines (on an embedded broker unless ``--bootstrap``) and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--bootstrap", default="")
    args = parser.parse_args(argv)
    if args.bootstrap:
        results = asyncio.run(_run(args.bootstrap, args.records))
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            results = asyncio.run(_run(broker.bootstrap_servers, args.records))
    baseline = results[0][1]
    print(f"{'loop':<28} {'events/s':>10} {'vs per-record':>14}")
    for name, rate in results:
        print(f"{name:<28} {rate:>10,.0f} {rate / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
