"""A source declared ``partitioned_by_key``, read live from the embedded broker: keyed nodes
release each partition by its own watermark, and every key still equals the replay."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

import streamdag as sd
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from connectors.topics import ensure_topics
from runtime.runners.kafka_binding import KafkaSourceFactory
from runtime.runners.local_runner import LocalRunner
from streamdag.connector import SourceChunk
from streamdag.graph import Node
from streamdag.schema import Schema
from streamdag.testing import ChunkScript, ListSink
from tests.runtime.test_live_equals_replay import (
    PARTITIONS,
    PER_PARTITION,
    SYMBOLS,
    _produce_out_of_step,
    _replay,
)

_topic_numbers = itertools.count()


def _per_key(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    keyed: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        keyed.setdefault(str(record["key"]), []).append(record)
    return keyed


def _sources(bootstrap: str, **options: Any) -> Any:
    def source_for(node: Node) -> KafkaSourceFactory:
        return KafkaSourceFactory(KafkaSourceConfig.from_endpoint_params(
            node.params, bootstrap, fetch_max_wait_ms=10, **options), time_ordered=False)

    return source_for


@pytest.mark.integration
def test_a_quiet_partition_holds_back_no_key_of_the_others(bootstrap: str) -> None:
    topic = f"by-key-quiet-{next(_topic_numbers)}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2}))
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"},
                      partitioned_by_key=True)
    graph = sd.Graph("quiet", outputs=[ticks.rolling_mean("price", window=2, name="mean")
                                     .to_topic(f"{topic}.out", name="out")])
    written = ListSink()

    async def run() -> None:
        # Partition 1 never has a record and never goes idle: the source's watermark stays
        # unknown, so only partition 0's own marks can release anything.
        runner = LocalRunner(None, _sources(bootstrap, idle_timeout_s=None))
        running = asyncio.create_task(
            runner.run_async(graph, {}, {"out": lambda: written}, timeout_s=60))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for t in range(1, 21):
                value = json.dumps({"symbol": "a", "ts": t, "price": float(t)}).encode()
                await producer.send_and_wait(topic, value, key=b"a", partition=0)
            deadline = time.monotonic() + 30
            while len(written.records()) < 18 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    asyncio.run(run())
    # Events 1..19 are below partition 0's mark (20, its newest, may still have a twin).
    assert written.records() == [{"ts": t, "key": "a", "value": t - 0.5} for t in range(2, 20)]


@pytest.mark.integration
def test_sharded_source_and_mean_release_by_partition_past_a_quiet_partition(
        bootstrap: str) -> None:
    topic = f"by-key-sharded-{next(_topic_numbers)}"
    asyncio.run(ensure_topics(bootstrap, {topic: 4}))
    # Source shard 0 reads partitions 0 and 2, shard 1 partitions 1 and 3. Partition 3 never
    # has a record and never goes idle: shard 1's watermark, so the mean's input watermark,
    # stays unknown, and only the partitions' own marks can release anything.
    keys = {"a": 0, "b": 1, "c": 2}

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, partition in keys.items():
                builder = producer.create_batch()
                for t in range(1, 11):
                    value = {"symbol": key, "ts": t, "price": float(t * (partition + 1))}
                    builder.append(key=key.encode(), value=json.dumps(value).encode(),
                                   timestamp=None)
                await (await producer.send_batch(builder, topic, partition=partition))
        finally:
            await producer.stop()

    def means(parallelism: int | None) -> list[dict[str, Any]]:
        ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"},
                          partitioned_by_key=True).with_options(parallelism=parallelism)
        mean = ticks.rolling_mean("price", window=2, name="mean")
        # Each mean shard takes one slot per source shard; the sink, one actor, one slot per
        # mean shard, whose releases it writes as they come.
        graph = sd.Graph("sharded", outputs=[mean.to_topic(f"{topic}.out", name="out")],
                         parallelism=parallelism)
        written = ListSink()

        async def run() -> None:
            runner = LocalRunner(None, _sources(bootstrap, idle_timeout_s=None))
            running = asyncio.create_task(
                runner.run_async(graph, {}, {"out": lambda: written}, timeout_s=60))
            try:
                deadline = time.monotonic() + 30
                while (len(written.records()) < 24 and time.monotonic() < deadline
                       and not running.done()):
                    await asyncio.sleep(0.05)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)

        asyncio.run(run())
        return written.records()

    asyncio.run(produce())
    sharded = means(2)
    # Each key's events 1..9 are below its partition's mark (10, its newest, may have a twin).
    assert _per_key(sharded) == {
        key: [{"ts": t, "key": key, "value": (t - 0.5) * (partition + 1)} for t in range(2, 10)]
        for key, partition in keys.items()}
    assert _per_key(means(None)) == _per_key(sharded)


@pytest.mark.integration
def test_keyed_nodes_live_equal_the_replay_per_key(bootstrap: str) -> None:
    topic = f"by-key-replay-{next(_topic_numbers)}"
    asyncio.run(ensure_topics(bootstrap, {topic: PARTITIONS}))
    ticks = sd.source("ticks", topic=topic, key="symbol", partitioned_by_key=True,
                      schema={"price": "float64", "size": "float64"})
    fast = ticks.rolling_mean("price", window=5, name="fast")
    slow = ticks.ema("price", span=12, name="slow")
    graph = sd.Graph("by_key", outputs=[fast, slow, ticks.zscore("price", window=8, name="z"),
                                        ticks.vwap(window=4, name="vwap"),
                                        fast.crossover(slow, name="cross")])

    async def live_while_producing() -> Any:
        runner = LocalRunner(None, _sources(bootstrap, end=PER_PARTITION,
                                            max_partition_fetch_bytes=16 * 1024))
        run = asyncio.create_task(runner.run_async(graph, {}, {}, timeout_s=60))
        await _produce_out_of_step(bootstrap, topic)
        return await run

    live = asyncio.run(live_while_producing())
    replayed = _replay(bootstrap, graph, [])
    for name in ("fast", "slow", "z", "vwap", "cross"):
        assert replayed[name], f"{name} produced nothing"
        assert _per_key(live.records(name)) == _per_key(replayed[name]), name
    assert len(replayed["fast"]) == PARTITIONS * PER_PARTITION - SYMBOLS * 4
    assert sum(stats.late_events for stats in live.stats.values()) == 0


@pytest.mark.integration
def test_the_source_drops_a_record_behind_its_partition_and_sends_each_partitions_mark(
        bootstrap: str) -> None:
    topic = f"by-key-reader-{next(_topic_numbers)}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2}))
    written = {0: [("a", 1), ("a", 2), ("c", 5), ("a", 3), ("c", 6)], 1: [("b", 4)]}

    async def read() -> tuple[list[tuple[int, str, int]], int, dict[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for partition, records in written.items():
                for key, ts in records:
                    value = json.dumps({"symbol": key, "ts": ts, "price": 1.0}).encode()
                    await producer.send_and_wait(topic, value, key=key.encode(),
                                                 partition=partition)
        finally:
            await producer.stop()
        reader = KafkaSourceReader(KafkaSourceConfig(
            bootstrap, topic, Schema.of(price="float64"), key_field="symbol",
            partitioned_by_key=True, lateness_ns=1))
        await reader.open()
        kept: list[tuple[int, str, int]] = []
        late, marks = 0, {}
        deadline = time.monotonic() + 30
        try:
            while len(kept) + late < 6 and time.monotonic() < deadline:
                chunk = await reader.read(1000, 0.0)
                assert chunk.batch.partition is not None
                kept += zip(chunk.batch.partition.tolist(),
                            [k.decode() for k in chunk.batch.key.tolist()],
                            chunk.batch.ts.tolist(), strict=True)
                late += chunk.late
                marks.update(chunk.partition_marks)
        finally:
            await reader.close()
        return kept, late, marks

    kept, late, marks = asyncio.run(read())
    # (a, 3) is 2 behind c's 5 in partition 0, more than the lateness of 1: late, dropped.
    assert sorted(kept) == [(0, "a", 1), (0, "a", 2), (0, "c", 5), (0, "c", 6), (1, "b", 4)]
    assert late == 1
    assert marks == {0: 5, 1: 3}  # each partition's newest event time, less the lateness


def test_the_records_a_source_dropped_as_late_count_in_its_node_stats() -> None:
    ticks = sd.source("ticks", topic="t", schema={"value": "float64"}, partitioned_by_key=True)
    empty = sd.Batch.from_columns(ts=[], key=[], value=[])
    script = ChunkScript([SourceChunk(empty, None, late=2), SourceChunk(empty, None, True,
                                                                        late=1)])
    result = LocalRunner().run(sd.Graph("late", outputs=[ticks]),
                               sources={"ticks": lambda: script}, timeout_s=30)
    assert (result.stats["ticks"].late_events, result.stats["ticks"].late_dropped) == (3, 3)
