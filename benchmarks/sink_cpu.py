"""A Kafka sink's CPU per record: the exactly-once epoch path against the at-least-once path.

Workload: the records the overhead workload of ``benchmarks.checkpoints`` sends to its sink (a
rolling mean per key: ``ts``, ``key``, one float64 field; 100 keys, 4 partitions), in batches of
``--batch`` records, through a ``KafkaSinkWriter`` whose producer takes each built batch and
answers at once (no broker: only the sink's own work is timed, in this one process).

- at-least-once: the sink node's ``SinkPublisher`` (write, then one flush at a time).
- exactly-once: the sink node's ``EpochOutput`` with an epoch every ``--epoch`` records, as
  checkpoints every 1 s would cut it at ~250k records/s: each epoch closed, its snapshot
  taken and stored in a ``file://`` store (what ``NodeCheckpoints.take`` does), committed and
  published in the background.

Both modes run alternately, ``--repeats`` times each after an untimed warm-up of each; the table
shows records per CPU second (``time.process_time``) and the ratio exactly-once / at-least-once.
With ``--compression gzip`` (or another codec of ``KafkaSinkConfig.compression_type``) each mode
also runs with its batches compressed, alternately with the plain runs, and the table adds the
compressed rows, their bytes sent and the ratio compressed / plain per mode.

With ``--broker``, a second table: the at-least-once sink over the embedded broker (a real
producer, ``acks='all'``), one flush per batch as a thin stream publishes, our own Produce
requests (``connectors.direct_produce``) against aiokafka's producer path, alternately; CPU ms
per flush of this process (the broker's CPU is its own).
Run: ``python -m benchmarks.sink_cpu [--records N] [--batch B] [--epoch E] [--repeats R]
[--compression gzip] [--broker]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from runtime.checkpoints.store import CheckpointStore
from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.dataplane.sink_epochs import EpochOutput
from runtime.dataplane.sink_publishing import SinkPublisher
from runtime.dataplane.stats import NodeStats
from runtime.dataplane.worker import WorkerSnapshot
from streamdag.batch import Batch

__all__ = ["main", "measure", "measure_broker", "workload"]

_KEYS = 100
_PARTITIONS = 4
_SINK_ID = "b" * 64


class _InstantProducer:
    """An aiokafka producer stand-in: takes each built batch's bytes, delivered at once."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.records_sent = 0

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def partitions_for(self, topic: str) -> set[int]:
        """The output topic's partitions."""
        return set(range(_PARTITIONS))

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[None]:
        """Take ``batch`` (its bytes, as the producer's sender would) and deliver it."""
        self.bytes_sent += len(batch._build())
        self.records_sent += batch.record_count()
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


class _BenchWriter(KafkaSinkWriter):
    """A Kafka sink writer over ``_InstantProducer`` whose epoch commits are kept in memory."""

    def __init__(self, compression_type: str | None = None) -> None:
        self.producer = _InstantProducer()
        super().__init__(KafkaSinkConfig("bench:9092", "bench.out",
                                         compression_type=compression_type),
                         producer_factory=lambda _: self.producer)
        self.commits: list[int] = []

    async def prepare_commits(self) -> None:
        """No companion topic to create."""

    async def published_sequences(self, sink_id: str, before_epoch: int) -> dict[int, int]:
        """A fresh sink: nothing of it in the topic."""
        return {}

    async def commit_epoch(self, sink_id: str, epoch: int) -> None:
        """Remember the commit."""
        self.commits.append(epoch)


def workload(records: int, size: int) -> list[Batch]:
    """The workload: ``records`` rolling means of 100 keys in batches of ``size``."""
    rng = np.random.default_rng(7)
    names = np.array([f"SYM{k:03d}".encode() for k in range(_KEYS)])
    out = []
    for first in range(0, records, size):
        n = np.arange(first, min(records, first + size))
        prices = np.round(rng.normal(100.0, 5.0, len(n)), 2)
        out.append(Batch(1_700_000_000_000_000_000 + n * 1000, names[n % _KEYS],
                         {"price_mean": prices / 20.0 + 0.123456789}))
    return out


async def _at_least_once(batches: Sequence[Batch], compression_type: str | None) -> _BenchWriter:
    writer = _BenchWriter(compression_type)
    await writer.open()
    publisher = SinkPublisher(writer, NodeStats("out", "out"))
    acks = []
    for batch in batches:
        acks.append(publisher.publish(batch))
        await asyncio.sleep(0)  # the drain loop takes the next push: the flush task runs
    await asyncio.gather(*acks)
    await publisher.idle()
    return writer


async def _exactly_once(batches: Sequence[Batch], epoch_records: int,
                        compression_type: str | None) -> _BenchWriter:
    writer = _BenchWriter(compression_type)
    await writer.open()
    output = EpochOutput(writer, _SINK_ID)
    output.start()
    store = CheckpointStore(Path(tempfile.mkdtemp(prefix="bench-sink-cpu-")).as_uri())
    epoch, in_epoch = 1, 0
    for batch in batches:
        await output.room()
        output.add(batch)
        in_epoch += len(batch)
        if in_epoch >= epoch_records:
            # A barrier: the epoch closes, the snapshot is taken and stored (as
            # ``NodeCheckpoints.take`` does), the checkpoint completes.
            output.close_epoch(epoch)
            parts = NodeSnapshot(epoch, WorkerSnapshot(epoch, b"", ()), None, output.pending(),
                                 output.sequences).to_parts()
            await asyncio.to_thread(store.write_snapshot, "bench", epoch, "out", parts)
            output.commit(epoch)
            epoch, in_epoch = epoch + 1, 0
        await asyncio.sleep(0)
    await output.publish_rest(epoch)
    await output.close()
    return writer


