"""Launch to last output on a running deployment, beside the batched aiokafka loop, in one run.

Issue 11 point 9's "running deployment" figure: the end-to-end workload (Kafka -> rolling mean
of 20 per key -> Kafka, JSON records, 100 keys, 4 partitions) submitted to a deployment that is
already up (Ray started, controller running, kernels cached by a warm-up submission), timed from
``submit`` until the last output record is in the output topic. The batched loop runs over the
same records in the same run. Each submission reads its own copy of the input, so no node is
shared with a graph already running, and is made once the warm pool is full again (a deployment
at rest). The input stops after its last record, so the last outputs
come once the source's partitions are idle (``kafka.idle_timeout_s``, 10 s by default; here 1 s
unless ``--idle-timeout`` says otherwise): that wait is part of the figure. Run:
``python -m benchmarks.deployment_end_to_end [--records N] [--repeat R] [--delivery D]
[--idle-timeout S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

import streamdag as sd
from benchmarks.kafka_baselines import WINDOW, produce_input, run_batched_loop
from benchmarks.startup import wait_for_pool
from connectors.broker import EmbeddedBroker

__all__ = ["main", "wait_for_output"]

_KEYS = 100


async def wait_for_output(bootstrap: str, topic: str, expected: int,
                          timeout_s: float = 600.0) -> float:
    """When ``topic`` first holds ``expected`` records (``time.perf_counter()``).

    Cheap enough to poll beside the pipeline: ListOffsets gives each partition's last batch
    (on Tansu it under-counts by that batch, see BROKER.md), and only the records from there on
    are read to find the true end.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=5,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p)
               for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        ends = dict.fromkeys(tps, 0)
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            reported = await consumer.end_offsets(tps)
            for tp in tps:
                if reported[tp] > ends[tp]:
                    ends[tp] = reported[tp]
                consumer.seek(tp, max(0, ends[tp] - 1))
            fetched = await consumer.getmany(*tps, timeout_ms=20)
            for tp, records in fetched.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
            if sum(ends.values()) >= expected:
                return time.perf_counter()
        raise TimeoutError(f"{topic!r} held {sum(ends.values())} of {expected} records after "
                           f"{timeout_s} s")
    finally:
        await consumer.stop()


def _graph(source: str, sink: str, name: str, delivery: str | None) -> sd.Graph:
    ticks = sd.source("ticks", topic=source, key="key", time="ts", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=WINDOW, name="mean")
    return sd.Graph(name, outputs=[mean.to_topic(sink, name="out")], delivery=delivery)


def _deployment_runs(bootstrap: str, records: int, repeat: int, delivery: str | None,
                     idle_timeout_s: float, stamp: str) -> list[float]:
    """Seconds from ``submit`` to the last output in the topic, per timed submission."""
    import ray

    from runtime.deployment.controller import ControllerOptions
    from runtime.deployment.handle import Deployment
    from runtime.runners.ray_runner import ensure_ray
    from streamdag.config import KafkaSettings, Settings

    ensure_ray(num_cpus=2)
    name = f"benche2e{stamp}"
    state = tempfile.mkdtemp(prefix="streamdag-bench-")
    deployment = Deployment.connect(
        Settings(name=name, state_dir=state,
                 kafka=KafkaSettings(partitions=4, idle_timeout_s=idle_timeout_s)), bootstrap,
        state_dir=state, options=ControllerOptions(grace_s=0.0, health_interval_s=0.0,
                                                   lifecycle_topic=f"{name}.lifecycle"))
    seconds: list[float] = []
    try:
        for run in range(repeat + 1):  # the first submission is the warm-up
            count = records if run else 20_000
            topic = f"bench.deploy-e2e.{stamp}.copy{run}"
            asyncio.run(produce_input(bootstrap, topic, count))
            wait_for_pool(deployment, Settings().runtime.warm_pool)  # a deployment at rest
            graph = _graph(topic, f"{topic}.out", f"e2e{run}", delivery)
            submitted = time.perf_counter()
            submission = deployment.submit(graph)
            assert submission["state"] != "failed", submission["cause"]
            done = asyncio.run(wait_for_output(bootstrap, f"{topic}.out",
                                               count - _KEYS * (WINDOW - 1)))
            if run:
                seconds.append(done - submitted)
            deployment.remove(submission["id"])
    finally:
        deployment.shutdown()
        ray.shutdown()
    return seconds


def _loop_seconds(bootstrap: str, source: str, records: int) -> float:
    started = time.perf_counter()
    asyncio.run(run_batched_loop(bootstrap, source, f"{source}.batched", records))
    return time.perf_counter() - started


def _run(bootstrap: str, records: int, repeat: int, delivery: str | None,
         idle_timeout_s: float) -> None:
    stamp = time.strftime("%H%M%S")
    source = f"bench.deploy-e2e.{stamp}.loop"
    asyncio.run(produce_input(bootstrap, source, records))
    loop_s = _loop_seconds(bootstrap, source, records)
    ours = _deployment_runs(bootstrap, records, repeat, delivery, idle_timeout_s, stamp)
    median = statistics.median(ours)
    print(f"\nlaunch to last output, {records:,} JSON records, 100 keys, 4 partitions, rolling "
          f"mean of {WINDOW}; delivery {delivery or 'default (exactly-once)'}; sources idle "
          f"after {idle_timeout_s:g} s quiet (the last outputs wait for it)")
    print(f"{'pipeline':<44} {'launch->last s':>15} {'vs batched':>11}")
    print(f"{'aiokafka batched loop':<44} {loop_s:>15.2f} {1.0:>10.2f}x")
    for index, seconds in enumerate(ours, 1):
        print(f"{f'streamdag, running deployment, run {index}':<44} {seconds:>15.2f} "
              f"{loop_s / seconds:>10.2f}x")
    print(f"streamdag on a running deployment, median: {loop_s / median:.2f}x the batched loop "
          "(target >= 2x)")


def main(argv: Sequence[str] | None = None) -> None:
    """Time launch to last on a running deployment, on an embedded broker (or --bootstrap)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=2, help="timed submissions")
    parser.add_argument("--delivery", choices=["exactly_once", "at_least_once"], default=None)
    parser.add_argument("--idle-timeout", type=float, default=1.0,
                        help="kafka.idle_timeout_s of the deployment (default 1; streamdag's 10)")
    parser.add_argument("--bootstrap", default="")
    args: Any = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.bootstrap:
        _run(args.bootstrap, args.records, args.repeat, args.delivery, args.idle_timeout)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            _run(broker.bootstrap_servers, args.records, args.repeat, args.delivery,
                 args.idle_timeout)


if __name__ == "__main__":
    main()
