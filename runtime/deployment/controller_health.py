"""The controller's health checks: probing node actors, declaring crashes, recovering regions.

A mixin of ``Controller``: it uses the controller's registry, records, actors and lock. Every
``health_interval_s`` the controller probes every live node actor; a dead one counts as a
crash (its region recovers from its checkpoint, or holds and fails its graphs: ``crashes``),
a failed node likewise, and a submission whose output nodes all finished completes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from runtime.deployment.controller_state import ControllerState
from runtime.deployment.crashes import hold_nodes, respond_to_crashes
from runtime.deployment.lifecycle import SubmissionState
from runtime.deployment.node_registry import mark_alive, mark_dead

if TYPE_CHECKING:
    from runtime.deployment.node_actors import NodeProbe

__all__ = ["HealthChecks"]

_log = logging.getLogger("streamdag.controller")
_S = SubmissionState


class HealthChecks(ControllerState):
    """Probes, crashes and recoveries of a controller's node actors (a mixin of ``Controller``)."""

    if TYPE_CHECKING:
        async def _move(self, submission: str, target: SubmissionState,
                        cause: str | None = None) -> None: ...

        async def _fail(self, submission: str, cause: str) -> None: ...

        def _save_registry(self) -> None: ...

    async def check_health(self) -> list[str]:
        """Probe every node actor: dead ones fail their submissions; returns what was found.

        A dead actor counts as a crash: its region holds, and every submission with a node in
        it ends FAILED with the cause (``crashes``). A submission using a failed node ends
        FAILED too; one whose output nodes all finished ends COMPLETED.

        Steps:
        1. Every live node actor is probed, outside the lock: a probe takes up to
           ``call_timeout_s``, and submissions, removals and shutdown need not wait for it.
        2. Under the lock, what the probes found is judged against the registry as it is
           now: the probe of an actor retired or replaced (recovered) meanwhile is dropped.
        3. Dead actors are declared; with checkpoints, failed nodes and regions recover
           (probed again under the lock, as the recovered actors are new).
        4. Submissions with a failed node fail, those whose outputs all finished complete.
        5. Idle pool actors that died are replaced (the pool keeps its own state).
        """
        async with self._lock:
            await self._ensure_started()
            probed = {key: self._actors.handles.get(key) for key in self._registry.live_keys()}
        # Step 1: the probes.
        found = await self._probe_all(probed, counts_misses=True)
        async with self._lock:
            # Step 2: only what is still so.
            live = self._registry.live_keys()
            probes = {key: probe for key, probe in found.items()
                      if key in live and self._actors.handles.get(key) is probed[key]}
            # Step 3: crashes and recoveries.
            problems = await self._declare_dead(
                {key: probe.error or "its actor died" for key, probe in probes.items()
                 if not probe.alive})
            if self._checkpoints is not None:  # failed nodes and checkpoints recover too
                if problems:  # regions recovered: what their old actors said is gone
                    probes = await self._probe_all(self._registry.live_keys())
                failing = {key: f"failed: {probe.error}" for key, probe in probes.items()
                           if probe.alive and probe.error and key in self._registry.entries}
                failing.update(self._checkpoints.failed_nodes(self._registry))
                if failing:  # recover_regions names each cause's node
                    problems += [f"node {self._registry.entries[key].name!r}: {cause}; its "
                                 "region recovers" for key, cause in failing.items()]
                    await self._recover_or_fail(failing)
                    probes = await self._probe_all(self._registry.live_keys())
            # Step 4: failed and completed submissions.
            for record in list(self._records.values()):
                if record.state is not _S.EXECUTING:
                    continue
                errors = [f"node {n.name!r} failed: {probes[n.key].error}" for n in record.nodes
                          if n.key in probes and probes[n.key].alive and probes[n.key].error]
                if errors:
                    problems.append(f"submission {record.id}: {'; '.join(errors)}")
                    await self._fail(record.id, "; ".join(errors))
                elif all(n.key in probes and probes[n.key].finished
                         for n in record.nodes if n.leaf):
                    await self._move(record.id, _S.COMPLETED, "every output finished")
        # Step 5: pool actors that died are replaced.
        for name in await self._pool.check():
            problems.append(f"pool actor {name} died; a new one starts")
        return problems

    async def _declare_dead(self, causes: Mapping[str, str]) -> list[str]:
        """Record actors as dead; their regions hold and their submissions fail (``crashes``)."""
        if not causes:
            return []
        problems = []
        for key, cause in causes.items():
            entry = self._registry.entries[key]
            self._crashes += 1
            problems.append(f"node {entry.name!r} (actor {entry.actor_name}) died: {cause}")
            self._actors.forget(key)
        self._registry = mark_dead(self._registry, causes)
        self._save_registry()
        await self._recover_or_fail(causes)
        return problems

    async def _recover_or_fail(self, causes: Mapping[str, str]) -> None:
        """Recover the regions of ``causes`` (crashed or failed nodes), or fail their graphs."""
        if self._checkpoints is not None:
            recovered, causes = await self._checkpoints.recover_regions(self._registry, causes)
            await self._tag_queries.after_recovery(recovered, self._actors)
            self._registry = mark_alive(self._registry, recovered)
            self._registry = mark_dead(self._registry, causes)
            self._save_registry()
        if not causes:
            return
        # Producers must not drop a crashed node and read on: the whole region holds first.
        response = respond_to_crashes(self._registry, self._records.values(), causes)
        await hold_nodes(self._actors, response.holds)
        for submission, cause in response.failures.items():
            await self._fail(submission, cause)


    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            try:
                for problem in await self.check_health():
                    _log.warning("%s", problem)
            except Exception:  # the loop must outlive one failed round
                _log.exception("health check of deployment %r failed", self.deployment)

    async def _probe_all(self, keys: Iterable[str], *,
                         counts_misses: bool = False) -> dict[str, NodeProbe]:
        ordered = sorted(keys)
        probes = await asyncio.gather(*(self._actors.probe(key, counts_misses=counts_misses)
                                        for key in ordered))
        for key, probe in zip(ordered, probes, strict=True):
            if probe.stats is not None:
                self._stats[key] = probe.stats
        return dict(zip(ordered, probes, strict=True))

    async def _refresh_stats(self, keys: Iterable[str]) -> None:
        await self._probe_all(self._registry.live_keys().intersection(keys))

