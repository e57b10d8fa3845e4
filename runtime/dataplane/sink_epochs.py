"""A sink's output per epoch: held until its checkpoint is complete, then published once.

Exactly-once without broker transactions (DESIGN.md §7, step 4-5): what a sink receives between
barrier ``n-1`` and barrier ``n`` is epoch ``n``. It stays pending (and is part of the sink's
snapshot) until checkpoint ``n`` is complete; only then is it published, every record tagged
with the idempotence id ``(sink, epoch, sequence)``, and the epoch's completion recorded. After
a crash the restored sink asks its writer what of its pending epochs already reached the topic
and publishes only the rest. A writer that cannot say (an in-memory test sink) gets all of it.

>>> import asyncio
>>> from streamdag.batch import Batch
>>> from streamdag.testing import ListSink
>>> sink = ListSink()
>>> output = EpochOutput(sink, "sink-1")
>>> output.add(Batch.from_columns(ts=[1, 2], key=["a", "a"], value=[1.0, 2.0]))
>>> output.close_epoch(1)
>>> output.add(Batch.from_columns(ts=[3], key=["a"], value=[3.0]))
>>> output.close_epoch(2)
>>> asyncio.run(output.publish_through(1))
>>> [r["value"] for b in sink.batches for r in b.to_records()], output.pending_epochs()
([1.0, 2.0], [2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from connectors.epoch_commits import record_id
from streamdag.batch import Batch
from streamdag.connector import SinkWriter

__all__ = ["EpochOutput", "EpochPublisher", "PendingEpoch"]

@dataclass(frozen=True)
class PendingEpoch:
    """One closed epoch's output, not yet published."""

    epoch: int
    batch: Batch


@runtime_checkable
class EpochPublisher(Protocol):
    """A sink writer that records epochs and can tell what of an epoch already got out."""

    async def write(self, batch: Batch, record_ids: Sequence[bytes] | None = None) -> None:
        """Hand ``batch`` to the writer, each record tagged with its id."""

    async def committed_epoch(self, sink_id: str) -> int:
        """The newest epoch of ``sink_id`` recorded as wholly published (-1: none)."""

    async def published_ids(self, sink_id: str, after_epoch: int) -> set[bytes]:
        """Ids of ``sink_id``'s records of epochs after ``after_epoch`` already in the topic."""

    async def commit_epoch(self, sink_id: str, epoch: int) -> None:
        """Record that ``epoch`` of ``sink_id`` is wholly published."""


class EpochOutput:
    """The pending epochs of one sink and how they are published."""

    def __init__(self, writer: SinkWriter, sink_id: str,
                 pending: Sequence[PendingEpoch] = ()) -> None:
        self.writer = writer
        self.sink_id = sink_id
        self._open: list[Batch] = []
        self._pending: list[PendingEpoch] = list(pending)
        #: Restored epochs may have been published, wholly or in part, before the crash.
        self._recovering = bool(self._pending)
        self.published_records = 0
        self.skipped_records = 0

    def add(self, batch: Batch) -> None:
        """Output of the epoch now open."""
        if len(batch):
            self._open.append(batch)

    def close_epoch(self, epoch: int) -> None:
        """Barrier ``epoch`` passed: what came since the last one is that epoch's output."""
        if self._open:
            self._pending.append(PendingEpoch(epoch, Batch.concat(self._open)))
            self._open = []

    def pending(self) -> tuple[PendingEpoch, ...]:
        """Closed epochs not yet published (they belong in the sink's snapshot)."""
        return tuple(self._pending)

    def pending_epochs(self) -> list[int]:
        """The epochs of ``pending()``."""
        return [pending.epoch for pending in self._pending]

    async def publish_through(self, epoch: int) -> None:
        """Publish every pending epoch up to ``epoch`` (its checkpoint is complete), in order."""
        due = [pending for pending in self._pending if pending.epoch <= epoch]
        if not due:
            return
        publisher = self.writer if isinstance(self.writer, EpochPublisher) else None
        present: set[bytes] = set()
        committed = -1
        if self._recovering and publisher is not None:
            committed = await publisher.committed_epoch(self.sink_id)
            present = await publisher.published_ids(self.sink_id, committed)
        for pending in due:
            if pending.epoch > committed:
                await self._publish(pending, publisher, present)
            else:
                self.skipped_records += len(pending.batch)
            self._pending.remove(pending)
        self._recovering = False

    async def publish_rest(self, final_epoch: int) -> None:
        """End of stream: the open output becomes ``final_epoch``, and everything goes out."""
        self.close_epoch(final_epoch)
        await self.publish_through(final_epoch)

    async def _publish(self, pending: PendingEpoch, publisher: EpochPublisher | None,
                       present: set[bytes]) -> None:
        batch = pending.batch
        ids = [record_id(self.sink_id, pending.epoch, n) for n in range(len(batch))]
        if present:
            keep = np.array([i not in present for i in ids], dtype=bool)
            self.skipped_records += int((~keep).sum())
            batch = batch.take(np.flatnonzero(keep))
            ids = [i for i, kept in zip(ids, keep.tolist(), strict=True) if kept]
        if publisher is not None:
            await publisher.write(batch, ids)
        else:
            await self.writer.write(batch)
        await self.writer.flush()
        if publisher is not None:
            await publisher.commit_epoch(self.sink_id, pending.epoch)
        self.published_records += len(batch)

