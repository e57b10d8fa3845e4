"""A node actor that never answers (its process stopped with SIGSTOP) holds up no controller
call: on a real local Ray and the embedded broker, with periodic health checks running, a
removal whose retired node it feeds returns, the graph still using it fails with the cause,
and the deployment shuts down, each within a deadline."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import ray
from actor_kills import wait_for

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.deployment.controller import ControllerOptions
from runtime.deployment.handle import Deployment
from runtime.deployment.node_registry import NODE_NAMESPACE
from streamdag.config import KafkaSettings, RuntimeSection, Settings

pytestmark = pytest.mark.integration

#: How long the test lets any controller call take: the old controller never answered the
#: removal (its unsubscribe waited forever on the stopped producer).
CALL_DEADLINE_S = 30.0


def _strategy(name: str, topic: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    sma = ticks.rolling_mean("price", window=20, name="sma20")
    return sd.Graph(name, outputs=[sma.to_topic(f"{topic}-{name}", name=f"sig_{name}")])


def _actors(submission: dict[str, Any]) -> dict[str, str]:
    return {node["name"]: node["actor"] for node in submission["nodes"]}


def _named_actors(deployment: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NODE_NAMESPACE
            and a["name"].startswith(f"streamdag-{deployment}-node-")}


def test_a_stopped_producer_holds_up_neither_a_removal_nor_the_shutdown(
    ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    name = f"hang{uuid.uuid4().hex[:8]}"
    topic = f"hang-{uuid.uuid4().hex[:8]}"
    settings = Settings(name=name, state_dir=str(tmp_path), runtime=RuntimeSection(warm_pool=0),
                        kafka=KafkaSettings(partitions=1))
    # Two probes in a row unanswered kill an actor, whether the health check's or those of
    # a removal's unsubscribe (they count together): the cause below is that one.
    options = ControllerOptions(grace_s=0.0, health_interval_s=0.2, call_timeout_s=1.0,
                                unresponsive_probes=2, lifecycle_topic=f"{name}.lifecycle")
    asyncio.run(ensure_topics(bootstrap, {topic: 1}))
    deployment = Deployment.connect(settings, bootstrap, state_dir=tmp_path / name,
                                    options=options)
    deployment.call_timeout_s = CALL_DEADLINE_S
    stopped_pid = None
    try:
        first = deployment.submit(_strategy("a", topic))
        second = deployment.submit(_strategy("b", topic))
        assert (first["state"], second["state"]) == ("executing", "executing"), second["cause"]
        assert second["diff"]["reused"] == ["sma20", "ticks"]
        sma = ray.get_actor(_actors(first)["sma20"], namespace=NODE_NAMESPACE)
        stopped_pid = ray.get(sma.__ray_call__.remote(lambda _: os.getpid()), timeout=30)
        os.kill(stopped_pid, signal.SIGSTOP)  # alive, but answers nothing from now on

        # sig_b retires: its producer sma20 takes neither the unsubscribe nor two probes, so
        # it is killed as unresponsive, and the removal returns.
        removed = deployment.remove(second["id"])
        assert (removed["state"], removed["retired"]) == ("stopped", ["sig_b"])

        # The health loop finds sma20 dead with that cause: the graph using it fails.
        wait_for(lambda: deployment.status(first["id"])["state"] == "failed",
                 "the health check to fail the graph using the stopped node", timeout_s=30)
        cause = deployment.status(first["id"])["cause"]
        assert re.fullmatch(
            re.escape(f"node(s) ['sma20'] crashed: actor {_actors(first)['sma20']} died (its "
                      "actor did not answer 2 probes in a row within 1 s each; it was killed "
                      "as unresponsive)"),
            cause), cause
        assert [(s["id"], s["state"]) for s in deployment.list()] == [
            (first["id"], "failed"), (second["id"], "stopped")]

        stopped = deployment.shutdown()
        assert stopped == {"stopped": ["ticks", "sma20", "sig_a"]}
        assert _named_actors(name) == set()
    finally:
        if stopped_pid is not None:
            with suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGKILL)
        with suppress(Exception):
            ray.kill(deployment.controller)
