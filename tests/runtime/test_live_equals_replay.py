"""Multi-input graphs read live from Kafka give exactly what a bounded replay of the same records
gives, however the fetches of the topic's partitions interleave.

Ticks go to 4 partitions (a symbol always to the same one) in bursts of random sizes with
different pauses per partition, so partitions run out of step in event time and every fetch
mixes them differently. The live runs read the topic as it is written (and, after that, re-read
the backlog with small fetches), with no time-ordering reader in front; the replay reads the
same offsets through the bounded, time-ordered path (whose watermarks are checked here too).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

import streamdag as sd
from connectors.kafka_source import KafkaSourceConfig
from connectors.topics import ensure_topics
from runtime.demo import EXAMPLE_GRAPHS_DIR
from runtime.demo.synthetic import RandomWalk
from runtime.runners.kafka_binding import KafkaBinding, KafkaSourceFactory
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from runtime.runners.replay import TimeOrderedReader
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.graph import Graph, Node
from streamdag.spec import loads
from streamdag.testing import ChunkScript, ListSink

GRAPHS = EXAMPLE_GRAPHS_DIR
PARTITIONS = 4
SYMBOLS = 12
#: Records per partition; every partition of a run ends at this offset.
PER_PARTITION = 2_000
_topic_numbers = itertools.count()


def _ticks() -> list[list[tuple[bytes, bytes]]]:
    """Per partition, its (key, JSON value) records in offset order; event time 1 ms per tick."""
    walk = RandomWalk(symbols=SYMBOLS, seed=11).next_batch(PARTITIONS * PER_PARTITION)
    by_partition: list[list[tuple[bytes, bytes]]] = [[] for _ in range(PARTITIONS)]
    rows = zip(walk.ts.tolist(), walk.key.tolist(), walk.columns["price"].tolist(),
               walk.columns["size"].tolist(), strict=True)
    for index, (ts, key, price, size) in enumerate(rows):
        value = {"symbol": key.decode(), "ts": ts, "price": price, "size": size}
        by_partition[(index % SYMBOLS) % PARTITIONS].append((key, json.dumps(value).encode()))
    assert all(len(records) == PER_PARTITION for records in by_partition)
    return by_partition


async def _produce_out_of_step(bootstrap: str, topic: str) -> None:
    """Each partition in its own bursts and pauses, so they drift apart in event time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1,
                                max_batch_size=256 * 1024)
    await producer.start()
    pauses = [0.0, 0.03, 0.006, 0.015]  # partition 0 races ahead, 1 lags far behind

    async def one_partition(partition: int, records: list[tuple[bytes, bytes]]) -> None:
        rng = np.random.default_rng(100 + partition)
        position = 0
        while position < len(records):
            burst = records[position:position + int(rng.integers(10, 400))]
            builder = producer.create_batch()
            for key, value in burst:
                assert builder.append(key=key, value=value, timestamp=None) is not None
            await (await producer.send_batch(builder, topic, partition=partition))
            position += len(burst)
            await asyncio.sleep(pauses[partition] * float(rng.uniform(0.2, 2.0)))

    try:
        await asyncio.gather(*(one_partition(p, records)
                               for p, records in enumerate(_ticks())))
    finally:
        await producer.stop()


def _new_topic(bootstrap: str) -> str:
    topic = f"live-equals-replay-{next(_topic_numbers)}"
    asyncio.run(ensure_topics(bootstrap, {topic: PARTITIONS}))
    return topic


def _live_sources(bootstrap: str, fetch_bytes: int) -> Any:
    """Unordered Kafka readers (the live path) that stop at the run's last offset."""

    def source_for(node: Node) -> KafkaSourceFactory:
        config = KafkaSourceConfig.from_endpoint_params(
            node.params, bootstrap, end=PER_PARTITION, fetch_max_wait_ms=10,
            max_partition_fetch_bytes=fetch_bytes,
        )
        return KafkaSourceFactory(config, time_ordered=False)

    return source_for


def _replay(bootstrap: str, graph: Graph, sinks: list[str]) -> dict[str, list[dict[str, Any]]]:
    recorded = KafkaBinding(bootstrap, start="earliest", end=PER_PARTITION)
    result = LocalRunner(None, *recorded.defaults()).run(
        graph, sinks=dict.fromkeys(sinks, ListSink), timeout_s=60)
    return {node.name: result.records(node.name) for node in (*graph.sinks, *graph.outputs)}


def _demo_graph(name: str, topic: str) -> Graph:
    text = (GRAPHS / f"{name}.toml").read_text().replace('"market.ticks"', f'"{topic}"')
    return loads(text, "toml")


