"""The checkpoint coordinator of a region: one checkpoint in flight, every ``interval_s``.

It talks to the region's nodes through ``CheckpointCalls`` (in-process hosts or Ray actors
alike) and completes a checkpoint only by writing its manifest to the store. A checkpoint also
starts before the interval is up once every source of the region went quiet with output to
complete (``runtime.checkpoints.quiet``): an exactly-once sink then publishes the last output
of a burst as soon as it is out, not up to an interval later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.checkpoints import failpoints
from runtime.checkpoints.quiet import QuietSources, SourceQuiet
from runtime.checkpoints.store import CheckpointStore, Manifest, SnapshotRef
from runtime.dataplane.stats import LatencyHistogram

__all__ = ["CheckpointCalls", "CheckpointCoordinator", "CheckpointFigures"]

_log = logging.getLogger("streamdag.checkpoints")


class CheckpointCalls(Protocol):
    """How a coordinator reaches the nodes of its region, by key."""

    async def inject_barrier(self, key: str, checkpoint_id: int) -> bool:
        """Let source ``key`` emit ``Barrier(checkpoint_id)`` next; False once it finished."""

    async def checkpoint_done(self, key: str, checkpoint_id: int) -> SnapshotRef:
        """Once node ``key`` persisted its snapshot of ``checkpoint_id``: where it lies."""

    async def commit_checkpoint(self, key: str, checkpoint_id: int) -> None:
        """Tell node ``key`` that ``checkpoint_id`` is complete (sinks publish its epochs)."""

    async def source_quiet(self, key: str, known: SourceQuiet | None) -> SourceQuiet:
        """Source ``key``'s ``SourceQuiet`` once it differs from ``known`` (a long poll)."""


@dataclass
class CheckpointFigures:
    """What a coordinator has done: for metrics, tests and the console."""

    completed: int = 0
    #: Checkpoints that failed or timed out and were given up for the next one.
    abandoned: int = 0
    last_completed_id: int = 0
    #: Wall-clock time (time.time()) the last checkpoint completed; 0: never.
    last_completed_at: float = 0.0
    #: Bytes of the last complete checkpoint's snapshots.
    last_size_bytes: int = 0
    duration: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Checkpoints started before the interval was up, because every source went quiet.
    started_early: int = 0
    #: Of the last complete checkpoint: the wall-clock time it started, when (as of then)
    #: every source was last heard to have gone idle (0: never), and whether that started it.
    last_started_at: float = 0.0
    last_quiet_at: float = 0.0
    last_started_early: bool = False


