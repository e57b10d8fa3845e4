"""The main job: synthetic market data through the example graphs, live, with a console view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from runtime.dataplane.stats import NodeStats
from runtime.demo.synthetic import RandomWalk
from streamdag.config import Settings
from streamdag.graph import Graph

__all__ = ["DemoReport", "TickProducer", "fired_signal", "render_console", "run_demo"]


class TickProducer:
    """Writes random-walk ticks as JSON ``{"symbol", "ts", "price", "size"}`` at a steady rate.

    Event time is the wall clock when each tick is produced (ns), so sinks and consumers can
    measure end-to-end latency; it increases within a partition.
    """

    def __init__(self, bootstrap_servers: str, topic: str, rate: float, symbols: int) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.rate = rate
        self.walk = RandomWalk(symbols)
        self.produced = 0
        #: Set once connected, when the rate's clock starts.
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Stop after the current slice."""
        self._stop.set()

    async def run(self) -> None:
        """Produce until stopped, in 20 ms slices so the rate stays smooth."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, linger_ms=5, acks=1,
            max_batch_size=256 * 1024,
        )
        await producer.start()
        self.connected.set()
        try:
            started = time.perf_counter()
            while not self._stop.is_set():
                due = int((time.perf_counter() - started) * self.rate) - self.produced
                if due <= 0:
                    await asyncio.sleep(0.005)
                    continue
                batch = self.walk.next_batch(min(due, 50_000))
                futures = []
                rows = zip(batch.key.tolist(), batch.columns["price"].tolist(),
                           batch.columns["size"].tolist(), strict=True)
                for key, price, size in rows:
                    # Event time is the moment the tick is handed to Kafka.
                    value = json.dumps({"symbol": key.decode(), "ts": time.time_ns(),
                                        "price": round(price, 4), "size": size}).encode()
                    futures.append(await producer.send(self.topic, value, key=key))
                await asyncio.gather(*futures)
                self.produced += len(batch)
        finally:
            await producer.stop()


@dataclass
class DemoReport:
    """What the demo did, for its summary."""

    produced: int = 0
    seconds: float = 0.0
    stats: dict[str, NodeStats] = field(default_factory=dict)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    #: Whether every produced tick had gone through every node when the figures were taken.
    settled: bool = False
    #: Per sink topic: records read back, and how many of them are signals that fired.
    fired: dict[str, tuple[int, int]] = field(default_factory=dict)


def render_console(
    stats: dict[str, NodeStats],
    previous: dict[str, NodeStats],
    interval_s: float,
    produced: int,
    elapsed_s: float,
) -> str:
    """The one-screen view: per node events/s, p99 latencies, queue; lag; actors running.

    Rates and latencies are over the last ``interval_s`` (measured between the two snapshots);
    the p99s are quantiles of the observed durations themselves, not histogram bucket bounds.
    """
    lines = [
        f"streamdag demo  {elapsed_s:6.1f} s   produced {produced:,} ticks   "
        f"actors running: {len(stats)}   (figures over the last {interval_s:.1f} s)",
        "",
        f"{'node':<28} {'events in':>11} {'events/s':>10} {'p99 hop ms':>10} "
        f"{'p99 proc ms':>11} {'queue':>5}",
    ]
    for name, node in stats.items():
        before = previous.get(name)
        seen = max(node.events_in, node.events_out)
        rate = (seen - max(before.events_in, before.events_out)) / interval_s if before else 0.0
        # Latencies over the last refresh interval only, not since the start.
        hop = node.hop_latency.since(before.hop_latency) if before else node.hop_latency
        process = (node.process_latency.since(before.process_latency) if before
                   else node.process_latency)
        lines.append(
            f"{name:<28} {seen:>11,} {rate:>10,.0f} {hop.sample_quantile(0.99) * 1e3:>10.1f} "
            f"{process.sample_quantile(0.99) * 1e3:>11.2f} {node.queue_depth:>5}"
        )
    lags = {name: node.lag for name, node in stats.items() if node.lag}
    for name, lag in lags.items():
        parts = ", ".join(f"p{p}={n}" for p, n in sorted(lag.items()))
        lines.append(f"consumer lag {name}: {sum(lag.values()):,} ({parts})")
    return "\n".join(lines)


class _DeploymentView:
    """Per-node figures of a deployment, named as in the merged view of the demo's graphs."""

    def __init__(self, deployment: Any, graph: Graph) -> None:
        self.deployment = deployment
        self._names = {node.node_id: node.name for node in graph.nodes}

    def stats(self) -> dict[str, NodeStats]:
        """Every node's counters, by name, in the merged graph's order."""
        snapshot = self.deployment.metrics_snapshot()
        by_id = {node.node_id: node.stats for node in snapshot.nodes}
        return {name: by_id[node_id] for node_id, name in self._names.items() if node_id in by_id}


