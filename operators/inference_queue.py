"""The inference engine: a priority queue of requests and one batching thread over a model.

Interactive requests (priority 0) go ahead of streaming ones (priority 1); among interactive
requests the newest goes first (LIFO: the caller most likely still waiting), streaming requests
keep their arrival order. A stream's rows (of every graph sharing the node) are gathered into
one model call of at most ``max_batch`` rows, or fewer once the oldest waiting request has
waited ``max_wait_s``; a request larger than a batch is split over several calls. Interactive
requests wait for no batch to fill: while any waits, the next call takes interactive rows only,
so a request waits at most for the call already in the model. Each request gets its own rows
back, in its input order. A request whose caller has gone (cancelled, or past its deadline) is
dropped before it reaches the model.

>>> import numpy as np
>>> engine = InferenceEngine(lambda rows: rows * 2.0, max_batch=4, max_wait_s=0.0)
>>> engine.submit(np.array([[1.0], [2.0], [3.0]]), STREAMING).result(timeout=5).ravel().tolist()
[2.0, 4.0, 6.0]
>>> engine.close().requests_served
1
"""

from __future__ import annotations

import bisect
import concurrent.futures
import copy
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from operators.inference_errors import (
    InferenceBusyError,
    InferenceStoppedError,
    ModelOutputError,
    RequestAbandonedError,
)

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "INTERACTIVE",
    "STREAMING",
    "WAIT_BUCKETS",
    "BucketHistogram",
    "InferenceEngine",
    "InferenceFigures",
]

#: Priority of interactive requests (a gateway call, a Python call): served first, newest first.
INTERACTIVE = 0
#: Priority of a stream's rows: served after interactive requests, oldest first.
STREAMING = 1
_PRIORITY_NAMES = {INTERACTIVE: "interactive", STREAMING: "streaming"}

#: Upper bounds of the batch-size histogram's buckets (rows per model call).
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Upper bounds (seconds) of the queue-wait and model-latency histograms' buckets.
WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)

Model = Callable[[np.ndarray], np.ndarray]


@dataclass
class BucketHistogram:
    """Counts of observations per bucket (last: above every bound), their sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.observations += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, observations at or below le)``, ending with ``+Inf``."""
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return buckets


@dataclass
class InferenceFigures:
    """What an inference engine has done: its health snapshot and its metrics."""

    requests_served: int = 0
    rows_served: int = 0
    batches: int = 0
    #: Model calls that raised or answered with the wrong shape (their requests failed).
    errors: int = 0
    #: Requests dropped before the model because their caller had gone.
    abandoned: int = 0
    #: Interactive requests refused because too many waited already.
    refused: int = 0
    #: Requests failed because the engine stopped before computing them.
    stopped: int = 0
    queue_depth: int = 0
    #: Most requests that have waited at once (a stream holds at most one: credits hold the
    #: rest back upstream, in Kafka).
    max_queue_depth: int = 0
    batch_size: BucketHistogram = field(default_factory=lambda: BucketHistogram(
        BATCH_SIZE_BUCKETS))
    model_latency: BucketHistogram = field(default_factory=lambda: BucketHistogram(WAIT_BUCKETS))
    #: Seconds from submission to the model call, by priority name.
    queue_wait: dict[str, BucketHistogram] = field(default_factory=lambda: {
        name: BucketHistogram(WAIT_BUCKETS) for name in _PRIORITY_NAMES.values()})
    #: Where the model runs ("cpu" or "cuda"), and why not on the GPU when "auto" fell back.
    device: str = "cpu"
    fallback: str | None = None
    load_seconds: float = 0.0


@dataclass
class _Request:
    priority: int
    arrival: int
    rows: np.ndarray
    future: concurrent.futures.Future[np.ndarray]
    enqueued_at: float
    deadline: float | None
    output: np.ndarray | None = None
    taken: int = 0
    finished: int = 0

    def order(self) -> tuple[int, int]:
        # Interactive: newest first; streaming: oldest first.
        return (self.priority, -self.arrival if self.priority == INTERACTIVE else self.arrival)


@dataclass
class _Slice:
    request: _Request
    start: int
    stop: int


