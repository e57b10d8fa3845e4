"""The compiled fetch decoder reads exactly what aiokafka's per-record path reads, on the broker.

Each test reads the same topic twice, once with the compiled decoder and once through aiokafka's
per-record iteration (``compiled_fetch=False``), and compares the batches: columns, lineage,
dead letters and positions.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors import fetch_drain
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader, Timestamp
from streamdag.batch import Batch
from tests.connectors.test_kafka_source import SCHEMA, read_until_finished

NewTopic = Callable[[int], Awaitable[str]]
Record = tuple[int, bytes | None, bytes, int, list[tuple[str, bytes]]]


def _tick(n: int, partitions: int) -> Record:
    """Record n: every third has no key, every fourth carries a header; #13, #27 malformed."""
    value = json.dumps({"key": f"k{n % 5}", "ts": n, "price": n + 0.25, "size": n}).encode()
    key = None if n % 3 == 0 else f"k{n % 5}".encode()
    headers = [("trace", str(n).encode())] if n % 4 == 0 else []
    return n % partitions, key, b"{not json" if n in (13, 27) else value, 1_000 + n, headers


async def _produce(bootstrap: str, topic: str, records: list[Record], *,
                   per_batch: int = 7, compression: str | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                compression_type=compression)
    await producer.start()
    try:
        for partition in sorted({record[0] for record in records}):
            mine = [record for record in records if record[0] == partition]
            for first in range(0, len(mine), per_batch):  # several record batches per fetch
                builder = producer.create_batch()
                for _, key, value, stamp, headers in mine[first:first + per_batch]:
                    assert builder.append(key=key, value=value, timestamp=stamp,
                                          headers=headers) is not None
                await (await producer.send_batch(builder, topic, partition=partition))
    finally:
        await producer.stop()


async def _read_both(config: KafkaSourceConfig, max_records: int = 1000
                     ) -> tuple[list[Batch], KafkaSourceReader, KafkaSourceReader]:
    batches = []
    readers = []
    for compiled in (True, False):
        reader = KafkaSourceReader(config, compiled_fetch=compiled)
        await reader.open()
        try:
            batches.append(await read_until_finished(reader, max_records=max_records))
        finally:
            await reader.close()
        readers.append(reader)
    return batches, readers[0], readers[1]


def _rows(batch: Batch) -> list[tuple[Any, ...]]:
    """Every record with its lineage, in partition and offset order."""
    assert batch.partition is not None and batch.offset is not None
    rows = zip(batch.partition.tolist(), batch.offset.tolist(), batch.to_records(), strict=True)
    return sorted((p, o, json.dumps(r, sort_keys=True)) for p, o, r in rows)


def _assert_same(compiled: Batch, per_record: Batch) -> None:
    assert _rows(compiled) == _rows(per_record)
    assert compiled.key.dtype == per_record.key.dtype
    for name in SCHEMA.names:
        order_c = np.lexsort((compiled.offset, compiled.partition))
        order_p = np.lexsort((per_record.offset, per_record.partition))
        assert compiled.columns[name][order_c].tobytes() == \
            per_record.columns[name][order_p].tobytes()


async def _dead_letters(bootstrap: str, topic: str, count: int) -> list[tuple[Any, ...]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(f"{topic}.dlq", 0)])
        found: list[tuple[Any, ...]] = []
        for _ in range(100):
            fetched = await consumer.getmany(timeout_ms=100)
            found += [(r.key, r.value, dict(r.headers)["streamdag.reason"])
                      for records in fetched.values() for r in records]
            if len(found) >= count:
                return found
        raise AssertionError(f"found {len(found)} of {count} dead letters")
    finally:
        await consumer.stop()


async def test_partitions_keys_headers_bounds_and_dead_letters_read_the_same(
    bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(3)
    await _produce(bootstrap, topic, [_tick(n, 3) for n in range(60)])
    by_offset = KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", start=2, end=17)
    by_time = KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms",
                                start=Timestamp.from_ms(1_010), end=Timestamp.from_ms(1_050))

    (compiled, per_record), fast, slow = await _read_both(by_offset, max_records=5)
    (timed_compiled, timed_per_record), _, _ = await _read_both(by_time)

    _assert_same(compiled, per_record)
    _assert_same(timed_compiled, timed_per_record)
    assert len(compiled) == 3 * 15 - 2  # records 13 and 27 (no key) are dead-lettered
    assert sorted({o for _, o, _ in _rows(compiled)}) == list(range(2, 17))
    assert [p for p, _, _ in _rows(timed_compiled)].count(0) == 12  # ts 1012 ... 1048
    assert fast.position() == slow.position() == {0: 17, 1: 17, 2: 17}
    assert fast.per_record_fetched == 0 and slow.per_record_fetched > 0
    assert slow.dead_lettered == fast.dead_lettered == 2
    letters = await _dead_letters(bootstrap, topic, 8)  # four readers, two letters each
    assert sorted(letters, key=repr) == [(None, b"{not json", b"undecodable")] * 4 + [
        (b"k3", b"{not json", b"undecodable")] * 4


