"""A deployment with ``checkpoint.enabled``: a killed actor's region recovers by itself, checked
by an oracle (0 lost, 0 duplicated, per-key order, exact values), and other regions go on.

The aggregate is an EMA per key: an event applied twice or lost changes every later value.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from actor_kills import kill_actor_process, wait_for
from ema_oracle import (
    KEYS,
    differences,
    expected,
    per_key,
    produce,
    produce_in_background,
    tick,
)
from recovering_deployment import recovering_deployment

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.checkpoints.store import CheckpointStore
from runtime.deployment.handle import Deployment
from runtime.deployment.node_registry import NODE_NAMESPACE
from streamdag.errors import StreamdagError
from streamdag.testing import read_topic

pytestmark = pytest.mark.integration

TOTAL = 3000


def _ema_graph(name: str, topic: str, out: str, span: int) -> sd.Graph:
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    smooth = ticks.ema("price", span=span, name=f"smooth{span}")
    return sd.Graph(name, outputs=[smooth.to_topic(out, name=f"out_{name}")])


def _half_through_then_flowing(deployment: Deployment, bootstrap: str
                               ) -> tuple[dict[str, Any], str, threading.Thread]:
    """g1 (EMA span 7) submitted, half the events through it and two checkpoints taken, the
    rest flowing: the submission, its output topic and the producing thread."""
    topic, out = f"drec-in-{uuid.uuid4().hex[:8]}", f"drec-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    submission = deployment.submit(_ema_graph("g1", topic, out, span=7))
    assert submission["state"] == "executing", submission["cause"]
    half = TOTAL // 2
    asyncio.run(produce(bootstrap, topic, 0, half))
    wait_for(lambda: _completed(deployment, submission) >= 2
             and _events_in(submission, "out_g1") >= half, "two checkpoints and half through")
    flowing = produce_in_background(bootstrap, topic, half, TOTAL)
    wait_for(lambda: _events_in(submission, "out_g1") >= half + 300, "the second half to flow")
    return submission, out, flowing


def _tripled(topic: str, out: str) -> sd.Graph:
    tripled = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"}).map(
        "price * 3", name="triple")
    return sd.Graph("g2", outputs=[tripled.to_topic(out, name="out_g2")])


def _renaming_output(first: sd.Graph, second: Callable[[str], sd.Graph]) -> str:
    """An output topic for ``second`` that gives it a node id below all of ``first``'s: a
    region is named after its smallest key, so attaching ``second`` renames ``first``'s."""
    smallest = min(node.node_id for node in first.nodes)
    while True:
        out = f"drec-out2-{uuid.uuid4().hex[:8]}"
        if min(node.node_id for node in second(out).nodes) < smallest:
            return out


def _actor(submission: dict[str, Any], node: str) -> Any:
    name = next(n["actor"] for n in submission["nodes"] if n["name"] == node)
    return ray.get_actor(name, namespace=NODE_NAMESPACE)


def _events_in(submission: dict[str, Any], node: str) -> int:
    return int(ray.get(_actor(submission, node).stats.remote()).events_in)


def _node_figures(submission: dict[str, Any]) -> str:
    """Each node's counters that tell where events went: the end of an oracle's message."""
    lines = []
    for node in submission["nodes"]:
        try:
            stats = ray.get(_actor(submission, node["name"]).stats.remote(), timeout=30)
        except Exception as error:  # the message must come out whatever the actor does
            lines.append(f"{node['name']}: no stats ({error!r})")
            continue
        lines.append(f"{node['name']}: in {stats.events_in} out {stats.events_out} late "
                     f"{stats.late_events} (dropped {stats.late_dropped}) held "
                     f"{stats.held_events} watermark {stats.watermark} lag {stats.lag} duplicates "
                     f"{stats.duplicates_dropped} stale {stats.stale_dropped}")
    return "\n".join(lines)


