"""Start-up and memory: where a run's first seconds and its resident memory go.

The issue workload (Kafka -> rolling mean of 20 per key -> Kafka, 100 keys, 4 partitions,
JSON records replayed from the topic), run once with ``RayRunner`` (one actor per node) and
once with ``LocalRunner`` in a fresh process. Reported: Ray's own start, launch to first and
last output, each node's kernel warm-up, and peak resident memory (RSS, and USS: the pages no
other process shares, which is what each process really adds). Run:
``python -m benchmarks.startup [--records N] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import streamdag as sd
from benchmarks.kafka_baselines import produce_input
from benchmarks.memory import Footprint, MemoryProbe
from connectors.broker import EmbeddedBroker
from connectors.source_bounds import Timestamp
from runtime.dataplane.host import RuntimeSettings
from runtime.runners.kafka_binding import KafkaBinding

__all__ = ["main", "replay_graph", "wait_for_pool"]

_SETTINGS = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.005)


def replay_graph(source: str, sink: str, name: str = "replay") -> sd.Graph:
    """The issue workload's graph: three nodes, source -> rolling mean of 20 -> sink."""
    ticks = sd.source("ticks", topic=source, key="key", time="ts", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=20, name="mean")
    return sd.Graph(name, outputs=[mean.to_topic(sink, name="out")])


def _ray_own_start() -> float:
    """Seconds a bare ``ray.init`` of a new local cluster takes, in a fresh process."""
    code = ("import time, ray; t = time.perf_counter(); ray.init(address='local', num_cpus=2, "
            "include_dashboard=False, configure_logging=False); "
            "print(time.perf_counter() - t); ray.shutdown()")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout
    return float(output.strip().splitlines()[-1])


def _actor_imports() -> float:
    """Seconds a node actor's own imports take in a fresh interpreter, after ``import ray``."""
    from runtime.runners.ray_runner import NODE_ACTOR_MODULES  # not in the local run's child

    code = ("import time, ray; t = time.perf_counter(); " + "; ".join(
        f"import {module}" for module in NODE_ACTOR_MODULES) + "; print(time.perf_counter() - t)")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout
    return float(output.strip().splitlines()[-1])


def _ray_run(bootstrap: str, source: str, records: int) -> dict[str, Any]:
    import ray

    from runtime.runners.ray_runner import RayRunner, ensure_ray

    started = time.time()
    ensure_ray(num_cpus=2)
    ray_start_s = time.time() - started
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, start="earliest", replay_prefix="",
                           end=Timestamp(time.time_ns()))
    graph = replay_graph(source, f"{source}.ray.{time.time_ns()}")
    launched = time.time()
    running = RayRunner(_SETTINGS, *binding.defaults()).start(graph)
    started_s = time.time() - launched
    launch = running.launch_phases
    try:
        handles = {n.name: running.actor(n.name) for n in graph.nodes}
        pids = {name: ray.get(handle.__ray_call__.remote(lambda host: os.getpid()))
                for name, handle in handles.items()}
        sampler = MemoryProbe(pids).start()
        result = running.wait(600)
        sampler.stop()
        phases = {name: ray.get(handle.startup_phases.remote())
                  for name, handle in handles.items()}
    finally:
        running.stop()
        ray.shutdown()
    assert result.stats["out"].events_in == records - 100 * 19
    first = result.stats["mean"].first_output_at
    timeline = {name: {step: (at - launched if at else None)
                       for step, at in dataclasses.asdict(phases[name]).items()}
                for name in phases}
    return {
        "ray_start_s": ray_start_s, "started_s": started_s,
        "first_s": first - launched, "last_s": result.stats["mean"].last_output_at - launched,
        "timeline": timeline,
        "driver": {"graph planned": launch.planned - launched,
                   "Ray connected": launch.ray_ready - launched,
                   "actors asked for": launch.created - launched,
                   **{f"generation {i + 1} ready, wired": at - launched
                      for i, at in enumerate(launch.generations_ready)},
                   "sources started": launch.sources_started - launched},
        "rss": {name: sampler.peak.get(name, Footprint()).rss for name in pids},
        "uss": {name: sampler.peak.get(name, Footprint()).uss for name in pids},
        "pss": {name: sampler.peak.get(name, Footprint()).pss for name in pids},
        "peak_rss_sum": sampler.peak_rss_sum, "peak_pss_sum": sampler.peak_pss_sum,
        "end_rss": {name: sampler.last.get(name, Footprint()).rss for name in pids},
        "end_pss": {name: sampler.last.get(name, Footprint()).pss for name in pids},
        "cpu_s": {name: sampler.cpu_seconds.get(name, 0.0) for name in pids},
    }


