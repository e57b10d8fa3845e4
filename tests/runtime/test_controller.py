"""The controller on a real local Ray and the embedded broker: dedup, attach, GC, failures."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from actor_kills import is_held, kill_actor_process, wait_for
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.deployment.controller import ControllerOptions, UnknownSubmissionError
from runtime.deployment.handle import Deployment
from runtime.deployment.node_registry import NODE_NAMESPACE
from runtime.runners.ray_nodes import node_actor_class
from streamdag.config import KafkaSettings, RuntimeSection, Settings
from streamdag.errors import StreamdagError
from streamdag.spec import graph_to_dict

pytestmark = pytest.mark.integration

Connect = Callable[..., Deployment]


@pytest.fixture
def connect(ray_session: None, bootstrap: str, tmp_path: Path) -> Iterator[Connect]:
    """Connects a fresh deployment (unique name, state under tmp_path); shuts all down after."""
    opened: list[Deployment] = []

    def open_deployment(name: str | None = None, **options: Any) -> Deployment:
        name = name or f"t{uuid.uuid4().hex[:8]}"
        # No warm pool: these tests count node actors by their node names (a pooled actor
        # keeps its pool name; tests/runtime/test_warm_pool.py covers the pool).
        settings = Settings(name=name, state_dir=str(tmp_path), runtime=RuntimeSection(warm_pool=0),
                            kafka=KafkaSettings(partitions=1, idle_timeout_s=1.0))
        chosen = {"grace_s": 0.0, "health_interval_s": 0.0,
                  "lifecycle_topic": f"{name}.lifecycle", **options}
        deployment = Deployment.connect(settings, bootstrap, state_dir=tmp_path / name,
                                        options=ControllerOptions(**chosen))
        opened.append(deployment)
        return deployment

    yield open_deployment
    for deployment in opened:
        try:
            deployment.shutdown()
        except ray.exceptions.RayActorError:  # a test killed this controller on purpose
            continue
    assert all(_node_actors(deployment) == set() for deployment in opened)


def _topic(stem: str) -> str:
    return f"ctl-{stem}-{uuid.uuid4().hex[:8]}"


def _ticks(topic: str) -> sd.Node:
    return sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})


def _strategy(name: str, ticks_topic: str, signal_topic: str) -> sd.Graph:
    sma = _ticks(ticks_topic).rolling_mean("price", window=20, name="sma20")
    return sd.Graph(name, outputs=[sma.to_topic(signal_topic, name=f"sig_{name}")])


def _produce(bootstrap: str, topic: str, first: int, last: int) -> None:
    """Ticks of symbol A with ts = price = first..last, in order, on one partition."""

    async def write() -> None:
        await ensure_topics(bootstrap, {topic: 1})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(first, last + 1):
                value = json.dumps({"symbol": "A", "ts": i, "price": float(i)}).encode()
                await producer.send(topic, value, key=b"A", partition=0)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(write())


def _read(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """Exactly ``count`` records of ``topic`` from its start (values parsed), or fail."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=10)
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout_s
            partitions: list[TopicPartition] = []
            while not partitions and time.monotonic() < deadline:
                await consumer.topics()
                partitions = [TopicPartition(topic, p)
                              for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[Any] = []
            while len(records) < count and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=100)).values():
                    records.extend(batch)
            assert len(records) == count, f"read {len(records)} of {count} records of {topic}"
            assert not await consumer.getmany(timeout_ms=200), f"{topic} has more records"
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _sma_values(records: list[Any]) -> list[float]:
    return [json.loads(record.value)["value"] for record in records]


def _expected_sma(first: int, last: int) -> list[float]:
    """Means over full windows of the last 20 prices (price i is i) for ts first..last."""
    return [sum(range(i - 19, i + 1)) / 20 for i in range(max(first, 20), last + 1)]


def _node_actors(deployment: Deployment) -> set[str]:
    prefix = f"streamdag-{deployment.settings.name}-node-"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NODE_NAMESPACE and a["name"].startswith(prefix)}


def _actor(deployment: Deployment, submission: dict[str, Any], node: str) -> Any:
    return ray.get_actor(_actor_name(submission, node), namespace=NODE_NAMESPACE)


def _actor_name(submission: dict[str, Any], node: str) -> str:
    return str(next(n["actor"] for n in submission["nodes"] if n["name"] == node))


