"""In-memory connectors: a source over given batches and a sink that keeps what it gets.

They implement the same protocols as the Kafka connectors, with the same publish semantics
(a sink's ``write`` buffers, ``flush`` publishes), so tests and benchmarks run without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.connectors.errors import ConnectorConfigError

__all__ = ["MemorySinkWriter", "MemorySourceReader"]


class MemorySourceReader:
    """Reads the records of ``batches`` in order, as one partition (0) with offsets 0, 1, ...

    With ``finish`` the reader reports ``finished`` after the last record; without it, it
    keeps returning empty chunks, like a live topic with no new data. The watermark is the
    largest event time returned so far. ``resume_from={0: n}`` skips the first ``n`` records.

    >>> import asyncio
    >>> reader = MemorySourceReader([Batch.from_columns(ts=[1, 2, 3], key=["a"] * 3, x=[1, 2, 3])])
    >>> async def first_two():
    ...     await reader.open()
    ...     chunk = await reader.read(max_records=2, linger_s=0.0)
    ...     return chunk.batch.offset.tolist(), chunk.watermark, chunk.finished, reader.position()
    >>> asyncio.run(first_two())
    ([0, 1], 2, False, {0: 2})
    """

    def __init__(
        self,
        batches: Sequence[Batch],
        finish: bool = True,
        resume_from: Mapping[int, int] | None = None,
    ) -> None:
        if not batches:
            raise ConnectorConfigError(
                "MemorySourceReader needs at least one batch (an empty one gives the schema)"
            )
        whole = Batch.concat(list(batches))
        count = len(whole)
        self._records = Batch(
            whole.ts, whole.key, whole.columns,
            np.zeros(count, dtype=np.int32), np.arange(count, dtype=np.int64),
        )
        self._finish = finish
        self._position = int((resume_from or {}).get(0, 0))
        self._watermark: int | None = None
        self._open = False

    async def open(self) -> None:
        """Nothing to connect; marks the reader open."""
        self._open = True

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The next ``max_records`` records (``linger_s`` is not needed: all are here)."""
        if not self._open:
            raise ConnectorConfigError("MemorySourceReader.read before open(); call open() first")
        stop = min(len(self._records), self._position + max(1, max_records))
        batch = self._records.slice(self._position, stop)
        self._position = stop
        if len(batch):
            latest = int(batch.ts.max())
            self._watermark = latest if self._watermark is None else max(self._watermark, latest)
        done = self._finish and self._position >= len(self._records)
        return SourceChunk(batch=batch, watermark=self._watermark, finished=done)

    def position(self) -> dict[int, int]:
        """The offset after the last record returned (partition 0)."""
        return {0: self._position}

    async def seek_to(self, positions: Mapping[int, int]) -> None:
        """Continue from ``positions[0]``."""
        self._position = int(positions.get(0, self._position))

    async def close(self) -> None:
        """Nothing to release."""
        self._open = False


class MemorySinkWriter:
    """Keeps batches: ``write`` buffers them, ``flush`` moves them to ``batches``.

    >>> import asyncio
    >>> sink = MemorySinkWriter()
    >>> async def write_one():
    ...     await sink.open()
    ...     await sink.write(Batch.from_columns(ts=[1], key=["a"], mean=[2.5]))
    ...     pending = len(sink.pending_batches)
    ...     await sink.flush()
    ...     return pending, sink.records
    >>> asyncio.run(write_one())
    (1, [{'ts': 1, 'key': 'a', 'mean': 2.5}])
    """

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.pending_batches: list[Batch] = []
        self.flushes = 0
        self.closed = False

    async def open(self) -> None:
        """Nothing to connect."""
        self.closed = False

    async def write(self, batch: Batch, record_ids: Any = None) -> None:
        """Buffer ``batch`` until the next ``flush`` (``record_ids`` are accepted and ignored)."""
        if len(batch):
            self.pending_batches.append(batch)

    async def flush(self) -> None:
        """Publish the buffered batches to ``batches``."""
        self.batches.extend(self.pending_batches)
        self.pending_batches.clear()
        self.flushes += 1

    async def close(self) -> None:
        """Flush; safe to call twice."""
        if not self.closed:
            await self.flush()
            self.closed = True

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every published record as a dict (``ts``, ``key``, fields), in publish order."""
        return [record for batch in self.batches for record in batch.to_records()]
