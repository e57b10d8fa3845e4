"""End to end over Kafka: streamdag beside two plain aiokafka loops, in one run, one broker.

Throughput (issue workload): Kafka -> rolling mean of 20 per key -> Kafka, 500k JSON records,
100 keys, 4 partitions, replayed from the topic: events/s, launch to last output (a standalone
Ray run includes Ray's own start; "Ray up" leaves it out, and a second Ray run on the Ray the
first one left running shows what a user of a running cluster sees), CPU seconds and the Ray
actors' peak memory: the peak of their RSS sum (counts each shared page once per actor) and
of their PSS sum (shared pages split between processes: the memory the actors really take
together; ``--memory-breakdown`` prints each actor's by kind, see ``benchmarks.memory``), and
the local runner's peak RSS and PSS, from
the same run repeated in a process of its own. Latency: a steady
10k events/s live stream through the batched aiokafka loop and through streamdag on Ray, one
after the other, measured producer -> Kafka -> pipeline -> Kafka -> consumer from the event time
stamped at production, with each pipeline's and the broker's CPU over the sampled window, and
where streamdag's time goes, stage by stage, from its nodes' own figures. Run:
``python -m benchmarks.kafka_end_to_end [--records N] [--rate R] [--live-seconds S]
[--only throughput|latency] [--parallelism N] [--memory-breakdown]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

import streamdag as sd
from benchmarks.data_plane import events_per_second
from benchmarks.kafka_baselines import produce_input, run_batched_loop, run_per_record_loop
from benchmarks.memory import MemoryProbe, breakdown_lines, local_runner_memory, summary_lines
from connectors.broker import EmbeddedBroker
from connectors.source_bounds import Timestamp
from connectors.topics import ensure_topics
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.stats import NodeStats
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner, RunningGraph, ensure_ray

__all__ = ["events_per_second", "live_latencies", "main", "sample_latencies"]


def _replay_graph(source: str, sink: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=source, key="key", time="ts", schema={"price": "float64"},
                      partitioned_by_key=True)  # written partitioned by key (kafka_baselines)
    mean = ticks.rolling_mean("price", window=20, name="mean")
    return sd.Graph("replay", outputs=[mean.to_topic(sink, name="out")])


@dataclass
class _Figures:
    """One pipeline's throughput run: rate, launch to last output, CPU, peak memory."""

    name: str
    events_per_s: float
    launch_to_last_s: float
    cpu_s: float
    #: The Ray actors' memory, or the local runner's in a process of its own (None: the loops).
    memory: MemoryProbe | None = None
    #: A Ray run's launch to last output without Ray's own start, as a user of a Ray that
    #: already runs sees it (None: not a Ray run).
    ray_up_s: float | None = None


def _loop_figures(name: str, run: Callable[[], Coroutine[Any, Any, float]]) -> _Figures:
    cpu, started = time.process_time(), time.perf_counter()
    rate = asyncio.run(run())
    return _Figures(name, rate, time.perf_counter() - started, time.process_time() - cpu)


def _streamdag_replay(bootstrap: str, source: str, records: int, runner: str,
                      ray_start_s: float = 0.0, breakdown: bool = False,
                      name: str = "streamdag, Ray (actor per node)") -> _Figures:
    """Launch to last includes ``ray_start_s``: what a standalone run pays for Ray."""
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, start="earliest",
                           end=Timestamp(time.time_ns()), replay_prefix="")
    graph = _replay_graph(source, f"{source}.streamdag-{runner}")
    settings = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.005)
    cpu, started = time.process_time(), time.perf_counter()
    sampler = None
    if runner == "local":
        result = LocalRunner(settings, *binding.defaults()).run(graph, timeout_s=600)
    else:
        running = RayRunner(settings, *binding.defaults()).start(graph)
        try:
            pids = _actor_pids(running, graph)
            sampler = MemoryProbe({f"actor {node.name}": pid for node, pid in zip(
                graph.nodes, pids, strict=True)}, breakdown=breakdown).start()
            result = running.wait(600)
            sampler.stop()
        finally:
            running.stop()
    ray_up_s = time.perf_counter() - started
    elapsed = ray_up_s + ray_start_s
    cpu_s = time.process_time() - cpu
    # Every record was read; the mean emits from the 20th event of each of the 100 keys on.
    assert result.stats["ticks"].events_out == records, result.stats["ticks"].events_out
    assert result.stats["out"].events_in == records - 100 * 19
    if sampler is None:
        return _Figures("streamdag, local runner", events_per_second(result, records), elapsed,
                        cpu_s)
    cpu_s += sum(sampler.cpu_seconds.values())
    return _Figures(name, events_per_second(result, records), elapsed, cpu_s, sampler, ray_up_s)