class _InterruptFlag:
    """The first Ctrl-C ends the run gracefully (summary, clean stop); a second one aborts."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    @classmethod
    def install(cls) -> _InterruptFlag:
        flag = cls()
        if threading.current_thread() is threading.main_thread():
            flag._previous = signal.signal(signal.SIGINT, flag._handle)
        return flag

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __bool__(self) -> bool:
        return self.raised


def _drained_stats(
    running: Any, graph: Graph, produced: int, loop: asyncio.AbstractEventLoop,
    timeout_s: float = 30.0,
) -> tuple[dict[str, NodeStats], bool]:
    """Stats once every produced tick has gone through every node (or the timeout passed),
    and whether they had settled so."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats: dict[str, NodeStats] = running.stats()
        read = sum(stats[n.name].events_out for n in graph.nodes if n.role == "source")
        settled = read >= produced and all(
            stats[node.name].events_in == sum(stats[i.name].events_out for i in node.inputs)
            for node in graph.nodes if node.inputs
        )
        if settled or time.monotonic() > deadline:
            return stats, settled
        loop.run_until_complete(asyncio.sleep(0.1))


def fired_signal(record: dict[str, Any]) -> bool:
    """Whether an output record carries a signal that fired: a field (not ts) of +1 or -1.

    >>> fired_signal({"ts": 1, "key": "A", "value": -1.0}), fired_signal({"ts": 1, "value": 0.0})
    (True, False)
    """
    return any(value in (1, -1) and not isinstance(value, bool)
               for name, value in record.items() if name not in ("ts", "key"))