def _named(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NODE_NAMESPACE)
    except ValueError:
        return False
    return True


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _lifecycle(bootstrap: str, deployment: Deployment, count: int) -> list[Any]:
    return _read(bootstrap, f"{deployment.settings.name}.lifecycle", count)


def test_a_second_graph_reuses_running_nodes_and_gets_warm_output(
    connect: Connect, bootstrap: str
) -> None:
    deployment = connect()
    ticks, sig_a, sig_b = _topic("ticks"), _topic("sig-a"), _topic("sig-b")
    _produce(bootstrap, ticks, 1, 30)
    first = deployment.submit(_strategy("g1", ticks, sig_a))
    assert (first["state"], first["cause"]) == ("executing", None)
    assert first["diff"] == {"new": ["sig_g1", "sma20", "ticks"], "reused": [],
                             "reuse_ratio": 0.0,
                             "creation_order": [["sig_g1"], ["sma20"], ["ticks"]]}
    assert _sma_values(_read(bootstrap, sig_a, 11)) == _expected_sma(1, 30)

    second = deployment.submit(_strategy("g2", ticks, sig_b))
    assert second["state"] == "executing"
    assert second["diff"] == {"new": ["sig_g2"], "reused": ["sma20", "ticks"],
                              "reuse_ratio": pytest.approx(2 / 3),
                              "creation_order": [["sig_g2"]]}
    assert len(_node_actors(deployment)) == 4  # one actor per node_id
    shared = {n["name"]: n for n in deployment.nodes()}
    assert shared["sma20"]["graphs"] == sorted([first["id"], second["id"]])
    assert shared["sma20"]["refcount"] == 2
    assert len({n["region"] for n in shared.values()}) == 1

    # The attached graph's first outputs are full 20-event windows: the state was warm.
    _produce(bootstrap, ticks, 31, 35)
    assert _sma_values(_read(bootstrap, sig_b, 5)) == _expected_sma(31, 35)
    assert _sma_values(_read(bootstrap, sig_a, 16)) == _expected_sma(1, 35)
    status = {n["name"]: n for n in deployment.status(second["id"])["nodes"]}
    assert status["sma20"]["shared_by"] == sorted([first["id"], second["id"]])
    assert all(node["alive"] for node in status.values())

    # Removing G2 retires only its own sink; the shared nodes keep serving G1.
    removed = deployment.remove(second["id"])
    assert (removed["state"], removed["retired"]) == ("stopped", ["sig_g2"])
    assert len(_node_actors(deployment)) == 3
    assert {n["name"]: n["refcount"] for n in deployment.nodes()} == {
        "ticks": 1, "sma20": 1, "sig_g1": 1}
    _produce(bootstrap, ticks, 36, 36)
    assert _sma_values(_read(bootstrap, sig_a, 17)) == _expected_sma(1, 36)
    assert deployment.remove(first["id"])["retired"] == ["ticks", "sma20", "sig_g1"]
    assert _node_actors(deployment) == set()
    assert deployment.nodes() == []

    events = [m for m in _lifecycle(bootstrap, deployment, 10) if m.key == first["id"].encode()]
    assert [json.loads(m.value)["type"].rsplit(".", 1)[1] for m in events] == [
        "submitted", "processing", "mapped", "executing", "stopped"]
    assert [s["to"] for s in deployment.status(first["id"])["history"]] == [
        "submitted", "processing", "mapped", "executing", "stopped"]


def test_eight_concurrent_submissions_create_one_actor_per_node(
    connect: Connect, bootstrap: str
) -> None:
    deployment = connect()
    ticks = _topic("ticks")
    _produce(bootstrap, ticks, 1, 3)
    graphs = [_strategy(f"c{i}", ticks, _topic(f"sig{i}")) for i in range(8)]
    results = ray.get([deployment.controller.submit_graph.remote(g) for g in graphs])
    assert [r["state"] for r in results] == ["executing"] * 8
    creators = [r for r in results if "sma20" in r["diff"]["new"]]
    assert len(creators) == 1
    assert all(r["diff"]["reused"] == ["sma20", "ticks"] for r in results if r not in creators)
    assert len(_node_actors(deployment)) == 10
    refcounts = {n["name"]: n["refcount"] for n in deployment.nodes()}
    assert refcounts == {"ticks": 8, "sma20": 8, **{f"sig_c{i}": 1 for i in range(8)}}


