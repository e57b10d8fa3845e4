"""Inference nodes at run time: runners, the host's interactive calls and stop, the gateway route
and the metrics; and, on a real Ray and broker, a deployment sharing one inference actor."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import streamdag as sd
from operators.inference_errors import InferenceStoppedError, RequestAbandonedError
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.stats import NodeStats
from runtime.deployment.gateway import create_app
from runtime.deployment.metrics import MetricsSnapshot, NodeMetrics, StreamdagCollector
from runtime.inference.host import InferenceHost
from runtime.inference.onnx_models import mlp_reference, write_mlp_onnx
from runtime.inference.requests import UnknownInferenceNodeError
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.config import GatewaySettings
from streamdag.testing import TestingSource

RNG = np.random.default_rng(11)
LAYERS = [(RNG.integers(-6, 7, size=(2, 6)) / 2, RNG.integers(-6, 7, size=6) / 2),
          (RNG.integers(-6, 7, size=(6, 1)) / 2, RNG.integers(-6, 7, size=1) / 2)]
WAIT_S = 10.0


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_mlp_onnx(tmp_path_factory.mktemp("models") / "mlp.onnx", LAYERS)


def _ticks(topic: str = "ticks") -> sd.Node:
    return sd.source("ticks", topic=topic, key="symbol",
                     schema={"price": "float64", "size": "float64"})


def _batches() -> list[Batch]:
    sizes = (5, 1, 40, 17)
    starts = np.cumsum((0, *sizes))
    return [Batch.from_columns(ts=list(range(start, start + n)), key=["A", "B"] * (n // 2)
                               + ["A"] * (n % 2), price=RNG.integers(-40, 41, size=n) / 8,
                               size=RNG.integers(-40, 41, size=n) / 8)
            for start, n in zip(starts, sizes, strict=False)]


def _expected(batches: list[Batch]) -> list[float]:
    rows = np.column_stack([np.concatenate([b.columns[f] for b in batches])
                            for f in ("price", "size")])
    return mlp_reference(rows, LAYERS)[:, 0].astype(np.float64).tolist()


def test_local_runner_scores_every_event_exactly_and_unloads(
    mlp: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="operators.inference")
    batches = _batches()
    scored = _ticks().infer(mlp, features=["price", "size"], outputs=["score"], max_batch=8,
                            name="score")
    result = LocalRunner().run(sd.Graph("g", outputs=[scored]),
                               sources={"ticks": lambda: TestingSource(batches)})
    assert [r["score"] for r in result.records("score")] == _expected(batches)
    figures = result.stats["score"].inference
    assert figures.rows_served == 63 and figures.device == "cpu"
    assert figures.batches == 1 + 1 + 5 + 3  # 5, 1, 40 and 17 rows in batches of 8
    # Stopped: the health snapshot is in the log.
    assert ("inference node score stopped: 4 requests served in 10 batches, 0 errors, "
            "0 abandoned, 0 failed by the stop") in caplog.text


def test_a_slow_model_holds_the_source_back_instead_of_queueing() -> None:
    def slow(rows: np.ndarray) -> np.ndarray:
        time.sleep(0.001)  # a model slower than its input
        return rows[:, :1] + rows[:, 1:]

    batches = [Batch.from_columns(ts=list(range(i * 50, i * 50 + 50)), key=["A"] * 50,
                                  price=np.arange(50.0), size=np.full(50, float(i)))
               for i in range(30)]
    summed = _ticks().infer(slow, features=["price", "size"], outputs=["total"], max_batch=10,
                            max_wait_ms=0, name="total")
    result = LocalRunner(RuntimeSettings(credits=1)).run(
        sd.Graph("g", outputs=[summed]), sources={"ticks": lambda: TestingSource(batches)})
    assert [r["total"] for r in result.records("total")] == [
        p + i for i in range(30) for p in np.arange(50.0)]
    # The engine never held more than the one batch in the model; the source waited instead.
    assert result.stats["total"].inference.max_queue_depth == 1
    assert result.stats["ticks"].backpressure_wait_seconds > 0


def _gated_model(folder: str) -> Any:
    """A model for an actor: it logs each call in ``folder``/calls; a stream's calls (price > 0)
    wait until ``folder``/release exists, interactive ones (price < 0) do not."""

    def model(rows: np.ndarray) -> np.ndarray:
        if rows[0, 0] != 0.0:  # not the load check's row of zeros
            with open(f"{folder}/calls", "a") as calls:
                calls.write(f"{'s' if rows[0, 0] > 0 else 'i'}{len(rows)}\n")
            while rows[0, 0] > 0 and not os.path.exists(f"{folder}/release"):
                time.sleep(0.001)
        return rows[:, :1]

    return model


@pytest.mark.integration
def test_ray_actor_runs_like_local_and_takes_interactive_calls_while_its_stream_waits(
    ray_session: None, mlp: str, tmp_path: Path
) -> None:
    scored = _ticks().infer(mlp, features=["price", "size"], outputs=["score"], name="score")
    graph = sd.Graph("g", outputs=[scored])
    batches = _batches()
    local = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource(batches)})
    remote = RayRunner().run(graph, sources={"ticks": lambda: TestingSource(batches)})
    assert remote.records("score") == local.records("score")
    assert [r["score"] for r in remote.records("score")] == _expected(batches)

    # The stream's first call holds the model; its drain loop waits inside process().
    gated = _ticks().infer(_gated_model(str(tmp_path)), features=["price", "size"],
                           outputs=["score"], max_batch=10, shareable=False, name="score")
    stream = [Batch.from_columns(ts=list(range(i * 20, i * 20 + 20)), key=["A"] * 20,
                                 price=np.arange(1.0, 21.0), size=np.zeros(20)) for i in range(3)]
    running = RayRunner().start(sd.Graph("gated", outputs=[gated]),
                                sources={"ticks": lambda: TestingSource(stream)})
    try:
        actor = running.actor("score")
        _wait_until(lambda: (tmp_path / "calls").exists(), "the stream's first model call")
        asked = actor.infer.options(concurrency_group="interactive").remote(
            {"price": [-1.0], "size": [0.0]}, 30.0)

        def queued() -> int:
            figures = ray.get(actor.inference_figures.options(
                concurrency_group="interactive").remote())
            return int(figures.queue_depth)

        _wait_until(lambda: queued() == 2, "the interactive request queued behind the call")
        (tmp_path / "release").touch()
        assert ray.get(asked, timeout=WAIT_S) == {"score": [-1.0]}
        assert [r["score"] for r in running.wait(timeout_s=60).records("score")] == list(
            np.tile(np.arange(1.0, 21.0), 3))
    finally:
        running.stop()
    # Served right after the call in the model, ahead of the stream's other 50 rows.
    assert (tmp_path / "calls").read_text().split() == ["s10", "i1", *["s10"] * 5]


def _wait_until(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class _Gate:
    """A callable model holding every call until released; doubles its first feature."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[list[float]] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if len(self.calls) or rows[0, 0] != 0.0:  # the load check's row of zeros passes
            self.calls.append(rows[:, 0].tolist())
            self.entered.set()
            assert self.release.wait(WAIT_S)
        return rows[:, :1] * 2.0


