"""Recorded input: a source's topic read once into one event-time-ordered Batch, cached.

A backtest reads every partition from the start to the log end it found when it began (the
warm-up needs history before ``--from`` anyway), merges partitions in (event time, partition,
offset) order as the time-ordered replay reader does, and keeps the decoded result in the
cache under (source node_id, bootstrap servers, topic, per-partition log ends): a log only
grows, so new records change the key and an unchanged log is read from the cache.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from connectors.source_bounds import Timestamp
from runtime.backtest.cache import ResultCache
from runtime.backtest.errors import BacktestError
from streamdag.batch import Batch
from streamdag.graph import Node

__all__ = ["RecordedInput", "fingerprint", "read_all", "read_recorded"]

#: Records per read of a recorded topic.
_READ_RECORDS = 50_000


@dataclass(frozen=True)
class RecordedInput:
    """A source's recorded events (in event-time order), and a key that identifies exactly
    those events: give the same key only to the same events."""

    batch: Batch
    key: str

    @classmethod
    def of(cls, batch: Batch) -> RecordedInput:
        """Events given in memory, identified by their content (stably time-ordered)."""
        ordered = batch.take(np.argsort(batch.ts, kind="stable"))
        return cls(ordered, fingerprint(ordered))


async def read_recorded(
    bootstrap_servers: str,
    node: Node,
    *,
    cache: ResultCache | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_size: Callable[[int], None] | None = None,
) -> RecordedInput:
    """Every record of ``node``'s topic up to the current log end, decoded and time-ordered."""
    # Step 1: where each partition's log ends now (the cache key's part that moves).
    ends = await _log_ends(bootstrap_servers, str(node.params["topic"]))
    key = hashlib.sha256(repr(("recorded-input", node.node_id, bootstrap_servers,
                                sorted(ends.items()))).encode()).hexdigest()
    if on_size is not None:
        on_size(sum(ends.values()))  # records in the log (fewer if retention dropped some)
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        if on_progress is not None:
            on_progress(len(cached))
        return RecordedInput(cached, key)
    # Step 2: read it all, bounded by the time we started (so the read ends by itself).
    config = KafkaSourceConfig.from_endpoint_params(
        node.params, bootstrap_servers, start="earliest", end=Timestamp(time.time_ns()),
        fetch_max_wait_ms=10, idle_timeout_s=None, max_batch_records=_READ_RECORDS,
        fetch_max_bytes=64 << 20, max_partition_fetch_bytes=16 << 20)
    batches = await read_all(config, on_progress)
    if not batches:
        raise BacktestError(f"source {node.name!r}: topic {node.params['topic']!r} has no "
                            f"records at {bootstrap_servers}; record some first, or check the "
                            "topic name and bootstrap servers")
    # Step 3: one time-ordered batch, without lineage (a backtest publishes nothing).
    merged = Batch.concat(batches)
    assert merged.partition is not None and merged.offset is not None
    order = np.lexsort((merged.offset, merged.partition, merged.ts))
    ordered = Batch(merged.ts[order], merged.key[order],
                    {name: column[order] for name, column in merged.columns.items()})
    if cache is not None:
        cache.put(key, ordered)
    return RecordedInput(ordered, key)


async def read_all(config: KafkaSourceConfig,
                   on_progress: Callable[[int], None] | None = None) -> list[Batch]:
    """Every batch a bounded source config reads, in read order."""
    reader = KafkaSourceReader(config)
    batches: list[Batch] = []
    await reader.open()
    try:
        while True:
            chunk = await reader.read(_READ_RECORDS, 0.0)
            if len(chunk.batch):
                batches.append(chunk.batch)
                if on_progress is not None:
                    on_progress(len(chunk.batch))
            if chunk.finished:
                return batches
    finally:
        await reader.close()


def fingerprint(batch: Batch) -> str:
    """sha256 over a batch's times, keys and columns: equal for equal content only."""
    digest = hashlib.sha256()
    digest.update(repr((len(batch), batch.key.dtype.str,
                        [(name, column.dtype.str) for name, column in batch.columns.items()])
                       ).encode())
    for array in (batch.ts, batch.key, *batch.columns.values()):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


async def _log_ends(bootstrap_servers: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise BacktestError(f"topic {topic!r} does not exist at {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()
