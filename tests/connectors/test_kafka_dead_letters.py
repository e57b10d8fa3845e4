"""Poison records: valid records all arrive, each poison record lands in the dead-letter topic."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from streamdag.batch import Batch
from streamdag.schema import Schema

NewTopic = Callable[[int], Awaitable[str]]


def valid(n: int) -> bytes:
    return json.dumps({"key": f"k{n}", "ts": n, "price": n * 1.5}).encode()


POISON: list[tuple[bytes | None, bytes | None, str]] = [
    (b"p-undecodable", b"{not json", "undecodable"),
    (b"p-schema", json.dumps({"key": "x", "ts": 1}).encode(), "schema"),
    (b"p-type", json.dumps({"key": "x", "ts": 1, "price": "high"}).encode(), "schema"),
    (None, json.dumps({"ts": 1, "price": 1.0}).encode(), "bad_key"),
    (b"p-key-type", json.dumps({"key": [1], "ts": 1, "price": 1.0}).encode(), "bad_key"),
    (b"p-time", json.dumps({"key": "x", "ts": "noon", "price": 1.0}).encode(), "bad_time"),
    (b"p-oversize", json.dumps({"key": "x", "ts": 1, "price": 1.0, "pad": "z" * 600}).encode(),
     "oversize"),
    (b"p-tombstone", None, "undecodable"),
]


async def test_poison_goes_to_the_dead_letter_topic_and_valid_records_all_arrive(
    bootstrap: str,
    new_topic: NewTopic,
    produce: Callable[..., Awaitable[None]],
    consume: Callable[..., Awaitable[list[Any]]],
) -> None:
    topic = await new_topic(2)
    records: list[tuple[int, bytes | None, bytes | None, int]] = []
    for n in range(40):
        records.append((n % 2, f"k{n}".encode(), valid(n), 1_000 + n))
        if n % 5 == 0 and n // 5 < len(POISON):
            key, value, _ = POISON[n // 5]
            records.append((n % 2, key, value, 2_000 + n))
    await produce(topic, records)
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, Schema.of(price="float64"), end=24,
                          max_record_bytes=512)
    )
    await reader.open()
    batches = []
    while not (chunk := await reader.read(7, linger_s=0.01)).finished:
        batches.append(chunk.batch)
    batches.append(chunk.batch)
    await reader.close()
    letters = await consume(f"{topic}.dlq", len(POISON))

    decoded = Batch.concat(batches)
    assert sorted(decoded.columns["price"].tolist()) == [n * 1.5 for n in range(40)]
    assert reader.dead_lettered == len(POISON)
    assert reader.dead_lettered_by_reason == {
        "undecodable": 2, "schema": 2, "bad_key": 2, "bad_time": 1, "oversize": 1
    }
    expected = {(key, value, reason) for key, value, reason in POISON}
    got = set()
    for letter in letters:
        headers = {name: value.decode() for name, value in letter.headers}
        assert headers["streamdag.topic"] == topic
        assert set(headers) == {"streamdag.reason", "streamdag.error", "streamdag.topic",
                                "streamdag.partition", "streamdag.offset"}
        source = [r for r in records if r[0] == int(headers["streamdag.partition"])]
        assert source[int(headers["streamdag.offset"])][1:3] == (letter.key, letter.value)
        assert letter.timestamp == source[int(headers["streamdag.offset"])][3]
        got.add((letter.key, letter.value, headers["streamdag.reason"]))
    assert got == expected
