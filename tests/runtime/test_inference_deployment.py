"""A deployment on a real Ray and broker: two graphs share one inference actor, interactive
requests reach it through the controller, and a model that cannot load leaves nothing deployed."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_controller import Connect, _node_actors, _produce, _read, _wait_for
from test_controller import connect as connect  # the fixture, under its own name

import streamdag as sd
from runtime.deployment.client import GatewayClient
from runtime.deployment.gateway import create_app
from runtime.inference.onnx_models import mlp_reference, write_mlp_onnx
from streamdag.config import GatewaySettings

pytestmark = pytest.mark.integration

# Halves and small integers: the model's float32 arithmetic is exact, so outputs equal numpy's.
LAYERS = [(np.array([[0.5, -1.0, 1.5]]), np.array([0.5, 1.0, -2.0])),
          (np.array([[1.0], [0.5], [-0.5]]), np.array([0.25]))]


def _scores(prices: list[float]) -> list[float]:
    return mlp_reference(np.array(prices).reshape(-1, 1), LAYERS)[:, 0].astype(float).tolist()


def _graph(name: str, ticks: str, out: str, model: str, **options: str) -> sd.Graph:
    source = sd.source("ticks", topic=ticks, key="symbol", schema={"price": "float64"})
    scored = source.infer(model, features=["price"], outputs=["score"], name="score", **options)
    return sd.Graph(name, outputs=[scored.to_topic(out, name=f"out_{name}")])


def _over_http(controller: Any, node: str, prices: list[float]) -> Any:
    """``POST /infer/{node}`` (GatewayClient.infer) through a gateway over the controller."""

    async def post() -> Any:
        app = create_app(controller, GatewaySettings(), "token")
        async with TestClient(TestServer(app)) as client:
            gateway = GatewayClient(str(client.make_url("")), "token")
            return await asyncio.to_thread(gateway.infer, node, {"price": prices}, 5_000)

    return asyncio.run(post())


def test_graphs_share_one_inference_actor_and_failed_loads_leave_nothing(
    connect: Connect, bootstrap: str, tmp_path: Path
) -> None:
    model = write_mlp_onnx(tmp_path / "score.onnx", LAYERS)
    deployment = connect()
    stem = uuid.uuid4().hex[:8]
    ticks, out_a, out_b = (f"inf-{part}-{stem}" for part in ("ticks", "a", "b"))
    _produce(bootstrap, ticks, 1, 30)

    first = deployment.submit(_graph("g1", ticks, out_a, model))
    assert (first["state"], first["cause"]) == ("executing", None)
    second = deployment.submit(_graph("g2", ticks, out_b, model))
    assert second["state"] == "executing"
    assert second["diff"]["reused"] == ["score", "ticks"]  # one inference actor for both
    scores = [json.loads(r.value)["score"] for r in _read(bootstrap, out_a, 30)]
    assert scores == _scores([float(i) for i in range(1, 31)])

    # A Python call through the controller, ahead of the node's stream.
    answer = deployment.infer("score", {"price": [2.0, 3.5]})
    assert answer["outputs"] == {"score": _scores([2.0, 3.5])}
    assert _over_http(deployment.controller, "score", [4.0, -1.5]) == {
        "node": "score", "node_id": answer["node_id"], "outputs": {"score": _scores([4.0, -1.5])}}
    _produce(bootstrap, ticks, 31, 32)
    assert [json.loads(r.value)["score"] for r in _read(bootstrap, out_b, 2)] == _scores(
        [31.0, 32.0])
    node = next(n for n in deployment.metrics_snapshot().nodes if n.name == "score")
    assert node.stats.inference.device == "cpu"
    assert node.stats.inference.fallback == "no GPU here"  # device="auto" says so
    assert node.stats.inference.queue_wait["interactive"].observations == 2  # Python, HTTP
    status = {n["name"]: n for n in deployment.status(first["id"])["nodes"]}
    assert status["score"]["stats"]["inference"]["device"] == "cpu"
    assert status["score"]["stats"]["inference"]["fallback"] == "no GPU here"

    # A model that cannot load fails its submission with the cause, and nothing stays up.
    running = _node_actors(deployment)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 this is not an ONNX model")
    failed = deployment.submit(_graph("g3", ticks, f"inf-c-{stem}", str(corrupt)))
    assert failed["state"] == "failed"
    assert "is not a loadable ONNX model" in failed["cause"]
    _wait_for(lambda: _node_actors(deployment) == running, "the failed submission's actors")

    # device="cuda" on a cluster without GPUs fails at once, naming the fix.
    cuda = deployment.submit(_graph("g4", ticks, f"inf-d-{stem}", model, device="cuda"))
    assert cuda["state"] == "failed"
    assert "the Ray cluster has no GPU" in cuda["cause"]
    assert _node_actors(deployment) == running
