"""A sink's output per epoch: held until its checkpoint is complete, then published once.

Exactly-once without broker transactions (DESIGN.md §7, steps 4-5): what a sink receives between
barrier ``n-1`` and barrier ``n`` is epoch ``n``. It stays pending (and is part of the sink's
snapshot) until checkpoint ``n`` is complete; only then is it published and the epoch's
completion recorded. Every record carries the idempotence id ``(sink, key, sequence)``: its
place in the sink's output of its key. Computations are deterministic per key (inputs are in
event-time order), so a record recomputed after a restore has the id it had the first time,
whatever the epochs and however far back the checkpoint restored (an older one, when the newest
is corrupt). A restored sink reads back what of its output already reached the topic past the
last epoch commit before its checkpoint, and publishes only records with a higher sequence for
their key. A writer that cannot say (an in-memory test sink) gets all of it.

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

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.epoch_commits import record_ids
from connectors.errors import ProduceError
from operators.key_slots import KeySlots, hash_keys
from runtime.checkpoints import failpoints
from streamdag.batch import Batch
from streamdag.connector import SinkWriter

__all__ = ["EpochOutput", "EpochPublisher", "KeySequences", "PendingEpoch"]

#: Tries of one epoch's publish, each after reading back what the last one got out.
_PUBLISH_ATTEMPTS = 5
_RESEND_BACKOFF_S = 0.05


class KeySequences:
    """The next output sequence number of every key (vectorized; picklable)."""

    def __init__(self) -> None:
        self._slots = KeySlots()
        self._next = np.zeros(0, dtype=np.int64)

    def assign(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """Sequence numbers of a batch's records, per key in batch order; advances the keys.

        >>> sequences = KeySequences()
        >>> sequences.assign(np.array([b"a", b"b", b"a"])).tolist()
        [0, 0, 1]
        >>> sequences.assign(np.array([b"a"])).tolist()
        [2]
        """
        slots = self._slots.slots(keys)
        if len(self._slots) > len(self._next):
            grown = np.zeros(max(len(self._slots), 2 * len(self._next)), dtype=np.int64)
            grown[: len(self._next)] = self._next
            self._next = grown
        return _take_sequences(slots, self._next)


@njit(cache=True)
def _take_sequences(slots: npt.NDArray[np.int64],
                    next_of: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each record's sequence in its key's output, advancing the keys' counters (one pass)."""
    out = np.empty(len(slots), dtype=np.int64)
    for i in range(len(slots)):
        out[i] = next_of[slots[i]]
        next_of[slots[i]] += 1
    return out


@dataclass(frozen=True)
class PendingEpoch:
    """One closed epoch's output with each record's key hash and sequence, not yet published."""

    epoch: int
    batch: Batch
    key_hashes: npt.NDArray[np.uint64]
    sequences: npt.NDArray[np.int64]


@runtime_checkable
class EpochPublisher(Protocol):
    """A sink writer that records epochs and can tell what of its output already got out."""

    async def write(self, batch: Batch, record_ids: Sequence[bytes] | None = None) -> None:
        """Hand ``batch`` to the writer, each record tagged with its id."""

    async def published_sequences(self, sink_id: str, before_epoch: int) -> dict[int, int]:
        """Per key hash, the highest sequence of ``sink_id`` in the topic after its last
        epoch commit before ``before_epoch``."""

    async def commit_epoch(self, sink_id: str, epoch: int) -> None:
        """Record that ``epoch`` of ``sink_id`` is wholly published."""

    def discard_pending(self) -> None:
        """Forget what a failed flush left undelivered (it is resent after a read-back)."""


