"""Checkpoints: their cost on the Kafka workload, recovery time, and a big state's checkpoint.

1. Overhead: Kafka -> rolling mean of 20 per key -> Kafka (the kafka_end_to_end replay, 100
   keys, 4 partitions) on the Ray runner, checkpoints off (sinks publish at once), then every
   1 s with exactly-once sinks, in ``--pairs`` pairs of neighbouring runs (off, on, off, on,
   ...) in one run on one broker, after one untimed warm-up run of each. Per pair: events/s
   launch to last output and steady (first read to last output), and the ratios on/off; then
   the median of the pairs' ratios with their spread (a ratio of neighbours cancels most of
   a shared box's drifting load, which a ratio of medians over the whole run does not), and
   each process's CPU seconds per million records in both modes: source, mean and sink
   actors, the embedded broker, and the driver (the checkpoint coordinator runs in it). That
   CPU holds what a process spends per second as well (Ray's own threads), so a slower run
   shows a little more.
2. Recovery: a live stream through the same graph, kill -9 of the interior actor; seconds from
   the kill to the first output of the restored graph, over ``--kills`` kills.
3. State: a rolling mean of 50 over 100k keys, full; one node's checkpoint (copy, pickle,
   durable write) timed and sized.

Run: ``python -m benchmarks.checkpoints [--records N] [--pairs P] [--kills K] [--keys K]
[--only overhead|recovery|state]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import ray

import streamdag as sd
from benchmarks.kafka_baselines import produce_input
from connectors.broker import EmbeddedBroker
from connectors.source_bounds import Timestamp
from connectors.topics import ensure_topics
from runtime.checkpoints.store import CheckpointStore
from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.messages import Barrier, Watermark
from runtime.dataplane.worker import NodeWorker
from runtime.demo.job import TickProducer
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.ray_runner import RayRunner, ensure_ray
from streamdag.batch import Batch
from streamdag.config import CheckpointSettings

__all__ = ["ReplayRun", "main", "overhead_table"]

SETTINGS = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.005)


def _graph(source: str, sink: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=source, key="key", time="ts", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=20, name="mean")
    return sd.Graph("replay", outputs=[mean.to_topic(sink, name="out")])


#: The actors whose CPU the overhead measurement reports: source, interior node, sink.
_ACTORS = ("ticks", "mean", "out")


def _replay(bootstrap: str, source: str, records: int,
            checkpoints: CheckpointSettings | None) -> ReplayRun:
    """One bounded replay of ``source``: events/s launch to the last output published, and
    steady (the source's first output to the last output published: no actor start-up); each
    process's CPU seconds from the graph's start (its actors ready) to the end of the stream
    (the driver's too: the checkpoint coordinator runs in it); and the source's batches."""
    # The replay publishes to its own graph's topic, on purpose (replay_prefix="").
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, start="earliest",
                           end=Timestamp(time.time_ns()), replay_prefix="")
    tag = "on" if checkpoints else "off"
    runner = RayRunner(SETTINGS, *binding.defaults(), checkpoints=checkpoints)
    started = time.perf_counter()
    running = runner.start(_graph(source, f"{source}.{tag}"))
    try:
        processes = {name: psutil.Process(ray.get(running.actor(name).__ray_call__.remote(
            lambda _: os.getpid()))) for name in _ACTORS}
        processes.update(_brokers(), driver=psutil.Process())
        before = {name: sum(process.cpu_times()[:2]) for name, process in processes.items()}
        result = running.wait(900)
        seconds, ended_at = time.perf_counter() - started, time.time()
        cpu = {name: sum(process.cpu_times()[:2]) - before[name]
               for name, process in processes.items()}
    finally:
        running.stop()
    assert result.stats["out"].events_in == records - 100 * 19
    return ReplayRun(records / seconds,
                     records / (ended_at - result.stats["ticks"].first_output_at), cpu,
                     result.stats["ticks"].batches_out)


def _brokers() -> dict[str, psutil.Process]:
    """The embedded broker this process started, if it did (its CPU is reported too)."""
    found = [child for child in psutil.Process().children(recursive=True)
             if child.name().startswith("tansu")]
    return {"broker": found[0]} if found else {}


def overhead(bootstrap: str, records: int, pairs: int) -> None:
    """Throughput and CPU with checkpoints off and on (1 s), in ``pairs`` alternating pairs.

    Both modes run once untimed first, so every timed run finds the kernels compiled and
    cached and the topics' segments warm. Then off, on, off, on...: each pair is two
    neighbouring runs, so a change of the box's load between pairs cancels out of the pair's
    ratio. The modes differ only in checkpoints and delivery (the same records and sink
    settings: off publishes at once, on is exactly-once).
    """
    source = f"bench.ckpt.{time.strftime('%H%M%S')}"
    asyncio.run(produce_input(bootstrap, source, records))
    folder = tempfile.mkdtemp(prefix="bench-checkpoints-")
    modes: dict[str, CheckpointSettings | None] = {
        "off": None, "on": CheckpointSettings(url=Path(folder).as_uri(), interval_s=1.0)}
    for settings in modes.values():
        _replay(bootstrap, source, records, settings)
    runs: dict[str, list[ReplayRun]] = {"off": [], "on": []}
    loads = [os.getloadavg()[0]]
    for _ in range(pairs):
        for mode, settings in modes.items():
            runs[mode].append(_replay(bootstrap, source, records, settings))
            loads.append(os.getloadavg()[0])
    print(f"\n1. overhead: {records:,} records, Ray runner, {pairs} pairs of runs (off, on, "
          f"off, on, ...) after one untimed warm-up of each, load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f}")
    for line in overhead_table(records, runs["off"], runs["on"]):
        print(f"   {line}")


@dataclass(frozen=True)
class ReplayRun:
    """One timed replay: events/s launch to last output, steady events/s, CPU s by process,
    and the batches its source emitted."""

    rate: float
    steady: float
    cpu: dict[str, float]
    source_batches: int = 0


def overhead_table(records: int, off: Sequence[ReplayRun], on: Sequence[ReplayRun]) -> list[str]:
    """The overhead measurement's table: per-pair ratios on/off (median and spread), and CPU
    seconds per million records of each process in both modes.

    >>> off = [ReplayRun(100.0, 110.0, {"ticks": 1.0, "broker": 2.0}),
    ...        ReplayRun(80.0, 90.0, {"ticks": 1.2, "broker": 2.0})]
    >>> on = [ReplayRun(95.0, 110.0, {"ticks": 1.1, "broker": 2.2}),
    ...       ReplayRun(84.0, 81.0, {"ticks": 1.2, "broker": 2.4})]
    >>> print("\\n".join(overhead_table(2_000_000, off, on)))
    pair  off events/s   on events/s   ratio   steady ratio   CPU ratio
       1           100            95   0.950          1.000       1.100
       2            80            84   1.050          0.900       1.125
    median of pairs (spread): ratio 1.000 (0.950-1.050), steady 0.950 (0.900-1.000)
                              CPU ratio 1.112 (1.100-1.125)
    CPU s per million records (median of runs):
    process       off        on    on/off
    ticks       0.550     0.575     1.045
    broker      1.000     1.150     1.150
    total       1.550     1.725     1.113
    """
    names = [name for name in off[0].cpu if all(name in run.cpu for run in (*off, *on))]
    pairs = list(zip(off, on, strict=True))
    ratios = [b.rate / a.rate for a, b in pairs]
    steady = [b.steady / a.steady for a, b in pairs]
    cpu = [sum(b.cpu[n] for n in names) / sum(a.cpu[n] for n in names) for a, b in pairs]
    lines = ["pair  off events/s   on events/s   ratio   steady ratio   CPU ratio"]
    lines += [f"{i:>4}{a.rate:>14,.0f}{b.rate:>14,.0f}{ratios[i - 1]:>8.3f}"
              f"{steady[i - 1]:>15.3f}{cpu[i - 1]:>12.3f}"
              for i, (a, b) in enumerate(pairs, start=1)]
    lines += [f"median of pairs (spread): ratio {_spread(ratios)}, steady {_spread(steady)}",
              f"{'':<26}CPU ratio {_spread(cpu)}"]
    lines += ["CPU s per million records (median of runs):",
              "process       off        on    on/off"]
    per_million = {mode: {n: 1e6 * _median([run.cpu[n] for run in runs]) / records
                          for n in names} for mode, runs in (("off", off), ("on", on))}
    for name in (*names, "total"):
        a, b = (sum(per_million[mode].values()) if name == "total"
                else per_million[mode][name] for mode in ("off", "on"))
        lines.append(f"{name:<7}{a:>10.3f}{b:>10.3f}{b / a:>10.3f}")
    batches = [_median([run.source_batches for run in runs]) for runs in (off, on)]
    if all(batches):
        lines.append(f"source batches per run (median): off {batches[0]:,.0f}, "
                     f"on {batches[1]:,.0f}")
    return lines


def _spread(values: Sequence[float]) -> str:
    return f"{_median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _median(values: Sequence[float]) -> float:
    return float(np.median(values))


def recovery(bootstrap: str, kills: int) -> None:
    """Seconds from kill -9 of the interior actor to the restored graph's first output."""
    topic = f"bench.recover.{time.strftime('%H%M%S')}"
    asyncio.run(ensure_topics(bootstrap, {topic: 4, f"{topic}.out": 4}))
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    graph = sd.Graph("live", outputs=[ticks.rolling_mean("price", window=20, name="mean")
                                      .to_topic(f"{topic}.out", name="out")])
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=5, start="latest")
    folder = tempfile.mkdtemp(prefix="bench-recovery-")
    runner = RayRunner(SETTINGS, *binding.defaults(), checkpoints=CheckpointSettings(
        url=Path(folder).as_uri(), interval_s=1.0, backoff_s=0.1, max_failures=kills + 1))
    running = runner.start(graph)
    producer = TickProducer(bootstrap, topic, 5_000, symbols=100)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(producer.run(),),
                              daemon=True)
    thread.start()
    seconds: list[float] = []
    try:
        for kill in range(kills):
            _wait(lambda k=kill: running.recoveries == k and _out_events(running) > 0, 60)
            _wait(lambda: (running.checkpoints or _never).completed > 0, 60)
            pid = ray.get(running.actor("mean").__ray_call__.remote(lambda _: os.getpid()))
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            _wait(lambda k=kill: running.recoveries == k + 1, 120)
            _wait(lambda: _out_events(running) > 0, 120)  # the new sink's first input
            seconds.append(time.monotonic() - killed_at)
    finally:
        producer.stop()
        thread.join(timeout=30)
        running.stop()
    p50 = float(np.percentile(seconds, 50))
    print(f"\n2. recovery after kill -9 of the interior actor (live, 5k events/s), {kills} kills:")
    print(f"   kill -> first new output  p50 {p50:.2f} s   all {_rounded(seconds, 2)}")