def _actor_pids(running: RunningGraph, graph: sd.Graph) -> list[int]:
    import ray

    return [ray.get(running.actor(node.name).__ray_call__.remote(lambda _: os.getpid()))
            for node in graph.nodes]


def _shard_pids(running: RunningGraph, graph: sd.Graph) -> list[list[int]]:
    """Per node, the process of each of its shards."""
    import ray

    return [[ray.get(running.actor(node.name, shard).__ray_call__.remote(
        lambda _: os.getpid())) for shard in range(graph.parallelism_of(node))]
        for node in graph.nodes]


async def sample_latencies(bootstrap: str, topic: str, seconds: float) -> list[float]:
    """From the end of ``topic`` on, for ``seconds``: each record's age (ms) when read back,
    from the event time its producer stamped (says "ready" on stdout once at the end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in
                      sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        print("ready", flush=True)
        samples: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=50)
            now = time.time_ns()
            for records in fetched.values():
                samples.extend((now - json.loads(r.value)["ts"]) / 1e6 for r in records)
        return samples
    finally:
        await consumer.stop()


@dataclass
class _Live:
    """One pipeline at a steady rate: latencies (ms) and CPU seconds over the sampled window."""

    samples: list[float]
    cpu_s: float
    broker_cpu_s: float
    #: streamdag's nodes: (stage, observations, p50 ms, p99 ms) over the sampled window.
    stages: list[tuple[str, int, float, float]] = field(default_factory=list)
    #: streamdag's node actors: (node, CPU seconds, batches in, batches out) over the window.
    actors: list[tuple[str, float, int, int]] = field(default_factory=list)


#: A node's figures that time one stage of the path, in path order, and what each measures.
_STAGES = (
    ("read_age", "read returned: newest event's age"),
    ("record_read_age", "read returned: each event's age"),
    ("hop_latency", "hop in: push sent -> drain loop takes it"),
    ("release_age", "watermark released: newest event's age"),
    ("record_release_age", "watermark released: each event's age"),
    ("process_latency", "operator"),
    ("publish_latency", "sink write + flush (produce acked)"),
    ("end_to_end_latency", "published: newest event's age"),
)


def _stages(before: dict[str, NodeStats],
            after: dict[str, NodeStats]) -> list[tuple[str, int, float, float]]:
    """Each node's (or shard's) timed stages over the window between two stats snapshots."""
    rows = []
    for name, stats in after.items():
        for figure, label in _STAGES:
            window = getattr(stats, figure).since(getattr(before[name], figure))
            if window.observations and window.sample_quantile(0.99) > 1e-5:  # not pass-throughs
                rows.append((f"{name}: {label}", window.observations,
                             window.sample_quantile(0.5) * 1e3, window.sample_quantile(0.99) * 1e3))
    return rows


def _shard_by_shard(running: RunningGraph) -> dict[str, NodeStats]:
    """Each node's figures, a sharded node's per shard (``mean/1``): summed shards keep no
    samples to take quantiles of."""
    shards = running.shard_stats()
    return {label: stats for name, merged in running.stats().items()
            for label, stats in ([(f"{name}/{s}", one) for s, one in enumerate(shards[name])]
                                 if name in shards else [(name, merged)])}


def _cpu_of(pids: Sequence[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


#: The steady producer, in a process of its own: sharing one with the sampling consumer (or a
#: pipeline) would delay its sends behind the other's work and make the stream bursty.
_PRODUCER = """
import asyncio, signal, sys
from runtime.demo.job import TickProducer

async def produce(bootstrap, topic, rate):
    producer = TickProducer(bootstrap, topic, float(rate), symbols=100)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, producer.stop)
    task = asyncio.create_task(producer.run())
    await producer.connected.wait()
    print("ready", flush=True)
    await task

asyncio.run(produce(*sys.argv[1:]))
"""

#: The sampling consumer, in a process of its own too: "ready" once at the end of the output
#: topic, then one JSON list of latencies (ms).
_SAMPLER = """
import asyncio, json, sys
from benchmarks.kafka_end_to_end import sample_latencies