def measure(records: int, batch: int, epoch_records: int, mode: str,
            compression_type: str | None = None) -> tuple[float, int]:
    """Records per CPU second of one run of ``mode`` (its batches compressed with
    ``compression_type``), and the bytes it sent."""
    batches = workload(records, batch)
    started = time.process_time()
    if mode == "at-least-once":
        writer = asyncio.run(_at_least_once(batches, compression_type))
    else:
        writer = asyncio.run(_exactly_once(batches, epoch_records, compression_type))
    seconds = time.process_time() - started
    assert writer.producer.records_sent == records, (mode, writer.producer.records_sent)
    return records / seconds, writer.producer.bytes_sent


async def _flush_each(bootstrap: str, topic: str, batches: Sequence[Batch],
                      direct: bool, compression_type: str | None) -> tuple[float, int]:
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic, direct_produce=direct,
                                             compression_type=compression_type))
    await writer.open()
    try:
        await writer.write(batches[0])  # the connection to the leader opens untimed
        await writer.flush()
        started = time.process_time()
        for batch in batches[1:]:
            await writer.write(batch)
            await writer.flush()
        seconds = time.process_time() - started
    finally:
        await writer.close()
    return seconds * 1e3 / max(1, len(batches) - 1), writer.stats.records


def measure_broker(bootstrap: str, topic: str, flushes: int, batch: int,
                   direct: bool, compression_type: str | None = None) -> float:
    """CPU ms per flush of ``flushes`` batches of ``batch`` records over the broker."""
    batches = workload(flushes * batch, batch)
    per_flush, delivered = asyncio.run(_flush_each(bootstrap, topic, batches, direct,
                                                   compression_type))
    assert delivered == flushes * batch, (delivered, flushes * batch)
    return per_flush


def _broker_table(flushes: int, batch: int, repeats: int, compression_type: str | None) -> None:
    from connectors.broker import EmbeddedBroker
    from connectors.topics import ensure_topics

    modes = {"aiokafka producer": False, "own Produce requests": True}
    with EmbeddedBroker.start(tempfile.mkdtemp(prefix="bench-sink-cpu-")) as broker:
        bootstrap = str(broker.bootstrap_servers)
        asyncio.run(ensure_topics(bootstrap, {"bench.sink-cpu": _PARTITIONS}))
        for direct in modes.values():
            measure_broker(bootstrap, "bench.sink-cpu", 50, batch, direct, compression_type)
        costs: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(repeats):
            for mode, direct in modes.items():
                costs[mode].append(measure_broker(bootstrap, "bench.sink-cpu", flushes, batch,
                                                  direct, compression_type))
    print(f"\nsink over the embedded broker: {flushes:,} flushes of {batch:,} records "
          f"({_PARTITIONS} partitions), {repeats} runs each, compression "
          f"{compression_type or 'none'}, CPU of this process")
    print("   path                      CPU ms per flush (median)    best")
    for mode in modes:
        print(f"   {mode:<26}{np.median(costs[mode]):>22.3f}{min(costs[mode]):>11.3f}")
    ours, theirs = costs["own Produce requests"], costs["aiokafka producer"]
    print(f"   ratio own / aiokafka  {np.median(ours) / np.median(theirs):.3f} (median)")


def main(argv: Sequence[str] | None = None) -> None:
    """Both modes alternately, after a warm-up of each; print records per CPU second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--epoch", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compression", default=None,
                        help="also run each mode with its batches compressed by this codec")
    parser.add_argument("--broker", action="store_true",
                        help="also time one flush per batch over the embedded broker")
    parser.add_argument("--flushes", type=int, default=1_000,
                        help="flushes per run of the --broker table")
    args = parser.parse_args(argv)
    modes = ("at-least-once", "exactly-once")
    codecs = (None, args.compression) if args.compression else (None,)
    runs = [(mode, codec) for mode in modes for codec in codecs]
    for mode, codec in runs:
        measure(min(args.records, 50_000), args.batch, args.epoch, mode, codec)
    rates: dict[tuple[str, str | None], list[float]] = {run: [] for run in runs}
    sizes: dict[tuple[str, str | None], int] = {}
    for _ in range(args.repeats):
        for mode, codec in runs:
            rate, sent = measure(args.records, args.batch, args.epoch, mode, codec)
            rates[mode, codec].append(rate)
            sizes[mode, codec] = sent
    print(f"sink CPU: {args.records:,} records in batches of {args.batch:,}, epochs of "
          f"{args.epoch:,}, {args.repeats} runs each")
    print("   mode                     records/CPU s (median)      best    bytes sent")
    for mode, codec in runs:
        label = f"{mode} + {codec}" if codec else mode
        print(f"   {label:<23}{np.median(rates[mode, codec]):>16,.0f}"
              f"{max(rates[mode, codec]):>14,.0f}{sizes[mode, codec]:>14,}")
    exactly, least = rates["exactly-once", None], rates["at-least-once", None]
    print(f"   ratio exactly-once / at-least-once  {np.median(exactly) / np.median(least):.3f}"
          f" (median)  {max(exactly) / max(least):.3f} (best)")
    for mode in modes if args.compression else ():
        packed, plain = rates[mode, args.compression], rates[mode, None]
        print(f"   ratio {mode} {args.compression} / plain  records/CPU s "
              f"{np.median(packed) / np.median(plain):.3f} (median), bytes "
              f"{sizes[mode, args.compression] / sizes[mode, None]:.3f}")
    if args.broker:
        _broker_table(args.flushes, args.batch, args.repeats, args.compression)


if __name__ == "__main__":
    main()
