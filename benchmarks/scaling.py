"""Keyed parallelism: a CPU-heavy node (a numba user function) at parallelism 1 and 2 on Ray.

The graph is source -> ``heavy`` (per event, a numba loop of ``WORK`` sines) -> sink, 100
keys; ``heavy`` runs as 1 actor, then as 2 shards (each its own process, so its own core).
The source's first batch is a small primer (a node loads its kernels on its first batch); the
rate is the events after it over the time from the sink's first output to its last, so
neither actor start-up nor kernel loading is counted. Then,
unless ``--no-cluster``, the two-node cluster run (``benchmarks.two_node_cluster``) in a process
of its own, since it starts its own Ray.

Each run also prints the CPU seconds of every process while the output flowed (the heavy
shards, the source, the sink, Ray's raylet, the driver), and the table ends with the ceiling
the key split allows: the source waits for the shard owning more of the keys.

Run: ``python -m benchmarks.scaling [--events N] [--repeat N] [--no-cluster]``. Target on a
2-core machine: parallelism 2 at least 1.7x parallelism 1.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numba import njit

import streamdag as sd
from benchmarks.data_plane import CountingSink
from runtime.dataplane.host import RuntimeSettings
from runtime.demo.synthetic import RandomWalkSource
from runtime.runners.ray_runner import RayRunner, ensure_ray
from streamdag.connector import SourceChunk

__all__ = ["heavy_graph", "main"]

#: Sines per event: about 20 us of CPU per event.
WORK = 1_000
#: Events of the source's first batch, during which the nodes load their kernels.
PRIMER = 200


@njit(cache=True)
def burn(prices: np.ndarray) -> np.ndarray:
    """Per event, a sum of ``WORK`` sines around its newest price: pure CPU."""
    out = np.empty(prices.shape[0])
    for e in range(prices.shape[0]):
        x = prices[e, -1]
        total = 0.0
        for i in range(WORK):
            total += math.sin(x + i * 1e-3)
        out[e] = total
    return out


# Loaded from numba's cache when an actor unpickles ``burn`` (importing this module), so
# before the actor reports ready rather than on its first batch.
burn(np.ones((1, 1)))


def heavy_graph(parallelism: int) -> sd.Graph:
    """ticks -> heavy (sharded ``parallelism`` ways) -> out."""
    ticks = sd.source("ticks", topic="bench.ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    # Unshared: the dispatcher runs as it is, so its on-disk cache spares each actor a compile
    # (a frozen copy compiles afresh in every process, inside the timed span).
    heavy = sd.udf(period=1, shareable=False)(burn)(ticks["price"], name="heavy",
                                                    parallelism=parallelism)
    return sd.Graph(f"scaling-{parallelism}", outputs=[heavy.to_topic("bench.heavy",
                                                                      name="out")])


class PrimedWalk:
    """Random-walk ticks over 100 keys, the first read cut to ``PRIMER`` events."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self) -> RandomWalkSource:
        """A reader whose first batch is the primer."""

        class Primed(RandomWalkSource):
            async def read(self, max_records: int, linger_s: float) -> SourceChunk:
                limit = PRIMER if self.emitted == 0 else max_records
                return await super().read(limit, linger_s)

        return Primed(self.total, symbols=100)


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this driver and every process it started (Ray's and the actors')."""
    import psutil

    me = psutil.Process()
    found: dict[int, tuple[str, float]] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            found[process.pid] = (process.name(), times.user + times.system)
        except psutil.Error:
            continue
    return found


def _rate(parallelism: int, events: int, batch: int) -> tuple[float, float, dict[str, float]]:
    """Events/s of one run, its wall seconds, and CPU seconds by role while the output flowed."""
    import ray

    runner = RayRunner(RuntimeSettings(credits=4, max_batch_records=batch))
    started = time.perf_counter()
    running = runner.start(heavy_graph(parallelism), sources={"ticks": PrimedWalk(events)},
                           sinks={"out": CountingSink})
    try:
        actors = [("ticks", 0), ("out", 0)] + [("heavy", s) for s in range(parallelism)]
        roles = {ray.get(running.actor(name, shard).__ray_call__.remote(
            lambda host: os.getpid())): name for name, shard in actors}
        sink = running.actor("out")
        while not ray.get(sink.stats.remote()).events_in:  # the primer's output: warm now
            time.sleep(0.01)
        before = _cpu_seconds()
        result = running.wait(600)
        after = _cpu_seconds()
    finally:
        running.stop()
    out = result.stats["out"]
    cpu: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        role = "driver" if pid == os.getpid() else roles.get(pid, name)
        cpu[role] = cpu.get(role, 0.0) + seconds - before.get(pid, (name, seconds))[1]
    return ((events - PRIMER) / (out.last_output_at - out.first_output_at),
            time.perf_counter() - started, cpu)


def _key_split(shards: int) -> list[float]:
    """The share of the walk's keys (and so of its events) each of ``shards`` shards owns."""
    from runtime.dataplane.exchange import key_shards

    keys = RandomWalkSource(1, symbols=100)._walk.keys
    counts = np.bincount(key_shards(np.asarray(keys), shards), minlength=shards)
    return [float(c) / len(keys) for c in counts]


def main(argv: Sequence[str] | None = None) -> None:
    """Print the parallelism table and the ratio; then the two-node cluster run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each, alternating; the best of each is compared")
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args(argv)
    ensure_ray()
    for parallelism in (1, 2):
        _rate(parallelism, args.batch * 4, args.batch)  # untimed: actors' kernels loaded
    print(f"cpu-heavy node, {args.events:,} events, {os.cpu_count()} cores; CPU seconds by "
          "process while the output flowed (heavy: its shards together)")
    print(f"{'parallelism':>11} {'run':>4} {'events/s':>12} {'wall s':>8}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for run in range(args.repeat):  # alternating, so a busy spell hits both alike
        for parallelism in (1, 2):
            rate, wall, cpu = _rate(parallelism, args.events, args.batch)
            rates[parallelism].append(rate)
            busy = ", ".join(f"{role} {seconds:.2f}" for role, seconds in
                             sorted(cpu.items(), key=lambda item: -item[1]) if seconds >= 0.05)
            print(f"{parallelism:>11} {run:>4} {rate:>12,.0f} {wall:>8.1f}   CPU s: {busy}",
                  flush=True)
    best = {parallelism: max(found) for parallelism, found in rates.items()}
    pairs = sorted(two / one for one, two in zip(rates[1], rates[2], strict=True))
    split = _key_split(2)
    print(f"best: {best[1]:,.0f} and {best[2]:,.0f} events/s; ratio parallelism 2 / 1: "
          f"{best[2] / best[1]:.2f}x best of each, {pairs[len(pairs) // 2]:.2f}x median of "
          f"the runs side by side (target >= 1.7x); load average {os.getloadavg()[0]:.1f}")
    print(f"the 100 keys split {' / '.join(f'{share:.0%}' for share in split)} over the two "
          f"shards: the source waits for the busier one, so {1 / max(split):.2f}x is the "
          "ceiling with two cores and nothing else running")
    if not args.no_cluster:
        import ray

        ray.shutdown()
        print("two-node cluster, heavy shards on both machines "
              "(python -m benchmarks.two_node_cluster --heavy):", flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.two_node_cluster", "--heavy",
                        "--events", str(args.events)],
                       cwd=Path(__file__).resolve().parent.parent, check=False,
                       env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


if __name__ == "__main__":
    main()
