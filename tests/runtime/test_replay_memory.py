"""The time-ordered replay reader's released batches keep only their own records alive: a batch
waiting downstream never pins the records the reader still holds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from runtime.runners.replay import TimeOrderedReader
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.testing import ChunkScript


def _records(ts: list[int], partitions: list[int], first_offset: int) -> Batch:
    return Batch(np.array(ts, dtype=np.int64), np.array([b"k"] * len(ts), dtype="S1"),
                 {"price": np.array(ts, dtype=np.float64)}, np.array(partitions, dtype=np.int32),
                 np.arange(first_offset, first_offset + len(ts), dtype=np.int64))


def _arrays(batch: Batch) -> list[np.ndarray]:
    assert batch.partition is not None and batch.offset is not None
    return [batch.ts, batch.key, *batch.columns.values(), batch.partition, batch.offset]


def _kept_alive(array: np.ndarray) -> int:
    """Bytes ``array`` keeps alive: its own, or the whole buffer it is a view of."""
    base = array
    while isinstance(base.base, np.ndarray):
        base = base.base
    return int(base.nbytes)


def _reader() -> TimeOrderedReader:
    return TimeOrderedReader(ChunkScript([
        # Partition 1 is ahead: partition 0 has passed 2 only, so only 1 can go.
        SourceChunk(_records([1, 2, 3, 4, 5], [0, 0, 1, 1, 1], 0), 2),
        # Partition 0 passes 4: 2 and 3 go; 4, 4, 5 and 6 stay held.
        SourceChunk(_records([4, 6], [0, 1], 5), 4),
        SourceChunk(_records([], [], 7), 6, finished=True),
    ]))


def _read_all(reader: TimeOrderedReader) -> list[Batch]:
    async def read_all() -> list[Batch]:
        await reader.open()
        return [(await reader.read(100, 0.0)).batch for _ in range(3)]

    return asyncio.run(read_all())


def test_released_batches_keep_only_their_own_records_alive() -> None:
    batches = _read_all(_reader())
    assert [batch.ts.tolist() for batch in batches] == [[1], [2, 3], [4, 4, 5, 6]]
    assert [batch.columns["price"].tolist() for batch in batches] == [
        [1.0], [2.0, 3.0], [4.0, 4.0, 5.0, 6.0]]
    assert [batch.partition.tolist() for batch in batches if batch.partition is not None] == [
        [0], [0, 1], [0, 1, 1, 1]]
    for batch in batches:
        assert [_kept_alive(array) for array in _arrays(batch)] == [
            array.nbytes for array in _arrays(batch)]


def test_a_release_copies_only_the_batches_it_cuts_and_what_goes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A held batch wholly past the bound is kept as it is, a cut one is copied once, and only
    the released records are sorted: at its peak the reader holds each held record once and
    the released ones twice (it held every record twice, one partition lagging)."""
    copies: list[tuple[list[int], int]] = []  # (the copied batch's times, records copied)
    take = Batch.take

    def noting_take(batch: Batch, index: np.ndarray) -> Batch:
        taken = take(batch, index)
        copies.append((batch.ts.tolist(), len(taken)))
        return taken

    monkeypatch.setattr(Batch, "take", noting_take)
    batches = _read_all(_reader())
    assert [batch.ts.tolist() for batch in batches] == [[1], [2, 3], [4, 4, 5, 6]]
    assert copies == [
        # First read, bound 2: the batch is cut (1 goes, 2-5 stay); what goes is sorted.
        ([1, 2, 3, 4, 5], 1), ([1, 2, 3, 4, 5], 4), ([1], 1),
        # Second read, bound 4: the rest is cut again; [4, 6] lies past 4 and is not copied.
        ([2, 3, 4, 5], 2), ([2, 3, 4, 5], 2), ([2, 3], 2),
        # The end: everything held goes, merged and sorted once.
        ([4, 5, 4, 6], 4),
    ]