async def test_gzip_fetches_take_aiokafkas_path_and_read_the_same(
    bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(2)
    records = [_tick(n, 2) for n in range(40) if n not in (13, 27)]
    await _produce(bootstrap, topic, records, compression="gzip")
    config = KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", end=18)

    (compiled, per_record), fast, _ = await _read_both(config, max_records=8)

    _assert_same(compiled, per_record)
    assert len(compiled) == 36  # partition 1 holds 18 records: 13 and 27 were left out
    assert fast.per_record_fetched >= 36  # the compressed batches went through aiokafka


async def test_a_small_max_records_and_a_seek_mid_fetch_read_the_same(
    bootstrap: str, new_topic: NewTopic
) -> None:
    topic = await new_topic(1)
    await _produce(bootstrap, topic, [_tick(n, 1) for n in range(100) if n not in (13, 27)],
                   per_batch=50)
    config = KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", end=97)
    results = []
    for compiled in (True, False):
        reader = KafkaSourceReader(config, compiled_fetch=compiled)
        await reader.open()
        try:
            first = await reader.read(3, linger_s=0.5)
            while not len(first.batch):
                first = await reader.read(3, linger_s=0.5)
            position = reader.position()
            await reader.seek_to({0: 40})  # mid-fetch: what is held past 3 is dropped
            rest = await read_until_finished(reader, max_records=7)
        finally:
            await reader.close()
        results.append((first.batch, position, rest, reader.position()))
        assert (reader.per_record_fetched == 0) == compiled

    (first_c, position_c, rest_c, end_c), (first_p, position_p, rest_p, end_p) = results
    _assert_same(first_c, first_p)
    _assert_same(rest_c, rest_p)
    assert first_c.offset is not None and rest_c.offset is not None
    assert first_c.offset.tolist() == [0, 1, 2] and position_c == position_p == {0: 3}
    assert rest_c.offset.tolist() == list(range(40, 97))  # 98 records: 13 and 27 left out
    assert end_c == end_p == {0: 97}


async def test_without_aiokafkas_private_fetcher_the_reader_warns_and_reads_per_record(
    bootstrap: str, new_topic: NewTopic, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = await new_topic(1)
    await _produce(bootstrap, topic, [_tick(n, 1) for n in range(12) if n != 0])
    # A fetcher attribute this aiokafka lacks, as another version would lack one of ours.
    monkeypatch.setattr(fetch_drain, "_FETCHER_ATTRIBUTES", ("_records", "_not_in_this_one"))
    reader = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms",
                                                 end=11))
    await reader.open()
    try:
        batch = await read_until_finished(reader)
    finally:
        await reader.close()

    assert batch.offset is not None and batch.offset.tolist() == list(range(11))
    assert reader.per_record_fetched == 11
    assert "reading records one by one" in caplog.text


async def test_a_decoded_fetch_response_is_freed_without_a_garbage_collection(
    bootstrap: str, new_topic: NewTopic
) -> None:
    """Once decoded, aiokafka's records of a fetch (and the response's bytes) go by reference
    counting: nothing of them is left for the cyclic collector, which may not run for long."""
    topic = await new_topic(2)
    await _produce(bootstrap, topic, [_tick(n, 2) for n in range(80) if n not in (13, 27)],
                   per_batch=10)
    config = KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", end=38)
    reader = KafkaSourceReader(config)
    await reader.open()
    gc.collect()
    gc.disable()
    try:
        batch = await read_until_finished(reader, max_records=7)
        left = [o for o in gc.get_objects() if type(o) is fetch_drain._KeptBytes]
    finally:
        gc.enable()
        await reader.close()
    assert reader.per_record_fetched == 0
    assert len(batch) == 2 * 38  # each partition up to offset 38 (13 and 27 left out)
    assert left == []
