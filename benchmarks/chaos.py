"""Chaos: random kill -9 of random node actors while a live stream flows, then the oracle.

A keyed EMA over a sequence-numbered stream (an event lost or applied twice changes every later
value of its key) runs on the Ray runner with checkpoints and exactly-once sinks; a fault is
injected every 0-6 s after the graph runs again (as Flink's Jepsen tests do). At the end the
output topic is compared with a run without faults: lost, duplicated and reordered records,
and values that differ.

Run: ``python -m benchmarks.chaos [--faults N] [--rate R]`` (the suite runs one fault per actor
kind: tests/runtime/test_recovery.py).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from aiokafka import AIOKafkaProducer

import streamdag as sd
from connectors.broker import EmbeddedBroker
from connectors.topics import ensure_topics
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner, ensure_ray
from streamdag.batch import Batch
from streamdag.config import CheckpointSettings
from streamdag.testing import TestingSource, read_topic

__all__ = ["main"]

KEYS = tuple(f"k{i}" for i in range(20))
VICTIMS = ("ticks", "smooth", "out")


def _tick(i: int) -> dict[str, Any]:
    return {"symbol": KEYS[i % len(KEYS)], "ts": i, "price": float((i * 7919) % 1000) / 10}


def _graph(topic: str, out: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    return sd.Graph("chaos", outputs=[ticks.ema("price", span=7, name="smooth")
                                      .to_topic(out, name="out")])


async def _produce(bootstrap: str, topic: str, rate: float, stop: threading.Event,
                   produced: list[int]) -> None:
    # Batches of ~0.1 s, as a real producer sends: Tansu's fetch cost grows with the number
    # of batches in a partition (BROKER.md), and a catch-up over tiny ones crawls.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50,
                                max_batch_size=1 << 20)
    await producer.start()
    try:
        i, started = 0, time.monotonic()
        while not stop.is_set():
            while i < (time.monotonic() - started) * rate:
                tick = _tick(i)
                await producer.send(topic, json.dumps(tick).encode(),
                                    key=tick["symbol"].encode())
                i += 1
            await producer.flush()
            produced[0] = i
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()


def _expected(total: int) -> dict[str, list[tuple[int, float]]]:
    ticks = [_tick(i) for i in range(total)]
    batch = Batch.from_columns(ts=[t["ts"] for t in ticks], key=[t["symbol"] for t in ticks],
                               price=[t["price"] for t in ticks])
    source = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    graph = sd.Graph("chaos", outputs=[source.ema("price", span=7, name="smooth")])
    result = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource([batch])})
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in result.records("smooth"):
        expected.setdefault(str(record["key"]), []).append((int(record["ts"]),
                                                            float(record["value"])))
    return expected


def run(bootstrap: str, faults: int, rate: float, seed: int,
        max_gap_s: float = 6.0) -> dict[str, int]:
    """Inject ``faults`` kills; the oracle's counts."""
    rng = random.Random(seed)
    topic, out = f"chaos-in-{uuid.uuid4().hex[:8]}", f"chaos-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    # Idle after 1 s, not 10: the stream's last events need not wait out the default.
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, idle_timeout_s=1.0)
    settings = CheckpointSettings(url=Path(tempfile.mkdtemp(prefix="chaos-")).as_uri(),
                                  interval_s=0.5, backoff_s=0.2, max_backoff_s=2.0,
                                  max_failures=faults + 5, failure_window_s=1e9)
    running = RayRunner(checkpoints=settings, default_source=binding.source_for,
                        default_sink=binding.sink_for).start(_graph(topic, out))
    stop, produced = threading.Event(), [0]
    producer = threading.Thread(target=lambda: asyncio.run(
        _produce(bootstrap, topic, rate, stop, produced)), daemon=True)
    producer.start()
    injected = 0
    try:
        while injected < faults:
            # The gap runs from when the graph runs again: a fault in every restore would
            # test nothing but the restart loop.
            while running.recovering:
                time.sleep(0.05)
            if running.ended:  # recovery gave up: say why instead of waiting for it
                running.wait(0)
                break
            time.sleep(rng.uniform(0.0, max_gap_s))
            try:
                actor = running.actor(rng.choice(VICTIMS))
                pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=10)
            except Exception:  # its actor is being restored right now: try again later
                continue
            os.kill(pid, signal.SIGKILL)
            injected += 1
            figures = running.checkpoints
            print(f"  fault {injected}: killed pid {pid} (checkpoints completed "
                  f"{figures.completed if figures else 0}, recoveries {running.recoveries})",
                  flush=True)
        stop.set()
        producer.join(timeout=60)
        records = asyncio.run(read_topic(bootstrap, out, produced[0], timeout_s=120,
                                         stalled_s=120))
        recoveries, figures = running.recoveries, running.checkpoints
    finally:
        running.stop()
    expected = _expected(produced[0])
    found: dict[str, list[tuple[int, float]]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = json.loads(record.value)
        found.setdefault(value["key"], []).append((int(value["ts"]), float(value["value"])))
    seen = Counter((key, ts) for key, items in found.items() for ts, _ in items)
    wanted = {(key, ts) for key, items in expected.items() for ts, _ in items}
    reordered = sum(1 for items in found.values() for a, b in itertools.pairwise(items)
                    if b[0] <= a[0])
    return {"produced": produced[0], "faults": injected, "recoveries": recoveries,
            "checkpoints": figures.completed if figures else 0,
            "abandoned": figures.abandoned if figures else 0,
            "lost": len(wanted - set(seen)), "duplicated": sum(n - 1 for n in seen.values()),
            "reordered": reordered, "keys differing": sum(
                1 for key in expected if found.get(key) != expected[key])}


def main(argv: Sequence[str] | None = None) -> None:
    """Run the battery on an embedded broker (or --bootstrap) and print the oracle's counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-gap", type=float, default=6.0,
                        help="faults come every 0 to this many seconds")
    parser.add_argument("--bootstrap", default="")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray(num_cpus=2)
    if args.bootstrap:
        figures = run(args.bootstrap, args.faults, args.rate, args.seed, args.max_gap)
    else:
        with EmbeddedBroker.start(".state/bench-broker") as broker:
            figures = run(broker.bootstrap_servers, args.faults, args.rate, args.seed,
                          args.max_gap)
    print("\nchaos: " + "  ".join(f"{name} {value:,}" for name, value in figures.items()))


if __name__ == "__main__":
    main()
