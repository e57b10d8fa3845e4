"""NodeHost: the async shell around a NodeWorker — drain loop, subscribers, source and sink I/O.

It is a plain class: the local runner uses it directly, the Ray runner wraps it with
``ray.remote`` so that one actor hosts one node.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

from streamdag.batch import Batch
from streamdag.connector import SinkFactory, SinkWriter, SourceFactory, SourceReader
from streamdag.operator import NodeConfig
from streamdag.runtime.channels import Channel, Target
from streamdag.runtime.messages import EndOfStream, Envelope, Payload, Watermark
from streamdag.runtime.stats import NodeStats, resident_bytes_of
from streamdag.runtime.worker import NodeWorker

__all__ = ["NodeHost", "RuntimeSettings"]

_DAY_NS = 86_400 * 10**9
_log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RuntimeSettings:
    """Data-plane knobs shared by every node of a run."""

    #: Unacknowledged pushes allowed per channel (W).
    credits: int = 4
    #: A source cuts a batch at this many records...
    max_batch_records: int = 100_000
    #: ...or after this long once it holds at least one record.
    linger_s: float = 0.005


class NodeHost:
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
        snapshot: bytes | None = None,
    ) -> None:
        self.config = config
        self.settings = settings or RuntimeSettings()
        self.worker = NodeWorker(config, snapshot=snapshot, incarnation=incarnation)
        self.incarnation = incarnation
        self._source_factory = source
        self._sink_factory = sink
        self.source: SourceReader | None = None
        self.sink: SinkWriter | None = None
        self.captured: list[Batch] = []
        self._capture = capture
        self._channels: dict[str, Channel] = {}
        self._queue: asyncio.Queue[tuple[Envelope, asyncio.Future[None]]] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._source_task: asyncio.Task[None] | None = None
        self._finished: asyncio.Event | None = None
        self._stopping = False
        #: Backpressure waited on channels that have since been removed.
        self._retired_wait_seconds = 0.0
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def ready(self) -> str:
        """Open connectors and start the drain loop; returns the node id once ready."""
        if self._queue is None:
            self.worker.warm_up()
            self._queue = asyncio.Queue()
            self._finished = asyncio.Event()
            self._drain_task = asyncio.create_task(self._drain())
            if self._sink_factory is not None:
                self.sink = self._sink_factory()
                await self.sink.open()
            if self._source_factory is not None:
                self.source = self._source_factory()
                await self.source.open()
        return self.config.node_id

    async def start_source(self) -> None:
        """Start reading the source (called last, once everything below is ready)."""
        if self.source is None:
            raise RuntimeError(f"node {self.config.name!r} has no source to start")
        if self._source_task is None:
            self._source_task = asyncio.create_task(self._run_source())

    async def wait_finished(self) -> bool:
        """Block until EndOfStream went through this node (or it failed); True when finished."""
        assert self._finished is not None, "call ready() first"
        await self._finished.wait()
        if self.error is not None:
            raise self.error
        return True

    def is_finished(self) -> bool:
        """Whether EndOfStream went through this node."""
        return self._finished is not None and self._finished.is_set()

    async def stop(self) -> None:
        """Stop reading and processing; close connectors."""
        self._stopping = True
        for task in (self._source_task, self._drain_task):
            if task is not None and not task.done():
                task.cancel()
        if self.source is not None:
            await self.source.close()
        if self.sink is not None:
            await self.sink.close()

    # -- wiring ---------------------------------------------------------------------------
    def connect_input(self, edge: str, input_index: int) -> None:
        """Expect pushes on ``edge`` for input ``input_index``."""
        self.worker.connect(edge, input_index)

    def subscribe(self, edge: str, target: Target) -> None:
        """Send this node's output to ``target`` over ``edge`` from the next batch on."""
        self._channels[edge] = Channel(
            edge, target, credits=self.settings.credits, incarnation=self.incarnation
        )

    async def unsubscribe(self, edge: str) -> None:
        """Stop sending to the subscriber of ``edge``, once it has acknowledged what was sent."""
        channel = self._channels.pop(edge, None)
        if channel is not None:
            self._retired_wait_seconds += channel.backpressure_wait_seconds
            try:
                await channel.drain()
            except Exception as exc:
                self._lose_subscriber(edge, channel, exc)

    async def drain(self) -> None:
        """Wait until every subscriber has acknowledged everything sent to it."""
        for edge, channel in list(self._channels.items()):
            try:
                await channel.drain()
            except Exception as exc:
                self._lose_subscriber(edge, channel, exc)

    def _lose_subscriber(self, edge: str, channel: Channel, error: Exception) -> None:
        # A dead subscriber must not take a shared node down with it: drop it, and let the
        # controller's health check report it.
        if self._channels.pop(edge, None) is not None:
            self._retired_wait_seconds += channel.backpressure_wait_seconds
        self.worker.stats.subscribers_lost += 1
        _log.warning("node %s dropped subscriber %s: %s", self.config.name, edge, error)

    def subscribers(self) -> list[str]:
        """The edges this node sends on."""
        return sorted(self._channels)

    # -- data in --------------------------------------------------------------------------
    async def push(self, envelope: Envelope) -> None:
        """Receive an envelope; returns once it has been processed (that is the ack)."""
        assert self._queue is not None, f"node {self.config.name!r} got a push before ready()"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((envelope, done))
        stats = self.worker.stats
        stats.max_queue_depth = max(stats.max_queue_depth, self._queue.qsize())
        await done

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            envelope, done = await self._queue.get()
            try:
                if envelope.sent_at:
                    self.worker.stats.hop_latency.observe(max(0.0, time.time() - envelope.sent_at))
                await self._emit(self.worker.accept(envelope))
                done.set_result(None)
            except Exception as exc:  # surfaced to the sender through its ack
                done.set_exception(exc)
                self._fail(exc)

    # -- data out -------------------------------------------------------------------------
    async def _emit(self, payloads: list[Payload]) -> None:
        for payload in payloads:
            if self.sink is not None:
                await self._to_sink(payload)
            if self._capture and isinstance(payload, Batch):
                self.captured.append(payload)
            for edge, channel in list(self._channels.items()):
                try:
                    await channel.send(payload)
                except Exception as exc:
                    self._lose_subscriber(edge, channel, exc)
            if isinstance(payload, EndOfStream):
                await self.drain()
                assert self._finished is not None
                self._finished.set()

    async def _to_sink(self, payload: Payload) -> None:
        assert self.sink is not None
        if isinstance(payload, Batch):
            started = time.perf_counter()
            await self.sink.write(payload)
            await self.sink.flush()
            self.worker.stats.publish_latency.observe(time.perf_counter() - started)
            if len(payload):
                # Meaningful for live streams, whose event times are wall-clock nanoseconds.
                lag_ns = time.time_ns() - int(payload.ts.max())
                if 0 <= lag_ns < _DAY_NS:
                    self.worker.stats.end_to_end_latency.observe(lag_ns / 1e9)
        elif isinstance(payload, EndOfStream):
            await self.sink.flush()

    async def _run_source(self) -> None:
        assert self.source is not None
        try:
            while not self._stopping:
                chunk = await self.source.read(
                    self.settings.max_batch_records, self.settings.linger_s
                )
                payloads: list[Payload] = []
                if len(chunk.batch):
                    payloads.extend(self.worker.feed(0, chunk.batch))
                if chunk.watermark is not None:
                    payloads.extend(self.worker.feed(0, Watermark(chunk.watermark)))
                if chunk.finished:
                    payloads.extend(self.worker.feed(0, EndOfStream()))
                await self._emit(payloads)
                if chunk.finished:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    def _fail(self, error: Exception) -> None:
        self.error = error
        assert self._finished is not None
        self._finished.set()

    # -- introspection --------------------------------------------------------------------
    def stats(self) -> NodeStats:
        """A copy of this node's counters, with the hosting process's resident memory."""
        import psutil

        stats = copy.deepcopy(self.worker.stats)  # callers in this process keep a snapshot
        stats.rss_bytes = int(psutil.Process().memory_info().rss)
        stats.cache_bytes = resident_bytes_of(self.worker.logic)
        stats.queue_depth = self._queue.qsize() if self._queue is not None else 0
        stats.backpressure_wait_seconds = self._retired_wait_seconds + sum(
            channel.backpressure_wait_seconds for channel in self._channels.values()
        )
        lag = getattr(self.source, "lag", None)
        if callable(lag):
            stats.lag = dict(lag())
        dead_lettered = getattr(self.source, "dead_lettered", None)
        if isinstance(dead_lettered, int):
            stats.dead_lettered = dead_lettered
        return stats

    def results(self) -> list[Batch]:
        """Batches captured (capture=True) or written to an in-memory sink."""
        sink_batches: Any = getattr(self.sink, "batches", None)
        if isinstance(sink_batches, list):
            return list(sink_batches)
        return list(self.captured)