class InferenceEngine:
    """One model behind a priority queue, called by one thread in dynamic batches.

    ``submit`` is safe from any thread; it returns a future of the request's output rows.
    ``close`` refuses new requests, fails the waiting ones with InferenceStoppedError, lets the
    batch in the model finish, and returns the final figures.
    """

    def __init__(
        self,
        model: Model,
        *,
        max_batch: int,
        max_wait_s: float,
        outputs: int | None = None,
        max_waiting: int = 1024,
        name: str = "inference",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.outputs = outputs
        self.max_waiting = max_waiting
        self.name = name
        self._clock = clock
        self._heap: list[tuple[tuple[int, int], _Request]] = []
        self._waiting_rows = 0
        self._waiting_interactive = 0
        self._arrivals = itertools.count()
        self._condition = threading.Condition()
        self._closed = False
        self.figures = InferenceFigures()
        self._thread = threading.Thread(target=self._run, name=f"{name}-batching", daemon=True)
        self._thread.start()

    # -- requests -------------------------------------------------------------------------
    def submit(
        self, rows: np.ndarray, priority: int = STREAMING, *, timeout_s: float | None = None
    ) -> concurrent.futures.Future[np.ndarray]:
        """Queue ``rows`` (rows x features) at ``priority``; a future of its output rows.

        ``timeout_s``: the caller waits no longer, so the request is dropped (and fails with
        RequestAbandonedError) if the model has not taken it by then. Cancelling the future
        also drops it.
        """
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        if len(rows) == 0:
            future.set_result(np.empty((0, self.outputs or 0)))
            return future
        now = self._clock()
        with self._condition:
            if self._closed:
                raise InferenceStoppedError(
                    f"inference node {self.name!r} is stopping and takes no more requests")
            if priority == INTERACTIVE and self._waiting_interactive >= self.max_waiting:
                self.figures.refused += 1
                raise InferenceBusyError(
                    f"inference node {self.name!r} has {self._waiting_interactive} interactive "
                    f"requests waiting already (at most {self.max_waiting}); retry shortly",
                    retry_after_s=max(self.max_wait_s, 0.01))
            request = _Request(priority, next(self._arrivals), rows, future, now,
                               None if timeout_s is None else now + timeout_s)
            heapq.heappush(self._heap, (request.order(), request))
            self._waiting_rows += len(rows)
            self._waiting_interactive += priority == INTERACTIVE
            self.figures.queue_depth = len(self._heap)
            self.figures.max_queue_depth = max(self.figures.max_queue_depth, len(self._heap))
            self._condition.notify()
        return future

    def snapshot(self) -> InferenceFigures:
        """A copy of the figures, consistent at one moment."""
        with self._condition:
            return copy.deepcopy(self.figures)

    def close(self, timeout_s: float = 30.0) -> InferenceFigures:
        """Stop: refuse new requests, fail waiting ones, let the running batch end; figures."""
        # Step 1: no new request gets in; every waiting one fails with a clear error.
        with self._condition:
            self._closed = True
            while self._heap:
                _, request = heapq.heappop(self._heap)
                self._forget(request)
                if _fail(request.future, InferenceStoppedError(
                        f"inference node {self.name!r} stopped before computing this request")):
                    self.figures.stopped += 1
            self.figures.queue_depth = 0
            self._condition.notify_all()
        # Step 2: the batch already in the model finishes and is delivered.
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        return self.snapshot()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    # -- the batching thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._call_model(batch)
        except BaseException as exc:  # never leave a caller waiting on a thread that is gone
            with self._condition:
                self._closed = True
                for _, request in self._heap:
                    _fail(request.future, InferenceStoppedError(
                        f"inference node {self.name!r}: its batching thread failed ({exc!r})"))
                self._heap.clear()
            raise

    def _next_batch(self) -> list[_Slice] | None:
        """The next batch's slices once full or due; None once closed and empty."""
        with self._condition:
            # Step 1: wait for work, then for a full batch, the oldest request's deadline or an
            # interactive request.
            while True:
                if self._closed and not self._heap:
                    return None
                if self._heap:
                    oldest = min(request.enqueued_at for _, request in self._heap)
                    due = oldest + self.max_wait_s - self._clock()
                    if (self._waiting_rows >= self.max_batch or due <= 0 or self._closed
                            or self._waiting_interactive):
                        break
                    self._condition.wait(due)
                else:
                    self._condition.wait()
            # Step 2: take rows by priority, dropping requests whose caller has gone.
            now = self._clock()
            slices: list[_Slice] = []
            room = self.max_batch
            interactive_only = bool(self._waiting_interactive)
            while self._heap and room:
                if interactive_only and self._heap[0][1].priority != INTERACTIVE:
                    break
                _, request = heapq.heappop(self._heap)
                if request.taken and request.future.done():  # an earlier batch of it failed
                    self._forget(request)
                    continue
                if request.taken == 0 and not self._still_wanted(request, now):
                    self._forget(request)
                    continue
                if request.taken == 0:
                    waited = now - request.enqueued_at
                    self.figures.queue_wait[_PRIORITY_NAMES[request.priority]].observe(waited)
                count = min(room, len(request.rows) - request.taken)
                slices.append(_Slice(request, request.taken, request.taken + count))
                request.taken += count
                room -= count
                self._waiting_rows -= count
                if request.taken < len(request.rows):
                    heapq.heappush(self._heap, (request.order(), request))
                elif request.priority == INTERACTIVE:
                    self._waiting_interactive -= 1
            self.figures.queue_depth = len(self._heap)
            return slices

    def _still_wanted(self, request: _Request, now: float) -> bool:
        if request.future.done():  # cancelled by its caller (or failed already)
            self.figures.abandoned += request.future.cancelled()
            return False
        if request.deadline is not None and now > request.deadline:
            self.figures.abandoned += 1
            _fail(request.future, RequestAbandonedError(
                f"inference node {self.name!r}: the request's caller stopped waiting after "
                f"{request.deadline - request.enqueued_at:.3f} s, before the model got to it"))
            return False
        if not request.future.set_running_or_notify_cancel():  # cancelled just now
            self.figures.abandoned += 1
            return False
        return True

    def _forget(self, request: _Request) -> None:
        """Account for a request leaving the queue without being (fully) computed."""
        self._waiting_rows -= len(request.rows) - request.taken
        if request.priority == INTERACTIVE:
            self._waiting_interactive -= 1

    def _call_model(self, slices: list[_Slice]) -> None:
        rows = np.concatenate([s.request.rows[s.start:s.stop] for s in slices])
        started = self._clock()
        try:
            output = self._checked(self._model(rows), len(rows))
        except Exception as exc:  # every request of the batch fails with the model's error
            with self._condition:
                self.figures.errors += 1
                for piece in slices:  # rows still queued are dropped when next popped
                    _fail(piece.request.future, exc)
            return
        elapsed = self._clock() - started
        position = 0
        with self._condition:
            self.figures.batches += 1
            self.figures.rows_served += len(rows)
            self.figures.batch_size.observe(len(rows))
            self.figures.model_latency.observe(elapsed)
            for piece in slices:
                request = piece.request
                count = piece.stop - piece.start
                if request.output is None:
                    request.output = np.empty((len(request.rows), output.shape[1]), output.dtype)
                request.output[piece.start:piece.stop] = output[position:position + count]
                position += count
                request.finished += count
                if request.finished == len(request.rows) and not request.future.done():
                    request.future.set_result(request.output)
                    self.figures.requests_served += 1

    def _checked(self, output: Any, rows: int) -> np.ndarray:
        array = np.asarray(output)
        if array.ndim == 1:
            array = array.reshape(-1, 1)
        expected = self.outputs
        if array.ndim != 2 or array.shape[0] != rows or (
                expected is not None and array.shape[1] != expected):
            wanted = f"({rows}, {expected if expected is not None else 'outputs'})"
            raise ModelOutputError(
                f"inference node {self.name!r}: the model answered {rows} rows with an array "
                f"of shape {array.shape}; expected {wanted}, one row of outputs per input row "
                "(check the node's outputs= against the model's output)")
        return array


def _fail(future: concurrent.futures.Future[np.ndarray], error: BaseException) -> bool:
    """Fail ``future`` unless it is done already; whether it was failed now."""
    if future.done():
        return False
    if not future.running() and not future.set_running_or_notify_cancel():
        return False
    future.set_exception(error)
    return True
