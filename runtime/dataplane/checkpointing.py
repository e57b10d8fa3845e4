"""One node's part in checkpoints: its snapshot at a barrier, persisted off the hot path.

The host calls ``take`` when a barrier has passed its worker (all inputs aligned, DESIGN.md §7
step 3): the worker's copy of its state, a source's offsets after the last record it emitted,
and a sink's pending epochs become one ``NodeSnapshot``, pickled at once (so nothing that runs
on can change it) and written to the store in a worker thread. The arrays of the pending
epochs, most of a sink's snapshot, are not copied to be pickled: nothing writes them once
their epoch closed, so they go to the store as they are, after the pickle of the rest, in
the same file (``NodeSnapshot.to_parts``). The coordinator asks ``done``
for the snapshot's reference (the acknowledgement) and, once the manifest is written, the
host's ``commit`` lets an exactly-once sink publish what the checkpoint completed.

Snapshots are pickled: they are written and read only by this cluster's own nodes, in the
store the cluster is configured with, and are checked against the manifest's SHA-256.

>>> import asyncio
>>> from runtime.checkpoints.store import CheckpointStore
>>> from runtime.dataplane.worker import WorkerSnapshot
>>> target = CheckpointTarget(CheckpointStore("memory://doctest-node"), "r")
>>> async def one_checkpoint():
...     node = NodeCheckpoints("n1", target)
...     node.take(1, WorkerSnapshot(1, b"state", (None,)), None)
...     ref = await node.done(1)
...     data = target.store.fs.cat_file(ref.path)
...     return NodeSnapshot.from_bytes(data).worker.logic
>>> asyncio.run(one_checkpoint())
b'state'
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.checkpoints import failpoints
from runtime.checkpoints.quiet import QuietWatch
from runtime.checkpoints.store import CheckpointStore, SnapshotRef
from runtime.dataplane.out_of_band import framed, unframed
from runtime.dataplane.sink_epochs import EpochOutput, KeySequences, PendingEpoch
from runtime.dataplane.worker import WorkerSnapshot
from streamdag.connector import SinkWriter, SourceReader
from streamdag.errors import StreamdagError

__all__ = [
    "CheckpointAbandonedError",
    "CheckpointTarget",
    "NodeCheckpoints",
    "NodeSnapshot",
    "restore_source",
]


#: How a snapshot stored as parts (``NodeSnapshot.to_parts``) starts; a plain pickle, as
#: snapshots were stored before, starts with its protocol's opcode.
_PARTS_MAGIC = b"streamdag-snapshot-parts-1\n"


#: A worker's state from this size on is a part of its own in a stored snapshot.
_OUT_OF_BAND_BYTES = 1 << 16


class _PartsPickler(pickle.Pickler):
    """Hands a large worker state (``bytes``) to the buffer callback, as protocol 5 hands
    arrays (a pickler is not asked how to reduce ``bytes`` themselves)."""

    def reducer_override(self, obj: object) -> Any:
        """A worker snapshot with a large state: the rest, and the state from its buffer."""
        if isinstance(obj, WorkerSnapshot) and len(obj.logic) >= _OUT_OF_BAND_BYTES:
            return _with_logic, (dataclasses.replace(obj, logic=b""),
                                 pickle.PickleBuffer(obj.logic))
        return NotImplemented


def _with_logic(worker: WorkerSnapshot, logic: Any) -> WorkerSnapshot:
    """``worker`` with the state ``_PartsPickler`` stored apart (a buffer of the file)."""
    return dataclasses.replace(worker, logic=bytes(logic))


class CheckpointAbandonedError(StreamdagError):
    """A checkpoint this node was asked about was abandoned (a later one completed first)."""


@dataclass(frozen=True)
class CheckpointTarget:
    """Where a node's snapshots go (store and region), and whether its output is exactly-once."""

    store: CheckpointStore
    region: str
    exactly_once: bool = True


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything a node continues from: worker state, source offsets, a sink's pending epochs."""

    checkpoint_id: int
    worker: WorkerSnapshot
    #: Sources: per partition, the offset after the last record emitted before the barrier.
    source_position: dict[int, int] | None = None
    #: Exactly-once sinks: the output of epochs not yet published, and each key's next
    #: output sequence (what the ids of the records to come are made of).
    sink_epochs: tuple[PendingEpoch, ...] = field(default_factory=tuple)
    sink_sequences: KeySequences | None = None
    #: Sources: per partition, the newest event time read before the barrier (a restored
    #: source that stays quiet needs it to release its last events once idle).
    source_event_times: dict[int, int | None] | None = None

    def to_bytes(self) -> bytes:
        """The snapshot as one pickle (``from_bytes`` reads it, and ``to_parts`` joined).

        Protocol 4: protocol 5 would hand numpy arrays back read-only, backed by the bytes.
        """
        return pickle.dumps(self, protocol=4)

    def to_parts(self) -> list[bytes | memoryview]:
        """The snapshot as stored: parts written one after another into one file.

        Left out of the pickle (protocol 5, out of band) and parts of their own, uncopied:
        the pending epochs' arrays (nothing writes them once their epoch closed) and a large
        worker state (``bytes``, which cannot change). Every other array is copied into the
        pickle. The first part says what the file is and where each part starts
        (``out_of_band.framed``).
        """
        pending = {id(array) for epoch in self.sink_epochs for array in epoch.arrays()}
        views: list[memoryview] = []

        def in_band(buffer: pickle.PickleBuffer) -> bool:
            view = buffer.raw()
            if not isinstance(view.obj, bytes) and id(view.obj) not in pending:
                return True
            views.append(view)
            return False

        out = io.BytesIO()
        _PartsPickler(out, protocol=5, buffer_callback=in_band).dump(self)
        data = out.getvalue()
        header, *parts = framed(data, views)
        return [_PARTS_MAGIC + header, *parts]

    def writable_copy(self) -> NodeSnapshot:
        """A deep copy whose arrays can be written (Ray hands arguments over read-only)."""
        return NodeSnapshot.from_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeSnapshot:
        """The snapshot ``to_parts`` (or ``to_bytes``) stored, already checked against its
        checksum; its arrays writable."""
        if data.startswith(_PARTS_MAGIC):
            whole = memoryview(bytearray(data))  # one copy, writable: the arrays' memory
            pickled, buffers = unframed(whole[len(_PARTS_MAGIC):])
            snapshot = pickle.loads(pickled, buffers=buffers)
        else:
            snapshot = pickle.loads(data)
        if not isinstance(snapshot, cls):
            raise StreamdagError(f"a stored node snapshot holds a {type(snapshot).__name__}")
        return snapshot