def test_a_failed_submission_is_torn_down_and_leaves_shared_actors_untouched(
    connect: Connect, bootstrap: str
) -> None:
    deployment = connect()
    ticks, sig_a = _topic("ticks"), _topic("sig-a")
    _produce(bootstrap, ticks, 1, 20)
    running = deployment.submit(_strategy("g1", ticks, sig_a))
    sma_actor = _actor(deployment, running, "sma20")
    subscribers = ray.get(sma_actor.subscribers.remote())
    before = _node_actors(deployment)

    sma = _ticks(ticks).rolling_mean("price", window=20, name="sma20")
    missing = sd.source("missing", topic=_topic("absent"), key="symbol",
                        schema={"price": "float64"})
    bad = sd.Graph("bad", outputs=[
        sma.map("value * 2", name="double").to_topic(_topic("doubled"), name="doubled"),
        missing.to_topic(_topic("lost"), name="lost"),
    ])
    failed = deployment.submit(bad)
    assert failed["state"] == "failed"
    assert failed["cause"].startswith("node 'missing' failed to become ready: TopicError: topic")
    assert "does not exist" in failed["cause"]
    assert [s["to"] for s in failed["history"]] == ["submitted", "processing", "mapped", "failed"]
    assert _node_actors(deployment) == before
    assert ray.get(sma_actor.subscribers.remote()) == subscribers
    assert {n["name"]: n["refcount"] for n in deployment.nodes()} == {
        "ticks": 1, "sma20": 1, "sig_g1": 1}
    _produce(bootstrap, ticks, 21, 22)
    assert _sma_values(_read(bootstrap, sig_a, 3)) == _expected_sma(1, 22)
    assert deployment.status(running["id"])["state"] == "executing"
    # A running node is shared only with its parallelism: refused at once, nothing created.
    wide = deployment.submit(sd.Graph("wide", outputs=[
        sma.map("value * 3", name="triple").to_topic(_topic("tripled"), name="tripled")],
        parallelism=2))
    assert (wide["state"], wide["cause"]) == ("failed", (
        f"node 'sma20' of graph 'wide' asks for parallelism 2, but the same node runs in this "
        f"deployment with parallelism 1 for ['{running['id']}']; a node is shared only with its "
        "parallelism (running it twice would publish its output twice): give it parallelism=1 "
        "(the output per key is the same), or remove those submissions first"))
    assert _node_actors(deployment) == before


def test_a_crashed_actor_fails_its_graph_and_is_counted(connect: Connect, bootstrap: str) -> None:
    deployment = connect()
    ticks = _topic("ticks")
    _produce(bootstrap, ticks, 1, 3)
    graph = _strategy("g1", ticks, _topic("sig"))
    submission = deployment.submit(graph)
    ray.kill(_actor(deployment, submission, "sma20"))
    problems: list[str] = []

    def reported() -> bool:
        problems.extend(deployment.check_health())
        return bool(problems)

    _wait_for(reported, "check_health to report the killed actor")
    assert len(problems) == 1
    assert problems[0].startswith("node 'sma20' (actor streamdag-")
    status = deployment.status(submission["id"])
    assert status["state"] == "failed"
    assert status["cause"].startswith("node(s) ['sma20'] crashed: actor streamdag-")
    assert {n["name"]: n["alive"] for n in status["nodes"]} == {
        "ticks": True, "sma20": False, "sig_g1": True}
    metrics = deployment.metrics_snapshot()
    assert (metrics.actor_crashes_total, metrics.actors_running) == (1, 2)
    assert metrics.submissions_by_state["failed"] == 1
    assert deployment.check_health() == []  # reported once

    refused = deployment.submit(graph)
    assert refused["state"] == "failed"
    assert f"remove the failed submissions using them (['{submission['id']}'])" in (
        refused["cause"])
    assert deployment.remove(submission["id"])["retired"] == ["ticks", "sma20", "sig_g1"]
    assert deployment.submit(graph)["state"] == "executing"
    assert len(_node_actors(deployment)) == 3


