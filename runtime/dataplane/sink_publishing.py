"""Publishing a sink's batches off the drain loop: one flush in flight, the next one gathers.

A sink node used to write and flush each batch inside its drain loop, so every push waited for a
produce round trip before the next one was taken, and a thin stream made one produce request
per small batch. ``SinkPublisher`` takes each batch at once and publishes in the background: at
most one flush is in flight, and every batch that arrives meanwhile goes out in the next one
(the flush grows with the load; a thin stream still flushes at once). Each batch's future
completes once a flush carrying it succeeded, so the push that brought it is acknowledged only
then: what is acknowledged is in Kafka, as before.

>>> import asyncio
>>> from streamdag.batch import Batch
>>> from streamdag.testing import ListSink
>>> async def demo():
...     sink = ListSink()
...     publisher = SinkPublisher(sink, NodeStats("n", "n"))
...     futures = [publisher.publish(Batch.from_columns(ts=[t], key=["a"], v=[1.0]))
...                for t in (1, 2, 3)]
...     await asyncio.gather(*futures)
...     return [b.ts.tolist() for b in sink.batches], publisher.flushes
>>> asyncio.run(demo())
([[1], [2], [3]], 1)
"""

from __future__ import annotations

import asyncio
import time

from runtime.dataplane.stats import NodeStats
from streamdag.batch import Batch
from streamdag.cancellation import cancel_and_wait
from streamdag.connector import SinkWriter

__all__ = ["SinkPublisher"]

_DAY_NS = 86_400 * 10**9


class SinkPublisher:
    """Writes and flushes a sink's batches in a background task, one flush at a time."""

    def __init__(self, sink: SinkWriter, stats: NodeStats) -> None:
        self.sink = sink
        self.stats = stats
        #: Flushes done so far.
        self.flushes = 0
        self._waiting: list[tuple[Batch, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        #: What the first failed flush raised; nothing is published after it.
        self.error: Exception | None = None

    def publish(self, batch: Batch) -> asyncio.Future[None]:
        """Hand ``batch`` over; the future completes once a flush carrying it succeeded."""
        published: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.error is not None:
            published.set_exception(self.error)
            return published
        self._waiting.append((batch, published))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return published

    async def idle(self) -> None:
        """Wait until everything handed over is published (raises what a flush raised)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        """Stop publishing; batches not yet published fail (their pushes were not acked)."""
        await cancel_and_wait(self._task)
        self._fail(RuntimeError("the sink was stopped before this batch was published"))

    async def _run(self) -> None:
        # Step 1: take everything waiting; batches arriving meanwhile wait for the next flush.
        while self._waiting:
            taken, self._waiting = self._waiting, []
            started = time.perf_counter()
            try:
                # Step 2: write them in arrival order and publish them in one flush.
                for batch, _ in taken:
                    await self.sink.write(batch)
                await self.sink.flush()
            except Exception as exc:
                # Step 3': a failed flush fails its batches and every later one.
                self.error = exc
                self._waiting = taken + self._waiting
                self._fail(exc)
                return
            self.flushes += 1
            self._observe(taken, time.perf_counter() - started)
            # Step 3: what was published is acknowledged.
            for _, published in taken:
                if not published.done():
                    published.set_result(None)

    def _observe(self, taken: list[tuple[Batch, asyncio.Future[None]]], seconds: float) -> None:
        self.stats.publish_latency.observe(seconds)
        newest = max((int(batch.ts.max()) for batch, _ in taken if len(batch)), default=None)
        if newest is not None:
            # Meaningful for live streams, whose event times are wall-clock nanoseconds.
            lag_ns = time.time_ns() - newest
            if 0 <= lag_ns < _DAY_NS:
                self.stats.end_to_end_latency.observe(lag_ns / 1e9)

    def _fail(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for _, published in waiting:
            if not published.done():
                published.set_exception(error)