def _completed(deployment: Deployment, submission: dict[str, Any]) -> int:
    return sum(region["completed"] for region in deployment.checkpoints(submission["id"]))


@pytest.fixture
def deployment(ray_session: None, bootstrap: str, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment that checkpoints every 0.3 s and recovers after a 0.2 s backoff."""
    yield from recovering_deployment(bootstrap, tmp_path, "r")


def test_a_killed_interior_actor_then_a_killed_sink_recover_the_region_with_exact_output(
    deployment: Deployment, bootstrap: str
) -> None:
    submission, out, flowing = _half_through_then_flowing(deployment, bootstrap)
    kill_actor_process(_actor(submission, "smooth7"))
    first_problems = deployment.check_health()  # finds the dead actor and recovers its region
    # Once the restored region checkpointed and output flows again, its sink dies too.
    completed = _completed(deployment, submission)
    wait_for(lambda: _completed(deployment, submission) >= completed + 1,
             "the restored region to checkpoint")
    # The restored sink counts from 0. (Not "more than when the checkpoint came": on a loaded
    # box the restored region can have taken in the whole rest of the stream by then.)
    wait_for(lambda: _events_in(submission, "out_g1") > 0, "output to flow again",
             explain=lambda: _node_figures(submission))
    kill_actor_process(_actor(submission, "out_g1"))

    second_problems = deployment.check_health()
    flowing.join(timeout=60)
    records = asyncio.run(read_topic(bootstrap, out, TOTAL, timeout_s=60))

    assert [len(first_problems), len(second_problems)] == [1, 1]
    assert " died: " in first_problems[0] and " died: " in second_problems[0]
    assert deployment.status(submission["id"])["state"] == "executing"
    [region] = deployment.checkpoints(submission["id"])
    assert region["recoveries"] == 2
    assert len(records) == TOTAL, differences(records, TOTAL)  # 0 lost, 0 duplicated
    # Per-key order and exact values.
    assert per_key(records) == expected(TOTAL, span=7), differences(records, TOTAL)
    # Metrics and CloudEvents say what happened.
    [metrics] = deployment.metrics_snapshot().regions
    assert (metrics.region, metrics.recoveries) == (region["region"], 2)
    assert metrics.completed >= 3 and metrics.duration.observations == metrics.completed
    assert deployment.metrics_snapshot().restore_duration.observations == 2
    events = asyncio.run(read_topic(bootstrap, f"{deployment.settings.name}.lifecycle", 1))
    kinds = [json.loads(e.value)["type"] for e in events
             if json.loads(e.value)["subject"] == region["region"]]
    assert [k for k in kinds if k.startswith("io.streamdag.recovery.")] == [
        "io.streamdag.recovery.started", "io.streamdag.recovery.finished"] * 2
    assert kinds.count("io.streamdag.checkpoint.completed") >= 3


def test_a_graph_that_attaches_joins_the_region_and_a_crash_elsewhere_leaves_it_alone(
    deployment: Deployment, bootstrap: str, tmp_path: Path
) -> None:
    topic, other = f"drec-in-{uuid.uuid4().hex[:8]}", f"drec-other-{uuid.uuid4().hex[:8]}"
    out1, out3 = (f"drec-out{i}-{uuid.uuid4().hex[:8]}" for i in (1, 3))
    first = _ema_graph("g1", topic, out1, span=7)
    out2 = _renaming_output(first, lambda out: _tripled(topic, out))
    asyncio.run(ensure_topics(bootstrap, {topic: 2, other: 2, out1: 2, out2: 2, out3: 2}))
    g1 = deployment.submit(first)
    g3 = deployment.submit(_ema_graph("g3", other, out3, span=5))  # a region of its own
    half = TOTAL // 2
    asyncio.run(produce(bootstrap, topic, 0, half))
    asyncio.run(produce(bootstrap, other, 0, TOTAL))
    wait_for(lambda: _completed(deployment, g1) >= 2, "g1's region to checkpoint")
    [before] = deployment.checkpoints(g1["id"])
    g2 = deployment.submit(_tripled(topic, out2))
    assert [g["state"] for g in (g1, g2, g3)] == ["executing"] * 3
    [joined] = deployment.checkpoints(g2["id"])
    assert joined["region"] != before["region"]  # g2's new nodes rename it
    assert joined["nodes"] == ["out_g1", "out_g2", "smooth7", "ticks", "triple"]
    completed_before = joined["completed"]
    wait_for(lambda: deployment.checkpoints(g2["id"])[0]["completed"] >= completed_before + 2,
             "the merged region to checkpoint")
    bystander = _actor(g3, "smooth5")
    bystander_pid = _pid(bystander)
    flowing = produce_in_background(bootstrap, topic, half, TOTAL)
    wait_for(lambda: _events_in(g2, "out_g2") >= 300, "the second half to flow into g2")
    kill_actor_process(_actor(g2, "triple"))

    problems = deployment.check_health()
    flowing.join(timeout=60)
    first = asyncio.run(read_topic(bootstrap, out1, TOTAL, timeout_s=60))
    second = asyncio.run(read_topic(bootstrap, out2, TOTAL - half, timeout_s=60))
    third = asyncio.run(read_topic(bootstrap, out3, TOTAL, timeout_s=60))

    assert len(problems) == 1
    assert [deployment.status(g["id"])["state"] for g in (g1, g2, g3)] == ["executing"] * 3
    # g1's region before g2 joined goes once the merged one has checkpoints enough.
    regions = sorted(deployment.checkpoints(g["id"])[0]["store_region"] for g in (g2, g3))
    wait_for(lambda: _store_regions(deployment) == regions, "only the live regions' folders")
    log = (tmp_path / deployment.settings.name / "deployment.log").read_text()
    assert f"deleted checkpoint region {before['store_region']}: no registered node" in log
    assert deployment.checkpoints(g2["id"])[0]["recoveries"] == 1
    assert deployment.checkpoints(g3["id"])[0]["recoveries"] == 0
    assert _pid(bystander) == bystander_pid  # the other region was not restarted
    assert len(first) == TOTAL and per_key(first) == expected(TOTAL, span=7), (
        f"{differences(first, TOTAL, span=7)}\n{_node_figures(g1)}\n{_node_figures(g2)}")
    assert len(third) == TOTAL and per_key(third) == expected(TOTAL, span=5), differences(
        third, TOTAL, span=5)
    # g2 joined mid-stream, from where the shared source was when it attached: from there on
    # every event exactly once, in order, with its exact value.
    for key, outputs in per_key(second).items():
        first_ts = outputs[0][0]
        assert first_ts < half + len(KEYS)  # it attached before the second half came
        assert outputs == [(ts, tick(ts)["price"] * 3) for ts in range(first_ts, TOTAL)
                           if tick(ts)["symbol"] == key]


def test_a_killed_controller_comes_back_by_itself_and_recovers_what_died_meanwhile(
    deployment: Deployment, bootstrap: str
) -> None:
    submission, out, flowing = _half_through_then_flowing(deployment, bootstrap)

    # An interior actor dies (health checks are off: the controller does not notice), then
    # the controller dies: the one Ray brings back finds the actor gone when it starts.
    pid = _pid(deployment.controller)
    kill_actor_process(_actor(submission, "smooth7"))
    os.kill(pid, signal.SIGKILL)
    # A deadline for a loaded 2-core box (a restarted controller took over 60 s there once).
    try:
        wait_for(lambda: _recovered(deployment, submission), "the controller to come back and "
                 "recover the region by itself", timeout_s=120)
    except AssertionError as exc:  # what Ray knows of the controller, to tell why
        record = ray._private.state.actors(deployment.controller._actor_id.hex())
        since = time.time() - record.get("StartTime", 0) / 1000
        raise AssertionError(f"{exc}; Ray's record of the controller: state "
                             f"{record.get('State')}, restarts {record.get('NumRestarts')}, "
                             f"pid {record.get('Pid')}, (re)started {since:.1f} s ago") from None
    flowing.join(timeout=60)
    records = asyncio.run(read_topic(bootstrap, out, TOTAL, timeout_s=60))

    assert deployment.status(submission["id"])["state"] == "executing"
    assert len(records) == TOTAL  # 0 lost, 0 duplicated
    assert per_key(records) == expected(TOTAL, span=7)
    assert _completed(deployment, submission) >= 1  # it checkpoints again
    assert _pid(deployment.controller) != pid


def _pid(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())))


def _recovered(deployment: Deployment, submission: dict[str, Any]) -> bool:
    try:
        # At least one: a recovery that itself timed out on a loaded box is tried again.
        return bool(deployment.checkpoints(submission["id"])[0]["recoveries"] >= 1)
    except ray.exceptions.RayActorError:
        return False  # not back yet


def test_stop_takes_a_final_checkpoint_and_resume_or_resubmitting_goes_on_exactly(
    deployment: Deployment, bootstrap: str
) -> None:
    topic, out = f"drec-in-{uuid.uuid4().hex[:8]}", f"drec-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    graph = _ema_graph("g1", topic, out, span=7)
    first = deployment.submit(graph)
    third = TOTAL // 3
    asyncio.run(produce(bootstrap, topic, 0, third))
    wait_for(lambda: _events_in(first, "out_g1") >= third, "the first third through")

    stopped = deployment.stop(first["id"])
    asyncio.run(produce(bootstrap, topic, third, 2 * third))  # while it is stopped
    resumed = deployment.resume(first["id"])
    wait_for(lambda: _events_in(resumed, "out_g1") >= 1, "the resumed graph to go on")
    deployment.stop(resumed["id"])
    asyncio.run(produce(bootstrap, topic, 2 * third, TOTAL))
    again = deployment.submit(graph)  # submitting the same graph resumes it too
    records = asyncio.run(read_topic(bootstrap, out, TOTAL, timeout_s=60))

    assert stopped["state"] == "stopped"
    assert stopped["cause"].startswith(f"stopped at checkpoint(s) ['{deployment.settings.name}.")
    assert [s["state"] for s in (resumed, again)] == ["executing", "executing"]
    assert all(s["history"][-1]["cause"].startswith("resumed from checkpoint(s) [")
               for s in (resumed, again))
    assert len(records) == TOTAL  # 0 lost, 0 duplicated over two stops
    assert per_key(records) == expected(TOTAL, span=7)
    # The one region's folder stayed through both stops; removed for good, it goes.
    [region] = deployment.checkpoints(again["id"])
    assert _store_regions(deployment) == [region["store_region"]]
    deployment.remove(again["id"])
    assert _store_regions(deployment) == []


def _store_regions(deployment: Deployment) -> list[str]:
    settings = deployment.settings
    return CheckpointStore(settings.checkpoint.store_url(settings.state_dir)).regions()


def test_stop_is_refused_with_the_reason_when_the_graph_shares_nodes(
    deployment: Deployment, bootstrap: str
) -> None:
    topic = f"drec-in-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2}))
    g1 = deployment.submit(_ema_graph("g1", topic, f"drec-o1-{uuid.uuid4().hex[:8]}", span=7))
    g2 = deployment.submit(_ema_graph("g2", topic, f"drec-o2-{uuid.uuid4().hex[:8]}", span=3))

    with pytest.raises(StreamdagError) as refused:
        deployment.stop(g1["id"])
    assert str(refused.value) == (
        f"submission {g1['id']} shares nodes with running submission(s) ['{g2['id']}']: they "
        "go on reading, so it could not resume where it stopped; remove it (`streamdag rm`) "
        "instead")
    assert deployment.status(g1["id"])["state"] == "executing"
