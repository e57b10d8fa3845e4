"""Interop with librdkafka (confluent-kafka): its records in, our records out, same partitions."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from streamdag.batch import Batch
from streamdag.schema import Schema

RECORDS = 300
SYMBOLS = [f"SYM{i}" for i in range(25)] + ["名前", "a b"]


def produce_with_librdkafka(bootstrap: str, topic: str) -> dict[str, int]:
    """Write JSON ticks keyed by symbol; return the partition librdkafka chose per key."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2",
                         "linger.ms": 5})
    chosen: dict[str, int] = {}

    def delivered(error: object, message: object) -> None:
        assert error is None, error
        chosen[message.key().decode()] = message.partition()  # type: ignore[attr-defined]

    for n in range(RECORDS):
        symbol = SYMBOLS[n % len(SYMBOLS)]
        value = json.dumps({"symbol": symbol, "time_ms": 1_700_000_000_000 + n, "price": n / 4})
        producer.produce(topic, value=value.encode(), key=symbol.encode(), on_delivery=delivered)
    assert producer.flush(30) == 0
    return chosen


def consume_with_librdkafka(bootstrap: str, topic: str, partitions: int) -> list[object]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    messages: list[object] = []
    deadline = time.monotonic() + 20
    try:
        while len(messages) < RECORDS and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None:
                assert message.error() is None, message.error()
                messages.append(message)
    finally:
        consumer.close()
    assert len(messages) == RECORDS
    return messages


async def test_librdkafka_input_in_our_output_out_with_the_same_key_partitions(
    bootstrap: str, new_topic: Callable[[int], Awaitable[str]]
) -> None:
    source_topic, sink_topic = await new_topic(4), await new_topic(4)
    chosen = produce_with_librdkafka(bootstrap, source_topic)
    reader = KafkaSourceReader(KafkaSourceConfig(
        bootstrap, source_topic, Schema.of(price="float64"), key_field="symbol",
        time_field="time_ms", time_unit="ms",
    ))
    sink = KafkaSinkWriter(KafkaSinkConfig(bootstrap, sink_topic))
    await reader.open()
    await sink.open()
    seen = 0
    for _ in range(200):
        batch = (await reader.read(RECORDS, linger_s=0.01)).batch
        seen += len(batch)
        doubled = batch.with_columns({"price": batch.columns["price"] * 2})
        await sink.write(Batch(doubled.ts, doubled.key, doubled.columns))
        if seen == RECORDS:
            break
    await sink.close()
    await reader.close()
    messages = consume_with_librdkafka(bootstrap, sink_topic, 4)

    assert seen == RECORDS
    values = sorted((json.loads(m.value()) for m in messages),  # type: ignore[attr-defined]
                    key=lambda v: v["ts"])
    assert values == [
        {"ts": (1_700_000_000_000 + n) * 1_000_000, "key": SYMBOLS[n % len(SYMBOLS)],
         "price": n / 2}
        for n in range(RECORDS)
    ]
    for message in messages:
        key = message.key().decode()  # type: ignore[attr-defined]
        assert message.partition() == chosen[key]  # type: ignore[attr-defined]
        assert json.loads(message.value())["key"] == key  # type: ignore[attr-defined]
    assert len(set(chosen.values())) == 4
