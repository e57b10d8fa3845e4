"""Exactly-once publishing over the real broker: epoch commits, read-back, no duplicate."""

from __future__ import annotations

import asyncio
import copy
import json
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from connectors.epoch_commits import commits_topic
from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.partitioning import key_partitions
from connectors.record_ids import (
    ID_HEADER,
    LEGACY_ID_HEADER,
    parse_record_id,
    record_ids,
    sink_tag,
)
from operators.key_slots import hash_keys
from runtime.dataplane.sink_epochs import EpochOutput, KeySequences, PendingEpoch
from streamdag.batch import Batch

NewTopic = Callable[[int], Awaitable[str]]
Consume = Callable[..., Awaitable[list[Any]]]
SINK = "5" * 64


def values(first: int, count: int) -> Batch:
    n = np.arange(first, first + count)
    return Batch.from_columns(ts=n, key=[f"k{i % 3}" for i in n.tolist()], value=n * 1.0)


def _identity(record: Any) -> tuple[str, int, int]:
    """``(sink tag, key hash, sequence)`` of a record, from its id header of either format."""
    headers = dict(record.headers)
    if LEGACY_ID_HEADER in headers:
        value = headers[LEGACY_ID_HEADER]
        return (value[:8].hex(), *struct.unpack(">QQ", value[8:]))
    tag, sequence = parse_record_id(headers[ID_HEADER])
    return tag, int(hash_keys(np.array([record.key]))[0]), sequence


