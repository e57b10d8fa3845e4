"""The per-batch CPU of a keyed node's event-time order: by partition against the whole input.

Run: ``python -m benchmarks.partition_release [--batches 3000] [--records 87] [--repeat 7]``.

The keyed node of the issue's workload (a rolling mean over a source ``partitioned_by_key``)
puts its input in order with ``KeyPartitionedAligner``: per push it holds the batch (checking
every key against its partition), takes the partitions' marks and releases what they passed,
then takes the watermark. The baseline is the whole-input ``EventTimeAligner`` on the same
pushes (hold, watermark, release), measured in the same run. Batches are as a Kafka fetch gives
them: ``--records`` records of 100 keys over 4 partitions, partition by partition, each
partition's mark its newest event time, the watermark behind the marks.

It prints each aligner's CPU microseconds per push (the least over ``--repeat`` passes) and
their ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from runtime.dataplane.alignment import EventTimeAligner
from runtime.dataplane.partition_release import KeyPartitionedAligner
from streamdag.batch import Batch
from streamdag.schema import Schema

__all__ = ["Push", "main", "per_push_us", "pushes"]

_KEYS = 100
_PARTITIONS = 4
_SCHEMA = Schema.of(price="float64")
#: A push: the batch, each partition's mark, the watermark.
Push = tuple[Batch, tuple[tuple[int, int], ...], int]


def pushes(batches: int, records: int, seed: int = 1) -> list[Push]:
    """``batches`` pushes of ``records`` records each, as a key-partitioned source sends them."""
    rng = np.random.default_rng(seed)
    keys = np.array([b"SYM%02d" % i for i in range(_KEYS)])
    offsets = np.zeros(_PARTITIONS, np.int64)
    start = 1_700_000_000_000_000_000
    made: list[Push] = []
    for _ in range(batches):
        key = rng.integers(0, _KEYS, records)
        partition = (key % _PARTITIONS).astype(np.int32)
        ts = start + np.sort(rng.integers(0, 1_000_000, records)).astype(np.int64)
        offset = np.empty(records, np.int64)
        for p in range(_PARTITIONS):
            mine = partition == p
            offset[mine] = offsets[p] + np.arange(int(mine.sum()))
            offsets[p] += int(mine.sum())
        order = np.argsort(partition, kind="stable")  # a fetch gives partition by partition
        batch = Batch(ts[order], keys[key][order], {"price": rng.standard_normal(records)},
                      partition[order], offset[order]).read_only()
        marks = tuple((p, int(ts[partition == p].max())) for p in range(_PARTITIONS)
                      if (partition == p).any())
        made.append((batch, marks, int(ts[0])))
        start += 1_000_000
    return made


def per_push_us(pushes: Sequence[Push], by_partition: bool, warm_up: int = 200) -> float:
    """CPU microseconds per push of one pass over ``pushes`` (after ``warm_up`` of them)."""
    aligner: EventTimeAligner = (KeyPartitionedAligner(_SCHEMA, node="mean") if by_partition
                                 else EventTimeAligner([_SCHEMA]))
    started = 0.0
    for index, (batch, marks, watermark) in enumerate(pushes):
        if index == warm_up:
            started = time.process_time()
        aligner.add(0, batch)
        if isinstance(aligner, KeyPartitionedAligner) and aligner.advance_partitions(0, marks):
            aligner.release()
        if aligner.advance(0, watermark):
            aligner.release()
    return 1e6 * (time.process_time() - started) / max(1, len(pushes) - warm_up)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure both aligners on the same pushes, interleaved, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--records", type=int, default=87)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    made = pushes(args.batches, args.records)
    passes: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeat):
        for by_partition in (False, True):
            passes[by_partition].append(per_push_us(made, by_partition))
    whole, partitioned = min(passes[False]), min(passes[True])
    print(f"event-time order per push: {args.records} records, {_KEYS} keys, {_PARTITIONS} "
          f"partitions, {args.batches} pushes, least of {args.repeat} passes (CPU)")
    print(f"{'aligner':<40} {'us per push':>12}")
    print(f"{'whole input (EventTimeAligner)':<40} {whole:>12.1f}")
    print(f"{'by partition (KeyPartitionedAligner)':<40} {partitioned:>12.1f}")
    print(f"by partition / whole input: {partitioned / whole:.2f}x")


if __name__ == "__main__":
    main()
