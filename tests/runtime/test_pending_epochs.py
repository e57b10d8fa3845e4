"""A sink's pending epochs in snapshots: kept by push, stored without their key hashes, and back
exactly as they were (writable, whatever they were stored from), old snapshots included."""

from __future__ import annotations

import asyncio
import copyreg
import io
import pickle

import numpy as np

from operators.key_slots import hash_keys
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
        for batch, _, sequences in after.pushes:
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
