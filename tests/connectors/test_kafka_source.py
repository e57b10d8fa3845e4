"""The Kafka source against the embedded broker: bounds, lineage, resume, watermarks, lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader, Timestamp
from connectors.source_bounds import LogEnds
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.schema import Schema

SCHEMA = Schema.of(price="float64", size="int64")
NewTopic = Callable[[int], Awaitable[str]]
Produce = Callable[..., Awaitable[None]]


def tick(n: int, partition: int = 0) -> tuple[int, bytes, bytes, int]:
    """Record n of a test topic: key k{n%3}, event time n ms, price n + 0.5, size n."""
    value = {"key": f"k{n % 3}", "ts": n, "price": n + 0.5, "size": n}
    return partition, f"k{n % 3}".encode(), json.dumps(value).encode(), 1_000 + n


async def read_until_finished(reader: KafkaSourceReader, max_records: int = 1000) -> Batch:
    """Every record of a bounded reader, in read order, polling until it says finished."""
    batches = []
    for _ in range(200):
        chunk = await reader.read(max_records, linger_s=0.01)
        batches.append(chunk.batch)
        if chunk.finished:
            return Batch.concat(batches)
    raise AssertionError("the reader did not finish within 200 reads")


@contextlib.contextmanager
def fetching_takes(reader: KafkaSourceReader, now: list[float], until: float) -> Iterator[None]:
    """Every fetch of ``reader`` meanwhile moves the clock ``now`` to ``until``: inside the
    read, whether or not the fetch has to wait (a fetch answered in the background may be
    there already, so a clock moved by another task could miss the read)."""
    fetch = reader._fetch

    async def moving(*args: Any) -> Any:
        now[0] = until
        return await fetch(*args)

    reader._fetch = moving  # type: ignore[method-assign]
    try:
        yield
    finally:
        del reader._fetch


async def read_count(reader: KafkaSourceReader, count: int) -> Batch:
    """Exactly ``count`` records from an unbounded reader, polling with a bound on reads."""
    batches: list[Batch] = []
    total = 0
    for _ in range(200):
        chunk = await reader.read(count - total, linger_s=0.01)
        batches.append(chunk.batch)
        total += len(chunk.batch)
        if total >= count:
            return Batch.concat(batches)
    raise AssertionError(f"read {total} of {count} records within 200 reads")


def lineage(batch: Batch) -> list[tuple[int, int]]:
    assert batch.partition is not None and batch.offset is not None
    return list(zip(batch.partition.tolist(), batch.offset.tolist(), strict=True))


async def test_bounded_read_gives_every_record_decoded_with_lineage(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(2)
    await produce(topic, [tick(n, partition=0) for n in range(6)])
    await produce(topic, [tick(n, partition=1) for n in range(6, 10)])
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", end=4)
    )
    await reader.open()
    batch = await read_until_finished(reader, max_records=3)
    await reader.close()

    assert sorted(lineage(batch)) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2),
                                      (1, 3)]
    by_offset = dict(zip(lineage(batch), batch.to_records(), strict=True))
    assert by_offset[(1, 2)] == {"ts": 8_000_000, "key": "k2", "price": 8.5, "size": 8}
    assert by_offset[(0, 3)] == {"ts": 3_000_000, "key": "k0", "price": 3.5, "size": 3}
    assert reader.position() == {0: 4, 1: 4}
    assert reader.records_read == 8 and reader.dead_lettered == 0


async def test_start_at_offset_and_at_timestamp(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(1)
    for first in range(0, 12, 4):  # three producer batches
        await produce(topic, [tick(n) for n in range(first, first + 4)])
    at_offset = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, start=6, end=9))
    at_time = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, start=Timestamp.from_ms(1_005),
                          end=Timestamp.from_ms(1_010))
    )
    for reader in (at_offset, at_time):
        await reader.open()
    from_offset = await read_until_finished(at_offset)
    from_time = await read_until_finished(at_time)
    for reader in (at_offset, at_time):
        await reader.close()

    assert from_offset.offset is not None and from_time.offset is not None
    assert from_offset.offset.tolist() == [6, 7, 8]
    assert from_time.offset.tolist() == [5, 6, 7, 8, 9]
    assert at_time.position() == {0: 10}


async def test_start_latest_reads_only_what_comes_after_open(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(2)
    for first in range(0, 9, 3):
        await produce(topic, [tick(n, partition=first % 2) for n in range(first, first + 3)])
    reader = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, start="latest"))
    await reader.open()
    assert reader.position() == {0: 6, 1: 3}
    empty = await reader.read(100, linger_s=0.05)
    await produce(topic, [tick(100, partition=1), tick(101, partition=1)])
    batch = await read_count(reader, 2)
    await reader.close()

    assert len(empty.batch) == 0 and not empty.finished
    assert lineage(batch) == [(1, 3), (1, 4)]
    assert batch.columns["size"].tolist() == [100, 101]


async def test_timestamp_end_in_the_past_finishes_once_caught_up(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(2)
    await produce(topic, [tick(n) for n in range(5)])
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, end=Timestamp.from_ms(5_000))
    )
    await reader.open()
    batch = await read_until_finished(reader)
    await reader.close()

    assert lineage(batch) == [(0, n) for n in range(5)]
    assert reader.position() == {0: 5, 1: 0}


async def test_resume_from_a_position_and_seek_back(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(1)
    await produce(topic, [tick(n) for n in range(8)])
    first = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, end=8))
    await first.open()
    head = await read_count(first, 3)
    checkpoint = first.position()
    await first.close()

    resumed = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, end=8), resume_from=checkpoint
    )
    await resumed.open()
    tail = await read_until_finished(resumed)
    await resumed.seek_to({0: 6})
    again = await read_until_finished(resumed)
    await resumed.close()

    assert checkpoint == {0: 3}
    assert head.columns["size"].tolist() + tail.columns["size"].tolist() == list(range(8))
    assert again.columns["size"].tolist() == [6, 7]


async def test_watermark_is_min_over_active_partitions_and_skips_idle_ones(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(2)
    now = [0.0]
    await produce(topic, [tick(100, partition=0), tick(40, partition=1)])
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", lateness_ns=10,
                          idle_timeout_s=5.0),
        clock=lambda: now[0],
    )
    await reader.open()
    await read_count(reader, 2)
    both_active = (await reader.read(10, linger_s=0.0)).watermark
    await produce(topic, [tick(130, partition=0)])

    # Step 1: partition 0's record comes while 3 s of reading pass.
    with fetching_takes(reader, now, until=3.0):
        await read_count(reader, 1)
    # Time not spent reading does not count: partition 1 is not idle after a pause.
    now[0] = 100.0
    assert (await reader.read(10, linger_s=0.0)).watermark == 40_000_000 - 10
    now[0] = 3.0
    # Step 2: partition 1 has been silent for 6 s of reading > 5 s; partition 0 for 3 s.
    with fetching_takes(reader, now, until=6.0):
        one_idle = await reader.read(10, linger_s=0.0)
    await reader.close()

    assert both_active == 40_000_000 - 10
    assert one_idle.watermark == 130_000_000 - 10


async def test_a_partition_with_records_left_to_read_is_never_idle(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    # Both partitions are read a record at a time, so one of them waits while the other's
    # records come out; however long each read takes, a partition with records left is not
    # idle, so the watermark never passes one of its records.
    topic = await new_topic(2)
    now = [0.0]
    await produce(topic, [tick(1_000 + n, partition=0) for n in range(6)]
                  + [tick(n, partition=1) for n in range(7)])
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", idle_timeout_s=1.0),
        clock=lambda: now[0],
    )
    await reader.open()

    async def clock_on() -> None:  # every read takes 10 s of reading time
        await asyncio.sleep(0)
        now[0] += 10.0

    late, read, watermark = [], 0, None
    for _ in range(200):
        chunk, _ = await asyncio.gather(reader.read(1, linger_s=0.0), clock_on())
        late += [int(t) for t in chunk.batch.ts if watermark is not None and t < watermark]
        read += len(chunk.batch)
        watermark = chunk.watermark if chunk.watermark is not None else watermark
        if read == 13:
            break
    await reader.close()
    assert (read, late) == (13, [])


async def test_a_partition_nothing_has_come_back_about_is_not_idle(
    bootstrap: str, new_topic: NewTopic
) -> None:
    # The first fetch is still parked at the broker (an empty topic: it waits out
    # fetch_max_wait_ms) and the log end measurement is still under way, as on a loaded box
    # just after a restore: nothing is known of either partition. However long the reading,
    # neither may go idle, else the watermark would pass records not read yet.
    topic = await new_topic(2)
    now = [0.0]
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms", idle_timeout_s=1.0,
                          fetch_max_wait_ms=2_000, poll_timeout_s=0.01),
        clock=lambda: now[0],
    )
    measured = asyncio.Event()
    measure = LogEnds.measure

    async def held_measure(self: LogEnds) -> None:
        await measured.wait()
        await measure(self)

    LogEnds.measure = held_measure  # type: ignore[method-assign]
    try:
        await reader.open()
        with fetching_takes(reader, now, until=30.0):
            unknown = await reader.read(10, linger_s=0.0)
        known_then = reader.lag()
        # Step 2: the measurement answers: both are at their (empty) end, and quiet.
        measured.set()
        for _ in range(500):
            if len(reader.lag()) == 2:
                break
            await asyncio.sleep(0.01)
        with fetching_takes(reader, now, until=30.5):
            measured_chunk = await reader.read(10, linger_s=0.0)
        with fetching_takes(reader, now, until=32.0):
            quiet = await reader.read(10, linger_s=0.0)
    finally:
        LogEnds.measure = measure  # type: ignore[method-assign]
        await reader.close()

    assert (known_then, len(unknown.batch), unknown.idle) == ({}, 0, False)
    assert measured_chunk.idle is False  # quiet time counts from the measurement on
    assert quiet.idle is True


async def test_record_timestamps_as_event_time_and_msgpack_values(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    import msgpack

    topic = await new_topic(1)
    await produce(topic, [
        (0, b"a", msgpack.packb({"key": "a", "price": 1.25, "size": 3}), 1_700_000_000_000),
        (0, b"b", msgpack.packb({"key": 7, "price": 2, "size": -4}), 1_700_000_000_001),
    ])
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, time_field="", codec="msgpack", end=2)
    )
    await reader.open()
    batch = await read_until_finished(reader)
    await reader.close()

    assert batch.to_records() == [
        {"ts": 1_700_000_000_000_000_000, "key": "a", "price": 1.25, "size": 3},
        {"ts": 1_700_000_000_001_000_000, "key": "7", "price": 2.0, "size": -4},
    ]


async def test_lag_and_monitoring_commits(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(2)
    await produce(topic, [tick(n, partition=0) for n in range(10)])
    await produce(topic, [tick(n, partition=1) for n in range(10, 14)])
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, SCHEMA, group_id=f"{topic}-monitor",
                          commit_interval_s=0.0)
    )
    await reader.open()
    await read_count(reader, 5)
    for _ in range(100):  # each partition's first fetch answer brings its log end
        if set(reader.lag()) == {0, 1}:
            break
        await reader.read(1, linger_s=0.01)
    position = reader.position()
    lag = reader.lag()
    await reader.close()

    assert sum(position.values()) >= 5
    assert lag == {0: 10 - position[0], 1: 4 - position[1]}
    committed = await _committed(bootstrap, topic, f"{topic}-monitor")
    assert committed == position


async def _committed(bootstrap: str, topic: str, group: str) -> dict[int, Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)}
    finally:
        await consumer.stop()


async def test_reader_returns_source_chunks(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(1)
    reader = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, end=0))
    await reader.open()
    chunk = await reader.read(10, linger_s=0.0)
    await reader.close()
    await reader.close()

    assert isinstance(chunk, SourceChunk)
    assert chunk.finished and len(chunk.batch) == 0 and chunk.watermark is None
    assert chunk.batch.schema == SCHEMA


async def test_lag_is_the_exact_backlog_while_the_reader_holds(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    # Five producer batches; ListOffsets on Tansu answers the last one's base offset plus one,
    # and the fetch answer the reader got is stale once more batches arrive while it holds.
    topic = await new_topic(1)
    for first in range(0, 300, 100):
        await produce(topic, [tick(n) for n in range(first, first + 100)])
    reader = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, lag_refresh_s=0.05))
    await reader.open()
    consumed = await read_count(reader, 120)
    await produce(topic, [tick(n) for n in range(300, 350)])
    await produce(topic, [tick(n) for n in range(350, 420)])
    deadline = time.monotonic() + 20
    while reader.lag() != {0: 420 - 120} and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the reader measures in the background: poll, bounded
    background = reader.lag()
    measured = await reader.measure_lag()
    position = reader.position()
    await reader.close()

    assert len(consumed) == 120
    assert position == {0: 120}
    assert background == {0: 300}
    assert measured == {0: 300}
