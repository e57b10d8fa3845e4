"""NodeHost: the async shell around a NodeWorker — drain loop, subscribers, source and sink I/O.

It is a plain class: the local runner uses it directly, the Ray runner wraps it with
``ray.remote`` so that one actor hosts one node.

A host that cannot deliver its output (a subscriber died, failed or holds) never drops it: it
holds. It stops sending, refuses every push from then on (so its own producers hold in turn),
and a source stops reading and rewinds its reader to the offset after the last record every
subscriber acknowledged, so what was not delivered stays in Kafka. ``error`` says why, and
``wait_finished`` raises it. Only a subscriber removed on purpose (``unsubscribe``) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import logging
import time
from typing import Any

from runtime.checkpoints import failpoints
from runtime.checkpoints.store import SnapshotRef
from runtime.dataplane.channels import Channel, Shipment, Target
from runtime.dataplane.checkpointing import (
    CheckpointTarget,
    NodeCheckpoints,
    NodeSnapshot,
    restore_source,
)
from runtime.dataplane.deliveries import Delivery, DeliveryLedger
from runtime.dataplane.failures import (
    NodeHeldError,
    SubscriberFailedError,
    failure_cause,
    followed_a_failure,
)
from runtime.dataplane.host_contract import NodeReport, RuntimeSettings
from runtime.dataplane.inbox import Inbox
from runtime.dataplane.messages import (
    Barrier,
    EndOfStream,
    Envelope,
    Payload,
)
from runtime.dataplane.sink_epochs import EpochOutput
from runtime.dataplane.sink_publishing import SinkPublisher
from runtime.dataplane.sockets import DataPort, node_address
from runtime.dataplane.source_pacing import ReadPacing
from runtime.dataplane.source_reading import SourceReading
from runtime.dataplane.startup_phases import CODE_LOADED_AT, StartupPhases, process_start_time
from runtime.dataplane.stats import (
    NodeStats,
    add_source_figures,
    resident_bytes_of,
)
from runtime.dataplane.warming import warm_up_while_opening
from runtime.dataplane.worker import NodeWorker
from streamdag.batch import Batch
from streamdag.cancellation import cancel_and_wait
from streamdag.connector import SinkFactory, SinkWriter, SourceFactory, SourceReader
from streamdag.operator import NodeConfig

__all__ = [
    "NodeHeldError",
    "NodeHost",
    "NodeReport",
    "RuntimeSettings",
    "SubscriberFailedError",
    "followed_a_failure",
]

_log = logging.getLogger(__name__)


class NodeHost(SourceReading):
    """Hosts one node: processes pushes in order through one drain loop, fans output out."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        settings: RuntimeSettings | None = None,
        source: SourceFactory | None = None,
        sink: SinkFactory | None = None,
        capture: bool = False,
        incarnation: int = 0,
        snapshot: NodeSnapshot | bytes | None = None,
        checkpoints: CheckpointTarget | None = None,
    ) -> None:
        self._phases = StartupPhases(process_start_time(), StartupPhases.now(), CODE_LOADED_AT)
        self.config = config
        self.settings = settings or RuntimeSettings()
        restored = snapshot.writable_copy() if isinstance(snapshot, NodeSnapshot) else None
        worker_state = restored.worker if restored is not None else snapshot
        assert not isinstance(worker_state, NodeSnapshot)
        self.worker = NodeWorker(config, snapshot=worker_state, incarnation=incarnation)
        self.incarnation = incarnation
        #: This node's part in checkpoints (inert when ``checkpoints`` is None).
        self.checkpointing = NodeCheckpoints(config.instance_id, checkpoints, restored)
        self._output: EpochOutput | None = None
        #: An at-least-once sink's batches, published off the drain loop.
        self._publisher: SinkPublisher | None = None
        #: Publications of the batches the current step handed to the sink.
        self._publications: list[asyncio.Future[None]] = []
        self._source_factory = source
        self._sink_factory = sink
        self.source: SourceReader | None = None
        self.sink: SinkWriter | None = None
        self.captured: list[Batch] = []
        self._capture = capture
        self._channels: dict[str, Channel] = {}
        #: Where pushes come in over data connections of their own (``open_data_port``).
        self._data_port: DataPort | None = None
        self._queue: Inbox[tuple[Envelope, asyncio.Future[None]]] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        #: Held while the worker's output of one step is emitted, so that output of the drain
        #: loop and of ``unfollow`` never interleaves.
        self._turn = asyncio.Lock()
        self._source_task: asyncio.Task[None] | None = None
        self._finished: asyncio.Event | None = None
        self._stopping = False
        #: Why this node holds (None while it runs normally).
        self._held: Exception | None = None
        self._settle_task: asyncio.Task[None] | None = None
        #: Steps whose output some subscriber has not acknowledged yet, oldest first.
        self._deliveries = DeliveryLedger()
        #: Sources: no linger on a thin stream, batching on a thick one.
        self._pacing = ReadPacing(linger_s=self.settings.linger_s,
                                  thick_records=self.settings.linger_from_records)
        #: Backpressure waited on channels that have since been removed.
        self._retired_wait_seconds = 0.0
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def ready(self) -> str:
        """Load kernels while the connectors open, start the drain loop; the node id once ready."""
        if self._queue is None:
            self._queue = Inbox()
            self._finished = asyncio.Event()
            self._drain_task = asyncio.create_task(self._drain())
            await warm_up_while_opening(self.worker, (self._source_factory, self._sink_factory),
                                        self._open_connectors, self._phases)
        self._phases.ready = self._phases.ready or StartupPhases.now()
        return self.config.node_id

    async def _open_connectors(self) -> None:
        if self._sink_factory is not None:
            self.sink = self._sink_factory()
            await self.sink.open()
            # A restored sink publishes what its checkpoint completed before it is ready.
            self._output = self.checkpointing.sink_output(self.sink, self._hold)
            if self._output is None:
                self._publisher = SinkPublisher(self.sink, self.worker.stats)
            await self.checkpointing.publish_restored()
        if self._source_factory is not None:
            self.source = self._source_factory()
            await self.source.open()
            restored = self.checkpointing.restored
            if restored is not None:
                await restore_source(self.source, restored)
            self._deliveries.position = dict(self.source.position())

    def startup_phases(self) -> StartupPhases:
        """When this node passed each start-up step (see ``StartupPhases``)."""
        return dataclasses.replace(self._phases)

    async def wait_finished(self) -> bool:
        """Block until EndOfStream went through this node (or it failed); True when finished."""
        assert self._finished is not None, "call ready() first"
        await self._finished.wait()
        if self.error is not None:
            raise self.error.with_traceback(None)  # asked again and again: keep it short
        return True

    def is_finished(self) -> bool:
        """Whether EndOfStream went through this node, or it stopped (``error`` says why)."""
        return self._finished is not None and self._finished.is_set()

    async def stop(self) -> None:
        """Stop reading and processing; close connectors (a source at what was delivered)."""
        self._stopping = True
        await cancel_and_wait(self._source_task, self._drain_task, self._settle_task)
        if self._data_port is not None:  # pushes in flight fail at their senders
            await self._data_port.close()
        if self.source is not None:
            with contextlib.suppress(Exception):  # closing must not fail on a broken reader
                await self._rewind_source()
            await self.source.close()
        if self._publisher is not None:
            await self._publisher.close()
        if self._output is not None:  # committed epochs get a moment to go out
            await self._output.close()
        if self.sink is not None:
            await self.sink.close()

    async def hold(self, cause: str) -> None:
        """Stop reading and sending, and refuse pushes from now on (e.g. the region failed).

        Returns once a source has stopped reading and rewound to what was delivered.
        """
        self._hold(NodeHeldError(f"node {self.config.name!r} holds its input: {cause}"))
        if self._settle_task is not None:
            await asyncio.wait([self._settle_task])

    # -- checkpoints ----------------------------------------------------------------------
    async def inject_barrier(self, checkpoint_id: int) -> bool:
        """Sources: emit ``Barrier(checkpoint_id)`` after the current read; False if finished."""
        if self.source is None or self.is_finished() or self._held is not None:
            return False
        self.checkpointing.requested = checkpoint_id
        return True

    async def retarget_checkpoints(self, region: str) -> None:
        """From the next barrier on, put snapshots under ``region`` (the node's region merged
        with another or split)."""
        target = self.checkpointing.target
        if target is not None:
            self.checkpointing.target = dataclasses.replace(target, region=region)

    async def checkpoint_done(self, checkpoint_id: int) -> SnapshotRef:
        """Once this node's snapshot of ``checkpoint_id`` is persisted (its acknowledgement)."""
        try:
            return await self.checkpointing.done(checkpoint_id)
        except failpoints.InjectedFaultError as fault:
            self._hold(fault)  # as a crash right there would: the node is gone
            raise

    async def commit_checkpoint(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete: an exactly-once sink publishes its epochs.

        A sink that cannot publish fails (and holds): the region recovers, and the restored
        sink publishes what did not get out.
        """
        try:
            await self.checkpointing.commit(checkpoint_id)
        except Exception as exc:
            self._hold(exc)
            raise

    def arm_failpoint(self, step: str) -> None:
        """Tests: make the next pass through ``step`` in this node's process fail."""
        failpoints.arm(step)

    def delivered_position(self) -> dict[int, int]:
        """Sources: per partition, the offset after the last record every subscriber took."""
        return dict(self._deliveries.position)

    # -- wiring ---------------------------------------------------------------------------
    def connect_input(self, edge: str, input_index: int) -> None:
        """Expect pushes on ``edge`` for input ``input_index``."""
        self.worker.connect(edge, input_index)

    def follow(self, edge: str, origin: str) -> int:
        """A tag query: expect pushes on ``edge`` from node ``origin`` as a new input.

        Returns the incarnation its pushes must carry at least (this node's): a node it
        follows may have been created before this one was restored.
        """
        self.worker.follow(edge, origin)
        return self.incarnation

    async def unfollow(self, edge: str) -> None:
        """A tag query lets go of ``edge``, once its producer no longer sends on it."""
        async with self._turn:
            await self._emit(self.worker.unfollow(edge))

    async def keep_following(self, edges: list[str]) -> None:
        """A restored tag query lets go of every edge but ``edges``."""
        async with self._turn:
            await self._emit(self.worker.keep_following(edges))

    def followed(self) -> dict[str, str]:
        """A tag query: the origin of every edge it follows."""
        return dict(self.worker.origins)

    async def open_data_port(self, host: str | None = None) -> tuple[str, int]:
        """Take pushes over data connections (``SocketTarget``) too; the address to send to.

        ``host`` defaults to the address other Ray nodes reach this process at.
        """
        if self._data_port is None:
            self._data_port = DataPort(self.push_nowait)
        return await self._data_port.open(host or node_address())

    def subscribe(self, edge: str, target: Target, incarnation: int = 0) -> None:
        """Send this node's output to ``target`` over ``edge`` from the next batch on, as
        incarnation ``incarnation`` if that is newer than this node's own."""
        self._channels[edge] = Channel(
            edge, target, credits=self.settings.credits,
            incarnation=max(self.incarnation, incarnation),
        )

    async def unsubscribe(self, edge: str) -> None:
        """Stop sending to the subscriber of ``edge``, once it has acknowledged what was sent.

        The subscriber is removed on purpose (its graph was removed): if delivering to it fails
        meanwhile, it is dropped and this node, which other graphs may share, goes on.
        """
        channel = self._channels.pop(edge, None)
        if channel is not None:
            self._retired_wait_seconds += channel.backpressure_wait_seconds
            try:
                await channel.drain()
            except Exception as exc:
                self.worker.stats.subscribers_lost += 1
                _log.warning("node %s dropped removed subscriber %s: %s", self.config.name, edge,
                             failure_cause(exc))
            finally:
                close = getattr(channel.target, "close", None)
                if callable(close):  # its data connection, if it has one
                    close()

    async def drain(self) -> None:
        """Wait until every subscriber has acknowledged everything sent to it.

        Raises SubscriberFailedError, and holds, when one of them did not take a push.
        """
        for edge, channel in list(self._channels.items()):
            try:
                await channel.drain()
            except Exception as exc:
                failure = self._subscriber_failed(edge, channel, exc)
                if failure is not None:
                    raise failure from exc

    def _subscriber_failed(
        self, edge: str, channel: Channel, error: BaseException
    ) -> Exception | None:
        """Hold because ``channel`` failed; None when it was removed on purpose meanwhile."""
        if self._channels.get(edge) is not channel or self._stopping:
            return None  # removed on purpose, or this node is being stopped: not a failure
        if self._held is None:
            self.worker.stats.subscribers_lost += 1
            self._hold(SubscriberFailedError(
                f"node {self.config.name!r} stopped: its subscriber on edge {edge} did not take "
                f"a push ({failure_cause(error)}); it holds its input, so nothing more is read "
                "or sent"))
        return self._held

    def subscribers(self) -> list[str]:
        """The edges this node sends on."""
        return sorted(self._channels)

    # -- data in --------------------------------------------------------------------------
    async def push(self, envelope: Envelope) -> None:
        """Receive an envelope; returns once it has been processed (that is the ack)."""
        await self.push_nowait(envelope)

    def push_nowait(self, envelope: Envelope) -> asyncio.Future[None]:
        """``push`` without a coroutine: queue ``envelope`` now; the future is the ack.

        A data connection hands each push over with it as it arrives, in order, and answers
        once the future completes: no task per push.
        """
        assert self._queue is not None, f"node {self.config.name!r} got a push before ready()"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._held is not None:
            done.set_exception(self._refusal())
            return done
        self._queue.put_nowait((envelope, done))
        stats = self.worker.stats
        stats.max_queue_depth = max(stats.max_queue_depth, self._queue.qsize())
        return done

    async def push_stored(self, edge: str, incarnation: int, seq: int, sent_at: float,
                          payloads: tuple[Payload, ...]) -> None:
        """``push`` for a sender that stored the payloads once for all its subscribers.

        Ray resolved the stored reference into ``payloads`` before this call runs.
        """
        first, *trailing = payloads
        await self.push(Envelope(edge, incarnation, seq, first, sent_at, tuple(trailing)))

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            envelope, done = await self._queue.get()
            if self._held is not None:
                _refuse(done, self._refusal())
                continue
            try:
                if envelope.sent_at:
                    self.worker.stats.hop_latency.observe(max(0.0, time.time() - envelope.sent_at))
                async with self._turn:
                    await self._emit(self.worker.accept(envelope))
                publications, self._publications = self._publications, []
                if publications:  # acknowledged once what it brought is in the sink
                    published = (publications[0] if len(publications) == 1
                                 else asyncio.gather(*publications))
                    published.add_done_callback(functools.partial(self._published, done))
                elif not done.done():
                    done.set_result(None)
            except Exception as exc:  # surfaced to the sender through its ack
                self._publications = []
                _refuse(done, exc)
                self._hold(exc)

    async def _step_published(self) -> None:
        publications, self._publications = self._publications, []
        if publications:
            await asyncio.gather(*publications)

    def _published(self, done: asyncio.Future[None], publications: asyncio.Future[Any]) -> None:
        error = (RuntimeError("the publication was cancelled") if publications.cancelled()
                 else publications.exception())
        if error is None:
            if not done.done():
                done.set_result(None)
            return
        failure = error if isinstance(error, Exception) else RuntimeError(str(error))
        _refuse(done, failure)
        self._hold(failure)

    def _refusal(self) -> NodeHeldError:
        return NodeHeldError(f"node {self.config.name!r} refused a push: it holds its input "
                             f"({failure_cause(self._held or RuntimeError())})")

    # -- data out -------------------------------------------------------------------------
    async def _emit(
        self, payloads: list[Payload], position: dict[int, int] | None = None
    ) -> None:
        # Counted as emitted (stats) only once every subscriber has acknowledged it.
        events, ends = 0, False
        for payload in payloads:
            if isinstance(payload, Batch):
                events += len(payload)
            elif isinstance(payload, EndOfStream):
                ends = True
        delivery = self._deliveries.open(events, position)
        try:
            for payload in payloads:
                if self._held is not None:
                    raise self._refusal()
                if isinstance(payload, Barrier):
                    self._snapshot_at(payload.checkpoint_id)
                if self.sink is not None:
                    await self._to_sink(payload)
                if self._capture and isinstance(payload, Batch):
                    self.captured.append(payload)
            if delivery.events and not self._phases.first_output:
                self._phases.first_output = StartupPhases.now()
            if payloads and self._channels:
                if self._held is not None:
                    raise self._refusal()
                # One push per subscriber carries the whole step (its batch, then the
                # watermark, barrier or end of stream after it), serialized once for all.
                share = len(self._channels) > 1 and sum(
                    hasattr(c.target, "deliver_shared") for c in self._channels.values()) > 1
                shipment = Shipment(payloads, share=share)
                for edge, channel in list(self._channels.items()):
                    await self._send(edge, channel, shipment, delivery)
            if ends:
                await self.drain()
                assert self._finished is not None
                self._finished.set()
        except Exception:
            delivery.failed = True
            raise
        finally:
            delivery.pending -= 1
            self._deliveries.settle()

    async def _send(self, edge: str, channel: Channel, shipment: Shipment,
                    delivery: Delivery) -> None:
        if self._channels.get(edge) is not channel:
            return  # unsubscribed while an earlier send waited for credit
        try:
            ack = await channel.send(shipment)
        except Exception as exc:
            failure = self._subscriber_failed(edge, channel, exc)
            if failure is not None:
                raise failure from exc
            return
        delivery.pending += 1
        ack.add_done_callback(functools.partial(self._on_ack, edge, channel, delivery))

    def _on_ack(self, edge: str, channel: Channel, delivery: Delivery,
                ack: asyncio.Future[Any]) -> None:
        delivery.pending -= 1
        error = RuntimeError("the push was cancelled") if ack.cancelled() else ack.exception()
        if error is not None and self._subscriber_failed(edge, channel, error) is not None:
            delivery.failed = True
        self._deliveries.settle()

    def _snapshot_at(self, checkpoint_id: int) -> None:
        worker = self.worker.snapshots.pop(checkpoint_id, None)
        if worker is not None:
            position = dict(self.source.position()) if self.source is not None else None
            event_times: Any = getattr(self.source, "event_times", None)
            self.checkpointing.take(checkpoint_id, worker, position,
                                    event_times() if callable(event_times) else None)

    async def _to_sink(self, payload: Payload) -> None:
        assert self.sink is not None
        if self._output is not None:  # exactly-once: published once its checkpoint completes
            if isinstance(payload, Batch):
                await self._output.room()  # publishing fell behind: hold the input back
                self._output.add(payload)
            elif isinstance(payload, EndOfStream):
                await self._output.publish_rest(self.checkpointing.last_checkpoint + 1)
            return
        assert self._publisher is not None
        if isinstance(payload, Batch):
            self._publications.append(self._publisher.publish(payload))
        elif isinstance(payload, EndOfStream):
            await self._publisher.idle()
            await self.sink.flush()

    def _hold(self, error: Exception) -> None:
        """Stop for good: report ``error``, refuse pushes, and let a source give back its input."""
        if self._held is not None:
            return
        self._held = error
        if self.error is None:
            self.error = error
        _log.warning("node %s holds its input: %s", self.config.name, failure_cause(error))
        if self._finished is not None:
            self._finished.set()
        # Step 1: pushes already queued are refused, so their senders hold in turn.
        while self._queue is not None and not self._queue.empty():
            _, done = self._queue.get_nowait()
            _refuse(done, self._refusal())
        # Step 2: a source stops reading and rewinds to what its subscribers took.
        if self.source is not None and self._settle_task is None:
            self._settle_task = asyncio.get_running_loop().create_task(self._settle_source())

    # -- introspection --------------------------------------------------------------------
    def stats(self) -> NodeStats:
        """A copy of this node's counters, with the hosting process's resident memory.

        ``events_out`` counts the events every subscriber acknowledged: never what was lost.
        """
        import psutil

        stats = copy.deepcopy(self.worker.stats)  # callers in this process keep a snapshot
        stats.events_out -= self._deliveries.undelivered_events
        stats.rss_bytes = int(psutil.Process().memory_info().rss)
        stats.cache_bytes = resident_bytes_of(self.worker.logic)
        stats.queue_depth = self._queue.qsize() if self._queue is not None else 0
        stats.backpressure_wait_seconds = self._retired_wait_seconds + sum(
            channel.backpressure_wait_seconds for channel in self._channels.values()
        )
        add_source_figures(stats, self.source)
        return stats

    def report(self) -> NodeReport:
        """Figures, whether finished, the error and the edges it sends on: what a health check,
        a scrape or an unsubscribe asks, at once."""
        error = None if self.error is None else self.error.with_traceback(None)
        return NodeReport(self.stats(), self.is_finished(), error, frozenset(self._channels))

    def results(self) -> list[Batch]:
        """Batches captured (capture=True) or written to an in-memory sink."""
        sink_batches: Any = getattr(self.sink, "batches", None)
        if isinstance(sink_batches, list):
            return list(sink_batches)
        return list(self.captured)


def _refuse(done: asyncio.Future[None], error: Exception) -> None:
    if not done.done():
        done.set_exception(error)
