"""Model inference: dynamic batching against one row per call; interactive latency under load.

Throughput: a graph ``source -> infer (ONNX MLP) -> output`` run by the LocalRunner, the same
model and events with ``max_batch=256`` and with ``max_batch=1`` (events/s, and their ratio).
Latency: single-row interactive requests to an inference node, one after another, on an idle
node and while a stream keeps the model busy (p50/p99, and the loaded/idle p99 ratio; the
target is at most 2x), with the p99 of the wait in the engine's queue alone (submission to model
call, the part the priority queue decides; the rest is the model and waking the caller's
thread). Run: ``python -m benchmarks.inference``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import streamdag as sd
from operators.inference import InferenceDef, InferenceLogic
from operators.inference_queue import WAIT_BUCKETS, InferenceFigures
from runtime.inference.onnx_models import write_mlp_onnx
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.testing import TestingSource

__all__ = ["main"]

FEATURES = [f"f{i}" for i in range(16)]


def _model(folder: Path) -> str:
    rng = np.random.default_rng(3)
    layers = [(rng.normal(size=(16, 64)), rng.normal(size=64)),
              (rng.normal(size=(64, 64)), rng.normal(size=64)),
              (rng.normal(size=(64, 1)), rng.normal(size=1))]
    return write_mlp_onnx(folder / "mlp.onnx", layers)


def _ticks() -> sd.Node:
    return sd.source("ticks", topic="ticks", key="symbol",
                     schema={name: "float64" for name in FEATURES})


def _batches(events: int, per_batch: int) -> list[Batch]:
    rng = np.random.default_rng(5)
    batches = []
    for start in range(0, events, per_batch):
        n = min(per_batch, events - start)
        columns = {name: rng.normal(size=n) for name in FEATURES}
        batches.append(Batch.from_columns(ts=np.arange(start, start + n),
                                          key=np.full(n, b"k", dtype="S1"), **columns))
    return batches


def _throughput(model: str, max_batch: int, batches: list[Batch]) -> float:
    scored = _ticks().infer(model, features=FEATURES, outputs=["score"], max_batch=max_batch,
                            max_wait_ms=1.0, name="score")
    events = sum(len(b) for b in batches)
    started = time.perf_counter()
    result = LocalRunner().run(sd.Graph("bench", outputs=[scored]),
                               sources={"ticks": lambda: TestingSource(batches)})
    elapsed = time.perf_counter() - started
    assert result.stats["score"].events_out == events
    return events / elapsed


def _interactive(logic: InferenceLogic, requests: int) -> np.ndarray:
    rng = np.random.default_rng(9)
    latencies = np.empty(requests)
    for index in range(requests):
        features = {name: [float(rng.normal())] for name in FEATURES}
        started = time.perf_counter()
        logic.infer(features).result(timeout=30)
        latencies[index] = time.perf_counter() - started
    return latencies


class _QueueWaits:
    """Interactive queue waits the engine measured (submission to model call), per phase."""

    def __init__(self) -> None:
        self.counts = {"idle node": [0] * (len(WAIT_BUCKETS) + 1),
                       "under stream load": [0] * (len(WAIT_BUCKETS) + 1)}

    def add(self, phase: str, before: InferenceFigures, after: InferenceFigures) -> None:
        """Count the waits observed between two snapshots of the engine's figures."""
        now, then = after.queue_wait["interactive"], before.queue_wait["interactive"]
        for index, (late, early) in enumerate(zip(now.counts, then.counts, strict=True)):
            self.counts[phase][index] += late - early

    def p99_bound(self, phase: str) -> float:
        """The upper bound (seconds) of the bucket holding the 99th percentile."""
        counts = self.counts[phase]
        rank, seen = 0.99 * sum(counts), 0
        for bound, count in zip((*WAIT_BUCKETS, float("inf")), counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


def _latencies(
    model: str, requests: int, stream_batch: int, rounds: int, waits: _QueueWaits
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per round: interactive latencies on the idle node, then under a saturating stream.

    Rounds alternate idle and loaded, so a burst of load from elsewhere on the machine hits
    both alike; the table reports the median of the rounds' percentiles.
    """
    node = _ticks().infer(model, features=FEATURES, outputs=["score"], max_batch=256,
                          max_wait_ms=1.0, name="score")
    logic = InferenceDef.create(node.config())
    load = _batches(stream_batch, stream_batch)[0]
    idle: list[np.ndarray] = []
    loaded: list[np.ndarray] = []
    try:
        _interactive(logic, 200)  # warm
        for _ in range(rounds):
            before = logic.engine.snapshot()
            idle.append(_interactive(logic, requests))
            waits.add("idle node", before, logic.engine.snapshot())
            stop = threading.Event()

            def stream(stop: threading.Event = stop) -> None:
                while not stop.is_set():  # as the node's drain loop feeds it: batch after batch
                    logic.process([load])

            feeder = threading.Thread(target=stream, daemon=True)
            feeder.start()
            time.sleep(0.1)  # the stream is running before the first request is timed
            before = logic.engine.snapshot()
            loaded.append(_interactive(logic, requests))
            waits.add("under stream load", before, logic.engine.snapshot())
            stop.set()
            feeder.join(30)
        return idle, loaded
    finally:
        logic.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Print the throughput and latency tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--per-batch", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=500, help="per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--stream-batch", type=int, default=4_096)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = _model(Path(folder))
        batches = _batches(args.events, args.per_batch)
        _throughput(model, 256, batches[:2])  # load onnxruntime and the kernels first
        dynamic = _throughput(model, 256, batches)
        single = _throughput(model, 1, batches)
        print(f"{'max_batch':>9} {'events/s':>12}   (LocalRunner, ONNX MLP 16-64-64-1, "
              f"{args.events:,} events)")
        print(f"{256:>9} {dynamic:>12,.0f}")
        print(f"{1:>9} {single:>12,.0f}")
        print(f"dynamic batching / max_batch=1: {dynamic / single:.1f}x\n")
        waits = _QueueWaits()
        idle, loaded = _latencies(model, args.requests, args.stream_batch, args.rounds, waits)
    print(f"{'interactive, 1 row':>20} {'p50 ms':>7} {'p99 ms':>7} {'queue wait p99 <= ms':>20}"
          f"   (median of {args.rounds} rounds of {args.requests:,} requests each)")
    p99s = {}
    for label, rounds in (("idle node", idle), ("under stream load", loaded)):
        p50 = float(np.median([np.percentile(r, 50) for r in rounds])) * 1e3
        p99s[label] = float(np.median([np.percentile(r, 99) for r in rounds])) * 1e3
        print(f"{label:>20} {p50:>7.3f} {p99s[label]:>7.3f} "
              f"{waits.p99_bound(label) * 1e3:>20.3f}")
    ratio = p99s["under stream load"] / p99s["idle node"]
    print(f"p99 under load / idle: {ratio:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
