"""Dedup: 10 strategy graphs sharing 80% of their nodes, deployed with and without dedup.

Both runs go through the whole controller path (``Deployment.connect`` + ``submit``) on a local
Ray and the embedded broker, over the same ticks. Each graph is ``ticks -> sma20, ema10 ->
crossover`` (shared) plus one sink of its own, so 4 of its 5 nodes are shared. Without dedup
(``ControllerOptions(dedup=False)``, the baseline) every graph gets actors of its own. Measured
per run: actors, seconds to deploy the 10 graphs, CPU seconds of every actor process while the
ticks are processed (psutil, user + system), and the memory of the actor processes (sum of RSS,
which counts shared libraries once per process, and of USS, memory unique to each process).
Then the diff latency (pure ``diff_graph``, plan included) of a 1,000-node graph against a
10,000-node deployment. Run with ``python -m benchmarks.dedup [--graphs N] [--ticks N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import streamdag as sd
from runtime.deployment.controller import ControllerOptions
from runtime.deployment.handle import Deployment
from runtime.planning.planner import diff_graph
from streamdag.config import KafkaSettings, Settings
from streamdag.graph import Graph, Node, make_node

__all__ = ["main"]

SYMBOLS = 100


@dataclass(frozen=True)
class _Run:
    """What one deployment of the graphs cost."""

    actors: int
    deploy_s: float
    cpu_s: float
    rss_bytes: int
    uss_bytes: int
    events_to_sinks: int


def _strategies(count: int, topic: str) -> list[Graph]:
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    fast = ticks.ema("price", span=10, name="ema10")
    slow = ticks.rolling_mean("price", window=20, name="sma20")
    cross = fast.crossover(slow, name="cross")
    return [
        Graph(f"strategy{i}", outputs=[cross.to_topic(f"{topic}.signals.{i}", name="out")])
        for i in range(count)
    ]


async def _produce(bootstrap: str, topic: str, ticks: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        start_ns = time.time_ns()
        pending = []
        for i in range(ticks):
            symbol = f"S{i % SYMBOLS:03d}"
            price = 100.0 + (i * 7919 % 1000) / 100.0
            value = json.dumps({"symbol": symbol, "ts": start_ns + i, "price": price}).encode()
            pending.append(await producer.send(topic, value, key=symbol.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _actor_pids(deployment: Deployment) -> list[int]:
    import ray

    from runtime.deployment.node_registry import NODE_NAMESPACE

    handles = [ray.get_actor(n["actor"], namespace=NODE_NAMESPACE) for n in deployment.nodes()]
    return list(ray.get([h.__ray_call__.remote(lambda _host: os.getpid()) for h in handles]))


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def _wait_until_drained(deployment: Deployment, ticks: int, timeout_s: float = 300.0) -> int:
    """Wait until the sources read every tick and the sinks' counts stop moving."""
    deadline = time.monotonic() + timeout_s
    previous = -1
    while time.monotonic() < deadline:
        nodes = deployment.metrics_snapshot().nodes
        read = sum(n.stats.events_in for n in nodes if n.role == "source")
        sinks = sum(n.stats.events_in for n in nodes if n.role == "sink")
        sources = sum(1 for n in nodes if n.role == "source")
        if read >= ticks * sources and sinks == previous:
            return sinks
        previous = sinks if read >= ticks * sources else -1
        time.sleep(0.5)
    raise TimeoutError(f"the deployment did not process {ticks} ticks in {timeout_s} s")


def _deploy_and_measure(bootstrap: str, state: Path, count: int, ticks: int,
                        dedup: bool) -> _Run:
    """Deploy ``count`` strategies over a topic of their own, feed it ``ticks``, measure."""
    import psutil

    from connectors.topics import ensure_topics

    name = f"bench-{'dedup' if dedup else 'nodedup'}-{os.getpid()}"
    topic = f"{name}.ticks"
    asyncio.run(ensure_topics(bootstrap, {topic: 1}))
    graphs = _strategies(count, topic)
    settings = Settings(name=name, kafka=KafkaSettings(partitions=1))
    deployment = Deployment.connect(settings, bootstrap, state_dir=state / name,
                                    options=ControllerOptions(dedup=dedup, grace_s=0.0))
    try:
        started = time.perf_counter()
        for graph in graphs:
            submission = deployment.submit(graph)
            if submission["state"] != "executing":
                raise RuntimeError(f"{graph.name} did not start: {submission['cause']}")
        deploy_s = time.perf_counter() - started
        pids = _actor_pids(deployment)
        cpu_before = _cpu_seconds(pids)
        asyncio.run(_produce(bootstrap, topic, ticks))
        events_to_sinks = _wait_until_drained(deployment, ticks)
        cpu_s = _cpu_seconds(pids) - cpu_before
        memory = [psutil.Process(pid).memory_full_info() for pid in pids]
        return _Run(len(pids), deploy_s, cpu_s, sum(m.rss for m in memory),
                    sum(m.uss for m in memory), events_to_sinks)
    finally:
        deployment.shutdown()


