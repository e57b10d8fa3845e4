"""A deployment's warm pool on a real local Ray and the embedded broker: new nodes bind to idle
warmed actors, a killed bound one recovers with exact output, a restarted controller finds its
pooled nodes and adopts the idle ones, and shutting down leaves no actor behind."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from actor_kills import kill_actor_process, wait_for
from ema_oracle import expected, per_key, produce
from prometheus_client import CollectorRegistry

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.deployment.controller import ControllerOptions, controller_actor_name
from runtime.deployment.handle import Deployment
from runtime.deployment.metrics import MetricsSnapshot, StreamdagCollector
from runtime.deployment.node_registry import NODE_NAMESPACE, node_actor_name
from runtime.deployment.warm_pool import pool_actor_pattern
from streamdag.config import (
    CheckpointSettings,
    ConfigError,
    KafkaSettings,
    RuntimeSection,
    Settings,
    load_settings,
)
from streamdag.testing import read_topic

TOTAL = 2000


def test_the_pool_size_is_a_setting_and_a_negative_one_is_refused() -> None:
    assert Settings().runtime.warm_pool == 3
    assert load_settings(environ={"STREAMDAG_RUNTIME_WARM_POOL": "0"}).runtime.warm_pool == 0
    with pytest.raises(ConfigError, match=r"runtime.warm_pool must be 0 \(no pool\) or more, "
                                          "got -1"):
        load_settings(environ={}, overrides=["runtime.warm_pool=-1"])


def _ema_graph(topic: str, out: str, sink: str = "out") -> sd.Graph:
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    return sd.Graph(f"g-{sink}", outputs=[ticks.ema("price", span=7, name="smooth").to_topic(
        out, name=sink)])


def _connect(settings: Settings, bootstrap: str, tmp_path: Path) -> Deployment:
    options = ControllerOptions(grace_s=0.0, health_interval_s=0.0,
                                lifecycle_topic=f"{settings.name}.lifecycle")
    return Deployment.connect(settings, bootstrap, state_dir=tmp_path / settings.name,
                              options=options)


def _pool(deployment: Deployment) -> dict[str, int]:
    return dict(ray.get(deployment.controller.warm_pool.remote()))


def _named_actors(deployment: str) -> set[str]:
    """Every named actor of ``deployment`` but its controller: node and pool actors."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NODE_NAMESPACE and a["name"].startswith(f"streamdag-{deployment}-")
            and a["name"] != controller_actor_name(deployment)}


def _pool_actors(deployment: str) -> set[str]:
    return {name for name in _named_actors(deployment)
            if pool_actor_pattern(deployment).fullmatch(name)}


def _actors(described: dict[str, Any]) -> dict[str, str]:
    return {node["name"]: node["actor"] for node in described["nodes"]}


def _events_in(actor: str) -> int:
    handle = ray.get_actor(actor, namespace=NODE_NAMESPACE)
    return int(ray.get(handle.stats.remote()).events_in)


def test_the_pool_is_exported_as_prometheus_families() -> None:
    from runtime.dataplane.stats import LatencyHistogram

    registry = CollectorRegistry()
    StreamdagCollector(registry).update(MetricsSnapshot(
        (), {}, LatencyHistogram(), 0, 0, 0.0, 0, 0, warm_pool_idle=2, warm_pool_starting=1,
        warm_pool_bound_total=7))
    value = registry.get_sample_value
    assert value("streamdag_warm_pool_actors", {"state": "idle"}) == 2
    assert value("streamdag_warm_pool_actors", {"state": "starting"}) == 1
    assert value("streamdag_warm_pool_bound_total") == 7