async def _first_record_at(bootstrap: str, topic: str, timeout_s: float = 120,
                           reading: threading.Event | None = None) -> float:
    """When the first record of ``topic`` (created if missing) could be read (``time.time()``);
    ``reading`` is set once the consumer reads, so its own start is not counted."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from connectors.topics import ensure_topics

    await ensure_topics(bootstrap, {topic: 4})
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(4)])
        await consumer.seek_to_beginning()
        await consumer.getmany(timeout_ms=1)
        if reading is not None:
            reading.set()
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if await consumer.getmany(timeout_ms=20, max_records=1):
                return time.time()
        raise TimeoutError(f"no record on {topic!r} within {timeout_s} s")
    finally:
        await consumer.stop()


def _deployment_runs(bootstrap: str, source: str,
                     repeat: int) -> tuple[list[float], dict[str, dict[str, float | None]]]:
    """Seconds from ``submit`` to the first output record, on a running deployment, warm, and
    the last run's steps per node (seconds after the submission).

    A first graph starts the controller and loads the kernels; each timed one is a new graph
    (its own input topic of the workload's records, so no node is shared with a running one),
    submitted once the warm pool (``runtime.warm_pool``, default 3) is full again. The output
    topic's reader is connected before the submission.
    """
    import tempfile

    import ray

    from runtime.deployment.controller import ControllerOptions
    from runtime.deployment.handle import Deployment
    from runtime.deployment.node_registry import NODE_NAMESPACE
    from runtime.runners.ray_runner import ensure_ray
    from streamdag.config import KafkaSettings, Settings

    ensure_ray(num_cpus=2)
    name = f"bench{time.strftime('%H%M%S')}"
    state = tempfile.mkdtemp(prefix="streamdag-bench-")
    settings = Settings(name=name, state_dir=state, kafka=KafkaSettings(partitions=4))
    deployment = Deployment.connect(
        settings, bootstrap,
        state_dir=state, options=ControllerOptions(grace_s=0.0, health_interval_s=0.0,
                                                   lifecycle_topic=f"{name}.lifecycle"))
    seconds: list[float] = []
    timeline: dict[str, dict[str, float | None]] = {}
    try:
        for run in range(repeat + 1):
            topic = f"{source}.copy{run}"
            asyncio.run(produce_input(bootstrap, topic, 20_000))
            out = f"{topic}.out"
            wait_for_pool(deployment, settings.runtime.warm_pool)
            reader, first_at = _reader_of_first_record(bootstrap, out)
            submitted = time.time()
            graph = replay_graph(topic, out, f"replay{run}")
            submission = deployment.submit(graph)
            assert submission["state"] != "failed", submission["cause"]
            reader.join()
            first = first_at[0]
            if run:  # the first one is the warm-up
                seconds.append(first - submitted)
            actors = {node["name"]: node["actor"] for node in submission["nodes"]}
            for node in graph.nodes:
                actor = ray.get_actor(str(actors[node.name]), namespace=NODE_NAMESPACE)
                phases: Any = ray.get(actor.startup_phases.remote())
                steps = dataclasses.asdict(phases)
                timeline[node.name] = {step: (at - submitted if at else None)
                                       for step, at in steps.items()}
                timeline[node.name]["read back"] = first - submitted
    finally:
        deployment.shutdown()
        ray.shutdown()
    return seconds, timeline


def _reader_of_first_record(bootstrap: str, topic: str) -> tuple[threading.Thread, list[float]]:
    """A thread reading ``topic`` until its first record, started and connected: the thread,
    and the list it puts the first record's time in."""
    reading, first_at = threading.Event(), []

    def read() -> None:
        first_at.append(asyncio.run(_first_record_at(bootstrap, topic, reading=reading)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reading.wait(60)
    return reader, first_at


def wait_for_pool(deployment: Any, size: int, timeout_s: float = 120) -> None:
    """Wait until ``deployment``'s warm pool holds ``size`` idle actors."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.get(deployment.controller.warm_pool.remote())["idle"] < size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm pool did not fill within {timeout_s} s")
        time.sleep(0.1)


def _local_run(bootstrap: str, source: str, records: int) -> dict[str, Any]:
    """Run the graph with LocalRunner in this process; print its figures as JSON (a child)."""
    import psutil

    from runtime.runners.local_runner import LocalRunner

    sampler = MemoryProbe({"local": os.getpid()}).start()
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, start="earliest", replay_prefix="",
                           end=Timestamp(time.time_ns()))
    launched = time.time()
    result = LocalRunner(_SETTINGS, *binding.defaults()).run(
        replay_graph(source, f"{source}.local"), timeout_s=600)
    sampler.stop()
    assert result.stats["out"].events_in == records - 100 * 19
    times = psutil.Process().cpu_times()
    return {
        "first_s": result.stats["mean"].first_output_at - launched,
        "last_s": result.stats["mean"].last_output_at - launched,
        "rss": sampler.peak["local"].rss, "uss": sampler.peak["local"].uss,
        "pss": sampler.peak["local"].pss,
        "end_rss": sampler.last["local"].rss, "end_pss": sampler.last["local"].pss,
        "cpu_s": times.user + times.system,
    }


def _local_in_child(bootstrap: str, source: str, records: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.startup", "--local-child",
               "--bootstrap", bootstrap, "--topic", source, "--records", str(records)]
    launched = time.time()
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    figures["process_s"] = time.time() - launched
    return figures


_STEPS = (
    ("process_started", "process started"), ("code_loaded", "host code loaded"),
    ("constructed", "host constructed"),
    ("warm_up_started", "kernels: loading"), ("warmed", "kernels: loaded"),
    ("connected", "connectors open"), ("ready", "ready"), ("source_started", "source started"),
    ("first_read", "first read (records)"), ("first_output", "first output"),
    ("read back", "output read back"),
)


def _print_steps(timeline: dict[str, dict[str, float | None]]) -> None:
    names = list(timeline)
    print(f"{'step':<22}" + "".join(f"{name:>9}" for name in names))
    for key, label in _STEPS:
        cells = [timeline[name].get(key) for name in names]
        print(f"{label:<22}" + "".join("        -" if c is None else f"{c:>9.2f}" for c in cells))


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _report(records: int, runs: list[dict[str, Any]], local: dict[str, Any],
            own_starts: list[float], imports: list[float]) -> None:
    mib = 2**20
    last = runs[-1]
    print(f"\nstart-up and memory: {records:,} JSON records, 100 keys, 4 partitions, rolling "
          f"mean of 20 (three nodes); {len(runs)} Ray run(s), medians; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    own = _median(own_starts)
    ensure = _median([r["ray_start_s"] for r in runs])
    first = _median([r["first_s"] for r in runs])
    print(f"Ray's own start (bare ray.init, new local cluster)   {own:6.2f} s")
    print(f"ensure_ray (streamdag's ray.init)                     {ensure:6.2f} s")
    print(f"RayRunner: launch -> actors ready, sources started    "
          f"{_median([r['started_s'] for r in runs]):6.2f} s")
    print(f"RayRunner: launch -> first output                     {first:6.2f} s "
          f"(target <= 1.5)")
    print(f"RayRunner: launch -> last output                      "
          f"{_median([r['last_s'] for r in runs]):6.2f} s")
    print(f"standalone: ensure_ray + first output - Ray's own start {ensure + first - own:6.2f} s "
          "(target <= 1.5)")
    print(f"a node actor's imports (fresh interpreter, after import ray) "
          f"{_median(imports):.2f} s")
    names = list(last["timeline"])
    print("\nlast run's driver steps (RayRunner.start's launch_phases), seconds after launch: "
          + ", ".join(f"{step} {at:.2f}" for step, at in last["driver"].items()))
    print("last run's steps, seconds after launch (negative: before it, a pooled worker)")
    _print_steps(last["timeline"])
    print(f"\n{'node actor':<12} {'peak RSS':>9} {'peak USS':>9} {'peak PSS':>9} "
          f"{'end RSS':>8} {'end PSS':>8} {'CPU s':>7}   (MiB; end: at the last output)")
    for name in names:
        print(f"{name:<12} {last['rss'][name] / mib:>9.0f} {last['uss'][name] / mib:>9.0f} "
              f"{last['pss'][name] / mib:>9.0f} {last['end_rss'][name] / mib:>8.0f} "
              f"{last['end_pss'][name] / mib:>8.0f} {last['cpu_s'][name]:>7.2f}")
    total = {key: sum(last[key].values()) / mib
             for key in ("rss", "uss", "pss", "end_rss", "end_pss")}
    print(f"{'Ray total':<12} {total['rss']:>9.0f} {total['uss']:>9.0f} {total['pss']:>9.0f} "
          f"{total['end_rss']:>8.0f} {total['end_pss']:>8.0f} {sum(last['cpu_s'].values()):>7.2f}"
          "   (sums of each actor's peak)")
    print(f"Ray actors together, at one instant: peak RSS sum {last['peak_rss_sum'] / mib:.0f} MiB "
          f"(target 400 MB), peak PSS sum {last['peak_pss_sum'] / mib:.0f} MiB (shared pages "
          "counted once: what the three really take)")
    print(f"LocalRunner (own process): first output {local['first_s']:.2f} s, last "
          f"{local['last_s']:.2f} s after launch ({local['process_s']:.2f} s with the "
          f"interpreter's start); peak RSS {local['rss'] / mib:.0f} MiB, USS "
          f"{local['uss'] / mib:.0f}, PSS {local['pss'] / mib:.0f}; at the end RSS "
          f"{local['end_rss'] / mib:.0f}, PSS {local['end_pss'] / mib:.0f} (target 150); "
          f"CPU {local['cpu_s']:.2f} s")


def _run(bootstrap: str, records: int, repeat: int) -> None:
    source = f"bench.startup.{time.strftime('%H%M%S')}"
    asyncio.run(produce_input(bootstrap, source, records))
    local = _local_in_child(bootstrap, source, records)
    runs: list[dict[str, Any]] = []
    own_starts: list[float] = []
    imports: list[float] = []
    for _ in range(repeat):  # alternating, so a busy spell hits both alike
        own_starts.append(_ray_own_start())
        imports.append(_actor_imports())
        runs.append(_ray_run(bootstrap, source, records))
    submitted, steps = _deployment_runs(bootstrap, source, repeat)
    _report(records, runs, local, own_starts, imports)
    print(f"\nrunning deployment, warm: submit -> first output record read back "
          f"{_median(submitted):.2f} s median of {', '.join(f'{s:.2f}' for s in submitted)} "
          "(target <= 1.5); the last submission's steps, seconds after submit "
          "(output read back: the first record read from the output topic)")
    _print_steps(steps)


def main(argv: Sequence[str] | None = None) -> None:
    """Measure start-up and memory on an embedded broker (or --bootstrap)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--bootstrap", default="")
    parser.add_argument("--topic", default="")
    parser.add_argument("--repeat", type=int, default=3, help="Ray runs; medians reported")
    parser.add_argument("--local-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.local_child:
        print(json.dumps(_local_run(args.bootstrap, args.topic, args.records)))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.bootstrap:
        _run(args.bootstrap, args.records, args.repeat)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            _run(broker.bootstrap_servers, args.records, args.repeat)


if __name__ == "__main__":
    main()
