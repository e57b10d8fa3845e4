"""A sink's output per epoch: held until its checkpoint is complete, then published once.

Exactly-once without broker transactions (DESIGN.md §7, steps 4-5): what a sink receives between
barrier ``n-1`` and barrier ``n`` is epoch ``n``. It stays pending (and is part of the sink's
snapshot) until checkpoint ``n`` is complete; only then is it published and the epoch's
completion recorded. Every record is identified by ``(sink, key, sequence)``: its place in the
sink's output of its key (its id header carries the sink's tag and the sequence, its key is its
own: ``connectors.record_ids``). Computations are deterministic per key (inputs are in
event-time order), so a record recomputed after a restore has the id it had the first time,
whatever the epochs and however far back the checkpoint restored (an older one, when the newest
is corrupt). A restored sink reads back what of its output already reached the topic past the
last epoch commit before its checkpoint, and publishes only records with a higher sequence for
their key. A writer that cannot say (an in-memory test sink) gets all of it.

Publishing runs off the commit call and off the sink's drain loop, in one background task per
sink (``EpochOutput.commit``), so a sink keeps taking input while a completed epoch goes out.

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
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.errors import ProduceError
from connectors.record_ids import record_ids
from operators.key_slots import KeySlots, hash_keys
from runtime.checkpoints import failpoints
from streamdag.batch import Batch
from streamdag.cancellation import cancel_and_wait
from streamdag.connector import SinkWriter

if TYPE_CHECKING:  # only a Kafka sink's publisher makes them: aiokafka stays out of other nodes
    from connectors.epoch_batches import EpochBatches
    from connectors.record_batches import BuiltBatches

__all__ = [
    "MAX_EPOCHS_BEHIND",
    "EpochOutput",
    "EpochPublisher",
    "KeySequences",
    "PendingEpoch",
    "RecordEncoder",
]

#: Committed epochs that may wait for their publish before a sink takes no more input.
MAX_EPOCHS_BEHIND = 2
#: Seconds a stopping sink lets its committed epochs go out before it cancels their publish.
_STOP_DRAIN_S = 5.0
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


#: One push of an epoch's output: its records and their sequences.
_Push = tuple[Batch, npt.NDArray[np.int64]]


class PendingEpoch:
    """One closed epoch's output with each record's sequence, not yet published.

    It is kept as the pushes it came in (closing an epoch copies nothing) and joined only
    where a publish needs the records themselves (after a restore, or for a writer that
    encodes at publish). Nothing writes its arrays (``arrays()``) once its epoch closed, so a
    snapshot can write them out as they are, with no copy (``NodeSnapshot.to_parts``). In a
    snapshot it is its batches and sequences. Its records' key hashes are made only where a
    publish needs them (to skip what a restored or failed publish got out already).

    >>> pending = PendingEpoch(3, [(Batch.from_columns(ts=[1], key=["a"], v=[1.0]),
    ...                             np.array([0]))])
    >>> loaded = pickle.loads(pickle.dumps(pending))
    >>> loaded.epoch, len(loaded), loaded.sequences.tolist(), bool(
    ...     (loaded.key_hashes == pending.key_hashes).all())
    (3, 1, [0], True)
    """

    def __init__(self, epoch: int, pushes: Sequence[_Push]) -> None:
        self.epoch = epoch
        self.pushes = tuple(pushes)

    def __len__(self) -> int:
        return sum(len(push[1]) for push in self.pushes)

    @cached_property
    def batch(self) -> Batch:
        """The epoch's records, in order."""
        return Batch.concat([push[0] for push in self.pushes])

    @cached_property
    def key_hashes(self) -> npt.NDArray[np.uint64]:
        """Each record's key hash."""
        return np.concatenate([np.zeros(0, dtype=np.uint64),
                               *(hash_keys(batch.key) for batch, _ in self.pushes)])

    @cached_property
    def sequences(self) -> npt.NDArray[np.int64]:
        """Each record's sequence in its key's output."""
        return np.concatenate([np.zeros(0, dtype=np.int64),
                               *(sequences for _, sequences in self.pushes)])

    def keep(self, rows: npt.NDArray[np.bool_]) -> PendingEpoch:
        """Only the records ``rows`` marks."""
        return PendingEpoch(self.epoch, [(self.batch.take(np.flatnonzero(rows)),
                                          self.sequences[rows])])

    def arrays(self) -> list[npt.NDArray[Any]]:
        """Every array a snapshot stores of it (its batches' and its sequences)."""
        return [array for batch, sequences in self.pushes
                for array in (batch.ts, batch.key, *batch.columns.values(), batch.partition,
                              batch.offset, sequences) if array is not None]

    def __reduce__(self) -> tuple[Any, tuple[int, list[tuple[Batch, npt.NDArray[np.int64]]]]]:
        # The arrays as they are: a protocol 5 pickler with a buffer callback (a snapshot's
        # parts) leaves them out of band, uncopied.
        return _restored_pending_epoch, (self.epoch, list(self.pushes))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A snapshot stored before pending epochs were kept by push: one push."""
        self.epoch = state["epoch"]
        self.pushes = ((state["batch"], state["sequences"]),)


def _loaded_pending_epoch(data: bytes, buffers: Sequence[bytes]) -> PendingEpoch:
    """A pending epoch as snapshots stored it until out-of-band parts (its arrays writable)."""
    epoch, stored = pickle.loads(data, buffers=[bytearray(buffer) for buffer in buffers])
    return _restored_pending_epoch(epoch, stored)


def _restored_pending_epoch(epoch: int,
                            stored: Sequence[tuple[Batch, npt.NDArray[np.int64]]]
                            ) -> PendingEpoch:
    """The pending epoch ``PendingEpoch.__reduce__`` stored (its arrays writable)."""
    pushes = []
    for batch, sequences in stored:
        batch = Batch(_own(batch.ts), _own(batch.key),
                      {name: _own(column) for name, column in batch.columns.items()},
                      None if batch.partition is None else _own(batch.partition),
                      None if batch.offset is None else _own(batch.offset))
        pushes.append((batch, _own(sequences)))
    return PendingEpoch(epoch, pushes)


def _own(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array``, or a writable copy of it: an array read-only when stored (a Ray actor's
    input) comes back read-only, as protocol 5 keeps it (restores only)."""
    return array if array.flags.writeable else array.copy()


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