def _check(records: list[Any], count: int) -> None:
    """``count`` records, each id once, and the values 0..count-1 in order per key."""
    ids = [_identity(r) for r in records]
    assert len(records) == count
    assert max(Counter(ids).values()) == 1
    by_key: dict[str, list[float]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = json.loads(record.value)
        by_key.setdefault(value["key"], []).append(value["value"])
    assert by_key == {f"k{k}": [float(v) for v in range(count) if v % 3 == k] for k in range(3)}


async def _checkpoint_2_with_epoch_2_pending(
    writer: KafkaSinkWriter,
) -> tuple[list[PendingEpoch], KeySequences]:
    """A sink that published and committed epoch 1 (5 records), then closed epoch 2 (6
    records): checkpoint 2's pending epochs and sequences."""
    first = EpochOutput(writer, SINK)
    first.add(values(0, 5))
    first.close_epoch(1)
    await first.publish_through(1)  # epoch 1: published and committed
    first.add(values(5, 6))
    first.close_epoch(2)
    return first.pending(), copy.deepcopy(first.sequences)  # checkpoint 2


async def test_a_restored_sink_completes_a_half_published_epoch_without_a_duplicate(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(2)
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await writer.open()
    pending, sequences = await _checkpoint_2_with_epoch_2_pending(writer)
    # Epoch 2 was half published when the sink crashed: 3 of its 6 records, no commit.
    epoch = pending[0]
    half = np.arange(3)
    await writer.write(epoch.batch.take(half), record_ids(SINK, epoch.sequences[half]))
    await writer.flush()

    restored = EpochOutput(writer, SINK, pending, sequences, restored_checkpoint=2)
    await restored.publish_through(2)
    restored.add(values(11, 2))
    restored.close_epoch(3)
    await restored.publish_through(3)
    await writer.close()
    records = await consume(topic, 13)
    commits = await consume(commits_topic(topic), 3)

    _check(records, 13)
    assert (restored.published_records, restored.skipped_records) == (5, 3)
    assert [json.loads(c.value)["epoch"] for c in commits] == [1, 2, 3]
    assert {c.key for c in commits} == {SINK.encode()}


async def _publish_in_format_1(bootstrap: str, topic: str, partitions: int,
                               epoch: PendingEpoch, count: int) -> None:
    """The first ``count`` records of ``epoch`` as a sink published them before format 2: each
    with the header ``streamdag.id`` = tag + key hash + sequence (8 bytes each, big-endian)."""
    from aiokafka import AIOKafkaProducer

    batch = epoch.batch
    targets = key_partitions(batch.key, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for row, record in enumerate(batch.to_records()[:count]):
            record_id = sink_tag(SINK) + struct.pack(
                ">QQ", int(epoch.key_hashes[row]), int(epoch.sequences[row]))
            await producer.send_and_wait(
                topic, json.dumps(record).encode(), key=batch.key[row],
                partition=int(targets[row]), headers=[(LEGACY_ID_HEADER, record_id)])
    finally:
        await producer.stop()


async def test_an_upgraded_sink_completes_an_epoch_half_published_in_the_old_id_format(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(2)
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await writer.open()
    pending, sequences = await _checkpoint_2_with_epoch_2_pending(writer)
    # The sink ran the code before format 2 and crashed with 4 of epoch 2's 6 records out.
    await _publish_in_format_1(bootstrap, topic, 2, pending[0], 4)

    restored = EpochOutput(writer, SINK, pending, sequences, restored_checkpoint=2)
    await restored.publish_through(2)
    await writer.close()
    records = await consume(topic, 11)

    _check(records, 11)
    assert (restored.published_records, restored.skipped_records) == (2, 4)
    assert sorted(next(iter(dict(r.headers))) for r in records) == (
        [ID_HEADER] * 7 + [LEGACY_ID_HEADER] * 4)


async def test_a_sink_restored_from_an_older_checkpoint_skips_what_it_recomputes(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(1)
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await writer.open()
    first = EpochOutput(writer, SINK)
    first.add(values(0, 5))
    first.close_epoch(1)
    at_checkpoint_1 = copy.deepcopy(first.sequences)
    await first.publish_through(1)
    first.add(values(5, 6))
    first.close_epoch(2)
    await first.publish_through(2)
    # Checkpoint 2 turned out corrupt: the sink is restored from checkpoint 1, and the replay
    # recomputes epoch 2's records in epochs numbered anew.
    restored = EpochOutput(writer, SINK, (), at_checkpoint_1, restored_checkpoint=1)
    restored.add(values(5, 6))
    restored.close_epoch(5)
    await restored.publish_through(5)
    restored.add(values(11, 2))
    restored.close_epoch(6)
    await restored.publish_through(6)
    await writer.close()
    records = await consume(topic, 13)

    _check(records, 13)
    assert (restored.published_records, restored.skipped_records) == (2, 6)


class _LandsThenTimesOut:
    """A producer whose first ``failures`` sends reach the broker but answer a timeout."""

    def __init__(self, config: KafkaSinkConfig, failures: int) -> None:
        from aiokafka import AIOKafkaProducer

        self.real = AIOKafkaProducer(bootstrap_servers=config.bootstrap_servers,
                                     max_batch_size=config.max_batch_bytes)
        self.failures = failures

    async def start(self) -> None:
        await self.real.start()

    async def stop(self) -> None:
        await self.real.stop()

    async def partitions_for(self, topic: str) -> Any:
        return await self.real.partitions_for(topic)

    def __getattr__(self, name: str) -> Any:  # the commit ledger's sends go straight through
        return getattr(self.real, name)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        from aiokafka.errors import RequestTimedOutError

        delivered = await (await self.real.send_batch(batch, topic, partition=partition))
        if self.failures <= 0:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(delivered)
            return done
        self.failures -= 1
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(RequestTimedOutError())
        return failed


async def test_a_send_that_landed_but_timed_out_is_not_published_twice(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(2)
    config = KafkaSinkConfig(bootstrap, topic, max_batch_bytes=1024)
    producers: list[_LandsThenTimesOut] = []

    def factory(config: KafkaSinkConfig) -> _LandsThenTimesOut:
        producers.append(_LandsThenTimesOut(config, failures=2))
        return producers[-1]

    writer = KafkaSinkWriter(config, producer_factory=factory)
    await writer.open()
    output = EpochOutput(writer, SINK)
    output.add(values(0, 60))
    output.close_epoch(1)
    await output.publish_through(1)
    await writer.close()
    records = await consume(topic, 60)

    _check(records, 60)
    assert producers[0].failures == 0 and output.skipped_records > 0


async def test_a_started_output_gets_the_commits_ready_before_its_first_publish(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(2)
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await writer.open()
    output = EpochOutput(writer, SINK)
    output.start()  # the companion topic and the commit client, while the stream starts
    output.add(values(0, 4))
    output.close_epoch(1)
    # Created by start(), not by a commit: no epoch has been published yet.
    await asyncio.wait_for(_until_topic_exists(bootstrap, commits_topic(topic)), 10)
    assert await consume(commits_topic(topic), 0) == []

    await output.publish_rest(2)
    await output.close()
    await writer.close()
    _check(await consume(topic, 4), 4)
    assert [json.loads(c.value)["epoch"] for c in await consume(commits_topic(topic), 1)] == [1]


async def _until_topic_exists(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        while topic not in await consumer.topics():
            await asyncio.sleep(0.02)
    finally:
        await consumer.stop()
