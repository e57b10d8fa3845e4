"""Launch to last output on a running deployment, beside the batched aiokafka loop, in one run.

Issue 11 point 9's "running deployment" figure: the end-to-end workload (Kafka -> rolling mean
of 20 per key -> Kafka, JSON records, 100 keys, 4 partitions) submitted to a deployment that is
already up (Ray started, controller running, kernels cached by a warm-up submission), timed from
``submit`` until the last output record is in the output topic. The batched loop runs over the
same records in the same run. Each submission reads its own copy of the input, so no node is
shared with a graph already running, and is made once the warm pool is full again (a deployment
at rest). The input stops after its last record, so the last outputs
come once the source's partitions are idle (``kafka.idle_timeout_s``, 10 s by default; here 1 s
unless ``--idle-timeout`` says otherwise): that wait is part of the figure. With exactly-once
delivery the last outputs also wait for the checkpoint that completes them, which starts as soon
as the sources are heard to be idle (``runtime.checkpoints.quiet``). The deployment checkpoints
every second (``checkpoint.enabled``: without it an exactly-once sink has no epochs and publishes
at once, as at-least-once; ``--no-checkpoints`` measures that). ``--breakdown`` prints where the
tail time of each timed run went, from the region's checkpoint figures. Run:
``python -m benchmarks.deployment_end_to_end [--records N] [--repeat R] [--delivery D]
[--idle-timeout S] [--no-checkpoints] [--breakdown]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

import streamdag as sd
from benchmarks.kafka_baselines import WINDOW, produce_input, run_batched_loop
from benchmarks.startup import wait_for_pool
from connectors.broker import EmbeddedBroker

__all__ = ["TailBreakdown", "main", "wait_for_output"]

_KEYS = 100


@dataclass(frozen=True)
class TailBreakdown:
    """Where one run's time went, in seconds after ``submit`` (None: did not happen)."""

    #: The input was all produced before the submission (so this is negative).
    input_produced: float
    #: The output topic held 90% of the expected records.
    output_90: float
    #: The region's coordinator heard every source go idle (last time before the end).
    sources_idle: float | None
    #: The last checkpoint complete when the last output was in the topic: when it started,
    #: and completed (its sinks were told to publish).
    checkpoint_started: float | None
    checkpoint_completed: float | None
    #: The output topic held every expected record.
    last_output: float
    #: Whether that checkpoint started before its interval because the sources were idle.
    started_early: bool
    #: Share of the output in the topic when the sources went idle, and when it completed.
    out_at_idle: float | None
    out_at_completed: float | None

    def row(self, label: str) -> str:
        """One line of the breakdown table."""
        cells = [self.input_produced, self.output_90, self.sources_idle,
                 self.checkpoint_started, self.checkpoint_completed, self.last_output]
        shown = "".join(f"{'-' if c is None else f'{c:.3f}':>11}" for c in cells)
        shares = "".join(f"{'-' if c is None else f'{c:.0%}':>9}"
                         for c in (self.out_at_idle, self.out_at_completed))
        return f"{label:<7}{shown}{'yes' if self.started_early else 'no':>6}{shares}"


_BREAKDOWN_HEADER = (f"{'run':<7}{'input':>11}{'out 90%':>11}{'src idle':>11}"
                     f"{'ckpt start':>11}{'ckpt done':>11}{'last out':>11}{'early':>6}"
                     f"{'out@idle':>9}{'out@done':>9}")


