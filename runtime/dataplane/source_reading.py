"""A source node's reading: the loop from its reader to its subscribers, and its rewind.

A mixin of ``NodeHost`` (it uses the host's worker, deliveries, channels and state): the
host starts the loop last, once everything below it is ready (``start_source``); a host that
holds stops it and rewinds the reader to what its subscribers took (``_settle_source``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from runtime.checkpoints.quiet import SourceQuiet
from runtime.dataplane.messages import (
    IDLE,
    Barrier,
    EndOfStream,
    PartitionMarks,
    Payload,
    Watermark,
)
from runtime.dataplane.startup_phases import StartupPhases
from runtime.dataplane.stats import observe_event_ages
from runtime.dataplane.worker import NodeWorker
from streamdag.cancellation import cancel_and_wait
from streamdag.connector import SourceChunk

if TYPE_CHECKING:
    from runtime.dataplane.channels import Channel
    from runtime.dataplane.checkpointing import NodeCheckpoints
    from runtime.dataplane.deliveries import DeliveryLedger
    from runtime.dataplane.host_contract import RuntimeSettings
    from runtime.dataplane.source_pacing import ReadPacing
    from streamdag.connector import SourceReader
    from streamdag.operator import NodeConfig

__all__ = ["SourceReading", "chunk_payloads"]

#: Seconds a held source waits for its pushes in flight to settle before it rewinds.
SETTLE_TIMEOUT_S = 5.0


def chunk_payloads(worker: NodeWorker, chunk: SourceChunk) -> list[Payload]:
    """What one read of a source sends on, in order: the batch, its partitions' marks, the
    watermark, idleness, end of stream; the records it dropped as late count in the stats."""
    payloads: list[Payload] = []
    if len(chunk.batch):
        observe_event_ages(*worker.stats.read_ages, chunk.batch.ts)
        payloads.extend(worker.feed(0, chunk.batch))
    if chunk.partition_marks:  # for the keyed nodes reading it: after the batch
        payloads.append(PartitionMarks(chunk.partition_marks))
    if chunk.late:
        worker.stats.late_events += chunk.late
        worker.stats.late_dropped += chunk.late
    if chunk.watermark is not None:
        payloads.extend(worker.feed(0, Watermark(chunk.watermark)))
    if chunk.idle:
        payloads.extend(worker.feed(0, IDLE))
    if chunk.finished:
        payloads.extend(worker.feed(0, EndOfStream()))
    return payloads


class SourceReading:
    """A source node's read loop and rewind (a mixin of ``NodeHost``)."""

    if TYPE_CHECKING:
        config: NodeConfig
        settings: RuntimeSettings
        worker: NodeWorker
        checkpointing: NodeCheckpoints
        source: SourceReader | None
        _phases: StartupPhases
        _pacing: ReadPacing
        _source_task: asyncio.Task[None] | None
        _stopping: bool
        _held: Exception | None
        _channels: dict[str, Channel]
        _deliveries: DeliveryLedger

        async def _emit(self, payloads: list[Payload],
                        position: dict[int, int] | None = None) -> None: ...

        async def _step_published(self) -> None: ...

        def _hold(self, error: Exception) -> None: ...

    async def start_source(self) -> None:
        """Start reading the source (called last, once everything below is ready)."""
        if self.source is None:
            raise RuntimeError(f"node {self.config.name!r} has no source to start")
        if self._source_task is None and self._held is None:
            self._phases.source_started = StartupPhases.now()
            self._source_task = asyncio.create_task(self._run_source())

    async def _run_source(self) -> None:
        assert self.source is not None
        try:
            while not self._stopping and self._held is None:
                chunk = await self.source.read(self.settings.max_batch_records,
                                               self._pacing.linger_s)
                self._pacing.observe(len(chunk.batch))
                if self._held is not None:
                    return  # read after the node stopped: the rewind gives it back
                position = dict(self.source.position())
                if len(chunk.batch):
                    self._phases.first_read = self._phases.first_read or StartupPhases.now()
                await self._emit(chunk_payloads(self.worker, chunk), position)
                await self._step_published()
                if chunk.finished:
                    return
                requested, self.checkpointing.requested = self.checkpointing.requested, None
                if requested is not None:  # between two reads: the cut is at ``position``
                    await self._emit(self.worker.feed(0, Barrier(requested)), position)
                    await self._step_published()
                self.checkpointing.quiet.read(records=len(chunk.batch), idle=chunk.idle,
                                              barrier=requested)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._hold(exc)

    async def source_quiet(self, known: SourceQuiet | None) -> SourceQuiet:
        """Sources: whether they went quiet since their last barrier, once that differs from
        ``known`` (a long poll: the coordinator checkpoints at once when all are quiet)."""
        return await self.checkpointing.quiet.changed(known)

    async def _settle_source(self) -> None:
        # Step 1: the reading loop stops, wherever it is (a read's records are given back).
        await cancel_and_wait(self._source_task)
        # Step 2: pushes in flight settle (acknowledged or failed): the delivered position is
        # final unless a subscriber hangs.
        pending = [ack for channel in self._channels.values() for ack in channel.pending()]
        if pending:
            await asyncio.wait(pending, timeout=SETTLE_TIMEOUT_S)
        # Step 3: the reader continues from there, and fetches nothing more.
        await self._rewind_source()

    async def _rewind_source(self) -> None:
        seek_to: Any = getattr(self.source, "seek_to", None)
        assert self.source is not None
        delivered = self._deliveries.position
        if callable(seek_to) and self.source.position() != delivered:
            await seek_to(delivered)
        pause: Any = getattr(self.source, "pause", None)
        if self._held is not None and callable(pause):
            pause()
