"""An exactly-once sink publishes completed epochs in the background (DESIGN.md §7): the commit
call returns at once, epochs go out in order, each one's commit record after its records, a
snapshot taken meanwhile still holds the epoch in flight, and a publish that falls behind holds
the sink's input back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

import streamdag as sd
from connectors.record_ids import parse_record_id
from runtime.checkpoints.store import CheckpointStore
from runtime.dataplane.checkpointing import CheckpointTarget, NodeCheckpoints, NodeSnapshot
from runtime.dataplane.host import NodeHost
from runtime.dataplane.messages import Barrier, EndOfStream, Envelope
from runtime.dataplane.sink_epochs import EpochOutput
from runtime.dataplane.worker import WorkerSnapshot
from streamdag.batch import Batch
from streamdag.testing import ListSink

SINK = "7" * 64


def _batch(first: int, count: int) -> Batch:
    n = np.arange(first, first + count)
    return Batch.from_columns(ts=n, key=[f"k{i % 2}" for i in n.tolist()], value=n * 1.0)


class GatedSink(ListSink):
    """A ListSink whose flushes wait for ``gate`` and which logs every call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.log: list[str] = []
        self.fail_flush: Exception | None = None
        self.discarded = 0

    async def write(self, batch: Batch, record_ids: Sequence[bytes] | None = None) -> None:
        self.log.append(f"write {batch.ts.tolist()[0]}..{batch.ts.tolist()[-1]}")
        await super().write(batch, record_ids)

    async def flush(self) -> None:
        await self.gate.wait()
        if self.fail_flush is not None:
            raise self.fail_flush
        self.log.append("flush")
        await super().flush()

    async def commit_epoch(self, sink_id: str, epoch: int) -> None:
        self.log.append(f"commit {epoch}")
        await super().commit_epoch(sink_id, epoch)

    def discard_pending(self) -> None:
        self.discarded += 1


async def _until(condition: object, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)


async def test_commit_returns_at_once_and_epochs_go_out_in_order_each_commit_last() -> None:
    sink = GatedSink()
    output = EpochOutput(sink, SINK)
    for epoch, first in ((1, 0), (2, 4), (3, 8)):
        output.add(_batch(first, 4))
        output.close_epoch(epoch)

    output.commit(1)  # returns without waiting for the (held) flush
    output.commit(2)
    await _until(lambda: sink.log == ["write 0..3"])
    assert output.pending_epochs() == [1, 2, 3]  # epoch 1 is in flight: still pending
    assert output.behind() == 2

    sink.gate.set()
    await output.idle()
    assert sink.log == ["write 0..3", "flush", "commit 1", "write 4..7", "flush", "commit 2"]
    assert output.pending_epochs() == [3]  # its checkpoint is not complete
    assert [parse_record_id(i)[1] for i in sink.record_ids] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [r["value"] for r in sink.records()] == [float(v) for v in range(8)]


async def test_a_snapshot_taken_while_an_epoch_goes_out_still_holds_it() -> None:
    sink = GatedSink()
    node = NodeCheckpoints(SINK, CheckpointTarget(CheckpointStore("memory://bg-snap"), "r"))
    output = node.sink_output(sink)
    assert output is not None
    output.add(_batch(0, 4))
    node.take(1, WorkerSnapshot(1, b"", (None,)), None)
    await node.done(1)
    await node.commit(1)  # returns while epoch 1 waits for its flush
    output.add(_batch(4, 2))
    node.take(2, WorkerSnapshot(2, b"", (None,)), None)
    ref = await node.done(2)

    assert node.target is not None
    snapshot = NodeSnapshot.from_bytes(node.target.store.fs.cat_file(ref.path))
    assert [p.epoch for p in snapshot.sink_epochs] == [1, 2]
    assert [len(p.batch) for p in snapshot.sink_epochs] == [4, 2]
    sink.gate.set()
    await output.idle()
    assert sink.commits == [(SINK, 1, 4)]


