"""A sink's pending epochs in snapshots: kept by push, stored without their key hashes, and back
exactly as they were (writable, whatever they were stored from), old snapshots included."""

from __future__ import annotations

import asyncio
import copyreg
import io
import pickle
from pathlib import Path

import numpy as np

from operators.key_slots import hash_keys
from runtime.checkpoints.store import CheckpointStore, Manifest
from runtime.dataplane import sink_epochs
from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.dataplane.sink_epochs import EpochOutput, PendingEpoch
from runtime.dataplane.worker import WorkerSnapshot
from streamdag.batch import Batch
from streamdag.testing import ListSink

SINK = "5" * 64


def _push(first: int, count: int, *, read_only: bool = False) -> Batch:
    n = np.arange(first, first + count)
    batch = Batch.from_columns(ts=n, key=[f"k{i % 3}" for i in n.tolist()], value=n * 0.5)
    if read_only:  # as a Ray actor gets its input
        for array in (batch.ts, batch.key, batch.columns["value"]):
            array.flags.writeable = False
    return batch


def test_a_snapshots_pending_epochs_come_back_exactly_with_writable_arrays() -> None:
    output = EpochOutput(ListSink(), SINK)
    output.add(_push(0, 4, read_only=True))
    output.add(_push(4, 3))
    output.close_epoch(1)
    output.add(_push(7, 2, read_only=True))
    output.close_epoch(2)
    snapshot = NodeSnapshot(2, WorkerSnapshot(2, b"", ()), None, output.pending(),
                            output.sequences)

    restored = NodeSnapshot.from_bytes(snapshot.to_bytes()).sink_epochs

    assert [p.epoch for p in restored] == [1, 2]
    assert [len(p.pushes) for p in restored] == [2, 1]
    for before, after in zip(output.pending(), restored, strict=True):
        assert after.batch.to_records() == before.batch.to_records()
        assert after.sequences.tolist() == before.sequences.tolist()
        assert after.key_hashes.tolist() == hash_keys(before.batch.key).tolist()
        for batch, sequences in after.pushes:
            assert all(a.flags.writeable for a in (batch.ts, batch.key, batch.columns["value"],
                                                   sequences))
    assert restored[0].sequences.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert restored[1].sequences.tolist() == [2, 2]


def test_a_restored_sink_publishes_its_pending_epochs_from_a_snapshot() -> None:
    first = EpochOutput(ListSink(), SINK)
    first.add(_push(0, 5))
    first.close_epoch(1)
    data = pickle.dumps(first.pending(), protocol=4)
    sink = ListSink()
    second = EpochOutput(sink, SINK, pickle.loads(data), first.sequences,
                         restored_checkpoint=1)

    asyncio.run(second.publish_through(1))

    assert [r["ts"] for b in sink.batches for r in b.to_records()] == [0, 1, 2, 3, 4]
    assert second.pending_epochs() == []


def test_a_pending_epoch_stored_whole_by_an_earlier_version_still_loads() -> None:
    batch = _push(0, 3)
    state = {"epoch": 4, "batch": batch, "key_hashes": hash_keys(batch.key),
             "sequences": np.array([0, 1, 0])}

    stored = io.BytesIO()
    pickler = pickle.Pickler(stored, protocol=4)  # as pickle stored the frozen dataclass
    pickler.dispatch_table = {PendingEpoch: lambda _: (copyreg.__newobj__, (PendingEpoch,),
                                                       state)}
    pickler.dump(PendingEpoch(4, []))

    old = pickle.loads(stored.getvalue())

    assert (old.epoch, len(old), old.sequences.tolist()) == (4, 3, [0, 1, 0])
    assert old.batch.to_records() == batch.to_records()


def test_a_pending_epoch_stored_by_push_before_snapshot_parts_still_loads() -> None:
    batch = _push(0, 3)
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps((5, [(batch, np.array([0, 1, 0]))]), protocol=5,
                        buffer_callback=buffers.append)
    stored = io.BytesIO()
    pickler = pickle.Pickler(stored, protocol=4)  # as the previous __reduce__ stored it
    pickler.dispatch_table = {PendingEpoch: lambda _: (
        sink_epochs._loaded_pending_epoch, (data, [bytes(b.raw()) for b in buffers]))}
    pickler.dump(PendingEpoch(5, []))

    old = pickle.loads(stored.getvalue())

    assert (old.epoch, len(old), old.sequences.tolist()) == (5, 3, [0, 1, 0])
    assert old.batch.to_records() == batch.to_records()


def test_a_snapshot_in_parts_writes_the_pending_arrays_uncopied_and_copies_the_rest() -> None:
    output = EpochOutput(ListSink(), SINK)
    output.add(_push(0, 4, read_only=True))
    output.add(_push(4, 3))
    output.close_epoch(1)
    snapshot = NodeSnapshot(1, WorkerSnapshot(1, b"state", (None,)), None, output.pending(),
                            output.sequences)
    pending_arrays = output.pending()[0].arrays()

    parts = snapshot.to_parts()
    output.add(_push(7, 2))  # the sink runs on: its key sequences move, after the copy

    assert [id(memoryview(part).obj) for part in parts[2:]] == [id(a) for a in pending_arrays]
    restored = NodeSnapshot.from_bytes(b"".join(parts))
    assert restored.worker.logic == b"state"
    [epoch] = restored.sink_epochs
    assert epoch.batch.to_records() == output.pending()[0].batch.to_records()
    assert epoch.sequences.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert all(array.flags.writeable for array in epoch.arrays())
    assert restored.sink_sequences is not None
    assert restored.sink_sequences.assign(np.array([b"k0", b"k1"])).tolist() == [3, 2]


def test_a_snapshot_in_parts_is_stored_and_checked_as_one_file(tmp_path: Path) -> None:
    output = EpochOutput(ListSink(), SINK)
    output.add(_push(0, 5))
    output.close_epoch(3)
    snapshot = NodeSnapshot(3, WorkerSnapshot(3, b"", ()), {0: 5}, output.pending(),
                            output.sequences)
    store = CheckpointStore(tmp_path.as_uri())
    parts = snapshot.to_parts()

    ref = store.write_snapshot("r", 3, "n", parts)
    store.write_manifest(Manifest("r", 3, {"n": ref}))

    loaded = store.latest("r")
    assert loaded is not None
    data = loaded.snapshots["n"]
    assert data == b"".join(parts) and ref.size == len(data)
    assert NodeSnapshot.from_bytes(data).source_position == {0: 5}
    plain = NodeSnapshot.from_bytes(snapshot.to_bytes())  # a snapshot stored whole loads too
    assert plain.sink_epochs[0].batch.to_records() == snapshot.sink_epochs[0].batch.to_records()


def test_a_large_worker_state_is_a_part_of_its_own_and_comes_back_as_bytes() -> None:
    state = bytes(range(256)) * 1024
    snapshot = NodeSnapshot(4, WorkerSnapshot(4, state, (None,)), {0: 9})

    parts = snapshot.to_parts()

    assert [memoryview(part).obj is state for part in parts[2:]] == [True]
    restored = NodeSnapshot.from_bytes(b"".join(parts))
    assert type(restored.worker.logic) is bytes and restored.worker.logic == state
    assert restored.source_position == {0: 9}