def state(keys: int, window: int) -> None:
    """One node's checkpoint with ``keys`` keys x ``window`` values held (each step's
    watermark passed, so they are the operator's state, not events its input holds back)."""
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    worker = NodeWorker(ticks.rolling_mean("price", window=window, name="mean").config())
    names = np.array([f"k{i}".encode() for i in range(keys)])
    for step in range(window):
        worker.feed(0, Batch(np.full(keys, step, dtype=np.int64), names,
                             {"price": np.random.default_rng(step).random(keys)}))
        worker.feed(0, Watermark(step))
    store = CheckpointStore(Path(tempfile.mkdtemp(prefix="bench-state-")).as_uri())
    started = time.perf_counter()
    worker.feed(0, Barrier(1))
    copied = time.perf_counter()
    data = NodeSnapshot(1, worker.snapshots.pop(1)).to_parts()  # as NodeCheckpoints.take
    pickled = time.perf_counter()
    ref = store.write_snapshot("bench", 1, "mean", data)
    written = time.perf_counter()
    print(f"\n3. one node's checkpoint: rolling mean of {window} over {keys:,} keys, full")
    print(f"   size {ref.size / 1e6:.1f} MB   copy {1e3 * (copied - started):.0f} ms (on the "
          f"hot path)   pickle {1e3 * (pickled - copied):.0f} ms (on the node's loop)   "
          f"durable write {1e3 * (written - pickled):.0f} ms (in a thread)")


