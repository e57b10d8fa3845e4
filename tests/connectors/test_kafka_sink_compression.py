"""A compressing Kafka sink over the real broker: on every path its batches are really gzip,
independent readers get exactly its records, and what reads batches back reads them."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as KafkaPartition

import streamdag as sd
from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from connectors.record_ids import ID_HEADER, parse_record_id
from connectors.source_bounds import Timestamp
from operators.key_slots import hash_keys
from runtime.backtest.outputs import write_topics
from runtime.backtest.results import BacktestResult
from runtime.dataplane.sink_epochs import EpochOutput
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.schema import Schema
from tests.connectors.test_kafka_source import read_until_finished

NewTopic = Callable[[int], Awaitable[str]]
Consume = Callable[..., Awaitable[list[Any]]]
SINK = "9" * 64
COUNT = 240
PARTITIONS = 2


def _means(count: int) -> Batch:
    n = np.arange(count)
    return Batch.from_columns(ts=n * 1_000_000, key=[f"sym{i % 7}" for i in n.tolist()],
                              mean=n * 0.5)


def _expected() -> dict[int, list[tuple[bytes, bytes]]]:
    """Per partition, ``(key, value)`` of each record in the order written."""
    out: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    for n in range(COUNT):
        key = f"sym{n % 7}".encode()
        value = json.dumps({"ts": n * 1_000_000, "key": key.decode(), "mean": n * 0.5},
                           separators=(",", ":")).encode()
        out[(murmur2(key) & 0x7FFFFFFF) % PARTITIONS].append((key, value))
    return out


async def _raw_batches(bootstrap: str, topic: str, partition: int) -> list[Any]:
    """Every record batch of ``topic[partition]`` as the broker stores it (plain Fetch
    requests: the batches' own attributes, never decompressed on the way)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        metadata = await client.fetch_all_metadata()
        leader = metadata.leader_for_partition(TopicPartition(topic, partition))
        batches: list[Any] = []
        offset, end = 0, None
        while end is None or offset < end:
            request = FetchRequest(10, 1, 1 << 22, 0, [(topic, [(partition, offset, 1 << 22)])])
            answer = await client.send(leader, request)
            (_, partitions), = answer.topics
            (outcome,) = partitions
            assert outcome[1] == 0, f"fetch error {outcome[1]}"
            end = outcome[2]  # the high watermark
            records = MemoryRecords(bytes(outcome[-1]))
            while records.has_next():
                batch = records.next_batch()
                batches.append(batch)
                offset = batch.next_offset
        return batches
    finally:
        await client.close()


def _librdkafka_read(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every record of ``topic`` read by librdkafka (confluent-kafka; the kcat on this
    machine bundles librdkafka 2.0.2, which fails Tansu's ApiVersions answer)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False})
    consumer.assign([KafkaPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    read: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 20
    try:
        while sum(map(len, read.values())) < COUNT and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None:
                assert message.error() is None, message.error()
                read[message.partition()].append((message.key(), message.value()))
    finally:
        consumer.close()
    return read


async def _publish(writer: KafkaSinkWriter, path: str) -> None:
    if path == "exactly-once":
        output = EpochOutput(writer, SINK)
        output.add(_means(COUNT))
        output.close_epoch(1)
        await output.publish_through(1)
    else:
        await writer.write(_means(COUNT))
        await writer.flush()


@pytest.mark.parametrize("path", ["direct", "aiokafka", "exactly-once"])
async def test_a_gzip_sink_writes_exactly_its_records_in_gzip_batches(
    bootstrap: str, new_topic: NewTopic, consume: Consume, path: str
) -> None:
    topic = await new_topic(PARTITIONS)
    config = KafkaSinkConfig(bootstrap, topic, max_batch_bytes=2048, compression_type="gzip",
                             direct_produce=path != "aiokafka")
    writer = KafkaSinkWriter(config)
    await writer.open()
    try:
        await _publish(writer, path)
        read_back = (await writer.published_sequences(SINK, 1)
                     if path == "exactly-once" else {})
    finally:
        await writer.close()
    records = await consume(topic, COUNT)
    expected = _expected()

    # An aiokafka consumer reads exactly the records written, in order per partition.
    for partition in range(PARTITIONS):
        mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        assert [(r.key, r.value) for r in mine] == expected[partition]
    # So does librdkafka.
    assert await asyncio.to_thread(_librdkafka_read, bootstrap, topic) == expected
    # The broker holds gzip batches (attributes' codec 1), several per partition, all records.
    for partition in range(PARTITIONS):
        batches = await _raw_batches(bootstrap, topic, partition)
        assert len(batches) > 1
        assert [b.compression_type for b in batches] == [1] * len(batches)
        assert sum(b.next_offset - b.base_offset for b in batches) == len(expected[partition])
    if path == "exactly-once":
        # Reading back what got out (the epoch read-back) reads the gzip batches: per key,
        # sequences 0.. in order, and the read-back's highest equals them.
        by_key: dict[bytes, list[int]] = {}
        for record in sorted(records, key=lambda r: (r.partition, r.offset)):
            headers = dict(record.headers)
            by_key.setdefault(record.key, []).append(parse_record_id(headers[ID_HEADER])[1])
        counts = Counter(f"sym{n % 7}".encode() for n in range(COUNT))
        assert by_key == {key: list(range(count)) for key, count in counts.items()}
        assert read_back == {int(hash_keys(np.array([key]))[0]): count - 1
                             for key, count in counts.items()}


async def test_the_source_reads_gzip_topics_of_aiokafka_and_of_the_sink_exactly(
    bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type="gzip", linger_ms=5)
    await producer.start()
    try:  # aiokafka's own gzip batches first, then the sink's
        expected = _expected()
        for partition, records in expected.items():
            for key, value in records[:60]:
                await producer.send(topic, value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic, max_batch_bytes=2048,
                                             compression_type="gzip"))
    await writer.open()
    try:
        await writer.write(_means(COUNT))
    finally:
        await writer.close()
    end = 60 + min(map(len, expected.values()))  # one partition whole, the other's start
    config = KafkaSourceConfig(bootstrap, topic, Schema.of(mean="float64"), time_unit="ns",
                               end=end)
    reader = KafkaSourceReader(config)
    await reader.open()
    try:
        read = await read_until_finished(reader)
    finally:
        await reader.close()

    assert reader.per_record_fetched >= len(read)  # every batch went aiokafka's way (gzip)
    assert read.partition is not None and read.offset is not None
    for partition in range(PARTITIONS):
        rows = np.flatnonzero(read.partition == partition)
        rows = rows[np.argsort(read.offset[rows])]
        assert read.offset[rows].tolist() == list(range(end))
        written = expected[partition][:60] + expected[partition]
        values = [json.loads(v) for _, v in written[:end]]
        assert read.key[rows].tolist() == [v["key"].encode() for v in values]
        assert read.ts[rows].tolist() == [v["ts"] for v in values]
        assert read.columns["mean"][rows].tolist() == [v["mean"] for v in values]


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for n in range(count):
            tick = {"symbol": f"s{n % 3}", "ts": 1_000 + n, "price": n + 0.5}
            await producer.send(topic, json.dumps(tick).encode(), partition=0,
                                timestamp_ms=tick["ts"])
        await producer.flush()
    finally:
        await producer.stop()


def test_a_graph_run_with_a_gzip_binding_writes_gzip_batches(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    source_topic, sink_topic = asyncio.run(new_topic(1)), asyncio.run(new_topic(1))
    asyncio.run(_produce(bootstrap, source_topic, 50))
    ticks = sd.source("ticks", topic=source_topic, key="symbol", time_unit="ms",
                      schema={"price": "float64"})
    job = sd.Graph("gz", outputs=[ticks.to_topic(sink_topic, key_field="symbol", name="out")])
    binding = KafkaBinding(bootstrap, end=Timestamp.from_ms(1_050), replay_prefix="",
                           compression_type="gzip")

    LocalRunner(None, *binding.defaults()).run(job)

    records = asyncio.run(consume(sink_topic, 50))
    assert [json.loads(r.value) for r in records] == [
        {"ts": 1_000 + n, "symbol": f"s{n % 3}", "price": n + 0.5} for n in range(50)]
    batches = asyncio.run(_raw_batches(bootstrap, sink_topic, 0))
    assert batches and [b.compression_type for b in batches] == [1] * len(batches)


async def test_a_backtests_topics_are_written_with_the_compression_asked(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(1)
    prefix, _, live = topic.partition("-")  # the prefix + the sink's topic: this fresh topic
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"mean": "float64"})
    graph = sd.Graph("bt", outputs=[ticks.to_topic(live, name="out")])
    result = BacktestResult({"out": _means(30)})

    written = await asyncio.to_thread(write_topics, result, graph, bootstrap, prefix + "-",
                                      compression_type="gzip")

    assert written == {"out": topic}
    assert [json.loads(r.value)["mean"] for r in await consume(topic, 30)] == [
        n * 0.5 for n in range(30)]
    batches = await _raw_batches(bootstrap, topic, 0)
    assert batches and [b.compression_type for b in batches] == [1] * len(batches)
