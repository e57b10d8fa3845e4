"""A Kafka sink's epoch written as it comes sends the bytes ``write`` + ``flush`` send for the
same records and ids: per partition, batch for batch, with any codec."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from connectors.codecs import CodecName
from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.record_ids import record_ids
from streamdag.batch import Batch

SINK = "e" * 64


class RecordingProducer:
    """A producer stand-in that keeps the bytes of every batch sent, per partition."""

    def __init__(self) -> None:
        self.sent: dict[int, list[bytes]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        self.sent.setdefault(partition, []).append(bytes(batch._build()))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


def _pushes() -> list[Batch]:
    rng = np.random.default_rng(3)
    out, first = [], 0
    for count in (1, 40, 7, 120, 3):
        n = np.arange(first, first + count)
        out.append(Batch.from_columns(ts=n * 1_000_000 + 5, key=[f"k{i % 11}" for i in n.tolist()],
                                      mean=rng.normal(size=count), size=n % 4))
        first += count
    return out


async def _sent(codec: CodecName, *, epoch: bool,
                compression_type: str | None = None) -> dict[int, list[bytes]]:
    producer = RecordingProducer()
    config = KafkaSinkConfig("unused:9092", "out", codec=codec, max_batch_bytes=1024,
                             compression_type=compression_type)
    writer = KafkaSinkWriter(config, producer_factory=lambda _: producer)
    await writer.open()
    sequence = 0
    batches = writer.epoch_batches(SINK)
    for push in _pushes():
        sequences = np.arange(sequence, sequence + len(push))
        sequence += len(push)
        if epoch:
            batches.add(push, sequences)
        else:
            await writer.write(push, record_ids(SINK, sequences))
    if epoch:
        writer.write_encoded(batches.finish())
    await writer.flush()
    return producer.sent


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_an_epochs_batches_are_the_bytes_write_and_flush_send(codec: CodecName) -> None:
    by_write = asyncio.run(_sent(codec, epoch=False))
    by_epoch = asyncio.run(_sent(codec, epoch=True))

    assert sorted(by_epoch) == [0, 1, 2]
    assert sum(len(batches) for batches in by_epoch.values()) > 6  # 1 KiB: several each
    assert by_epoch == by_write