async def wait_for_output(bootstrap: str, topic: str, expected: int,
                          timeout_s: float = 600.0, progress: list[tuple[float, int]] | None = None
                          ) -> float:
    """When ``topic`` first holds ``expected`` records (``time.perf_counter()``); with
    ``progress``, every ``(time, records)`` seen on the way is appended to it.

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
            if progress is not None:
                progress.append((time.perf_counter(), sum(ends.values())))
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


def _breakdown(deployment: Any, submission_id: str, produced: float, submitted: float,
               done: float, progress: list[tuple[float, int]], expected: int) -> TailBreakdown:
    """Where the run's time went (``time.perf_counter()`` stamps; the checkpoint figures are
    wall-clock, told apart by the offset between the two clocks now)."""
    to_perf = time.perf_counter() - time.time()
    regions = deployment.checkpoints(submission_id)
    region = regions[0] if regions else {}

    def since_submit(wall: float | None) -> float | None:
        return None if not wall else wall + to_perf - submitted

    completed = since_submit(region.get("last_completed_at"))
    started = since_submit(region.get("last_started_at"))
    idle = since_submit(region.get("last_quiet_at"))
    if completed is not None and completed > done - submitted:
        started = completed = idle = None  # a later checkpoint: not the one that published
    output_90 = next(at for at, count in progress if count >= 0.9 * expected)
    early = started is not None and bool(region.get("last_started_early"))

    def out_at(after_submit: float | None) -> float | None:
        if after_submit is None:
            return None
        return max((count for at, count in progress if at - submitted <= after_submit),
                   default=0) / expected

    return TailBreakdown(produced - submitted, output_90 - submitted, idle, started, completed,
                         done - submitted, early, out_at(idle), out_at(completed))


def _deployment_runs(bootstrap: str, records: int, repeat: int, delivery: str | None,
                     idle_timeout_s: float, stamp: str, checkpoints: bool = True,
                     breakdowns: list[TailBreakdown] | None = None) -> list[float]:
    """Seconds from ``submit`` to the last output in the topic, per timed submission (and,
    with ``breakdowns``, where each one's time went)."""
    import ray

    from runtime.deployment.controller import ControllerOptions
    from runtime.deployment.handle import Deployment
    from runtime.runners.ray_runner import ensure_ray
    from streamdag.config import CheckpointSettings, KafkaSettings, Settings

    ensure_ray(num_cpus=2)
    name = f"benche2e{stamp}"
    state = tempfile.mkdtemp(prefix="streamdag-bench-")
    deployment = Deployment.connect(
        Settings(name=name, state_dir=state,
                 kafka=KafkaSettings(partitions=4, idle_timeout_s=idle_timeout_s),
                 checkpoint=CheckpointSettings(enabled=checkpoints)), bootstrap,
        state_dir=state, options=ControllerOptions(grace_s=0.0, health_interval_s=0.0,
                                                   lifecycle_topic=f"{name}.lifecycle"))
    seconds: list[float] = []
    try:
        for run in range(repeat + 1):  # the first submission is the warm-up
            count = records if run else 20_000
            topic = f"bench.deploy-e2e.{stamp}.copy{run}"
            asyncio.run(produce_input(bootstrap, topic, count))
            produced = time.perf_counter()
            wait_for_pool(deployment, Settings().runtime.warm_pool)  # a deployment at rest
            graph = _graph(topic, f"{topic}.out", f"e2e{run}", delivery)
            submitted = time.perf_counter()
            submission = deployment.submit(graph)
            assert submission["state"] != "failed", submission["cause"]
            expected = count - _KEYS * (WINDOW - 1)
            progress: list[tuple[float, int]] = []
            done = asyncio.run(wait_for_output(bootstrap, f"{topic}.out", expected,
                                               progress=progress))
            if run:
                seconds.append(done - submitted)
                if breakdowns is not None:
                    breakdowns.append(_breakdown(deployment, submission["id"], produced,
                                                 submitted, done, progress, expected))
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
         idle_timeout_s: float, checkpoints: bool = True, breakdown: bool = False) -> None:
    stamp = time.strftime("%H%M%S")
    source = f"bench.deploy-e2e.{stamp}.loop"
    asyncio.run(produce_input(bootstrap, source, records))
    loop_s = _loop_seconds(bootstrap, source, records)
    breakdowns: list[TailBreakdown] | None = [] if breakdown else None
    ours = _deployment_runs(bootstrap, records, repeat, delivery, idle_timeout_s, stamp,
                            checkpoints, breakdowns)
    median = statistics.median(ours)
    print(f"\nlaunch to last output, {records:,} JSON records, 100 keys, 4 partitions, rolling "
          f"mean of {WINDOW}; delivery {delivery or 'default (exactly-once)'}; sources idle "
          f"after {idle_timeout_s:g} s quiet (the last outputs wait for it); checkpoints "
          f"{'every 1 s' if checkpoints else 'off (no epochs: published at once)'}")
    print(f"{'pipeline':<44} {'launch->last s':>15} {'vs batched':>11}")
    print(f"{'aiokafka batched loop':<44} {loop_s:>15.2f} {1.0:>10.2f}x")
    for index, seconds in enumerate(ours, 1):
        print(f"{f'streamdag, running deployment, run {index}':<44} {seconds:>15.2f} "
              f"{loop_s / seconds:>10.2f}x")
    print(f"streamdag on a running deployment, median: {loop_s / median:.2f}x the batched loop "
          "(target >= 2x)")
    if breakdowns:
        print("\nwhere the time went, seconds after submit (the input was produced before it; "
              "src idle: the\ncoordinator heard every source go idle; ckpt: the last checkpoint "
              "before the last output;\nearly: it started at the idleness, not at its interval)")
        print(_BREAKDOWN_HEADER)
        for index, rows in enumerate(breakdowns, 1):
            print(rows.row(f"run {index}"))


def main(argv: Sequence[str] | None = None) -> None:
    """Time launch to last on a running deployment, on an embedded broker (or --bootstrap)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=2, help="timed submissions")
    parser.add_argument("--delivery", choices=["exactly_once", "at_least_once"], default=None)
    parser.add_argument("--idle-timeout", type=float, default=1.0,
                        help="kafka.idle_timeout_s of the deployment (default 1; streamdag's 10)")
    parser.add_argument("--no-checkpoints", action="store_true",
                        help="checkpoint.enabled off (an exactly-once sink then publishes at once)")
    parser.add_argument("--breakdown", action="store_true",
                        help="print where each timed run's tail time went")
    parser.add_argument("--bootstrap", default="")
    args: Any = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.bootstrap:
        _run(args.bootstrap, args.records, args.repeat, args.delivery, args.idle_timeout,
             not args.no_checkpoints, args.breakdown)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            _run(broker.bootstrap_servers, args.records, args.repeat, args.delivery,
                 args.idle_timeout, not args.no_checkpoints, args.breakdown)


if __name__ == "__main__":
    main()