class CheckpointCoordinator:
    """Starts and completes the checkpoints of one region.

    A checkpoint that fails or times out is abandoned and counted, and the next one tried; a
    failed commit (a sink could not publish) is raised: the region must recover.
    """

    def __init__(
        self,
        region: str,
        store: CheckpointStore,
        calls: CheckpointCalls,
        nodes: Sequence[str],
        sources: Sequence[str],
        *,
        interval_s: float = 1.0,
        timeout_s: float = 30.0,
        first_id: int = 1,
        ids: Callable[[], int] | None = None,
        on_outcome: Callable[[int, bool], Awaitable[None]] | None = None,
    ) -> None:
        self.region = region
        self.store = store
        self.calls = calls
        self.nodes = list(nodes)
        self.sources = list(sources)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        #: The id the next checkpoint gets.
        self.next_id = first_id
        #: Where ids come from when several coordinators share one increasing sequence (a
        #: deployment's regions merge and split; a node's checkpoint ids must only grow).
        self._ids = ids
        #: Told ``(checkpoint id, completed)`` once a checkpoint ``run`` took completed or was
        #: abandoned (a deployment emits its CloudEvents from there).
        self._on_outcome = on_outcome
        self.figures = CheckpointFigures()
        #: Set once a source finished: a bounded stream is ending, no checkpoint can complete.
        self.sources_finished = False
        #: The id of the last barrier the sources were asked for (0: none yet).
        self._last_barrier = 0

    async def run(self, *, at_once: bool = False) -> None:
        """Checkpoint every ``interval_s`` until cancelled or a source finished; with
        ``at_once``, the first one right away (a region just restored records its progress
        as soon as it can, so a fault soon after need not start over from further back).

        A checkpoint starts before its interval is up once every source is quiet with news
        (``QuietSources.quiet``); the next interval counts from its end as ever.
        """
        quiet = QuietSources(self.sources, self.calls.source_quiet)
        quiet.start()
        try:
            while not self.sources_finished:
                # A cancellation asyncio.wait_for dropped (before Python 3.12, one landing just
                # as the awaited call completed) still ends the loop, instead of never.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                early = False
                if not at_once:
                    early = await self._until_due(quiet)
                at_once = False
                abandoned = self.figures.abandoned
                if early:
                    self.figures.started_early += 1
                completed = await self.checkpoint(quiet_at=quiet.quiet_at, early=early)
                if self._on_outcome is not None and (
                        completed or self.figures.abandoned > abandoned):
                    await self._on_outcome(self.next_id - 1, completed)
        finally:
            quiet.stop()

    async def _until_due(self, quiet: QuietSources) -> bool:
        """Wait ``interval_s``, or less once every source is quiet; True when it was less."""
        try:
            await asyncio.wait_for(quiet.until_quiet(self._last_barrier), self.interval_s)
        except TimeoutError:
            return False
        return True

    async def checkpoint(self, *, quiet_at: float = 0.0, early: bool = False) -> bool:
        """Take one checkpoint; True once it is complete (``quiet_at`` and ``early``: what
        ``run`` knew of the sources when it started it, for the figures).

        Steps:
        1. Every source emits ``Barrier(cid)`` between two fetches (a finished one ends
           checkpointing: the stream is ending).
        2. Every node acknowledges, within ``timeout_s``, that its snapshot is persisted.
        3. The manifest is written: only now is ``cid`` complete.
        4. Every node learns it: sinks publish the epochs ``cid`` completed.
        """
        if self._ids is not None:
            self.next_id = self._ids()
        checkpoint_id, self.next_id = self.next_id, self.next_id + 1
        self._last_barrier = checkpoint_id
        started = time.perf_counter()
        started_at = time.time()
        # Step 1: barriers.
        try:
            injected = await asyncio.wait_for(asyncio.gather(
                *(self.calls.inject_barrier(key, checkpoint_id) for key in self.sources)),
                self.timeout_s)
        except Exception as exc:  # a source did not take its barrier: this one is given up
            return self._abandon(checkpoint_id, f"barrier not injected: {exc!r}")
        if not all(injected):
            self.sources_finished = True
            return False
        # Step 2: acknowledgements.
        acknowledgements = asyncio.gather(
            *(self.calls.checkpoint_done(key, checkpoint_id) for key in self.nodes))
        # Retrieved whatever happens, so an abandoned one leaves no "never retrieved" warning.
        acknowledgements.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            refs = await asyncio.wait_for(acknowledgements, self.timeout_s)
        except Exception as exc:  # timed out or a node failed: this one is given up
            return self._abandon(checkpoint_id, str(exc) or type(exc).__name__)
        # Step 3: complete.
        snapshots = dict(zip(self.nodes, refs, strict=True))
        await asyncio.to_thread(self.store.write_manifest,
                                Manifest(self.region, checkpoint_id, snapshots))
        failpoints.hit("after_manifest_before_publish")
        # Step 4: commit. A node that does not take it in time publishes with a later commit
        # (a sink publishes every pending epoch up to the one committed); none is waited for
        # past the timeout, so a stuck node cannot stop the region's checkpoints.
        commits = [asyncio.ensure_future(self.calls.commit_checkpoint(key, checkpoint_id))
                   for key in self.nodes]
        _, late = await asyncio.wait(commits, timeout=self.timeout_s)
        if late:
            _log.warning("checkpoint %d of region %s: %d node(s) did not take its commit within "
                         "%g s", checkpoint_id, self.region, len(late), self.timeout_s)
        for commit in commits:
            commit.add_done_callback(lambda done: done.cancelled() or done.exception())
        for commit in commits:
            error = commit.exception() if commit.done() else None
            if error is not None:
                raise error
        figures = self.figures
        figures.completed += 1
        figures.last_completed_id = checkpoint_id
        figures.last_completed_at = time.time()
        figures.last_size_bytes = sum(ref.size for ref in refs)
        figures.last_started_at, figures.last_quiet_at = started_at, quiet_at
        figures.last_started_early = early
        figures.duration.observe(time.perf_counter() - started)
        return True

    def _abandon(self, checkpoint_id: int, why: str) -> bool:
        """Give checkpoint ``checkpoint_id`` up (counted and logged); False."""
        self.figures.abandoned += 1
        _log.warning("checkpoint %d of region %s abandoned: %s", checkpoint_id, self.region, why)
        return False