def test_a_restarted_controller_finds_its_actors_and_creates_no_duplicates(
    connect: Connect, bootstrap: str
) -> None:
    deployment = connect()
    ticks, other_ticks = _topic("ticks"), _topic("other")
    _produce(bootstrap, ticks, 1, 3)
    _produce(bootstrap, other_ticks, 1, 1)
    # Endpoints only: their code hash cannot change between the two processes computing it.
    graph = sd.Graph("copy", outputs=[_ticks(ticks).to_topic(_topic("copy"), name="out")])
    other = sd.Graph("other", outputs=[_ticks(other_ticks).to_topic(_topic("o"), name="o")])
    submission = deployment.submit(graph_to_dict(graph))
    doomed = deployment.submit(other)
    assert (submission["state"], doomed["state"]) == ("executing", "executing")
    actors = _node_actors(deployment)
    leftover = node_actor_class().options(
        name=f"streamdag-{deployment.settings.name}-node-{'0' * 24}", namespace=NODE_NAMESPACE,
        lifetime="detached", num_cpus=0,
    ).remote(graph.node("out").config())
    ray.get(leftover.subscribers.remote())

    # The controller dies; so does one node actor while no controller watches.
    ray.kill(deployment.controller)
    ray.kill(_actor(deployment, doomed, "o"))
    controller = f"streamdag-controller-{deployment.settings.name}"
    _wait_for(lambda: not _named(controller), "the killed controller to release its name")
    restarted = connect(deployment.settings.name, health_interval_s=0.2)
    assert _node_actors(restarted) == actors - {_actor_name(doomed, "o")}  # leftover stopped
    states = {s["id"]: (s["state"], s["cause"]) for s in restarted.list()}
    assert states == {
        submission["id"]: ("executing", None),
        doomed["id"]: ("failed", f"node(s) ['o'] crashed: actor {_actor_name(doomed, 'o')} "
                                 "died (its actor was not found when the controller started)"),
    }
    again = restarted.submit(graph)
    assert again["diff"]["new"] == []
    assert again["diff"]["reused"] == ["out", "ticks"]
    assert _node_actors(restarted) == actors - {_actor_name(doomed, "o")}
    # Both graphs have a source named "ticks" (on different topics): tell them apart by id.
    refcounts = {n["node_id"]: n["refcount"] for n in restarted.nodes()}
    assert refcounts == {graph.node("ticks").node_id: 2, graph.node("out").node_id: 2,
                         other.node("ticks").node_id: 1, other.node("o").node_id: 1}
    with pytest.raises(UnknownSubmissionError, match="has no submission 'nope'"):
        restarted.status("nope")
    with pytest.raises(StreamdagError):
        restarted.submit({"name": "broken", "nodes": [{"name": "a", "type": "no_such_op"}]})

    # The periodic health check notices a crash on its own.
    ray.kill(_actor(restarted, again, "out"))
    _wait_for(lambda: restarted.status(again["id"])["state"] == "failed",
              "the periodic health check to fail the graph")
    assert restarted.status(submission["id"])["state"] == "failed"
    assert restarted.metrics_snapshot().actor_crashes_total == 2


def test_without_dedup_every_graph_gets_its_own_actors(connect: Connect, bootstrap: str) -> None:
    deployment = connect(dedup=False)
    ticks = _topic("ticks")
    _produce(bootstrap, ticks, 1, 2)
    graph = sd.Graph("copy", outputs=[_ticks(ticks).to_topic(_topic("copy"), name="out")])
    diffs = [deployment.submit(graph)["diff"] for _ in range(2)]
    assert [d["new"] for d in diffs] == [["out", "ticks"], ["out", "ticks"]]
    assert len(_node_actors(deployment)) == 4
    assert sorted(n["refcount"] for n in deployment.nodes()) == [1, 1, 1, 1]


def _copy_graph(name: str, ticks_topic: str, out_topic: str, factor: float,
                operator: str) -> sd.Graph:
    scaled = _ticks(ticks_topic).map(f"price * {factor}", name=operator)
    return sd.Graph(name, outputs=[scaled.to_topic(out_topic, name=f"sig_{name}")])


def _values(records: list[Any]) -> list[float]:
    return [json.loads(record.value)["value"] for record in records]


