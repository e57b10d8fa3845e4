"""Backpressure reaches Kafka: a slow reader leaves lag at the broker and its memory stays flat."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable

import psutil

from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from streamdag.schema import Schema

RECORDS = 40_000
PADDING = 1_000
MIB = 1 << 20

# Writes RECORDS records of ~1 KB, as fast as one aiokafka producer can, to both partitions.
_WRITER = textwrap.dedent(
    """
    import asyncio, json, sys
    from aiokafka import AIOKafkaProducer

    async def main(bootstrap, topic, count, padding):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    max_batch_size=1 << 20)
        await producer.start()
        pad = "x" * padding
        for first in range(0, count, 500):
            builder = producer.create_batch()
            for n in range(first, first + 500):
                value = json.dumps({"key": f"k{n % 7}", "ts": n, "price": 1.0, "pad": pad})
                builder.append(key=None, value=value.encode(), timestamp=None)
            await (await producer.send_batch(builder, topic, partition=(first // 500) % 2))
        await producer.stop()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    """
)


async def test_slow_reader_leaves_lag_in_kafka_and_memory_bounded(
    bootstrap: str,
    new_topic: Callable[[int], Awaitable[str]],
    produce: Callable[..., Awaitable[None]],
) -> None:
    topic = await new_topic(2)
    warm_up = [(0, None, b'{"key": "w", "ts": 0, "price": 1.0}', 0)] * 2
    await produce(topic, warm_up)
    reader = KafkaSourceReader(
        KafkaSourceConfig(bootstrap, topic, Schema.of(price="float64"),
                          max_partition_fetch_bytes=64 * 1024, fetch_max_bytes=128 * 1024)
    )
    await reader.open()
    process = psutil.Process()
    while reader.records_read < len(warm_up):  # connected and decoding before measuring
        await reader.read(10, linger_s=0.01)
    rss_before = process.memory_info().rss
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, bootstrap, topic, str(RECORDS), str(PADDING)]
    )
    read = 0
    peak_rss = rss_before
    started = time.monotonic()
    offsets_in_order = True
    last_offset = {0: len(warm_up) - 1, 1: -1}
    while writer.poll() is None and time.monotonic() - started < 60:
        chunk = await reader.read(20, linger_s=0.0)
        read += len(chunk.batch)
        assert chunk.batch.partition is not None and chunk.batch.offset is not None
        for partition, offset in zip(chunk.batch.partition.tolist(),
                                     chunk.batch.offset.tolist(), strict=True):
            offsets_in_order &= offset == last_offset[partition] + 1
            last_offset[partition] = offset
        peak_rss = max(peak_rss, process.memory_info().rss)
        await asyncio.sleep(0.02)  # the pace of a slow downstream: about 1,000 records/s
    assert writer.wait(timeout=60) == 0
    # A partition's high watermark comes with its next fetch answer, which comes once the
    # reader has taken what was buffered (one bounded fetch per partition).
    deadline = time.monotonic() + 30
    while sum(reader.lag().values()) + read < RECORDS and time.monotonic() < deadline:
        read += len((await reader.read(50, linger_s=0.01)).batch)
    lag = sum(reader.lag().values())
    await reader.close()

    written_mib = RECORDS * PADDING / MIB
    assert offsets_in_order
    assert read + lag == RECORDS
    assert lag > 0.75 * RECORDS, f"the reader read {read} of {RECORDS}: it was not slow"
    growth_mib = (peak_rss - rss_before) / MIB
    assert growth_mib < 12, f"RSS grew {growth_mib:.1f} MiB while {written_mib:.0f} MiB waited"
