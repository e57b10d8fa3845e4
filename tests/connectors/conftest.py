"""Fixtures for connector tests: one embedded broker per session, fresh topics per test."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.topics import ensure_topics

_topic_numbers = itertools.count()


@pytest.fixture
def new_topic(
    bootstrap: str, request: pytest.FixtureRequest
) -> Callable[[int], Awaitable[str]]:
    """Create a topic no other test uses, with the given partition count; returns its name."""

    async def create(partitions: int = 1) -> str:
        stem = "".join(c if c.isalnum() else "-" for c in request.node.name[:40])
        name = f"{stem}-{next(_topic_numbers)}"
        await ensure_topics(bootstrap, {name: partitions})
        return name

    return create


@pytest.fixture
def produce(bootstrap: str) -> Callable[..., Awaitable[None]]:
    """Write ``(partition, key, value, timestamp_ms)`` records, one producer batch per call."""

    async def write(topic: str, records: list[tuple[int, bytes | None, bytes | None, int]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            by_partition: dict[int, list[tuple[bytes | None, bytes | None, int]]] = {}
            for partition, key, value, stamp in records:
                by_partition.setdefault(partition, []).append((key, value, stamp))
            for partition, items in by_partition.items():
                builder = producer.create_batch()
                for key, value, stamp in items:
                    assert builder.append(key=key, value=value, timestamp=stamp) is not None
                await (await producer.send_batch(builder, topic, partition=partition))
        finally:
            await producer.stop()

    return write


@pytest.fixture
def consume(bootstrap: str) -> Callable[..., Awaitable[list[Any]]]:
    """Read exactly ``count`` records of a topic (all partitions, from the start), or fail."""

    async def read(topic: str, count: int, timeout_s: float = 10.0) -> list[Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, fetch_max_wait_ms=10, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = sorted(consumer.partitions_for_topic(topic) or [])
            if not partitions:
                await consumer.topics()
                partitions = sorted(consumer.partitions_for_topic(topic) or [])
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[Any] = []
            deadline = time.monotonic() + timeout_s
            while len(records) < count and time.monotonic() < deadline:
                fetched = await consumer.getmany(timeout_ms=100)
                for tp in sorted(fetched):
                    records.extend(fetched[tp])
            assert len(records) == count, f"read {len(records)} of {count} records of {topic}"
            # Nothing more may follow: a short extra wait must bring no record.
            assert not await consumer.getmany(timeout_ms=100)
            return records
        finally:
            await consumer.stop()

    return read