def test_a_killed_interior_actor_holds_its_source_and_fails_the_graph(
    connect: Connect, bootstrap: str
) -> None:
    deployment = connect()
    ticks, sig = _topic("ticks"), _topic("sig")
    _produce(bootstrap, ticks, 1, 300)
    submission = deployment.submit(_copy_graph("g1", ticks, sig, 2, "double"))
    assert _values(_read(bootstrap, sig, 300)) == [2.0 * i for i in range(1, 301)]
    source, double = _actor(deployment, submission, "ticks"), _actor(deployment, submission,
                                                                     "double")
    kill_actor_process(double)
    _produce(bootstrap, ticks, 301, 400)  # the source reads them, and cannot deliver them
    wait_for(lambda: is_held(source), "the source to hold")
    _produce(bootstrap, ticks, 401, 450)  # never read

    problems = deployment.check_health()
    assert len(problems) == 1
    assert problems[0].startswith(f"node 'double' (actor {_actor_name(submission, 'double')}) "
                                  "died: ActorDiedError: ")
    status = deployment.status(submission["id"])
    assert status["state"] == "failed"
    assert status["cause"].startswith(
        f"node(s) ['double'] crashed: actor {_actor_name(submission, 'double')} died "
        "(ActorDiedError: ")
    assert {n["name"]: n["alive"] for n in status["nodes"]} == {
        "ticks": True, "double": False, "sig_g1": True}
    wait_for(lambda: ray.get(source.stats.remote()).lag == {0: 150}, "the lag to be 150")
    assert ray.get(source.delivered_position.remote()) == {0: 300}
    assert ray.get(source.stats.remote()).events_out == 300
    assert _values(_read(bootstrap, sig, 300)) == [2.0 * i for i in range(1, 301)]
    assert deployment.metrics_snapshot().actor_crashes_total == 1


def test_a_crash_in_a_shared_region_holds_it_whole_and_other_regions_go_on(
    connect: Connect, bootstrap: str
) -> None:
    deployment = connect()
    ticks, other, sig1, sig2, sig3 = (_topic(s) for s in ("ticks", "other", "s1", "s2", "s3"))
    _produce(bootstrap, ticks, 1, 0)  # the topics, empty
    _produce(bootstrap, other, 1, 0)
    g1 = deployment.submit(_copy_graph("g1", ticks, sig1, 2, "double"))
    g2_graph = _copy_graph("g2", ticks, sig2, 3, "triple")
    g2 = deployment.submit(g2_graph)  # shares the source, so the region, with g1
    g3 = deployment.submit(_copy_graph("g3", other, sig3, 1, "same"))
    assert [g["state"] for g in (g1, g2, g3)] == ["executing"] * 3
    _produce(bootstrap, ticks, 1, 200)
    _produce(bootstrap, other, 1, 50)
    for topic, factor, count in ((sig1, 2, 200), (sig2, 3, 200), (sig3, 1, 50)):
        assert _values(_read(bootstrap, topic, count)) == [factor * i for i in range(1, count + 1)]

    kill_actor_process(_actor(deployment, g1, "double"))
    assert len(deployment.check_health()) == 1
    double = _actor_name(g1, "double")
    states = {s["id"]: (s["state"], s["cause"]) for s in deployment.list()}
    assert states[g1["id"]][1].startswith(
        f"node(s) ['double'] crashed: actor {double} died (ActorDiedError: ")
    assert states[g2["id"]][1].startswith(
        f"node 'double' of its region crashed: actor {double} died (ActorDiedError: ")
    assert states[g2["id"]][1].endswith("; the graphs sharing nodes with it stop with it")
    assert [states[g["id"]][0] for g in (g1, g2, g3)] == ["failed", "failed", "executing"]

    # The held region reads nothing more; the other region goes on.
    _produce(bootstrap, ticks, 201, 300)
    _produce(bootstrap, other, 51, 60)
    assert _values(_read(bootstrap, sig3, 60)) == [float(i) for i in range(1, 61)]
    source = _actor(deployment, g2, "ticks")
    wait_for(lambda: ray.get(source.stats.remote()).lag == {0: 100}, "the lag to be 100")
    assert ray.get(source.delivered_position.remote()) == {0: 200}
    assert _values(_read(bootstrap, sig1, 200)) == [2.0 * i for i in range(1, 201)]
    assert _values(_read(bootstrap, sig2, 200)) == [3.0 * i for i in range(1, 201)]

    # Held nodes take no new graph until the failed ones using them are removed.
    refused = deployment.submit(g2_graph)
    assert refused["state"] == "failed"
    assert refused["cause"] == (
        "node(s) ['ticks', 'triple', 'sig_g2'] of graph 'g2' hold their input since their "
        f"region failed; remove the failed submissions using them "
        f"({sorted([g1['id'], g2['id']])}) and submit again")
    assert sorted(deployment.remove(g1["id"])["retired"]) == ["double", "sig_g1"]
    assert sorted(deployment.remove(g2["id"])["retired"]) == ["sig_g2", "ticks", "triple"]
    assert deployment.submit(g2_graph)["state"] == "executing"
    assert _values(_read(bootstrap, sig2, 500)) == (
        [3.0 * i for i in range(1, 201)] + [3.0 * i for i in range(1, 301)])
    assert deployment.status(g3["id"])["state"] == "executing"
