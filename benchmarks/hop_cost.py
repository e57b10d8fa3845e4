"""The per-batch CPU of a hop between node hosts, over real data connections, without Ray.

Run: ``python -m benchmarks.hop_cost [--rate 10000] [--records 80] [--seconds 8] [--profile]
[--profile-side mean]``.

Three processes, one node host each, as the Ray runner places them (one actor per node), wired
with the data connections the Ray path uses (``open_data_port`` / ``SocketTarget``): a paced
source ``ticks`` (batches of ``--records`` records of 100 keys, each with its watermark, at
``--rate`` events/s, as the issue's 10k events/s workload arrives), the rolling mean of 20 per
key ``mean``, and a sink ``out`` that counts what it is given. No Kafka: what is measured is
the hop's fixed Python cost per batch, the source's send half, the mean's whole path
(receive, kernel, send) and the sink's receive half.

It prints, over a window after a warm-up, each process's CPU seconds and CPU per batch (µs),
and with ``--profile`` the number of Python function calls per batch on each side and the top
functions of one side (``--profile-side``) by cumulative time (cProfile; the CPU figures of a
profiled run are inflated by the profiler, so compare them only without it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing
import pstats
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

__all__ = ["SideFigures", "main", "measure"]

_SIDES = ("ticks", "mean", "out")
_KEYS = 100


@dataclass(frozen=True)
class SideFigures:
    """One process's figures over the measured window."""

    side: str
    cpu_seconds: float
    batches: int
    #: Of ``cpu_seconds``, the kernel's share (system calls: the sockets, the event loop's
    #: polls, loopback TCP).
    system_seconds: float
    #: Python function calls over the window (profiled runs only).
    calls: int = 0
    #: The top functions by cumulative time (profiled runs of the profiled side only).
    profile: str = ""

    @property
    def cpu_us_per_batch(self) -> float:
        """CPU microseconds per batch this process handled."""
        return 1e6 * self.cpu_seconds / max(1, self.batches)


class _PacedSource:
    """Batches of ``records`` records of 100 keys at ``rate`` events/s, each with a watermark."""

    def __init__(self, rate: float, records: int) -> None:
        self._period = records / rate
        self._records = records
        self._next = 0.0
        self._read = 0
        rng = np.random.default_rng(7)
        self._keys = np.array([b"SYM%02d" % (i % _KEYS) for i in range(records * _KEYS)])
        self._prices = 100.0 + rng.standard_normal(records * _KEYS).cumsum()

    async def open(self) -> None:
        """Nothing to connect."""

    async def read(self, max_records: int, linger_s: float) -> Any:
        """The next batch, once its time has come."""
        from streamdag.batch import Batch
        from streamdag.connector import SourceChunk

        now = time.perf_counter()
        self._next = max(self._next + self._period, now)
        await asyncio.sleep(self._next - now)
        start = (self._read * self._records) % len(self._keys)
        ts = time.time_ns() - np.arange(self._records, 0, -1, dtype=np.int64) * 1000
        self._read += 1
        batch = Batch(ts, self._keys[start:start + self._records],
                      {"price": self._prices[start:start + self._records]})
        return SourceChunk(batch.read_only(), watermark=int(ts[-1]) + 1)

    def position(self) -> dict[int, int]:
        """Records read so far, as one partition's offset."""
        return {0: self._read * self._records}

    async def close(self) -> None:
        """Nothing to release."""


class _CountingSink:
    """Counts records written; publishes nothing."""

    def __init__(self) -> None:
        self.events = 0

    async def open(self) -> None:
        """Nothing to connect."""

    async def write(self, batch: Any) -> None:
        """Count the batch's records."""
        self.events += len(batch)

    async def flush(self) -> None:
        """Nothing buffered."""

    async def close(self) -> None:
        """Nothing to release."""


def _configs() -> dict[str, Any]:
    import streamdag as sd

    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=20, name="mean")
    out = mean.to_topic("out", name="out")
    return {"ticks": ticks.config(), "mean": mean.config(), "out": out.config()}


def _side(side: str, conn: Connection, rate: float, records: int, profiled: bool,
          sort: str) -> None:
    asyncio.run(_serve_side(side, conn, rate, records, profiled, sort))


async def _serve_side(side: str, conn: Connection, rate: float, records: int,
                      profiled: bool, sort: str) -> None:
    from runtime.dataplane.host import NodeHost
    from runtime.dataplane.sockets import SocketTarget

    config = _configs()[side]
    host = NodeHost(config,
                    source=(lambda: _PacedSource(rate, records)) if side == "ticks" else None,
                    sink=_CountingSink if side == "out" else None)
    await host.ready()
    address = None
    if side != "ticks":
        host.connect_input(f"in->{side}", 0)
        address = await host.open_data_port("127.0.0.1")
    conn.send(address)
    profile = cProfile.Profile(time.process_time)  # CPU, not wall: idle waits are free
    marked = (resource.getrusage(resource.RUSAGE_SELF), 0)
    while True:
        command, argument = await asyncio.to_thread(conn.recv)
        if command == "subscribe":
            host.subscribe(f"in->{argument[0]}", SocketTarget(*argument[1]))
            conn.send(None)
        elif command == "start":
            await host.start_source()
            conn.send(None)
        elif command == "begin":
            if profiled:
                profile.enable()
            marked = (resource.getrusage(resource.RUSAGE_SELF), _batches(host, side))
            conn.send(None)
        elif command == "end":
            now = resource.getrusage(resource.RUSAGE_SELF)
            batches = _batches(host, side) - marked[1]
            system = now.ru_stime - marked[0].ru_stime
            cpu = now.ru_utime - marked[0].ru_utime + system
            calls, top = 0, ""
            if profiled:
                profile.disable()
                stats = pstats.Stats(profile, stream=io.StringIO())
                calls = int(stats.total_calls)  # type: ignore[attr-defined]  # untyped
                shown, dump = argument
                if shown:
                    if dump:
                        profile.dump_stats(dump)
                    text = io.StringIO()
                    pstats.Stats(profile, stream=text).sort_stats(sort).print_stats(35)
                    top = text.getvalue()
            conn.send(SideFigures(side, cpu, batches, system, calls, top))
        elif command == "stop":
            await host.stop()
            conn.send(None)
            return


