"""Sharded graphs (``parallelism=N``) in a deployment: N named actors, one logical node.

The pure parts (the plan of shards, the registry's routes, sharing refusals, status grouping)
without Ray; then one deployment with checkpoints on the real broker: two graphs share a
sharded source and a sharded EMA (a third asking another parallelism is refused), a shard's
actor and then the controller are killed with SIGKILL while input flows, and both outputs are
exactly the one-shard output per key (0 lost, 0 duplicated, per-key order, exact values:
``ema_oracle``); so is one graph's after it stops at a final checkpoint and resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from actor_kills import kill_actor_process, wait_for
from ema_oracle import expected, per_key, produce, produce_in_background
from recovering_deployment import recovering_deployment

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.cli.status import describe_status
from runtime.dataplane.exchange import KeyRoute
from runtime.dataplane.stats import NodeStats
from runtime.deployment.admission import admit_submission
from runtime.deployment.handle import Deployment
from runtime.deployment.lifecycle import SubmissionNode, SubmissionRecord
from runtime.deployment.node_registry import (
    NODE_NAMESPACE,
    NodeRegistry,
    acquire,
    instance_key,
    release,
)
from runtime.deployment.sharded_nodes import parallelism_refusal, plan_shards
from runtime.planning.budgets import ActorBudgetError
from runtime.planning.planner import diff_graph
from runtime.planning.wiring import wire_graph
from streamdag.config import LimitSettings
from streamdag.testing import read_topic

TOTAL = 3000
#: Events after the checked ones: a live stream's last few events wait for more, or for the
#: source's idle timeout (10 s, ``WatermarkStatus``); the trailer spares the test that wait,
#: and its outputs are not compared.
TRAILER = 50


def _graph(name: str, topic: str, out: str, *, shards: int = 2) -> sd.Graph:
    """Ticks (source of ``shards`` partition groups) -> EMA span 7 (``shards``) -> ``out``."""
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"}
                      ).with_options(parallelism=shards)
    smooth = ticks.ema("price", span=7, name="smooth7", parallelism=shards)
    return sd.Graph(name, outputs=[smooth.to_topic(out, name=f"out_{name}")])


def _plan(graph: sd.Graph, submission: str = "s1", *, dedup: bool = True) -> Any:
    keys = {n.node_id: instance_key(n.node_id, submission, dedup=dedup) for n in graph.nodes}
    connectors = wire_graph(graph, {}, {}, lambda node: f"read {node.name}",  # type: ignore[arg-type,return-value]
                            lambda node: f"write {node.name}")  # type: ignore[arg-type,return-value]
    hosts = {h.node.node_id: h for g in connectors[0] for h in g}
    return keys, plan_shards("live", graph, keys, hosts)


# -- the plan and the registry, without Ray ---------------------------------------------------
def test_every_shard_is_a_registry_entry_with_its_slots_and_routes() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    total = ticks.rolling_sum("price", window=3, name="sum", parallelism=2).map(
        "value * 2", name="double", parallelism=2)
    graph = sd.Graph("g", outputs=[total.to_topic("out", name="out")])
    keys, plan = _plan(graph)
    ids = {node.name: node.node_id for node in graph.nodes}
    by_key = {request.key: request for request in plan.requests}

    assert list(plan.shard_keys.values()) == [
        (ids["ticks"],), (f"{ids['sum']}.0of2", f"{ids['sum']}.1of2"),
        (f"{ids['double']}.0of2", f"{ids['double']}.1of2"), (ids["out"],)]
    # source -> sum is an exchange (each shard takes its keys), sum -> double is forward,
    # double -> out gathers both shards in two input slots.
    assert [(r.name, r.shard, r.shards, r.inputs, r.routed) for r in plan.requests] == [
        ("ticks", 0, 1, (), ()),
        ("sum", 0, 2, (ids["ticks"],), (0,)), ("sum", 1, 2, (ids["ticks"],), (0,)),
        ("double", 0, 2, (f"{ids['sum']}.0of2",), ()),
        ("double", 1, 2, (f"{ids['sum']}.1of2",), ()),
        ("out", 0, 1, (f"{ids['double']}.0of2", f"{ids['double']}.1of2"), ())]
    assert len({r.actor_name for r in plan.requests}) == 6
    assert len({e.edge for e in plan.edges}) == len(plan.edges) == 6  # one channel each
    assert [(e.upstream, e.downstream, e.input_index, e.route) for e in plan.edges][:2] == [
        (ids["ticks"], f"{ids['sum']}.0of2", 0, KeyRoute(0, 2)),
        (ids["ticks"], f"{ids['sum']}.1of2", 0, KeyRoute(1, 2))]
    assert {key: (h.shard, h.shards, h.fan_in) for key, h in plan.hosts.items()} == {
        ids["ticks"]: (0, 1, ()), f"{ids['sum']}.0of2": (0, 2, (1,)),
        f"{ids['sum']}.1of2": (1, 2, (1,)), f"{ids['double']}.0of2": (0, 2, (1,)),
        f"{ids['double']}.1of2": (1, 2, (1,)), ids["out"]: (0, 1, (2,))}
    # The registry keeps what a recovery needs to re-wire the exchange: the same routes.
    registry = NodeRegistry.from_document(acquire(NodeRegistry(), "s1", plan.requests)
                                          .to_document("live"))
    assert registry.routes() == {e.edge: e.route for e in plan.edges if e.route is not None}
    shard = registry.entries[f"{ids['sum']}.1of2"]  # read back from its JSON
    assert (shard.shard, shard.shards, shard.routed, shard.logical_key) == (1, 2, (0,), ids["sum"])
    assert {e.region for e in registry.entries.values()} == {f"region-{min(by_key)[:12]}"}
    # One logical node per sharded node, with its shards' actors, all retired together.
    described = {node["name"]: node for node in registry.describe()}
    assert [described["sum"]["shards"], len(described["sum"]["actors"])] == [2, 2]
    assert len(described) == 4
    assert sorted(release(registry, "s1")[1]) == sorted(by_key)
    # Without dedup every graph has its own shards, still one logical key each.
    _, salted = _plan(graph, "s2", dedup=False)
    assert {r.logical_key for r in salted.requests}.isdisjoint(keys.values())
    assert len({r.logical_key for r in salted.requests}) == 4


def test_a_node_is_shared_only_with_the_parallelism_it_runs_with() -> None:
    two = _graph("g1", "t", "o1")
    registry = acquire(NodeRegistry(), "s1", _plan(two)[1].requests)
    again, one = _graph("g2", "t", "o2"), _graph("g3", "t", "o3", shards=1)

    assert parallelism_refusal(registry, again, _plan(again)[0]) is None
    assert [n.node_id for n in one.nodes][:2] == [n.node_id for n in two.nodes][:2]
    refusal = parallelism_refusal(registry, one, _plan(one)[0])
    assert refusal == (
        "node 'ticks' of graph 'g3' asks for parallelism 1, but the same node runs in this "
        "deployment with parallelism 2 for ['s1']; a node is shared only with its parallelism "
        "(running it twice would publish its output twice): give it parallelism=2 (the output "
        "per key is the same), or remove those submissions first")


def test_a_tag_query_and_what_reads_it_are_not_sharded_in_a_deployment() -> None:
    signals = sd.tag_query(["signal"], schema={"value": "float64"}, name="signals")
    total = signals.rolling_sum("value", window=3, name="total", parallelism=2)
    graph = sd.Graph("book", outputs=[total.map("value * 2", name="double").to_topic("b")])
    keys = {n.node_id: n.node_id for n in graph.nodes}
    assert parallelism_refusal(NodeRegistry(), graph, keys) == (
        "node 'total' of graph 'book' asks for parallelism 2, but it is or reads a tag query, "
        "whose inputs come and go and which tells loops apart by node: a deployment runs "
        "those unsharded; give it parallelism=1")
    flat = sd.Graph("flat", outputs=[signals.rolling_sum("value", window=3, name="total")])
    assert parallelism_refusal(NodeRegistry(), flat, {n.node_id: n.node_id
                                                      for n in flat.nodes}) is None


def test_admission_counts_one_actor_per_shard(tmp_path: Path) -> None:
    graph = _graph("g1", "t", "o1")  # 2 + 2 shards and a sink: 5 actors
    keys, _ = _plan(graph)
    diff = diff_graph(graph, frozenset())
    with pytest.raises(ActorBudgetError, match="needs 5 new node actors: 5 in all, over the "
                                               "limit of 4"):
        admit_submission(tmp_path, LimitSettings(max_actors=4), NodeRegistry(), (), "s1",
                         graph, keys, diff)
    admit_submission(tmp_path, LimitSettings(max_actors=5), NodeRegistry(), (), "s1", graph,
                     keys, diff)


def test_status_shows_a_sharded_node_once_with_its_shards_figures_summed() -> None:
    graph = _graph("g1", "t", "o1")
    _, plan = _plan(graph)
    registry = acquire(NodeRegistry(), "s1", plan.requests)
    nodes = tuple(SubmissionNode.of(n, key, leaf=n.role == "sink", shard=shard,
                                    shards=len(plan.shard_keys[n.node_id]))
                  for n in graph.nodes for shard, key in enumerate(plan.shard_keys[n.node_id]))
    record = SubmissionRecord.new("s1", "g1")
    record = SubmissionRecord.from_dict({**record.to_dict(),
                                         "nodes": [n.to_dict() for n in nodes]})
    smooth = plan.shard_keys[graph.node("smooth7").node_id]
    stats = {smooth[0]: NodeStats("x", "smooth7", events_in=10, events_out=7),
             smooth[1]: NodeStats("x", "smooth7", events_in=5, events_out=4)}

    described = record.describe("live", registry, stats)

    assert [(n["name"], n["shards"], len(n["actors"])) for n in described["nodes"]] == [
        ("ticks", 2, 2), ("smooth7", 2, 2), ("out_g1", 1, 1)]
    figures = described["nodes"][1]["stats"]
    assert (figures["events_in"], figures["events_out"]) == (15, 11)
    assert all(node["alive"] for node in described["nodes"])


def test_streamdag_status_shows_a_sharded_node_in_one_row() -> None:
    text = describe_status({
        "id": "g-1", "graph": "g", "state": "executing", "cause": None,
        "diff": {"new": ["smooth7"], "reused": [], "reuse_ratio": 0.0},
        "nodes": [{"name": "smooth7", "operator": "ema", "role": "operator", "alive": True,
                   "shared_by": ["g-1"], "shards": 2, "stats": {"events_in": 15}}]})
    assert text.splitlines()[-1].split()[:5] == ["smooth7", "(2", "shards)", "ema", "operator"]


# -- a deployment on Ray and the broker -------------------------------------------------------
@pytest.fixture
def deployment(ray_session: None, bootstrap: str, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment that checkpoints every 0.3 s and recovers after a 0.2 s backoff."""
    yield from recovering_deployment(bootstrap, tmp_path, "sh")