async def _sample_topic(
    bootstrap: str, topic: str, count: int, limit: int = 500_000
) -> tuple[list[dict[str, Any]], int, int]:
    """The last ``count`` records of ``topic`` with a fired signal (else its last records),
    the records read (up to ``limit``) and how many of them fired."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[dict[str, Any]] = []
        fired: list[dict[str, Any]] = []
        while len(records) < limit:
            fetched = await consumer.getmany(*assigned, timeout_ms=1000, max_records=10_000)
            if not fetched:
                break
            for messages in fetched.values():
                for message in messages:
                    record = json.loads(message.value)
                    records.append(record)
                    if fired_signal(record):
                        fired.append(record)
        shown = sorted(fired or records, key=lambda r: r.get("ts", 0))[-count:]
        return shown, len(records), len(fired)
    finally:
        await consumer.stop()


def run_demo(
    settings: Settings,
    graphs: list[Graph],
    *,
    out: TextIO = sys.stdout,
    refresh_s: float = 1.0,
    clear: bool = True,
    on_tick: Callable[[dict[str, NodeStats]], None] | None = None,
    html_report: Path | None = None,
) -> DemoReport:
    """Run the main job end to end and stop everything it started; returns what it did.

    With ``html_report``, writes the HTML report there before stopping: the outputs of a
    replay of the ticks beside them, with the live run's per-node figures.
    """
    import ray

    from connectors.broker import EmbeddedBroker
    from connectors.topics import ensure_topics
    from runtime.deployment.handle import Deployment
    from runtime.planning.wiring import merge_graphs
    from runtime.runners.ray_runner import ensure_ray

    report = DemoReport()
    broker: EmbeddedBroker | None = None
    running = None
    producer: TickProducer | None = None
    task: asyncio.Task[None] | None = None
    started_ray = False
    loop = asyncio.new_event_loop()
    try:
        # Step 1: Kafka: the configured cluster, or the embedded broker.
        bootstrap = settings.kafka.bootstrap_servers
        if not bootstrap:
            broker = EmbeddedBroker.start(state_dir=Path(settings.state_dir) / "demo-broker")
            bootstrap = broker.bootstrap_servers
            print(f"embedded broker on {bootstrap}", file=out)
        graph = merge_graphs("demo", graphs)
        topics = {settings.demo.topic: settings.kafka.partitions}
        topics.update({str(n.params["topic"]): settings.kafka.partitions
                       for n in graph.nodes if n.role == "sink"})
        loop.run_until_complete(ensure_topics(bootstrap, topics, strict=False))
        # Step 2: Ray, and the graphs' actors (sinks first, sources last).
        started_ray = not ray.is_initialized()
        ensure_ray(settings.ray.address or None, settings.ray.num_cpus)
        counts: dict[str, int] = {}
        for g in graphs:
            for node in g.nodes:
                counts[node.node_id] = counts.get(node.node_id, 0) + 1
        report.shared = [n.name for n in graph.nodes if counts[n.node_id] > 1]
        print(f"graphs: {', '.join(g.name for g in graphs)}; {len(graph.nodes)} actors for "
              f"{sum(len(g.nodes) for g in graphs)} nodes (shared: {', '.join(report.shared)})",
              file=out)
        # Each graph is submitted on its own; the controller runs shared nodes once.
        deployment = Deployment.connect(
            replace(settings, name=f"{settings.name}-demo"), bootstrap,
            state_dir=Path(settings.state_dir) / "demo-deployment",
        )
        running = _DeploymentView(deployment, graph)
        for submitted in graphs:
            result = deployment.submit(submitted)
            if result["state"] == "failed":
                raise RuntimeError(f"graph {submitted.name!r} failed: {result['cause']}")
            diff = result["diff"]
            print(f"submitted {submitted.name}: new {', '.join(diff['new']) or '-'}; "
                  f"reused {', '.join(diff['reused']) or '-'}", file=out)
        # Step 3: produce ticks and refresh the console until the duration is over.
        producer = TickProducer(bootstrap, settings.demo.topic, settings.demo.rate,
                                settings.demo.symbols)
        task = loop.create_task(producer.run())
        started = time.perf_counter()
        # Every screen reports a whole interval between two snapshots, the first one included.
        previous: dict[str, NodeStats] = running.stats()
        taken = time.perf_counter()
        duration = settings.demo.duration_s
        interrupted = _InterruptFlag.install()
        while (duration <= 0 or time.perf_counter() - started < duration) and not interrupted:
            loop.run_until_complete(asyncio.sleep(refresh_s))
            if task.done():
                task.result()
            stats = running.stats()
            now = time.perf_counter()
            screen = render_console(stats, previous, now - taken, producer.produced,
                                    now - started)
            print(("\x1b[2J\x1b[H" if clear else "") + screen, file=out, flush=True)
            previous, taken = stats, now
            if on_tick is not None:
                on_tick(stats)
        interrupted.uninstall()
        producer.stop()
        loop.run_until_complete(task)
        report.produced = producer.produced
        report.seconds = time.perf_counter() - started
        report.stats, report.settled = _drained_stats(running, graph, producer.produced, loop)
        for node in graph.nodes:
            if node.role == "sink":
                topic = str(node.params["topic"])
                shown, read, fired = loop.run_until_complete(_sample_topic(bootstrap, topic, 3))
                report.samples[topic] = shown
                report.fired[topic] = (read, fired)
        if html_report is not None:
            from runtime.report.replay import replay_report

            written = replay_report(graph, bootstrap, keys=3,
                                    live=(report.stats, report.seconds))
            html_report.write_text(written.page, encoding="utf-8")
            print(f"wrote {html_report} ({len(written.page):,} bytes)", file=out)
        return report
    finally:
        # Step 4: stop everything this job started, in reverse order.
        if producer is not None and task is not None and not task.done():
            producer.stop()
            with contextlib.suppress(Exception, KeyboardInterrupt):
                loop.run_until_complete(asyncio.wait_for(task, 10))
        if running is not None:
            running.deployment.shutdown()
        if started_ray:
            ray.shutdown()
        if broker is not None:
            broker.stop()
        loop.close()
