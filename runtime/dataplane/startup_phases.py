"""Where a node's first seconds go: wall-clock times of its start-up steps, taken in its process.

A node host records each step as it passes it; ``NodeHost.startup_phases()`` hands the record
over (one actor call), and ``benchmarks.startup`` lines the nodes' records up against the
driver's launch. Times are ``time.time()`` (comparable across the processes of one machine);
a step not reached yet is 0.

>>> phases = StartupPhases(process_started=100.0, constructed=101.5, code_loaded=101.2,
...                        warm_up_started=101.6, warmed=101.9, connected=101.8, ready=101.9)
>>> phases.spans()["process start -> constructed"]
1.5
>>> phases.spans()["ready -> source started"] is None
True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

__all__ = ["CODE_LOADED_AT", "LaunchPhases", "StartupPhases", "process_start_time"]

#: When this process loaded the node host's code (this module comes with it): a Ray worker
#: that preloads it does so before it takes work, others when they receive their actor.
CODE_LOADED_AT = time.time()


def process_start_time() -> float:
    """When this process started (``time.time()`` scale); 0 when the system cannot say."""
    try:
        import psutil

        return float(psutil.Process(os.getpid()).create_time())
    except Exception:  # a sandbox without /proc: the span is then left out
        return 0.0


@dataclass
class StartupPhases:
    """Wall-clock times (``time.time()``) at which one node passed its start-up steps."""

    #: The process hosting the node started (a Ray worker: spawned, or taken from the pool).
    process_started: float = 0.0
    #: The host's constructor began: the actor was scheduled, its arguments arrived.
    constructed: float = 0.0
    #: The host's code was loaded in the process (``CODE_LOADED_AT``).
    code_loaded: float = 0.0
    #: Kernels (the operator's and the connectors') began and ended loading or compiling.
    warm_up_started: float = 0.0
    warmed: float = 0.0
    #: The connectors were open (Kafka clients connected); they connect while kernels load.
    connected: float = 0.0
    #: The node reported ready.
    ready: float = 0.0
    #: Sources: reading began, and the first read that returned records ended.
    source_started: float = 0.0
    first_read: float = 0.0
    #: The node emitted its first records (to its subscribers, or a sink to its topic).
    first_output: float = 0.0

    def spans(self) -> dict[str, float | None]:
        """Seconds between consecutive steps, by name (None where a step was not reached)."""
        pairs = {
            "process start -> code loaded": (self.process_started, self.code_loaded),
            "process start -> constructed": (self.process_started, self.constructed),
            "constructed -> warm-up started": (self.constructed, self.warm_up_started),
            "kernel warm-up": (self.warm_up_started, self.warmed),
            "connectors open": (self.warm_up_started, self.connected),
            "constructed -> ready": (self.constructed, self.ready),
            "ready -> source started": (self.ready, self.source_started),
            "source started -> first read": (self.source_started, self.first_read),
            "ready -> first output": (self.ready, self.first_output),
        }
        return {name: round(end - start, 6) if start and end else None
                for name, (start, end) in pairs.items()}

    @staticmethod
    def now() -> float:
        """The clock steps are recorded with."""
        return time.time()


@dataclass
class LaunchPhases:
    """Wall-clock times (``time.time()``) at which a runner's start passed its steps, in the
    driver; each node's own steps are its ``StartupPhases``.

    >>> phases = LaunchPhases(launched=10.0, planned=10.1, ray_ready=12.0, created=12.2,
    ...                       generations_ready=[13.0, 13.4], sources_started=13.5)
    >>> phases.spans()["generation 2 ready"], phases.spans()["launch -> sources started"]
    (0.4, 3.5)
    """

    #: ``start`` was called.
    launched: float = 0.0
    #: The graph was checked and planned (hosts, edges, shards).
    planned: float = 0.0
    #: Ray was connected (or started).
    ray_ready: float = 0.0
    #: Every actor's creation was asked for (they start in parallel).
    created: float = 0.0
    #: Each generation was ready and wired to its consumers, downstream (sinks) first.
    generations_ready: list[float] = field(default_factory=list)
    #: The sources were told to read.
    sources_started: float = 0.0

    def spans(self) -> dict[str, float | None]:
        """Seconds of each step after the one before it, by name, and launch to the last."""
        steps = [("planned", self.planned), ("Ray connected or started", self.ray_ready),
                 ("actors asked for", self.created),
                 *((f"generation {i + 1} ready", at)
                   for i, at in enumerate(self.generations_ready)),
                 ("sources started", self.sources_started)]
        spans: dict[str, float | None] = {}
        before = self.launched
        for name, at in steps:
            spans[name] = round(at - before, 6) if before and at else None
            before = at or before
        last = self.sources_started
        spans["launch -> sources started"] = (round(last - self.launched, 6)
                                              if last and self.launched else None)
        return spans
