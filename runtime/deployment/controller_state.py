"""What the controller's mixins read and call on it: one declaration of the controller's state.

``HealthChecks``, ``Reports`` and ``StopAndResume`` are parts of ``Controller``; each reads
the controller's registry, records, actors and lock. Their type-only declarations live here
once; ``Controller`` sets every attribute in its constructor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from pathlib import Path

    from runtime.dataplane.stats import LatencyHistogram, NodeStats
    from runtime.deployment.controller_options import ControllerOptions
    from runtime.deployment.controller_waits import WatchedLock
    from runtime.deployment.lifecycle import SubmissionRecord
    from runtime.deployment.node_actors import NodeActors
    from runtime.deployment.node_registry import NodeRegistry
    from runtime.deployment.region_checkpoints import RegionCheckpoints
    from runtime.deployment.tag_queries import TagQueries
    from runtime.deployment.warm_pool import WarmPool

__all__ = ["ControllerState"]


class ControllerState:
    """The controller's attributes and shared steps, declared for its mixins' type checks."""

    if TYPE_CHECKING:
        deployment: str
        state_dir: Path
        options: ControllerOptions
        _started: bool
        _lock: WatchedLock
        _registry: NodeRegistry
        _records: dict[str, SubmissionRecord]
        _checkpoints: RegionCheckpoints | None
        _actors: NodeActors
        _stats: dict[str, NodeStats]
        _tag_queries: TagQueries
        _retiring: dict[str, asyncio.Task[None]]
        _diff_duration: LatencyHistogram
        _nodes_new_total: int
        _nodes_reused_total: int
        _last_reuse_ratio: float
        _crashes: int
        _pool: WarmPool

        async def _ensure_started(self) -> None: ...

        def _record(self, submission_id: str) -> SubmissionRecord: ...