class _Never:
    completed = 0


_never = _Never()


def _out_events(running: object) -> int:
    try:
        return int(running.stats()["out"].events_in)  # type: ignore[attr-defined]
    except Exception:  # the actors are being replaced
        return 0


def _wait(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s")
        time.sleep(0.02)


def _rounded(values: Sequence[float], digits: int = 0) -> list[float]:
    return [round(v, digits) for v in values]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the three measurements on an embedded broker (or --bootstrap)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3_000_000,
                        help="overhead: records of each run (a run's fixed costs, the actors' "
                             "start and, exactly-once, its last epoch's publish, weigh less "
                             "in a longer one)")
    parser.add_argument("--pairs", type=int, default=4,
                        help="overhead: pairs of timed runs, checkpoints off then on")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--only", choices=["overhead", "recovery", "state"], default=None,
                        help="run one of the three measurements")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.only in (None, "state"):
        state(args.keys, args.window)
    if args.only == "state":
        return
    ensure_ray(num_cpus=2)

    def run(bootstrap: str) -> None:
        if args.only in (None, "overhead"):
            overhead(bootstrap, args.records, args.pairs)
        if args.only in (None, "recovery"):
            recovery(bootstrap, args.kills)

    if args.bootstrap:
        run(args.bootstrap)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            run(broker.bootstrap_servers)


if __name__ == "__main__":
    main()
