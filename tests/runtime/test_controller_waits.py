"""The controller's waits end: a region's checkpoint coordinator stopped just as a checkpoint's
acknowledgements complete (where Python 3.11's ``asyncio.wait_for`` drops the cancellation)
still stops, a task that never ends is given up on with its stack logged, and a long wait for
the controller's lock logs where its holder waits."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from runtime.checkpoints.coordinator import CheckpointCoordinator
from runtime.checkpoints.quiet import QuietWatch, SourceQuiet
from runtime.checkpoints.store import CheckpointStore, SnapshotRef
from runtime.dataplane.host import RuntimeSettings
from runtime.deployment.controller_waits import WatchedLock
from runtime.deployment.node_actors import NodeActors
from runtime.deployment.node_registry import NodeRegistry, NodeRequest, acquire
from runtime.deployment.region_checkpoints import RegionCheckpoints
from streamdag.cancellation import cancel_and_wait
from streamdag.config import CheckpointSettings


class _Call:
    """``actor.method`` as a Ray handle has it: ``.remote(...)`` gives an awaitable."""

    def __init__(self, method: Any) -> None:
        self.remote = method


class _SourceActor:
    """One source node in process: it takes every barrier, acknowledges and commits every
    checkpoint at once, and while acknowledging checkpoint ``stop_at`` asks for the region's
    stop two loop steps on: after its acknowledgement completed, before the coordinator
    resumed (the moment ``wait_for`` of Python 3.11 returns the result and drops the
    cancellation)."""

    def __init__(self, stop_at: int, stop: Any) -> None:
        self.watch = QuietWatch()
        self.committed: list[int] = []
        self.stopping: asyncio.Task[None] | None = None
        self._stop_at, self._stop = stop_at, stop
        self.inject_barrier = _Call(self._inject_barrier)
        self.checkpoint_done = _Call(self._checkpoint_done)
        self.commit_checkpoint = _Call(self._commit_checkpoint)
        self.source_quiet = _Call(self._source_quiet)

    async def _inject_barrier(self, checkpoint_id: int) -> bool:
        return True

    async def _checkpoint_done(self, checkpoint_id: int) -> SnapshotRef:
        if checkpoint_id == self._stop_at:
            loop = asyncio.get_running_loop()
            loop.call_soon(lambda: setattr(self, "stopping", asyncio.ensure_future(self._stop())))
        return SnapshotRef(f"s/{checkpoint_id}", 1, "0" * 64)

    async def _commit_checkpoint(self, checkpoint_id: int) -> None:
        self.committed.append(checkpoint_id)

    async def _source_quiet(self, known: SourceQuiet | None) -> SourceQuiet:
        return await self.watch.changed(known)


async def test_a_region_stopped_as_its_checkpoint_is_acknowledged_stops_checkpointing() -> None:
    store = CheckpointStore(f"memory://waits-{uuid.uuid4().hex[:8]}")
    actors = NodeActors("live", RuntimeSettings())
    checkpoints = RegionCheckpoints("live", CheckpointSettings(enabled=True, interval_s=0.001,
                                                               timeout_s=5.0), store, actors)
    registry = acquire(NodeRegistry(), "g-1", [NodeRequest("s", "s", "actor-s", "ns", "op",
                                                           "source", ())])
    region = registry.entries["s"].region
    source = _SourceActor(stop_at=2, stop=lambda: checkpoints.stop(region))
    actors.handles["s"] = source
    checkpoints.add_nodes(registry, SimpleNamespace(delivery="exactly_once"),  # type: ignore[arg-type]
                          {"s": "s"}, {"s": SimpleNamespace(source="ticks")},  # type: ignore[dict-item]
                          (("s",),))

    await checkpoints.reconcile(registry)  # the region's coordinator starts
    deadline = asyncio.get_running_loop().time() + 10.0
    while source.stopping is None:
        assert asyncio.get_running_loop().time() < deadline, "checkpoint 2 never acknowledged"
        await asyncio.sleep(0.001)
    done, _ = await asyncio.wait([source.stopping], timeout=10.0)

    assert done == {source.stopping}, "the region's stop did not return within 10 s"
    committed = list(source.committed)
    for _ in range(20):  # nothing checkpoints any more
        await asyncio.sleep(0.002)
    assert source.committed == committed
    assert committed[:2] == [1, 2]


async def test_a_task_that_never_ends_is_given_up_on_with_its_stack_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def _ignores_every_cancellation() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.ensure_future(_ignores_every_cancellation(), loop=None)
    task.set_name("stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="streamdag.controller"):
        ended = await cancel_and_wait(task, timeout_s=0.2, what="the stubborn loop")
    release.set()
    await task

    assert ended is False
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("the stubborn loop did not end within 0.2 s of being cancelled; "
                              "it is left running:\ntask stubborn:\n")
    assert "in _ignores_every_cancellation" in message
    assert "in wait\n" in message  # Event.wait, where it hangs


async def test_a_long_wait_for_the_lock_logs_where_its_holder_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock = WatchedLock("the controller's lock", warn_after_s=0.05)
    release = asyncio.Event()

    async def _holds_the_lock_until_released() -> None:
        async with lock:
            await release.wait()

    holder = asyncio.ensure_future(_holds_the_lock_until_released())
    holder.set_name("health check")
    await asyncio.sleep(0)

    async def _waits() -> None:
        async with lock:
            pass

    waiter = asyncio.ensure_future(_waits())
    waiter.set_name("shutdown")
    with caplog.at_level(logging.WARNING, logger="streamdag.controller"):
        while not caplog.records:
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, waiter), 5.0)

    message = caplog.records[0].getMessage()
    assert message.startswith("task shutdown has waited 0 s for the controller's lock, held for "
                              "0 s by task health check:\n")
    assert "in _holds_the_lock_until_released" in message
    assert not lock.locked()


class _StoppedActor:
    """A node actor whose process is stopped: its calls never answer."""

    def __init__(self) -> None:
        self.report = _Call(self._never)

    async def _never(self) -> None:
        await asyncio.Event().wait()


async def test_an_actor_missing_probes_in_a_row_is_killed_and_counts_as_dead(
    ray_session: None,  # the kill goes through Ray (which refuses the stand-in: it is gone)
) -> None:
    actors = NodeActors("live", RuntimeSettings(), call_timeout_s=0.05)
    actors.unresponsive_after = 2
    stopped = _StoppedActor()
    actors.handles["k"] = stopped

    scraped = [await actors.probe("k") for _ in range(3)]  # a metrics scrape's: not counted
    first = await actors.probe("k", counts_misses=True)
    second = await actors.probe("k", counts_misses=True)
    third = await actors.probe("k", counts_misses=True)

    assert [(p.alive, p.error) for p in scraped] == [(True, None)] * 3
    assert (first.alive, first.error) == (True, None)  # busy, not dead: asked again
    cause = ("its actor did not answer 2 probes in a row within 0.05 s each; it was "
             "killed as unresponsive")
    assert (second.alive, second.error) == (third.alive, third.error) == (False, cause)
    actors.forget("k")  # declared dead: its key may get a new actor
    assert (actors.unresponsive, actors.probes_missed, actors.handles) == ({}, {}, {})


async def test_a_coordinator_cancelled_once_as_its_checkpoint_is_acknowledged_ends() -> None:
    actors = NodeActors("live", RuntimeSettings())
    coordinator = CheckpointCoordinator(
        "live.r", CheckpointStore(f"memory://waits-{uuid.uuid4().hex[:8]}"), actors, ["s"],
        ["s"], interval_s=0.001, timeout_s=5.0)
    running: list[asyncio.Task[None]] = []

    async def cancel_once() -> None:
        running[0].cancel()

    source = _SourceActor(stop_at=2, stop=cancel_once)
    actors.handles["s"] = source
    running.append(asyncio.ensure_future(coordinator.run()))

    done, _ = await asyncio.wait(running, timeout=10.0)

    assert done == set(running) and running[0].cancelled()
    assert source.committed == [1, 2]  # checkpoint 2 had been acknowledged: it completed
