"""The time-ordered replay reader releases every record once, in (event time, partition,
offset) order, however the reads cut the partitions: checked against a plain sort."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.runners.replay import TimeOrderedReader
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.testing import ChunkScript

#: Per partition (0 and 1), the gaps between its records' event times (each partition is in
#: event-time order); then the reads, each taking up to N records of one partition.
_PARTITIONS = st.lists(st.lists(st.integers(0, 3), max_size=12), min_size=2, max_size=2)
_READS = st.lists(st.tuples(st.integers(0, 1), st.integers(1, 5)), max_size=30)


def _chunks(times: list[list[int]], reads: list[tuple[int, int]]) -> list[SourceChunk]:
    """The scripted reads: each one record run of one partition; the rest read at the end."""
    position = [0, 0]
    cut: list[tuple[int, int, int]] = []  # (partition, first, stop)
    for partition, count in reads:
        first = position[partition]
        position[partition] = min(first + count, len(times[partition]))
        cut.append((partition, first, position[partition]))
    cut += [(p, position[p], len(times[p])) for p in (0, 1)]
    chunks = []
    for index, (partition, first, stop) in enumerate(cut):
        ts = times[partition][first:stop]
        chunks.append(SourceChunk(
            Batch(np.array(ts, dtype=np.int64), np.array([b"k"] * len(ts), dtype="S1"),
                  {"price": np.array(ts, dtype=np.float64)},
                  np.full(len(ts), partition, dtype=np.int32),
                  np.arange(first, stop, dtype=np.int64)),
            None, finished=index == len(cut) - 1))
    return chunks


@settings(max_examples=150, deadline=None)
@given(_PARTITIONS, _READS)
def test_released_records_are_the_sorted_records_however_the_reads_cut_them(
        gaps: list[list[int]], reads: list[tuple[int, int]]) -> None:
    """Released batches, joined, equal every record sorted by (time, partition, offset)."""
    times = [np.cumsum(partition_gaps).tolist() for partition_gaps in gaps]
    chunks = _chunks(times, reads)
    reader = TimeOrderedReader(ChunkScript(chunks))

    async def read_all() -> list[Batch]:
        await reader.open()
        return [(await reader.read(100, 0.0)).batch for _ in range(len(chunks))]

    released = [batch for batch in asyncio.run(read_all()) if len(batch)]
    got = [(t, p, o) for batch in released for t, p, o in zip(
        batch.ts.tolist(), batch.partition.tolist() if batch.partition is not None else [],
        batch.offset.tolist() if batch.offset is not None else [], strict=True)]
    expected = sorted((t, p, o) for p in (0, 1) for o, t in enumerate(times[p]))
    assert got == expected
    assert reader.position() == {p: len(times[p]) for p in (0, 1) if times[p]}