class EpochOutput:
    """The pending epochs of one sink and how they are published."""

    def __init__(self, writer: SinkWriter, sink_id: str, pending: Sequence[PendingEpoch] = (),
                 sequences: KeySequences | None = None, *,
                 restored_checkpoint: int | None = None) -> None:
        self.writer = writer
        self.sink_id = sink_id
        self.sequences = sequences if sequences is not None else KeySequences()
        KeySequences().assign(np.array([b"warm"]))  # compiled before the first batch waits
        self._open: list[tuple[Batch, npt.NDArray[np.uint64], npt.NDArray[np.int64]]] = []
        self._pending: list[PendingEpoch] = list(pending)
        #: A restored sink's output may have reached the topic, wholly or in part, already:
        #: any epoch after the last one committed before what it restored.
        self._recover_after: int | None = None
        if restored_checkpoint is not None:
            self._recover_after = min([p.epoch for p in self._pending]
                                      + [restored_checkpoint + 1])
        self._published: dict[int, int] = {}
        self._publishing = asyncio.Lock()
        self.published_records = 0
        self.skipped_records = 0

    def add(self, batch: Batch) -> None:
        """Output of the epoch now open: each record gets its key's next sequence."""
        if len(batch):
            self._open.append((batch, hash_keys(batch.key), self.sequences.assign(batch.key)))

    def close_epoch(self, epoch: int) -> None:
        """Barrier ``epoch`` passed: what came since the last one is that epoch's output."""
        if self._open:
            batches, hashes, sequences = zip(*self._open, strict=True)
            self._pending.append(PendingEpoch(epoch, Batch.concat(batches),
                                              np.concatenate(hashes), np.concatenate(sequences)))
            self._open = []

    def pending(self) -> tuple[PendingEpoch, ...]:
        """Closed epochs not yet published (they belong in the sink's snapshot)."""
        return tuple(self._pending)

    def pending_epochs(self) -> list[int]:
        """The epochs of ``pending()``."""
        return [pending.epoch for pending in self._pending]

    async def publish_through(self, epoch: int) -> None:
        """Publish every pending epoch up to ``epoch`` (its checkpoint is complete), in order.

        One publish at a time: a commit and the end of the stream may ask at once.
        """
        async with self._publishing:
            await self._publish_due(epoch)

    async def _publish_due(self, epoch: int) -> None:
        due = [pending for pending in self._pending if pending.epoch <= epoch]
        if not due:
            return
        publisher = self.writer if isinstance(self.writer, EpochPublisher) else None
        if self._recover_after is not None and publisher is not None:
            self._published = await publisher.published_sequences(self.sink_id,
                                                                  self._recover_after)
        self._recover_after = None
        for pending in due:
            await self._publish(pending, publisher)
            self._pending.remove(pending)

    async def publish_rest(self, final_epoch: int) -> None:
        """End of stream: the open output becomes ``final_epoch``, and everything goes out."""
        self.close_epoch(final_epoch)
        await self.publish_through(final_epoch)

    async def _publish(self, pending: PendingEpoch, publisher: EpochPublisher | None) -> None:
        batch, hashes, sequences = pending.batch, pending.key_hashes, pending.sequences
        if self._published:
            keep = ~_already_published(hashes, sequences, self._published)
            self.skipped_records += int((~keep).sum())
            batch, hashes, sequences = (batch.take(np.flatnonzero(keep)), hashes[keep],
                                        sequences[keep])
        ids = record_ids(self.sink_id, hashes, sequences)
        if failpoints.armed("mid_publish") and len(batch) > 1:  # half out, then the crash
            half = np.arange(len(batch) // 2)
            await self._write(publisher, batch.take(half), ids[: len(half)])
            await self.writer.flush()
            failpoints.hit("mid_publish")
        for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
            try:
                await self._write(publisher, batch, ids)
                await self.writer.flush()
                break
            except ProduceError:
                if publisher is None or attempt == _PUBLISH_ATTEMPTS:
                    raise
            # Part of it may have landed (a send that timed out after the broker took it):
            # read back what got out since the last commit and send only the rest.
            publisher.discard_pending()
            await asyncio.sleep(_RESEND_BACKOFF_S * 2 ** (attempt - 1))
            published = await publisher.published_sequences(self.sink_id, pending.epoch)
            if published:
                rest = ~_already_published(hashes, sequences, published)
                self.skipped_records += int((~rest).sum())
                rows = np.flatnonzero(rest)
                batch, hashes, sequences = batch.take(rows), hashes[rest], sequences[rest]
                ids = [ids[row] for row in rows.tolist()]
        if publisher is not None:
            await publisher.commit_epoch(self.sink_id, pending.epoch)
        self.published_records += len(batch)


    async def _write(self, publisher: EpochPublisher | None, batch: Batch,
                     ids: list[bytes]) -> None:
        if publisher is not None:
            await publisher.write(batch, ids)
        else:
            await self.writer.write(batch)


def _already_published(hashes: npt.NDArray[np.uint64], sequences: npt.NDArray[np.int64],
                       published: Mapping[int, int]) -> npt.NDArray[np.bool_]:
    """Which records have a sequence at or below the highest published for their key."""
    known = np.array(sorted(published), dtype=np.uint64)
    highest = np.array([published[int(h)] for h in known], dtype=np.int64)
    index = np.searchsorted(known, hashes)
    inside = index < len(known)
    found = np.zeros(len(hashes), dtype=bool)
    found[inside] = known[index[inside]] == hashes[inside]
    result = np.zeros(len(hashes), dtype=bool)
    result[found] = sequences[found] <= highest[index[found]]
    return result
