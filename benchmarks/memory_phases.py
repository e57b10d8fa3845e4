"""Where the local runner's memory peak is made: the RSS high-water mark of each phase of a run.

The kernel keeps each process's RSS peak (``VmHWM``), and writing ``5`` to
``/proc/self/clear_refs`` resets it to the RSS of the moment: reset at each phase's start and read
at its end, it gives that phase's own peak, the moments no sampler sees included (a kernel load
maps 20-50 MiB of LLVM for a few milliseconds). Phases, in a fresh process: the interpreter, the
imports (numpy, LLVM's library, numba, the rest), numba's runtime compiled between two releases
of library pages, the graph planned and its hosts made, each generation's kernel loads, the
sources' start, and the run itself (the issue workload: Kafka -> rolling mean of 20 per key ->
Kafka, 500k JSON records by default, as ``benchmarks.memory --runner local`` runs it). Run:
``python -m benchmarks.memory_phases [--records N] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Phase", "PhasePeaks", "main", "phase_lines"]

_MIB = 2**20
_STATUS = re.compile(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+) kB$", re.MULTILINE)


@dataclass(frozen=True)
class Phase:
    """One phase of a process's life: its own RSS peak, and its RSS, anonymous and file pages
    at its end, in bytes; ``ended_s``: seconds from the first mark."""

    name: str
    peak: int
    rss: int
    anon: int
    file: int
    ended_s: float


@dataclass
class PhasePeaks:
    """Ends a phase at each ``mark``: reads this process's peak since the last mark, then
    resets it (Linux; elsewhere every figure reads 0)."""

    phases: list[Phase] = field(default_factory=list)
    _started: float = field(default_factory=time.perf_counter)

    def mark(self, name: str) -> None:
        """End phase ``name`` here and start the next one."""
        sizes = _status()
        self.phases.append(Phase(name, sizes.get("VmHWM", 0), sizes.get("VmRSS", 0),
                                 sizes.get("RssAnon", 0), sizes.get("RssFile", 0),
                                 time.perf_counter() - self._started))
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # VmHWM := VmRSS
        except OSError:
            pass


def _status() -> dict[str, int]:
    try:
        with open("/proc/self/status") as status:
            text = status.read()
    except OSError:
        return {}
    return {name: int(kib) * 1024 for name, kib in _STATUS.findall(text)}


def phase_lines(phases: Sequence[Phase]) -> list[str]:
    """The phases as a table, MiB, the highest peak marked.

    >>> print("\\n".join(phase_lines([Phase("imports", 115 * _MIB, 115 * _MIB, 51 * _MIB,
    ...                                       64 * _MIB, 0.6)])))
    phase                                          peak    RSS   anon   file   ended (MiB, s)
    imports                                       115.0  115.0   51.0   64.0    0.60 <- peak
    """
    top = max((phase.peak for phase in phases), default=0)
    lines = [f"{'phase':<45} {'peak':>5} {'RSS':>6} {'anon':>6} {'file':>6}   ended (MiB, s)"]
    for phase in phases:
        lines.append(f"{phase.name[:45]:<45} {phase.peak / _MIB:>5.1f} {phase.rss / _MIB:>6.1f} "
                     f"{phase.anon / _MIB:>6.1f} {phase.file / _MIB:>6.1f} {phase.ended_s:>7.2f}"
                     + (" <- peak" if phase.peak == top else ""))
    return lines


def _marked(peaks: PhasePeaks, before: Callable[[], str], after: Callable[[], str],
            call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``call`` with the phase before it ended as ``before()`` and its own as ``after()``."""
    async def marked(*args: Any, **kwargs: Any) -> Any:
        peaks.mark(before())
        try:
            return await call(*args, **kwargs)
        finally:
            peaks.mark(after())
    return marked


def _child(bootstrap: str, topic: str, records: int) -> list[Phase]:
    """The run in this (fresh) process, its phases marked."""
    peaks = PhasePeaks()
    peaks.mark("interpreter, this benchmark's modules")
    import numpy  # noqa: F401  # each import its own phase
    peaks.mark("import numpy")
    import llvmlite.binding  # noqa: F401
    peaks.mark("import llvmlite.binding (LLVM's library)")
    import numba  # noqa: F401
    peaks.mark("import numba")
    from benchmarks.memory import _binding, _settings
    from benchmarks.startup import replay_graph
    from runtime.runners import local_runner

    peaks.mark("import streamdag, the runner, aiokafka")
    # The runner's steps, each a phase: these wrappers only mark, the steps are the runner's.
    from runtime.runners.resident_pages import start_numba_runtime_between_releases as start

    def runtime_marked(*args: Any, **kwargs: Any) -> int:
        peaks.mark("the run's start")
        try:
            return start(*args, **kwargs)
        finally:
            peaks.mark("numba's runtime, between two releases")

    generation = [0]

    def made() -> str:
        generation[0] += 1
        return ("graph planned, first hosts made" if generation[0] == 1
                else f"hosts made, subscribed ({generation[0]})")

    # Patched for this process only, by name: the runner looks each of them up as it runs.
    nodes = local_runner.LocalNodes
    setattr(local_runner, "start_numba_runtime_between_releases", runtime_marked)  # noqa: B010
    setattr(nodes, "wait_ready", _marked(  # noqa: B010
        peaks, made, lambda: f"kernels loaded, connectors opened ({generation[0]})",
        nodes.wait_ready))
    setattr(nodes, "start_sources", _marked(  # noqa: B010
        peaks, lambda: "subscribed", lambda: "released, sources started", nodes.start_sources))
    runner = local_runner.LocalRunner(_settings(), *_binding(bootstrap).defaults())
    result = runner.run(replay_graph(topic, f"{topic}.phases.{time.time_ns()}"), timeout_s=600)
    peaks.mark("the run: read, compute, produce")
    assert result.stats["out"].events_in == records - 100 * 19, result.stats
    return peaks.phases


def _run(bootstrap: str, records: int) -> None:
    from benchmarks.kafka_baselines import produce_input
    from benchmarks.memory import llvm_fault_bytes

    topic = f"bench.memory-phases.{time.strftime('%H%M%S')}"
    asyncio.run(produce_input(bootstrap, topic, records))
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_phases", "--child", "--bootstrap", bootstrap,
         "--topic", topic, "--records", str(records)],
        check=True, capture_output=True, text=True).stdout
    phases = [Phase(**row) for row in json.loads(output.strip().splitlines()[-1])]
    fault = llvm_fault_bytes()
    print(f"the local runner's phases: {records:,} JSON records, 100 keys, 4 partitions, rolling "
          f"mean of 20; load average {os.getloadavg()[0]:.1f}; LLVM's library maps "
          f"{'?' if fault is None else fault >> 10} KiB per first touch here "
          "(python -m benchmarks.memory explains)")
    print("\n".join(phase_lines(phases)))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the workload on an embedded broker (or --bootstrap) and print each phase's peak."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        phases = _child(args.bootstrap, args.topic, args.records)
        print(json.dumps([asdict(phase) for phase in phases]))
        return
    if args.bootstrap:
        _run(args.bootstrap, args.records)
        return
    from connectors.broker import EmbeddedBroker

    with EmbeddedBroker.start(".state/bench-broker") as broker:
        _run(broker.bootstrap_servers, args.records)


if __name__ == "__main__":
    main()