@pytest.mark.integration
def test_new_nodes_bind_to_the_warm_pool_recover_survive_a_controller_restart_and_leave_nothing(
    ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    name = f"wp{uuid.uuid4().hex[:8]}"
    # Idle after 1 s, not 10: the stream's last events need not wait out the default.
    settings = Settings(name=name, state_dir=str(tmp_path),
                        kafka=KafkaSettings(partitions=2, idle_timeout_s=1.0),
                        runtime=RuntimeSection(warm_pool=2),
                        checkpoint=CheckpointSettings(enabled=True, interval_s=0.3,
                                                      backoff_s=0.2))
    topic, out = f"wp-in-{uuid.uuid4().hex[:8]}", f"wp-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    graph = _ema_graph(topic, out)
    deployment = _connect(settings, bootstrap, tmp_path)
    try:
        wait_for(lambda: _pool(deployment)["idle"] == 2, "the pool to fill", timeout_s=120)
        idle = _pool_actors(name)
        assert len(idle) == 2

        # Sinks first: the sink and the EMA take the two idle pool actors, the source starts
        # an actor of its own, and the registry records each actor's name.
        submission = deployment.submit(graph)
        assert submission["state"] == "executing", submission["cause"]
        actors = _actors(submission)
        assert {actors["out"], actors["smooth"]} == idle
        assert actors["ticks"] == node_actor_name(name, graph.node("ticks").node_id)
        assert {n["actor"] for n in deployment.nodes()} == set(actors.values())
        wait_for(lambda: _pool(deployment)["idle"] == 2, "the pool to refill", timeout_s=120)
        assert deployment.status(submission["id"])["warm_pool"] == {
            "size": 2, "idle": 2, "starting": 0, "bound_total": 2}
        snapshot = deployment.metrics_snapshot()
        assert (snapshot.warm_pool_idle, snapshot.warm_pool_bound_total) == (2, 2)

        # A bound pool actor is killed mid-stream: its region recovers, exactly once.
        asyncio.run(produce(bootstrap, topic, 0, TOTAL // 2))
        wait_for(lambda: _events_in(actors["out"]) >= TOTAL // 2 and
                 deployment.checkpoints(submission["id"])[0]["completed"] >= 1,
                 "half through and a checkpoint")
        kill_actor_process(ray.get_actor(actors["smooth"], namespace=NODE_NAMESPACE))
        problems = deployment.check_health()
        assert len(problems) == 1 and " died: " in problems[0]
        recovered = _actors(deployment.status(submission["id"]))
        assert recovered["smooth"] != actors["smooth"]
        assert set(recovered.values()) <= _named_actors(name)
        asyncio.run(produce(bootstrap, topic, TOTAL // 2, TOTAL))
        records = asyncio.run(read_topic(bootstrap, out, TOTAL, timeout_s=60))
        assert len(records) == TOTAL  # 0 lost, 0 duplicated
        assert per_key(records) == expected(TOTAL, span=7)

        # The controller dies with bound and idle pool actors alive; a new one finds the
        # nodes by their recorded names and adopts the idle pool actors.
        wait_for(lambda: _pool(deployment)["idle"] == 2, "the pool to refill", timeout_s=120)
        before = _named_actors(name)
        ray.kill(deployment.controller)
        wait_for(lambda: controller_actor_name(name) not in {
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True)},
            "the killed controller to release its name")
        deployment = _connect(settings, bootstrap, tmp_path)
        again = deployment.submit(graph)
        assert (again["diff"]["new"], again["diff"]["reused"]) == ([], ["out", "smooth", "ticks"])
        assert _actors(again) == recovered
        assert _pool(deployment)["idle"] == 2
        assert _named_actors(name) == before

        # Both idle pool actors are killed: a new node bound to one of them starts an actor
        # of its own instead, and the health check replaces the dead ones.
        idle = before - set(recovered.values())
        for dead in idle:
            ray.kill(ray.get_actor(dead, namespace=NODE_NAMESPACE))
        wait_for(lambda: not idle & _named_actors(name), "the killed pool actors to be gone")
        out2 = f"wp-out2-{uuid.uuid4().hex[:8]}"
        second_graph = _ema_graph(topic, out2, sink="out2")
        second = deployment.submit(second_graph)
        assert second["state"] == "executing", second["cause"]
        assert _actors(second)["out2"] == node_actor_name(name, second_graph.node("out2").node_id)
        problems = deployment.check_health()
        assert len(problems) == 1 and problems[0].startswith("pool actor ")
        asyncio.run(produce(bootstrap, topic, TOTAL, TOTAL + 100))
        tail = asyncio.run(read_topic(bootstrap, out2, 100, timeout_s=60))
        assert per_key(tail) == {key: [(ts, value) for ts, value in outputs if ts >= TOTAL]
                                 for key, outputs in expected(TOTAL + 100, span=7).items()}
        wait_for(lambda: _pool(deployment)["idle"] == 2, "the pool to refill", timeout_s=120)
    finally:
        deployment.shutdown()
    assert _named_actors(name) == set()
