"""Deterministic replays: a source wrapper that merges partitions by event time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamdag.batch import Batch
from streamdag.connector import SourceChunk, SourceReader

__all__ = ["TimeOrderedReader"]


class TimeOrderedReader:
    """Releases a multi-partition source's records in (event time, partition, offset) order.

    A fetch returns whatever partitions happened to answer, so the order in which records of
    different partitions arrive changes from run to run. This reader holds records back until
    every partition has delivered past them (each partition is in event-time order), then
    releases them sorted; the merged stream, and so every result downstream, is the same in every
    run: a replay equals the live run over the same records, on any runner. Partitions that end
    early hold the others back until the whole range is read, so use it for bounded ranges.

    The watermark it passes on never exceeds the oldest record it still holds, so nothing it
    releases later is late downstream. It merges only when the bound moved (every partition
    passed a newer time) or the range is read: a partition that lags costs nothing per read.
    """

    def __init__(self, inner: SourceReader, partitions: Sequence[int] | None = None) -> None:
        self.inner = inner
        self._partitions = list(partitions) if partitions is not None else None
        self._held: list[Batch] = []
        #: The oldest event time held (None when nothing is).
        self._held_oldest: int | None = None
        self._newest: dict[int, int] = {}
        self._bound: int | None = None
        self._released: dict[int, int] = {}
        self._finished = False

    async def open(self) -> None:
        """Open the wrapped reader and learn its partitions."""
        await self.inner.open()
        if self._partitions is None:
            known: Any = getattr(self.inner, "partitions", None)
            self._partitions = list(known) if known is not None else [0]

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The records every partition has passed, in event-time order."""
        chunk = await self.inner.read(max_records, linger_s)
        batch = chunk.batch
        if len(batch):
            if batch.partition is None:
                raise ValueError("TimeOrderedReader needs batches with partition lineage")
            self._held.append(batch)
            oldest = int(batch.ts.min())
            self._held_oldest = oldest if self._held_oldest is None else min(
                self._held_oldest, oldest)
            for partition in np.unique(batch.partition).tolist():
                newest = int(batch.ts[batch.partition == partition].max())
                self._newest[partition] = max(newest, self._newest.get(partition, newest))
        self._finished = chunk.finished
        released = self._release(chunk.finished)
        watermark = chunk.watermark
        if watermark is not None and self._held_oldest is not None:
            watermark = min(watermark, self._held_oldest)
        empty = batch.slice(0, 0)
        # Partition marks stay here: what it holds back may lie below them. Each key's order is
        # the same either way (``runtime.dataplane.partition_release``).
        return SourceChunk(released if released is not None else empty, watermark,
                           chunk.finished, late=chunk.late)

    def _release(self, everything: bool) -> Batch | None:
        if not self._held:
            return None
        partitions = self._partitions or []
        if everything:
            bound = None
        elif all(p in self._newest for p in partitions):
            bound = min(self._newest[p] for p in partitions)
            if self._bound is not None and bound <= self._bound:
                return None  # no partition has passed a newer time: nothing new to release
            self._bound = bound
        else:
            return None
        # Step 1: each held batch split at the bound. Only a batch with records on both sides
        # is copied (its rest, compact), so the peak holds the held records once and the
        # released ones twice, not every held record twice: one partition lagging behind the
        # others made it hold 40% of the issue workload's records at times.
        split = [_split_at(batch, bound) for batch in self._held]
        self._held = [rest for _, rest in split if rest is not None]
        parts = [part for part, _ in split if part is not None]
        del split
        self._held_oldest = min((int(batch.ts.min()) for batch in self._held), default=None)
        if not parts:
            return self._held[0].take(np.empty(0, dtype=np.int64))
        # Step 2: what goes, in (event time, partition, offset) order, in a compact batch of
        # its own: a released batch waiting downstream pins none of the records still held.
        merged = Batch.concat(parts)
        del parts
        assert merged.partition is not None and merged.offset is not None
        released = merged.take(np.lexsort((merged.offset, merged.partition, merged.ts)))
        if len(released):
            assert released.partition is not None and released.offset is not None
            for partition in np.unique(released.partition).tolist():
                mask = released.partition == partition
                self._released[partition] = int(released.offset[mask].max()) + 1
        return released

    def position(self) -> dict[int, int]:
        """Per partition, the offset after the last record released."""
        return dict(self._released)

    async def seek_to(self, positions: Mapping[int, int]) -> None:
        """Continue each named partition from its offset (a checkpoint's ``position()``).

        What was held is dropped: the wrapped reader reads it again from those offsets.
        """
        seek_to: Any = getattr(self.inner, "seek_to", None)
        if not callable(seek_to):
            raise TypeError(f"{type(self.inner).__name__} cannot seek; a replay restored from "
                            "a checkpoint needs a reader with seek_to")
        await seek_to(positions)
        self._held, self._held_oldest, self._newest, self._bound = [], None, {}, None
        self._released.update(positions)
        self._finished = False

    def lag(self) -> dict[int, int]:
        """The wrapped reader's consumer lag, when it reports one."""
        lag: Any = getattr(self.inner, "lag", None)
        return dict(lag()) if callable(lag) else {}

    async def close(self) -> None:
        """Close the wrapped reader."""
        await self.inner.close()


def _split_at(batch: Batch, bound: int | None) -> tuple[Batch | None, Batch | None]:
    """``batch``'s records before ``bound`` (None: all of them) and from it on, None for a side
    with no record; a side with all of them is ``batch`` itself, a cut one a compact copy."""
    below = None if bound is None else batch.ts < bound
    count = len(batch) if below is None else int(np.count_nonzero(below))
    if count == len(batch):
        return batch, None
    if count == 0 or below is None:
        return None, batch
    return batch.take(below), batch.take(~below)
