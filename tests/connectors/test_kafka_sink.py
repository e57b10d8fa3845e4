"""The Kafka sink: key partitioning, formats, ids, batching, retries, nothing dropped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RequestTimedOutError
from aiokafka.partitioner import murmur2

from connectors.errors import ProduceError
from connectors.kafka_sink import ID_HEADER, KafkaSinkConfig, KafkaSinkWriter
from streamdag.batch import Batch

NewTopic = Callable[[int], Awaitable[str]]
Consume = Callable[..., Awaitable[list[Any]]]


def means(count: int, first: int = 0) -> Batch:
    n = np.arange(first, first + count)
    return Batch.from_columns(
        ts=n * 1_000_000_000, key=[f"sym{i % 30}" for i in n.tolist()], mean=n * 0.5
    )


async def test_records_go_to_kafkas_key_partition_in_order_with_ids(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(3)
    sink = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic, max_batch_bytes=2048))
    await sink.open()
    await sink.write(means(150), record_ids=[b"id-%d" % i for i in range(150)])
    await sink.write(means(50, first=150))
    assert sink.pending_records == 200
    await sink.flush()
    await sink.close()
    records = await consume(topic, 200)

    assert sink.pending_records == 0 and sink.stats.records == 200
    assert sink.stats.batches > 3  # 2 KiB batches: several per partition
    for record in records:
        value = json.loads(record.value)
        assert record.key == value["key"].encode()
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3
        assert record.timestamp == value["ts"] // 1_000_000
        n = value["ts"] // 1_000_000_000
        assert value == {"ts": n * 1_000_000_000, "key": f"sym{n % 30}", "mean": n * 0.5}
        assert list(record.headers) == ([(ID_HEADER, b"id-%d" % n)] if n < 150 else [])
    for partition in range(3):
        stamps = [r.timestamp for r in records if r.partition == partition]
        assert stamps == sorted(stamps)


async def test_msgpack_records(bootstrap: str, new_topic: NewTopic, consume: Consume) -> None:
    topic = await new_topic(1)
    sink = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic, codec="msgpack",
                                           event_time_stamps=False))
    await sink.open()
    await sink.write(means(3))
    await sink.close()
    records = await consume(topic, 3)

    assert [msgpack.unpackb(r.value) for r in records] == [
        {"ts": n * 1_000_000_000, "key": f"sym{n}", "mean": n * 0.5} for n in range(3)
    ]
    assert all(r.timestamp > 1_600_000_000_000 for r in records)  # the producer's clock


class FlakyProducer:
    """A real producer whose next ``failures`` deliveries fail with ``error``."""

    def __init__(self, config: KafkaSinkConfig, failures: int, error: Exception) -> None:
        self.real = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all",
                                     max_batch_size=config.max_batch_bytes)
        self.failures = failures
        self.error = error
        self.attempts = 0

    async def start(self) -> None:
        await self.real.start()

    async def stop(self) -> None:
        await self.real.stop()

    async def partitions_for(self, topic: str) -> Any:
        return await self.real.partitions_for(topic)

    def create_batch(self) -> Any:
        return self.real.create_batch()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(self.error)
            return failed
        return await self.real.send_batch(batch, topic, partition=partition)


def flaky_factory(
    failures: int, error: Exception
) -> tuple[list[FlakyProducer], Callable[[KafkaSinkConfig], FlakyProducer]]:
    """A producer factory for the sink, and the list of the FlakyProducers it built."""
    built: list[FlakyProducer] = []

    def factory(config: KafkaSinkConfig) -> FlakyProducer:
        built.append(FlakyProducer(config, failures=failures, error=error))
        return built[-1]

    return built, factory


async def test_retriable_errors_are_retried_and_order_holds(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(1)
    _, factory = flaky_factory(failures=2, error=RequestTimedOutError())
    config = KafkaSinkConfig(bootstrap, topic, max_batch_bytes=1024, initial_backoff_s=0.001)
    sink = KafkaSinkWriter(config, producer_factory=factory)
    await sink.open()
    await sink.write(means(40))
    await sink.flush()
    await sink.close()
    records = await consume(topic, 40)

    assert [json.loads(r.value)["mean"] for r in records] == [n * 0.5 for n in range(40)]
    assert sink.stats.retries == 2 and sink.stats.failures == 0


async def test_delivery_that_keeps_failing_raises_and_keeps_records_pending(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(1)
    producers, factory = flaky_factory(failures=1000, error=RequestTimedOutError())
    sink = KafkaSinkWriter(
        KafkaSinkConfig(bootstrap, topic, max_attempts=3, initial_backoff_s=0.001),
        producer_factory=factory,
    )
    await sink.open()
    await sink.write(means(10))
    with pytest.raises(ProduceError) as failure:
        await sink.flush()
    pending_after_failure = sink.pending_records
    producers[0].failures = 0  # the broker heals
    await sink.flush()
    await sink.close()
    records = await consume(topic, 10)

    assert (failure.value.attempts, failure.value.pending) == (3, 10)
    assert pending_after_failure == 10 and sink.pending_records == 0
    assert sink.stats.failures == 1 and sink.stats.retries == 2
    assert [json.loads(r.value)["mean"] for r in records] == [n * 0.5 for n in range(10)]


async def test_errors_that_cannot_heal_are_raised_at_once(
    bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(1)
    producers, factory = flaky_factory(failures=1, error=MessageSizeTooLargeError())
    sink = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic), producer_factory=factory)
    await sink.open()
    await sink.write(means(2))
    with pytest.raises(ProduceError, match="MessageSizeTooLargeError"):
        await sink.flush()
    assert producers[0].attempts == 1 and sink.pending_records == 2
    await sink.close()