def _before(total: int, records: list[Any]) -> list[Any]:
    """The output records of events ``0..total - 1`` (the trailer's are left out)."""
    return [record for record in records if json.loads(record.value)["ts"] < total]


def _pid(actor: Any) -> int:
    return int(ray.get(actor.__ray_call__.remote(lambda _: os.getpid())))


def _recoveries(deployment: Deployment, submission: str) -> int:
    try:
        return int(deployment.checkpoints(submission)[0]["recoveries"])
    except ray.exceptions.RayActorError:
        return 0  # the controller is not back yet


def _actor(name: str) -> Any:
    return ray.get_actor(name, namespace=NODE_NAMESPACE)


def _events_out(actors: list[str]) -> int:
    return sum(int(ray.get(_actor(name).stats.remote()).events_out) for name in actors)


@pytest.mark.integration
def test_two_graphs_share_sharded_nodes_and_a_killed_shard_and_controller_recover_exactly(
    deployment: Deployment, bootstrap: str
) -> None:
    topic, out1, out2 = (f"shd-{stem}-{uuid.uuid4().hex[:8]}" for stem in ("in", "o1", "o2"))
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out1: 2, out2: 2}))
    first = deployment.submit(_graph("g1", topic, out1))
    second = deployment.submit(_graph("g2", topic, out2))
    refused = deployment.submit(_graph("g3", topic, out2.replace("o2", "o3"), shards=1))
    assert (first["state"], second["state"]) == ("executing", "executing"), second["cause"]
    assert second["diff"]["reused"] == ["smooth7", "ticks"]
    assert refused["state"] == "failed" and "with parallelism 2" in refused["cause"]
    smooth = next(n for n in deployment.status(second["id"])["nodes"] if n["name"] == "smooth7")
    assert (smooth["shards"], smooth["shared_by"]) == (2, sorted([first["id"], second["id"]]))
    assert [n["refcount"] for n in deployment.nodes() if n["name"] == "smooth7"] == [2]

    asyncio.run(produce(bootstrap, topic, 0, TOTAL // 2))
    wait_for(lambda: _events_out(smooth["actors"]) >= TOTAL // 2 - 100
             and sum(r["completed"] for r in deployment.checkpoints(first["id"])) >= 2,
             "nearly half through the shards and two checkpoints")
    flowing = produce_in_background(bootstrap, topic, TOTAL // 2, TOTAL + TRAILER)
    wait_for(lambda: _events_out(smooth["actors"]) >= TOTAL // 2 + 300, "the rest to flow")
    # Shard 1 of 2 dies (health checks are off: unnoticed), then the controller: the one Ray
    # brings back reads the registry, finds the shard gone and recovers the region.
    pid = _pid(deployment.controller)
    kill_actor_process(_actor(smooth["actors"][1]))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _recoveries(deployment, first["id"]) == 1,
             "the controller to come back and recover the region", timeout_s=120)
    flowing.join(timeout=60)
    outputs = [_before(TOTAL, asyncio.run(read_topic(bootstrap, out, TOTAL + TRAILER // 2,
                                                     timeout_s=60)))
               for out in (out1, out2)]

    assert _pid(deployment.controller) != pid
    assert deployment.check_health() == []
    [region] = deployment.checkpoints(first["id"])
    assert (region["nodes"], region["recoveries"]) == (["out_g1", "out_g2", "smooth7", "ticks"], 1)
    assert [len(records) for records in outputs] == [TOTAL, TOTAL]  # 0 lost, 0 duplicated
    one_shard = expected(TOTAL, span=7)
    assert [per_key(records) for records in outputs] == [one_shard, one_shard]
    assert [(s["graph"], s["state"]) for s in deployment.list()] == [
        ("g1", "executing"), ("g2", "executing"), ("g3", "failed")]
    # Metrics and the node API see one node of two shards, its figures summed.
    [metrics] = [n for n in deployment.metrics_snapshot().nodes if n.name == "smooth7"]
    assert metrics.stats.events_in == sum(
        ray.get(_actor(name).stats.remote()).events_in for name in smooth["actors"]) > 0
    assert deployment.node(smooth["node_id"])["shards"] == 2
    # Removing one graph keeps the shards the other uses. Alone, g1 stops at a final
    # checkpoint of every shard and resumes from it: still exactly the one-shard output.
    assert deployment.remove(second["id"])["retired"] == ["out_g2"]
    more = TOTAL + TRAILER + 500
    assert deployment.stop(first["id"])["state"] == "stopped"
    asyncio.run(produce(bootstrap, topic, TOTAL + TRAILER, more + TRAILER))  # while stopped
    resumed = deployment.resume(first["id"])
    records = _before(more, asyncio.run(read_topic(bootstrap, out1, more + TRAILER // 2,
                                                   timeout_s=60)))
    assert resumed["state"] == "executing", resumed["cause"]
    assert len(records) == more and per_key(records) == expected(more, span=7)
    assert sorted(deployment.remove(resumed["id"])["retired"]) == [
        "out_g1", "smooth7", "smooth7", "ticks", "ticks"]
