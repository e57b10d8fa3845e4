"""A Kafka source's CPU per read on a thin stream: the compiled fetch path against per-record.

Workload: what a source of the end-to-end latency run reads at 10k events/s (``benchmarks.
kafka_end_to_end --only latency``): reads of ``--records`` JSON ticks (``symbol``, ``ts``,
``price`` of 4 decimals, ``size``) from each of 4 partitions, 100 symbols partitioned by symbol,
times rising, the source ``partitioned_by_key`` (late rows judged, partition marks made).

A real ``KafkaSourceReader.read`` runs each read; only the network is left out: the reader's
consumer and ``FetchDrain`` are stand-ins that hand each partition's prebuilt record batch over
as ``FetchDrain.take`` would, either decoded in place (``decode_fetch``, the compiled path) or
read record by record by aiokafka (``PartitionRecords``, the path of a fetch the compiled
decoder declines). So the table is the source's own per-read work (fetch decode, bounds,
scan, Batch, watermarks), in CPU microseconds of this process (``time.process_time``), both
paths alternately, ``--repeats`` times each after an untimed warm-up of each; aiokafka's
fetcher and the hop downstream are not in it. For an A/B of two trees, run it from each with
``PYTHONPATH`` pointing at that tree, interleaved.
Run: ``python -m benchmarks.source_cpu [--reads N] [--records R] [--repeats K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from connectors.fetched_batches import FetchedRecords, decode_fetch
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from connectors.source_bounds import LogEnds, PartitionBounds
from connectors.watermarks import PartitionWatermarks
from streamdag.schema import Schema

__all__ = ["main", "measure", "workload"]

_PARTITIONS = 4
_SYMBOLS = 100
_TOPIC = "ticks"
#: One read's record batches: per partition, (raw bytes, offset of its first record).
_Read = list[tuple[bytes, int]]


def workload(reads: int, records: int, seed: int = 1) -> list[_Read]:
    """``reads`` reads of ``records`` ticks per partition, as the producer writes them."""
    rng = np.random.default_rng(seed)
    stamp = 1_765_000_000_000_000_000
    offsets = [0] * _PARTITIONS
    out: list[_Read] = []
    for _ in range(reads):
        read: _Read = []
        for partition in range(_PARTITIONS):
            builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, batch_size=1 << 20)
            symbols = rng.integers(0, _SYMBOLS // _PARTITIONS, records) * _PARTITIONS + partition
            for i, symbol in enumerate(symbols.tolist()):
                stamp += 25_000
                value = json.dumps({"symbol": f"SYM{symbol:03d}", "ts": stamp,
                                    "price": round(float(rng.normal(100.0, 5.0)), 4),
                                    "size": int(rng.integers(1, 500))}).encode()
                builder.append(offsets[partition] + i, stamp // 1_000_000,
                               f"SYM{symbol:03d}".encode(), value, [])
            read.append((bytes(builder.build()), offsets[partition]))
            offsets[partition] += records
        out.append(read)
    return out


class _NoConsumer:
    """The reader's consumer, never asked for anything but the (unknown) high watermark."""

    def highwater(self, tp: TopicPartition) -> None:
        """No fetch answer: the lag comes from the records read."""

    def pause(self, *tps: TopicPartition) -> None:
        """Nothing fetches."""


class _PrebuiltDrain:
    """``FetchDrain.take`` over prebuilt fetches: each read gets the next one, every partition."""

    def __init__(self, reads: list[_Read], compiled: bool) -> None:
        self._reads = iter(reads)
        self._compiled = compiled

    def holds(self, tp: TopicPartition) -> bool:
        """Nothing is held between reads."""
        return False

    def forget(self, tp: TopicPartition) -> None:
        """Nothing is held to forget."""

    async def take(self, tps: Sequence[TopicPartition], max_records: int,
                   timeout_s: float) -> dict[TopicPartition, FetchedRecords]:
        """The next read's fetches, decoded as ``FetchDrain`` decodes them."""
        fetches = next(self._reads)
        return {tp: self._decode(tp, raw, offset)
                for tp, (raw, offset) in zip(tps, fetches, strict=True)}

    def _decode(self, tp: TopicPartition, raw: bytes, offset: int) -> FetchedRecords:
        if self._compiled:
            fetched = decode_fetch(raw, fetch_offset=offset, read_committed=False)
            assert fetched is not None
            return fetched
        records = PartitionRecords(tp, MemoryRecords(raw), [], offset, None, None, True,
                                   READ_UNCOMMITTED)
        return FetchedRecords.from_consumer_records(list(records), records.next_fetch_offset)


def _reader(reads: list[_Read], compiled: bool) -> KafkaSourceReader:
    config = KafkaSourceConfig("127.0.0.1:1", _TOPIC, Schema.of(price="float64"),
                               key_field="symbol", partitioned_by_key=True, lag_refresh_s=0)
    reader = KafkaSourceReader(config)
    # What open() would set up, over the stand-ins (a benchmark's only way in: no broker).
    consumer: Any = _NoConsumer()
    tps = [TopicPartition(_TOPIC, partition) for partition in range(_PARTITIONS)]
    reader._consumer = consumer
    reader._drain = _PrebuiltDrain(reads, compiled)  # type: ignore[assignment]
    reader._bounds = {tp.partition: PartitionBounds(tp, 0) for tp in tps}
    reader._marks = PartitionWatermarks(range(_PARTITIONS), idle_timeout_s=10.0)
    reader._log_ends = LogEnds(consumer, tps, {}, 1.0)
    return reader


def measure(reads: list[_Read], compiled: bool) -> tuple[float, int]:
    """CPU microseconds per read over ``reads``, and the records the reads returned."""

    async def run() -> tuple[float, int]:
        reader = _reader(reads, compiled)
        returned = 0
        started = time.process_time()
        for _ in reads:
            chunk = await reader.read(10_000, 0.0)
            returned += len(chunk.batch)
        return (time.process_time() - started) * 1e6 / len(reads), returned

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> None:
    """Both paths alternately, after a warm-up of each; print CPU microseconds per read."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=1_000)
    parser.add_argument("--records", type=int, default=22, help="per partition and read")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    reads = workload(args.reads, args.records)
    paths = {"compiled fetch decode": True, "aiokafka per record": False}
    for compiled in paths.values():
        measure(reads[:50], compiled)
    costs: dict[bool, list[float]] = {compiled: [] for compiled in paths.values()}
    for _ in range(args.repeats):
        for compiled in paths.values():
            cost, returned = measure(reads, compiled)
            if returned != args.reads * args.records * _PARTITIONS:
                raise RuntimeError(f"the reads returned {returned} records, not all of them")
            costs[compiled].append(cost)
    print(f"source CPU per read: {args.reads:,} reads of {_PARTITIONS} partitions x "
          f"{args.records} JSON ticks, {args.repeats} runs each")
    print(f"   {'path':<24}{'us per read (median)':>22}{'best':>8}{'us per record':>15}")
    for label, compiled in paths.items():
        median = float(np.median(costs[compiled]))
        print(f"   {label:<24}{median:>22.1f}{min(costs[compiled]):>8.1f}"
              f"{median / (args.records * _PARTITIONS):>15.2f}")
    ratio = np.median(costs[True]) / np.median(costs[False])
    print(f"   ratio compiled / per record  {ratio:.3f} (median)")


if __name__ == "__main__":
    main()