async def test_host_serves_interactive_calls_and_stops_cleanly() -> None:
    gate = _Gate()
    node = _ticks().infer(gate, features=["price", "size"], outputs=["score"], max_batch=4,
                          max_wait_ms=0, shareable=False, name="score")
    host = InferenceHost(node.config())
    await host.ready()
    loop = asyncio.get_running_loop()
    first = loop.create_task(host.infer({"price": [1.0], "size": [0.0]}))
    assert await asyncio.to_thread(gate.entered.wait, WAIT_S)
    waiting = loop.create_task(host.infer({"price": [2.0], "size": [0.0]}))
    gone = loop.create_task(host.infer({"price": [3.0], "size": [0.0]}, timeout_s=0.05))
    with pytest.raises(TimeoutError):
        await gone
    stopping = loop.create_task(host.stop())
    with pytest.raises(InferenceStoppedError, match="stopped before computing"):
        await asyncio.wait_for(waiting, WAIT_S)
    gate.release.set()
    assert await asyncio.wait_for(first, WAIT_S) == {"score": [2.0]}
    await asyncio.wait_for(stopping, WAIT_S)
    assert gate.calls == [[1.0]]  # neither the waiting nor the abandoned request ran
    figures = host.stats().inference
    assert (figures.requests_served, figures.stopped) == (1, 1)
    with pytest.raises(InferenceStoppedError, match="takes no more requests"):
        await host.infer({"price": [4.0], "size": [0.0]})