def _chains(first: int, count: int, length: int) -> list[Node]:
    """``count`` chains of ``length`` nodes: a source and rolling means over it."""
    ends = []
    for chain in range(first, first + count):
        node = sd.source(f"src{chain}", topic=f"t{chain}", schema={"value": "float64"})
        for step in range(1, length):
            node = make_node("rolling_mean", (node,), {"field": "value", "window": step + 1},
                             name=f"c{chain}_{step}")
        ends.append(node)
    return ends


def _diff_latency(repeats: int) -> tuple[float, float, int, int]:
    """p50 and p95 seconds of diffing a 1,000-node graph (80% deployed) against 10,000 nodes."""
    deployed = Graph("deployed", outputs=_chains(0, 100, 100))
    existing = frozenset(deployed.node_ids)
    graph = Graph("incoming", outputs=_chains(92, 10, 100))  # chains 92-99 run already
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        diff = diff_graph(graph, existing)
        timings.append(time.perf_counter() - started)
    timings.sort()
    p95 = timings[min(len(timings) - 1, int(0.95 * len(timings)))]
    return statistics.median(timings), p95, len(existing), len(diff.reused)


def main(argv: list[str] | None = None) -> None:
    """Print the table: both runs, the no-dedup / dedup ratios, and the diff latency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=10)
    parser.add_argument("--ticks", type=int, default=100_000)
    parser.add_argument("--diff-repeats", type=int, default=50)
    args = parser.parse_args(argv)

    from connectors.broker import EmbeddedBroker
    from runtime.runners.ray_runner import ensure_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    nodes = len(_strategies(1, "ticks")[0].nodes)
    print(f"{args.graphs} graphs x {nodes} nodes ({nodes - 1} shared: "
          f"{(nodes - 1) / nodes:.0%}), {args.ticks:,} ticks of {SYMBOLS} symbols")
    runs: dict[str, _Run] = {}
    with tempfile.TemporaryDirectory() as folder, EmbeddedBroker.start(
            Path(folder) / "broker") as broker:
        ensure_ray(num_cpus=os.cpu_count() or 2)
        for label, dedup in (("dedup", True), ("no dedup", False)):
            runs[label] = _deploy_and_measure(broker.bootstrap_servers, Path(folder),
                                              args.graphs, args.ticks, dedup)
    header = (f"{'mode':<10} {'actors':>6} {'deploy s':>8} {'cpu s':>7} {'rss MiB':>8} "
              f"{'uss MiB':>8} {'to sinks':>9}")
    print(header)
    print("-" * len(header))
    for label, run in runs.items():
        print(f"{label:<10} {run.actors:>6} {run.deploy_s:>8.2f} {run.cpu_s:>7.2f} "
              f"{run.rss_bytes / 2**20:>8.0f} {run.uss_bytes / 2**20:>8.0f} "
              f"{run.events_to_sinks:>9,}")
    base, shared = runs["no dedup"], runs["dedup"]
    print(f"{'ratio':<10} {base.actors / shared.actors:>6.2f} "
          f"{base.deploy_s / shared.deploy_s:>8.2f} {base.cpu_s / shared.cpu_s:>7.2f} "
          f"{base.rss_bytes / shared.rss_bytes:>8.2f} {base.uss_bytes / shared.uss_bytes:>8.2f}"
          "   (no dedup / dedup)")
    p50, p95, deployed, reused = _diff_latency(args.diff_repeats)
    print(f"diff: 1,000-node graph ({reused} nodes deployed) vs {deployed:,}-node deployment: "
          f"p50 {p50 * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms ({args.diff_repeats} runs)")


if __name__ == "__main__":
    main()
