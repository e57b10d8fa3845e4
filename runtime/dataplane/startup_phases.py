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
from dataclasses import dataclass

__all__ = ["CODE_LOADED_AT", "StartupPhases", "process_start_time"]

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