class _FakeController:
    """What the gateway calls: ``infer`` answering one node, refusing others."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, list[float]], float]] = []
        self.cancelled = asyncio.Event()

    async def infer(self, node: str, features: dict[str, list[float]],
                    timeout_s: float) -> dict[str, Any]:
        self.asked.append((node, features, timeout_s))
        if node == "slow":
            try:
                await asyncio.Event().wait()  # an answer that never comes
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if node == "late":
            raise RequestAbandonedError("the request's caller stopped waiting")
        if node != "score":
            raise UnknownInferenceNodeError(f"no running inference node is named {node!r}")
        return {"node": node, "node_id": "abc", "outputs": {"score": [v * 2 for v in
                                                                      features["price"]]}}


async def test_gateway_route_answers_and_maps_errors() -> None:
    controller = _FakeController()
    app = create_app(controller, GatewaySettings(), "secret")
    async with TestClient(TestServer(app)) as client:
        auth = {"Authorization": "Bearer secret"}
        body = {"features": {"price": [1.5, 2.0], "size": [1, 2]}, "timeout_ms": 500}
        answer = await client.post("/infer/score", json=body, headers=auth)
        assert answer.status == 200
        assert await answer.json() == {"node": "score", "node_id": "abc",
                                       "outputs": {"score": [3.0, 4.0]}}
        assert controller.asked == [("score", {"price": [1.5, 2.0], "size": [1.0, 2.0]}, 0.5)]
        assert (await client.post("/infer/score", json=body)).status == 401
        missing = await client.post("/infer/other", json=body, headers=auth)
        assert missing.status == 404
        assert (await missing.json())["errors"][0]["type"] == "UnknownInferenceNodeError"
        assert (await client.post("/infer/late", json=body, headers=auth)).status == 504
        bad = await client.post("/infer/score", json={"features": {"price": ["x"]}},
                                headers=auth)
        assert bad.status == 400
        assert "expected a finite number" in (await bad.json())["errors"][0]["message"]
        # A client that goes away cancels its request.
        with pytest.raises(TimeoutError):
            await client.post("/infer/slow", json=body, headers=auth,
                              timeout=ClientTimeout(total=0.2))
        await asyncio.wait_for(controller.cancelled.wait(), WAIT_S)


def test_metrics_export_inference_figures(mlp: str) -> None:
    node = _ticks().infer(mlp, features=["price", "size"], outputs=["score"], name="score")
    host = InferenceHost(node.config())
    future = host.inference.infer({"price": [1.0, 2.0], "size": [3.0, 4.0]})
    assert future.result(WAIT_S).shape == (2, 1)
    stats: NodeStats = host.stats()
    host.inference.close()
    registry = CollectorRegistry()
    collector = StreamdagCollector(registry)
    collector.update(MetricsSnapshot(
        (NodeMetrics(node.node_id, "score", "infer", "operator", ("g",), "r", "a", True,
                     stats),), {}, stats.process_latency, 0, 0, 0.0, 0, 1))
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for sample in family.samples if sample.name.startswith("streamdag_inference")}
    labels = (("node", "score"), ("node_id", node.node_id), ("operator", "infer"))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted((*labels, *extra))))]

    assert value("streamdag_inference_rows_total") == 2.0
    assert value("streamdag_inference_device", ("device", "cpu"),
                 ("fallback", "no GPU here")) == 1.0
    assert value("streamdag_inference_queue_wait_seconds_count", ("priority", "interactive")) == 1
    assert value("streamdag_inference_queue_wait_seconds_count", ("priority", "streaming")) == 0
    assert value("streamdag_inference_batch_size_bucket", ("le", "2.0")) == 1.0
    assert value("streamdag_inference_batch_size_bucket", ("le", "1.0")) == 0.0
    assert value("streamdag_inference_model_load_seconds") == stats.inference.load_seconds > 0


def test_unknown_inference_node_names_the_running_ones(tmp_path: Path) -> None:
    from runtime.deployment.node_registry import NodeRegistry
    from runtime.inference.requests import find_inference_node

    with pytest.raises(UnknownInferenceNodeError, match="none \\(submit a graph"):
        find_inference_node(NodeRegistry(), "score")