def _batches(host: Any, side: str) -> int:
    stats = host.worker.stats
    return int(stats.batches_out if side == "ticks" else stats.batches_in)


def measure(rate: float = 10_000, records: int = 80, seconds: float = 8.0,
            warm_up_s: float = 1.5, profile: bool = False,
            profile_side: str = "mean", dump: str = "",
            sort: str = "cumulative") -> list[SideFigures]:
    """Run the three hosts, each in its own process; their figures over ``seconds``.

    ``dump``: a file to write the profiled side's raw cProfile statistics to (``pstats``).
    """
    context = multiprocessing.get_context("spawn")
    pipes: dict[str, Connection] = {}
    processes = []
    for side in _SIDES:
        parent, child = context.Pipe()
        process = context.Process(target=_side,
                                  args=(side, child, rate, records, profile, sort),
                                  daemon=True)
        process.start()
        pipes[side], processes = parent, [*processes, process]

    def ask(side: str, command: str, argument: Any = None) -> Any:
        pipes[side].send((command, argument))
        return pipes[side].recv()

    try:
        # Step 1: every host ready (kernels loaded), receivers listening; then wired.
        addresses = {side: pipes[side].recv() for side in _SIDES}
        ask("ticks", "subscribe", ("mean", addresses["mean"]))
        ask("mean", "subscribe", ("out", addresses["out"]))
        # Step 2: the source runs; the window opens after a warm-up, on every side at once.
        ask("ticks", "start")
        time.sleep(warm_up_s)
        for side in _SIDES:
            ask(side, "begin")
        time.sleep(seconds)
        figures = [ask(side, "end", (side == profile_side, dump)) for side in _SIDES]
        for side in _SIDES:
            ask(side, "stop")
        return figures
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def _table(figures: Sequence[SideFigures], rate: float, records: int, seconds: float,
           profiled: bool) -> str:
    lines = [f"hop cost: ticks -> mean (rolling mean of 20, {_KEYS} keys) -> out, "
             f"{records}-record batches at {rate:,.0f} events/s, {seconds:g} s window, "
             "three processes, data connections"
             + (" (profiled: CPU inflated by cProfile)" if profiled else ""),
             f"{'side':<6} {'batches':>8} {'CPU s':>7} {'CPU us/batch':>13} {'of it system':>13}"
             + (f" {'calls/batch':>12}" if profiled else "")]
    for f in figures:
        lines.append(f"{f.side:<6} {f.batches:>8} {f.cpu_seconds:>7.3f} "
                     f"{f.cpu_us_per_batch:>13.0f} "
                     f"{1e6 * f.system_seconds / max(1, f.batches):>13.0f}"
                     + (f" {f.calls / max(1, f.batches):>12.0f}" if profiled else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure and print the per-batch CPU of each side of the hops."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10_000, help="events per second")
    parser.add_argument("--records", type=int, default=80, help="records per batch")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window")
    parser.add_argument("--repeat", type=int, default=1, help="runs, one after another")
    parser.add_argument("--profile", action="store_true",
                        help="calls per batch, and the top functions of --profile-side")
    parser.add_argument("--profile-side", choices=_SIDES, default="mean")
    parser.add_argument("--profile-dump", default="", metavar="FILE",
                        help="write the profiled side's raw statistics there (pstats)")
    parser.add_argument("--sort", default="cumulative", help="pstats order of the top list")
    args = parser.parse_args(argv)
    runs: list[list[SideFigures]] = []
    for _ in range(args.repeat):
        figures = measure(args.rate, args.records, args.seconds, profile=args.profile,
                          profile_side=args.profile_side, dump=args.profile_dump,
                          sort=args.sort)
        runs.append(figures)
        print(_table(figures, args.rate, args.records, args.seconds, args.profile), flush=True)
        for f in figures:
            if f.profile:
                print(f"\n{f.side}: top functions ({args.sort})\n{f.profile}", flush=True)
    if len(runs) > 1:
        medians = {side: statistics.median(run[index].cpu_us_per_batch for run in runs)
                   for index, side in enumerate(_SIDES)}
        print(f"median of {len(runs)} runs, CPU us per batch: "
              + ", ".join(f"{side} {value:.0f}" for side, value in medians.items())
              + f"; all three {sum(medians.values()):.0f}", flush=True)


if __name__ == "__main__":
    main()