print(json.dumps(asyncio.run(sample_latencies(sys.argv[1], sys.argv[2], float(sys.argv[3])))))
"""


def _child(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, text=True)


def _ready(child: subprocess.Popen[str], what: str) -> None:
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {what} did not start")


def _measure_live(bootstrap: str, topic: str, output_topic: str, pids: Callable[[], list[int]],
                  broker_pid: int | None, rate: float, seconds: float,
                  settle_s: float, on_close: Callable[[], None] = lambda: None) -> _Live:
    """Feed ``rate`` ticks/s to ``topic``; after ``settle_s``, sample ``output_topic``.

    Steps:
    1. The producer starts, in a process of its own, and runs ``settle_s`` (caches warm up).
    2. The sampler, in a process of its own, seeks to the output's end: the window opens, and
       the CPU of ``pids()`` (the pipeline's processes only) and the broker's is read.
    3. After ``seconds`` the sampler hands its latencies over; the CPU is read again.
    """
    # Step 1: the producer.
    producer = _child(_PRODUCER, bootstrap, topic, rate)
    try:
        _ready(producer, "tick producer")
        time.sleep(settle_s)
        # Step 2: the window opens.
        sampler = _child(_SAMPLER, bootstrap, output_topic, seconds)
        _ready(sampler, "latency sampler")
        watched = pids()
        cpu, broker = _cpu_of(watched), _cpu_of([broker_pid] if broker_pid else [])
        # Step 3: the window closes.
        out, _ = sampler.communicate(timeout=seconds + 120)
        cpu = _cpu_of(watched) - cpu
        on_close()
        broker = _cpu_of([broker_pid] if broker_pid else []) - broker
        samples = [float(x) for x in json.loads(out)]
    finally:
        producer.terminate()
        producer.wait(30)
    return _Live(samples, cpu, broker)


def live_latencies(bootstrap: str, topic: str, build: Callable[[sd.Node, str], sd.Graph],
                   settings: RuntimeSettings, rate: float, seconds: float,
                   settle_s: float) -> list[float]:
    """End-to-end latencies (ms) of a live tick stream through ``build(ticks, output_topic)``.

    ``rate`` ticks/s go to ``topic``; the graph runs on Ray; samples are taken for ``seconds``
    once ``settle_s`` have passed.
    """
    return _streamdag_live(bootstrap, topic, build, settings, rate, seconds, settle_s,
                           None).samples


def _streamdag_live(bootstrap: str, topic: str, build: Callable[[sd.Node, str], sd.Graph],
                    settings: RuntimeSettings, rate: float, seconds: float, settle_s: float,
                    broker_pid: int | None) -> _Live:
    output_topic = f"{topic}.out"
    asyncio.run(ensure_topics(bootstrap, {topic: 4, output_topic: 4}))
    # The producer partitions by symbol (Kafka's default partitioner), and says so: the mean
    # releases each partition's ticks by that partition's own watermark.
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"},
                      partitioned_by_key=True)
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=5, start="latest")  # the loop's wait
    graph = build(ticks, output_topic)
    running = RayRunner(settings, *binding.defaults()).start(graph)
    before: dict[str, NodeStats] = {}
    stages_before: dict[str, NodeStats] = {}
    actor_pids: list[list[int]] = []  # per node, its shards'
    actor_cpu: list[float] = []

    def pids() -> list[int]:  # called as the sampled window opens: the driver and the actors
        before.update(running.stats())
        stages_before.update(_shard_by_shard(running))
        actor_pids.extend(_shard_pids(running, graph))
        actor_cpu.extend(_cpu_of(shards) for shards in actor_pids)
        return [os.getpid(), *(pid for shards in actor_pids for pid in shards)]

    def on_close() -> None:  # each node's CPU over the window, its shards' together
        actor_cpu[:] = [_cpu_of(shards) - cpu for shards, cpu in zip(actor_pids, actor_cpu,
                                                                     strict=True)]

    try:
        live = _measure_live(bootstrap, topic, output_topic, pids, broker_pid, rate, seconds,
                             settle_s, on_close)
        after = running.stats()
        live.stages = _stages(stages_before, _shard_by_shard(running))
        live.actors = [(node.name, cpu, after[node.name].batches_in - before[node.name].batches_in,
                        after[node.name].batches_out - before[node.name].batches_out)
                       for node, cpu in zip(graph.nodes, actor_cpu, strict=True)]
        return live
    finally:
        running.stop()


def _loop_live(bootstrap: str, topic: str, rate: float, seconds: float,
               broker_pid: int | None) -> _Live:
    output_topic = f"{topic}.out"
    asyncio.run(ensure_topics(bootstrap, {topic: 4, output_topic: 4}))
    code = ("import asyncio, sys; from benchmarks.kafka_baselines import run_live_batched_loop;"
            " asyncio.run(run_live_batched_loop(*sys.argv[1:]))")
    child = subprocess.Popen([sys.executable, "-c", code, bootstrap, topic, output_topic],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the live batched loop did not start")
        # As streamdag's figure counts its driver (this process), this one counts it too.
        return _measure_live(bootstrap, topic, output_topic, lambda: [os.getpid(), child.pid],
                             broker_pid, rate, seconds, settle_s=3.0)
    finally:
        child.terminate()
        child.wait(30)


def _live_graph(ticks: sd.Node, output_topic: str, parallelism: int | None = None) -> sd.Graph:
    ticks = ticks.with_options(parallelism=parallelism)  # None: one actor each
    mean = ticks.rolling_mean("price", window=20, name="mean")
    return sd.Graph("live", outputs=[mean.to_topic(output_topic, name="out")],
                    parallelism=parallelism)


def _run(bootstrap: str, records: int, rate: float, live_s: float, broker_pid: int | None,
         only: str | None = None, breakdown: bool = False,
         parallelism: int | None = None) -> None:
    if only != "latency":
        _throughput(bootstrap, records, breakdown)
    if only != "throughput":
        _latency(bootstrap, rate, live_s, broker_pid, parallelism)


def _throughput(bootstrap: str, records: int, breakdown: bool) -> None:
    source = f"bench.e2e.{time.strftime('%H%M%S')}"
    asyncio.run(produce_input(bootstrap, source, records))
    per_record = _loop_figures("aiokafka per-record loop (send)", lambda: run_per_record_loop(
        bootstrap, source, f"{source}.pr", records))
    batched = _loop_figures("aiokafka batched loop", lambda: run_batched_loop(
        bootstrap, source, f"{source}.batched", records))
    started = time.perf_counter()
    ensure_ray(num_cpus=2)
    ray_start_s = time.perf_counter() - started
    ours_ray = _streamdag_replay(bootstrap, source, records, "ray", ray_start_s, breakdown)
    # The same again on the Ray the first run left running: a user of a running cluster.
    ours_ray_up = _streamdag_replay(bootstrap, source, records, "ray", 0.0, breakdown,
                                    "streamdag, Ray, 2nd run, Ray up")
    ours_local = _streamdag_replay(bootstrap, source, records, "local")
    # Its memory from the same run in a process of its own: this one holds the loops and Ray's.
    ours_local.memory = local_runner_memory(bootstrap, source, records)
    print(f"\nthroughput: {records:,} JSON records, 100 keys, 4 partitions, rolling mean of 20;"
          f" Ray's own start {ray_start_s:.2f} s (in the first Ray run's launch to last); "
          "'Ray up': launch to last without Ray's start (as on a Ray that already runs)")
    print(f"{'pipeline':<34} {'events/s':>10} {'vs batched':>11} {'launch->last s':>15} "
          f"{'vs batched':>11} {'Ray up s':>9} {'vs batched':>11} {'CPU s':>7} "
          f"{'peak RSS sum':>13} {'peak PSS sum':>13}")
    for run in (per_record, batched, ours_ray, ours_ray_up, ours_local):
        memory = f"{'-':>13} {'-':>13}"
        if run.memory is not None:
            memory = (f"{run.memory.peak_rss_sum / 2**20:>9.0f} MiB "
                      f"{run.memory.peak_pss_sum / 2**20:>9.0f} MiB")
        ray_up = f"{'-':>9} {'-':>11}"
        if run.ray_up_s is not None:
            ray_up = f"{run.ray_up_s:>9.2f} {batched.launch_to_last_s / run.ray_up_s:>10.2f}x"
        print(f"{run.name:<34} {run.events_per_s:>10,.0f} "
              f"{run.events_per_s / batched.events_per_s:>10.2f}x {run.launch_to_last_s:>15.2f} "
              f"{batched.launch_to_last_s / run.launch_to_last_s:>10.2f}x {ray_up} "
              f"{run.cpu_s:>7.1f} {memory}")
    if ours_ray.memory is not None:
        print("\nthe Ray actors' memory (the PSS sum is what the three really take together)")
        print("\n".join(summary_lines(ours_ray.memory)))
        if breakdown:
            print("\n".join(breakdown_lines(ours_ray.memory)))
    if ours_local.memory is not None:
        print("\nthe local runner's memory, the same run again in a process of its own "
              "(python -m benchmarks.memory --runner local)")
        print("\n".join(summary_lines(ours_local.memory)))


def _latency(bootstrap: str, rate: float, live_s: float, broker_pid: int | None,
             parallelism: int | None = None) -> None:
    ensure_ray(num_cpus=2)
    stamp = time.strftime("%H%M%S")
    loop_live = _loop_live(bootstrap, f"bench.live-loop.{stamp}", rate, live_s, broker_pid)
    settings = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.002)
    ours_live = _streamdag_live(bootstrap, f"bench.live.{stamp}",
                                functools.partial(_live_graph, parallelism=parallelism),
                                settings, rate, live_s, 3.0, broker_pid)
    print(f"\nlatency at a steady {rate:,.0f} events/s over {live_s:.0f} s, producer -> Kafka -> "
          "pipeline -> Kafka -> consumer (producer and sampling consumer in processes of their "
          "own; CPU: the pipeline's processes and this driver; broker: Tansu)")
    print(f"{'pipeline':<26} {'outputs':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU s':>6} "
          f"{'broker CPU s':>13}")
    figures = []
    for name, live in (("aiokafka batched loop", loop_live), ("streamdag, Ray", ours_live)):
        p50, p99 = np.percentile(live.samples, [50, 99]) if live.samples else (np.nan, np.nan)
        figures.append((float(p50), float(p99), live))
        print(f"{name:<26} {len(live.samples):>8,} {p50:>7.1f} {p99:>7.1f} {live.cpu_s:>6.1f} "
              f"{live.broker_cpu_s:>13.1f}")
    (base50, base99, base), (p50, p99, ours) = figures
    print(f"streamdag / loop: p50 {p50 / base50:.2f}x, p99 {p99 / base99:.2f}x, CPU "
          f"{ours.cpu_s / max(base.cpu_s, 1e-9):.2f}x, broker CPU "
          f"{ours.broker_cpu_s / max(base.broker_cpu_s, 1e-9):.2f}x")
    print("\nwhere streamdag's time goes (its nodes' figures over the same window; at-least-once "
          "sink, as the loop: no checkpoint epoch to wait for)")
    print(f"{'stage':<58} {'n':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for stage, observations, stage_p50, stage_p99 in ours.stages:
        print(f"{stage:<58} {observations:>6} {stage_p50:>7.2f} {stage_p99:>7.2f}")
    print("\nstreamdag's node actors over the same window (a batch: one push taken or sent)")
    print(f"{'node':<12} {'CPU s':>6} {'of a core':>10} {'batches in':>11} {'out':>6} "
          f"{'CPU ms per batch':>17}")
    for name, cpu, batches_in, batches_out in ours.actors:
        print(f"{name:<12} {cpu:>6.2f} {cpu / live_s:>9.1%} {batches_in:>11} {batches_out:>6} "
              f"{cpu * 1e3 / max(1, batches_in, batches_out):>17.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the throughput and latency comparison on an embedded broker (or --bootstrap)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--rate", type=float, default=10_000.0)
    parser.add_argument("--live-seconds", type=float, default=15.0)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--only", choices=("throughput", "latency"), default=None,
                        help="run one half only (latency: the steady-rate run and its stages)")
    parser.add_argument("--parallelism", type=int, default=None,
                        help="latency: the source and the mean run this many shards each")
    parser.add_argument("--memory-breakdown", action="store_true",
                        help="each Ray actor's memory by kind of mapping at the PSS-sum peak")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.bootstrap:
        _run(args.bootstrap, args.records, args.rate, args.live_seconds, None, args.only,
             args.memory_breakdown, args.parallelism)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            _run(broker.bootstrap_servers, args.records, args.rate, args.live_seconds,
                 broker.pid, args.only, args.memory_breakdown, args.parallelism)


if __name__ == "__main__":
    main()