@sd.udf(period=2)
def spread(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Latest fast minus the slow value one event earlier."""
    return fast[:, -1] - slow[:, 0]


def _every_family_graph(topic: str) -> Graph:
    """A diamond, a crossover, an as-of join, bars and early window updates over one source."""
    ticks = sd.source("ticks", topic=topic, key="symbol",
                      schema={"price": "float64", "size": "float64"})
    fast = ticks.rolling_mean("price", window=5, name="fast")
    slow = ticks.ema("price", span=12, name="slow")
    cross = fast.crossover(slow, name="cross")
    joined = ticks.zscore("price", window=8, name="z").asof_join(cross, name="joined")
    gap = spread(ticks.map("price * 10", name="b"), ticks.map("price * 100", name="c"),
                 name="diamond")
    bars = ticks.ohlcv(bar=40_000_000, name="bars")
    # Early updates by event time: exactly the window's events before each 10 ms boundary.
    early = ticks.hopping_window(40_000_000, 20_000_000, agg=["mean", "count"], field="price",
                                 early_interval=10_000_000, name="early")
    return sd.Graph("families", outputs=[joined, gap, bars, cross, early, ticks])


@pytest.mark.integration
def test_demo_crossovers_live_on_ray_equal_their_replay(ray_session: None, bootstrap: str) -> None:
    topic = _new_topic(bootstrap)
    momentum = _demo_graph("momentum", topic)
    reversion = _demo_graph("mean_reversion", topic)
    runner = RayRunner(None, _live_sources(bootstrap, fetch_bytes=64 * 1024))
    running = [runner.start(g, sinks={g.sinks[0].name: ListSink})
               for g in (momentum, reversion)]
    try:
        asyncio.run(_produce_out_of_step(bootstrap, topic))
        live = [run.wait(60) for run in running]
    finally:
        for run in running:
            run.stop()

    replayed = _replay(bootstrap, momentum, ["to_signals"])["to_signals"]
    # Every tick past the 50-tick warm-up of its symbol pairs a 20- with a 50-tick mean.
    assert len(replayed) == PARTITIONS * PER_PARTITION - SYMBOLS * 49
    assert live[0].records("to_signals") == replayed
    replayed = _replay(bootstrap, reversion, ["to_signals"])["to_signals"]
    assert len(replayed) == PARTITIONS * PER_PARTITION - SYMBOLS * 19
    assert live[1].records("to_signals") == replayed
    assert live[0].stats["crossover"].late_events == 0


@pytest.mark.integration
def test_every_multi_input_family_live_and_from_a_backlog_equals_the_replay(
    bootstrap: str,
) -> None:
    topic = _new_topic(bootstrap)
    graph = _every_family_graph(topic)
    outputs = [node.name for node in graph.outputs if node.name != "ticks"]

    async def live_while_producing() -> Any:
        runner = LocalRunner(None, _live_sources(bootstrap, fetch_bytes=16 * 1024))
        run = asyncio.create_task(runner.run_async(graph, {}, {}, timeout_s=60))
        await _produce_out_of_step(bootstrap, topic)
        return await run

    live = asyncio.run(live_while_producing())
    # Re-reading the whole backlog: small fetches, each partition far ahead of the others.
    backlog = LocalRunner(None, _live_sources(bootstrap, fetch_bytes=2 * 1024)).run(
        graph, timeout_s=60)
    replayed = _replay(bootstrap, graph, [])
    for run in (live, backlog):
        # The source handed on the partitions interleaved, out of event-time order...
        ticks = run.records("ticks")
        assert ticks != replayed["ticks"]
        assert sorted(ticks, key=lambda tick: tick["ts"]) == replayed["ticks"]
        # ...and every node after it still computed exactly what the replay computed.
        for name in outputs:
            assert replayed[name], f"{name} produced nothing"
            assert run.records(name) == replayed[name], name
        assert sum(stats.late_events for stats in run.stats.values()) == 0
    assert len(replayed["cross"]) == PARTITIONS * PER_PARTITION - SYMBOLS * 4
    assert len(replayed["diamond"]) == PARTITIONS * PER_PARTITION - SYMBOLS
    assert any(r["early"] for r in replayed["early"])


def _lineage(ts: list[int], partitions: list[int]) -> Batch:
    return Batch(np.array(ts, dtype=np.int64), np.array([b"k"] * len(ts), dtype="S1"),
                 {"price": np.ones(len(ts))}, np.array(partitions, dtype=np.int32),
                 np.arange(len(ts), dtype=np.int64))


def test_the_replay_watermark_never_passes_a_record_it_still_holds() -> None:
    reader = TimeOrderedReader(ChunkScript([
        SourceChunk(_lineage([10, 5, 12], [0, 1, 1]), 10),
        # Partition 0 has ended: the source's watermark no longer waits for it, but the
        # reader still holds 10 and 12 until partition 0 passes them or the range ends.
        SourceChunk(_lineage([15, 30], [1, 1]), 30),
        SourceChunk(_lineage([], []), 30, finished=True),
    ]))

    async def read_all() -> list[tuple[list[int], int | None]]:
        await reader.open()
        return [((chunk := await reader.read(100, 0.0)).batch.ts.tolist(), chunk.watermark)
                for _ in range(3)]

    assert asyncio.run(read_all()) == [([5], 10), ([], 10), ([10, 12, 15, 30], 30)]
