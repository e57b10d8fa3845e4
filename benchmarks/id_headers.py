"""The broker's CPU per record for a sink's output without an id header and with each id format.

The exactly-once sink's cost at the broker is its records' id headers: the broker takes them in,
checks, stores and serves them. Workload: the records ``benchmarks.sink_cpu`` sends (rolling
means of 100 keys, JSON, 4 partitions), built once as the sink builds them, then produced to a
fresh topic of the embedded broker (Tansu) per run, one producer batch in flight per partition,
``acks=all``, as the sink sends:

- ``none``: no header (at-least-once output);
- ``format 1``: ``streamdag.id`` = 8-byte sink tag + key hash + sequence (8 bytes each), as
  exactly-once sinks wrote until the compact format;
- ``format 2``: ``sdi`` = 8-byte sink tag + the sequence as a varint (``connectors.record_ids``),
  as they write now.

The modes run alternately, ``--repeats`` times each after an untimed warm-up of each; the table
shows bytes per record sent, the broker process's CPU per record (user + system, from the first
send to the last acknowledgement) and its ratio to ``none``.
Run: ``python -m benchmarks.id_headers [--records N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import psutil
from aiokafka import AIOKafkaProducer

from benchmarks.sink_cpu import workload
from connectors.broker import EmbeddedBroker
from connectors.codecs import encode_values_buffer
from connectors.partitioning import key_partitions
from connectors.producing import DeliveryStats, RetryPolicy, publish_partition
from connectors.record_batches import RecordColumns, partition_rows
from connectors.record_ids import ID_HEADER, LEGACY_ID_HEADER, record_ids, sink_tag
from connectors.topics import ensure_topics
from operators.key_slots import hash_keys
from runtime.dataplane.sink_epochs import KeySequences

__all__ = ["main"]

_PARTITIONS = 4
_MAX_BATCH_BYTES = 512 * 1024
_SINK_ID = "b" * 64
_MODES = ("none", "format 1", "format 2")


def _format_1_ids(keys: npt.NDArray[np.bytes_],
                  sequences: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Format 1 ids, one 24-byte row each: tag, key hash, sequence (big-endian)."""
    rows = np.empty((len(keys), 24), dtype=np.uint8)
    rows[:, :8] = np.frombuffer(sink_tag(_SINK_ID), dtype=np.uint8)
    for column, values in ((8, hash_keys(keys)), (16, sequences)):
        rows[:, column:column + 8] = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    return rows


def _outgoing(records: int, mode: str) -> dict[int, list[RecordColumns]]:
    """The workload's records of ``mode`` as the sink sends them, per partition."""
    sequences = KeySequences()
    out: dict[int, list[RecordColumns]] = {}
    for batch in workload(records, 5_000):
        values, offsets = encode_values_buffer(batch, "json")
        numbers = sequences.assign(batch.key)
        name: bytes = b""
        ids: list[bytes] | npt.NDArray[np.uint8] | None = None
        if mode == "format 1":
            name, ids = LEGACY_ID_HEADER.encode(), _format_1_ids(batch.key, numbers)
        elif mode == "format 2":
            name, ids = ID_HEADER.encode(), record_ids(_SINK_ID, numbers)
        stamps = batch.ts // 1_000_000
        columns = RecordColumns.from_buffer(batch.key, values, offsets, stamps,
                                            header_name=name, header_values=ids,
                                            max_batch_bytes=_MAX_BATCH_BYTES)
        partitions = key_partitions(batch.key, _PARTITIONS)
        for partition, rows in partition_rows(partitions).items():
            out.setdefault(partition, []).append(columns.take(rows))
    return out


async def _produce(bootstrap: str, topic: str,
                   outgoing: dict[int, list[RecordColumns]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                max_batch_size=_MAX_BATCH_BYTES,
                                max_request_size=2 * _MAX_BATCH_BYTES)
    await producer.start()
    try:
        stats = DeliveryStats()

        async def send(partition: int) -> None:
            for columns in outgoing[partition]:
                await publish_partition(producer, topic, partition, columns,
                                        RetryPolicy(5, 0.05, 2.0), stats)

        await asyncio.gather(*(send(partition) for partition in outgoing))
    finally:
        await producer.stop()


def _run(bootstrap: str, broker: psutil.Process, records: int, mode: str,
         outgoing: dict[int, list[RecordColumns]]) -> float:
    """The broker's CPU seconds per record for one run of ``mode`` into a new topic."""
    topic = f"bench.ids.{mode.replace(' ', '')}.{time.time_ns()}"
    asyncio.run(ensure_topics(bootstrap, {topic: _PARTITIONS}))
    before = sum(broker.cpu_times()[:2])
    asyncio.run(_produce(bootstrap, topic, outgoing))
    return float(sum(broker.cpu_times()[:2]) - before) / records


def _bytes_per_record(outgoing: dict[int, list[RecordColumns]], records: int) -> float:
    total = 0
    for parts in outgoing.values():
        for columns in parts:
            position = 0
            while position < len(columns):
                batch, position = columns.batch_from(position)
                total += batch.size()
    return total / records


def measure(bootstrap: str, broker: psutil.Process, records: int, repeats: int) -> None:
    """All modes alternately, after a warm-up of each; print the table."""
    outgoing = {mode: _outgoing(records, mode) for mode in _MODES}
    for mode in _MODES:
        _run(bootstrap, broker, records, mode, outgoing[mode])
    cpu: dict[str, list[float]] = {mode: [] for mode in _MODES}
    loads = [os.getloadavg()[0]]
    for _ in range(repeats):
        for mode in _MODES:
            cpu[mode].append(_run(bootstrap, broker, records, mode, outgoing[mode]))
            loads.append(os.getloadavg()[0])
    print(f"broker CPU per record: {records:,} records (100 keys, JSON, {_PARTITIONS} "
          f"partitions), {repeats} runs each, load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print("   ids         bytes/record   broker µs/record (median)   best   ratio to none")
    base = float(np.median(cpu["none"]))
    for mode in _MODES:
        median = float(np.median(cpu[mode]))
        print(f"   {mode:<10}{_bytes_per_record(outgoing[mode], records):>14.1f}"
              f"{1e6 * median:>20.3f}{1e6 * min(cpu[mode]):>14.3f}{median / base:>12.3f}")
    print("   runs (µs/record): " + "; ".join(
        f"{mode} {[round(1e6 * c, 3) for c in cpu[mode]]}" for mode in _MODES))


def main(argv: Sequence[str] | None = None) -> None:
    """Measure on an embedded broker of this process's own (its CPU is read)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with EmbeddedBroker.start(".state/bench-id-headers") as embedded:
        found = [child for child in psutil.Process().children(recursive=True)
                 if child.name().startswith("tansu")]
        measure(embedded.bootstrap_servers, found[0], args.records, args.repeats)


if __name__ == "__main__":
    main()