async def test_publishing_that_falls_behind_holds_the_input_back() -> None:
    sink = GatedSink()
    output = EpochOutput(sink, SINK, max_behind=1)
    for epoch in (1, 2):
        output.add(_batch(10 * epoch, 3))
        output.close_epoch(epoch)
        output.commit(epoch)

    room = asyncio.ensure_future(output.room())
    await asyncio.sleep(0.01)
    assert not room.done()  # two committed epochs wait, one is allowed
    sink.gate.set()
    await asyncio.wait_for(room, 5)
    await output.idle()
    assert output.behind() == 0
    assert [c[1] for c in sink.commits] == [1, 2]


async def test_a_failed_background_publish_is_reported_and_stops_every_later_epoch() -> None:
    sink = GatedSink()
    sink.fail_flush = RuntimeError("broker gone")
    reported: list[Exception] = []
    output = EpochOutput(sink, SINK, on_error=reported.append)
    for epoch in (1, 2):
        output.add(_batch(10 * epoch, 3))
        output.close_epoch(epoch)
    output.commit(2)
    sink.gate.set()

    with pytest.raises(RuntimeError, match="broker gone"):
        await output.idle()
    assert [str(e) for e in reported] == ["broker gone"]
    assert sink.commits == []  # no commit without its records acknowledged
    assert output.pending_epochs() == [1, 2]  # both stay for the restored sink
    with pytest.raises(RuntimeError, match="broker gone"):
        output.commit(3)  # the coordinator's commit fails: the region recovers


async def test_closing_cuts_a_hung_publish_short_and_keeps_its_records_from_going_out() -> None:
    sink = GatedSink()  # the gate never opens: the broker hangs
    output = EpochOutput(sink, SINK)
    output.add(_batch(0, 3))
    output.close_epoch(1)
    output.commit(1)
    await _until(lambda: sink.log == ["write 0..2"])

    await output.close(timeout_s=0.05)
    assert sink.discarded == 1
    assert sink.commits == []
    assert output.pending_epochs() == [1]


async def test_end_of_stream_returns_only_once_everything_is_out() -> None:
    sink = GatedSink()
    sink.gate.set()
    output = EpochOutput(sink, SINK)
    output.add(_batch(0, 2))
    output.close_epoch(1)
    output.commit(1)
    output.add(_batch(2, 2))
    await output.publish_rest(2)
    assert [c[1] for c in sink.commits] == [1, 2]
    assert output.pending_epochs() == []
    assert len(sink.records()) == 4


def _push(seq: int, *payloads: object) -> Envelope:
    first, *trailing = payloads
    return Envelope("in", 0, seq, first, 0.0, tuple(trailing))  # type: ignore[arg-type]


async def test_a_sink_nodes_commit_returns_before_its_epoch_is_out_and_it_finishes_after() -> None:
    sink = GatedSink()
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    config = ticks.to_topic("out", name="out").config()
    host = NodeHost(config, sink=lambda: sink, checkpoints=CheckpointTarget(
        CheckpointStore("memory://bg-host"), "r"))
    await host.ready()
    host.connect_input("in", 0)
    ticks_batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[1.0, 2.0])
    await host.push(_push(0, ticks_batch, Barrier(1)))
    await host.checkpoint_done(1)

    await asyncio.wait_for(host.commit_checkpoint(1), 1)  # the flush is held: not waited for
    await asyncio.wait_for(host.push(_push(1, Batch.from_columns(ts=[3], key=["a"],
                                                                 price=[3.0]))), 1)
    ending = asyncio.ensure_future(host.push(_push(2, EndOfStream())))
    finished = asyncio.ensure_future(host.wait_finished())
    await _until(lambda: sink.log == ["write 1..2"])
    assert not finished.done()  # end of stream: finished only once everything is out
    assert not ending.done()

    sink.gate.set()
    assert await asyncio.wait_for(finished, 5)
    await asyncio.wait_for(ending, 5)
    assert sink.log == ["write 1..2", "flush", "commit 1", "write 3..3", "flush", "commit 2"]
    await host.stop()