class NodeCheckpoints:
    """The checkpoints of one node: requested barriers, persisted snapshots, commits."""

    def __init__(self, node_id: str, target: CheckpointTarget | None,
                 restored: NodeSnapshot | None = None) -> None:
        self.node_id = node_id
        self.target = target
        self.restored = restored
        #: Sources: the checkpoint whose barrier to inject between two reads.
        self.requested: int | None = None
        #: Sources: whether they went quiet since their last barrier (the coordinator asks).
        self.quiet = QuietWatch()
        #: The newest checkpoint this node took part in (or was restored from); 0: none.
        self.last_checkpoint = restored.checkpoint_id if restored is not None else 0
        self.output: EpochOutput | None = None
        self._persisted: dict[int, asyncio.Future[SnapshotRef]] = {}

    @property
    def enabled(self) -> bool:
        """Whether this node takes part in checkpoints at all."""
        return self.target is not None

    def sink_output(self, writer: SinkWriter,
                    on_error: Callable[[Exception], None] | None = None) -> EpochOutput | None:
        """An exactly-once sink's epochs over ``writer`` (None: publish at once); ``on_error``
        is told what a background publish raised."""
        if self.target is None or not self.target.exactly_once:
            return None
        restored = self.restored
        if restored is None:
            self.output = EpochOutput(writer, self.node_id, on_error=on_error)
        else:
            self.output = EpochOutput(writer, self.node_id, restored.sink_epochs,
                                      restored.sink_sequences,
                                      restored_checkpoint=restored.checkpoint_id,
                                      on_error=on_error)
        self.output.start()
        return self.output

    async def publish_restored(self) -> None:
        """A restored sink publishes its pending epochs (their checkpoint completed) first."""
        if self.output is not None and self.restored is not None:
            await self.output.publish_through(self.restored.checkpoint_id)

    def take(self, checkpoint_id: int, worker: WorkerSnapshot,
             source_position: dict[int, int] | None,
             source_event_times: dict[int, int | None] | None = None) -> None:
        """Barrier ``checkpoint_id`` passed: copy the node's state now, persist it off the loop."""
        if self.target is None:
            return
        failpoints.hit("before_snapshot")
        self.last_checkpoint = checkpoint_id
        if self.output is not None:
            self.output.close_epoch(checkpoint_id)
        output = self.output
        snapshot = NodeSnapshot(checkpoint_id, worker, source_position,
                                output.pending() if output is not None else (),
                                output.sequences if output is not None else None,
                                source_event_times)
        parts = snapshot.to_parts()  # now: what runs on cannot change what is written
        future = self._future(checkpoint_id)
        task = asyncio.ensure_future(asyncio.to_thread(
            self.target.store.write_snapshot, self.target.region, checkpoint_id,
            self.node_id, parts))
        task.add_done_callback(lambda done: _settle(future, done))

    async def done(self, checkpoint_id: int) -> SnapshotRef:
        """Once this node's snapshot of ``checkpoint_id`` is persisted: where it lies."""
        ref = await asyncio.shield(self._future(checkpoint_id))
        failpoints.hit("after_persist_before_ack")
        return ref

    async def commit(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete: its epochs go out in the background
        (raises what an earlier publish raised); older checkpoints are forgotten."""
        for earlier in [cid for cid in self._persisted if cid <= checkpoint_id]:
            future = self._persisted.pop(earlier)
            if not future.done():
                future.set_exception(CheckpointAbandonedError(
                    f"checkpoint {earlier} of node {self.node_id[:12]} was abandoned"))
                future.exception()  # retrieved: nobody may be waiting any more
        if self.output is not None:
            self.output.commit(checkpoint_id)

    def _future(self, checkpoint_id: int) -> asyncio.Future[SnapshotRef]:
        if checkpoint_id not in self._persisted:
            self._persisted[checkpoint_id] = asyncio.get_running_loop().create_future()
        return self._persisted[checkpoint_id]


def _settle(future: asyncio.Future[SnapshotRef], task: asyncio.Future[SnapshotRef]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.set_exception(CheckpointAbandonedError("persisting the snapshot was cancelled"))
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())


async def restore_source(source: SourceReader, snapshot: NodeSnapshot) -> None:
    """Continue a source from its checkpoint: its offsets, and the newest event times read."""
    if snapshot.source_position is None:
        return
    seek_to: Any = getattr(source, "seek_to", None)
    if not callable(seek_to):
        raise StreamdagError(f"cannot restore a {type(source).__name__} to offsets "
                             f"{snapshot.source_position}: it has no seek_to")
    await seek_to(snapshot.source_position)
    restore: Any = getattr(source, "restore_event_times", None)
    if snapshot.source_event_times and callable(restore):
        restore(snapshot.source_event_times)