@runtime_checkable
class RecordEncoder(Protocol):
    """A writer that builds an epoch's output ahead of its publish (the Kafka sink): records
    are encoded and batched as they arrive, so a completed epoch only has to be sent."""

    def epoch_batches(self, sink_id: str) -> EpochBatches:
        """A new epoch's batches, its records tagged with ``sink_id``'s ids as they are added."""

    def write_encoded(self, batches: Mapping[int, BuiltBatches]) -> None:
        """Keep an epoch's built batches pending until the next flush."""


class EpochOutput:
    """The pending epochs of one sink and how they are published.

    ``commit`` returns at once: the epochs it completed go out in one background task, oldest
    first, each wholly (records, then its epoch commit) before the next, and an epoch leaves
    ``pending()`` only once its commit is written, so a snapshot taken meanwhile still holds
    it. ``room`` is the backpressure: the sink takes no more input while more than
    ``max_behind`` committed epochs wait for their publish.
    """

    def __init__(self, writer: SinkWriter, sink_id: str, pending: Sequence[PendingEpoch] = (),
                 sequences: KeySequences | None = None, *,
                 restored_checkpoint: int | None = None, max_behind: int = MAX_EPOCHS_BEHIND,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.writer = writer
        self.sink_id = sink_id
        self.sequences = sequences if sequences is not None else KeySequences()
        KeySequences().assign(np.array([b"warm"]))  # compiled before the first batch waits
        self._open: list[_Push] = []
        self._pending: list[PendingEpoch] = list(pending)
        #: A writer that encodes ahead gets each batch as it arrives; the encoded records of
        #: the open and the pending epochs wait here (never in snapshots: a restored sink
        #: encodes its pending epochs again, for the writer it has then).
        self._encoder = writer if isinstance(writer, RecordEncoder) else None
        self._open_batches: EpochBatches | None = None
        self._encoded: dict[int, Mapping[int, BuiltBatches]] = {}
        #: A restored sink's output may have reached the topic, wholly or in part, already:
        #: any epoch after the last one committed before what it restored.
        self._recover_after: int | None = None
        if restored_checkpoint is not None:
            self._recover_after = min([p.epoch for p in self._pending]
                                      + [restored_checkpoint + 1])
        self._published: dict[int, int] = {}
        self.max_behind = max_behind
        #: Told what a background publish raised (the host holds: the region recovers).
        self.on_error = on_error
        #: What the background publish raised; nothing is published after it.
        self.error: Exception | None = None
        #: The newest epoch whose checkpoint is complete: pending epochs up to it may go out.
        self._committed = 0
        self._task: asyncio.Task[None] | None = None
        self._prepared: asyncio.Future[None] | None = None
        #: ``room`` callers, woken each time an epoch is out (or publishing stopped).
        self._waiting: list[asyncio.Future[None]] = []
        self.published_records = 0
        self.skipped_records = 0

    def add(self, batch: Batch) -> None:
        """Output of the epoch now open: each record gets its key's next sequence."""
        if len(batch):
            sequences = self.sequences.assign(batch.key)
            self._open.append((batch, sequences))
            if self._encoder is not None:  # now, while the stream runs: not in the publish
                if self._open_batches is None:
                    self._open_batches = self._encoder.epoch_batches(self.sink_id)
                self._open_batches.add(batch, sequences)

    def close_epoch(self, epoch: int) -> None:
        """Barrier ``epoch`` passed: what came since the last one is that epoch's output."""
        if self._open:
            self._pending.append(PendingEpoch(epoch, self._open))
            self._open = []
            if self._open_batches is not None:
                self._encoded[epoch] = self._open_batches.finish()
                self._open_batches = None

    def pending(self) -> tuple[PendingEpoch, ...]:
        """Closed epochs not yet wholly published (they belong in the sink's snapshot)."""
        return tuple(self._pending)

    def pending_epochs(self) -> list[int]:
        """The epochs of ``pending()``."""
        return [pending.epoch for pending in self._pending]

    def start(self) -> None:
        """Let the writer get its epoch commits ready in the background (its companion topic
        and client), while the stream starts: the first publish then waits only for that."""
        prepare: Any = getattr(self.writer, "prepare_commits", None)
        if callable(prepare) and self._prepared is None:
            self._prepared = asyncio.ensure_future(prepare())
            self._prepared.add_done_callback(lambda done: done.cancelled() or done.exception())

    def behind(self) -> int:
        """Committed epochs not yet wholly published."""
        return sum(pending.epoch <= self._committed for pending in self._pending)

    def commit(self, epoch: int) -> None:
        """Checkpoint ``epoch`` is complete: publish every pending epoch up to it, in order, in
        the background. Raises what an earlier publish raised (the sink must recover)."""
        if self.error is not None:
            raise self.error
        self._committed = max(self._committed, epoch)
        if self._due() is not None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run())

    async def publish_through(self, epoch: int) -> None:
        """Publish every pending epoch up to ``epoch`` (its checkpoint is complete), in order,
        and return once they are out."""
        self.commit(epoch)
        await self.idle()

    async def publish_rest(self, final_epoch: int) -> None:
        """End of stream: the open output becomes ``final_epoch``, and everything goes out."""
        self.close_epoch(final_epoch)
        await self.publish_through(final_epoch)

    async def idle(self) -> None:
        """Wait until every committed epoch is out; raises what publishing raised."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        if self.error is not None:
            raise self.error

    async def room(self) -> None:
        """Return once at most ``max_behind`` committed epochs wait for their publish."""
        while (self.behind() > self.max_behind and self._task is not None
               and not self._task.done()):
            woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(woken)
            await woken
        if self.error is not None:
            raise self.error

    async def close(self, timeout_s: float = _STOP_DRAIN_S) -> None:
        """The sink stops: committed epochs get ``timeout_s`` to go out, then publishing is
        cancelled. What it cut short is in the last snapshot still, and a restored sink
        publishes the rest of it (as after a crash there)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=timeout_s)
            if not task.done():
                await cancel_and_wait(task)
                if isinstance(self.writer, EpochPublisher):
                    self.writer.discard_pending()  # closing the writer must not send them
        await cancel_and_wait(self._prepared)
        self._wake()

    def _due(self) -> PendingEpoch | None:
        """The oldest pending epoch, if its checkpoint is complete."""
        if self._pending and self._pending[0].epoch <= self._committed:
            return self._pending[0]
        return None

    async def _run(self) -> None:
        publisher = self.writer if isinstance(self.writer, EpochPublisher) else None
        try:
            # Step 1: the writer's commits are ready; a restored sink reads back what of its
            # epochs already got out.
            if self._prepared is not None:
                await self._prepared
            if self._recover_after is not None and publisher is not None:
                self._published = await publisher.published_sequences(self.sink_id,
                                                                      self._recover_after)
            self._recover_after = None
            # Step 2: the oldest committed epoch goes out wholly, its commit record last...
            while (pending := self._due()) is not None:
                await self._publish(pending, publisher)
                # Step 3: ...and only then leaves the pending epochs (and later snapshots).
                self._pending.remove(pending)
                self._wake()
        except Exception as exc:
            self.error = exc
            if self.on_error is not None:
                self.on_error(exc)
        finally:
            self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for woken in waiting:
            if not woken.done():
                woken.set_result(None)

    async def _publish(self, pending: PendingEpoch, publisher: EpochPublisher | None) -> None:
        out = _Outgoing(pending, self._encoded.pop(pending.epoch, None))
        if self._published:
            keep = ~_already_published(pending.key_hashes, pending.sequences, self._published)
            self.skipped_records += int((~keep).sum())
            out = out.keep(keep)
        if out.encoded is None and self._encoder is not None:  # restored: not encoded yet
            out = replace(out, encoded=self._encode(out.records))
        if failpoints.armed("mid_publish") and len(out) > 1:  # half out, then the crash
            await self._write(publisher, out.keep(np.arange(len(out)) < len(out) // 2))
            await self.writer.flush()
            failpoints.hit("mid_publish")
        for attempt in range(1, _PUBLISH_ATTEMPTS + 1):
            try:
                await self._write(publisher, out)
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
                rest = ~_already_published(out.records.key_hashes, out.records.sequences,
                                           published)
                self.skipped_records += int((~rest).sum())
                out = out.keep(rest)
        # Step 2': every record of the epoch is acknowledged: now its commit.
        if publisher is not None:
            await publisher.commit_epoch(self.sink_id, pending.epoch)
        self.published_records += len(out)

    def _encode(self, records: PendingEpoch) -> Mapping[int, BuiltBatches]:
        assert self._encoder is not None
        batches = self._encoder.epoch_batches(self.sink_id)
        for batch, sequences in records.pushes:
            batches.add(batch, sequences)
        return batches.finish()

    async def _write(self, publisher: EpochPublisher | None, out: _Outgoing) -> None:
        records = out.records
        if out.encoded is not None and self._encoder is not None:
            self._encoder.write_encoded(out.encoded)
        elif publisher is not None:
            await publisher.write(records.batch, record_ids(self.sink_id, records.sequences))
        else:
            await self.writer.write(records.batch)


@dataclass(frozen=True)
class _Outgoing:
    """What of an epoch is to go out: its records (with their key hashes and sequences), and
    the writer's batches of them built already (None: the writer encodes them)."""

    records: PendingEpoch
    encoded: Mapping[int, BuiltBatches] | None

    def __len__(self) -> int:
        return len(self.records)

    def keep(self, rows: npt.NDArray[np.bool_]) -> _Outgoing:
        """Only the records ``rows`` marks (encoded again by the writer: rare, after a crash
        or a failed send)."""
        return _Outgoing(self.records.keep(rows), None)


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
