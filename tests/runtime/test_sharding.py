"""Keyed parallelism: a node sharded over N hosts outputs, per key, exactly what one host does."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamdag as sd
from runtime.checkpoints import failpoints
from runtime.dataplane.exchange import KeyRoute, key_shards, shard_part
from runtime.dataplane.worker import NodeWorker
from runtime.demo.synthetic import RandomWalk
from runtime.planning.sharding import shard_plan
from runtime.planning.wiring import RunResult, wire_graph
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.config import CheckpointSettings
from streamdag.errors import GraphError
from streamdag.testing import ListSink, TestingSource

Records = dict[str, list[dict[str, object]]]


class _Script:
    def __init__(self, script: list[Batch]) -> None:
        self.script = script

    def __call__(self) -> TestingSource:
        return TestingSource(self.script)


@sd.udf(period=3)
def spread(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Mean of the last three fast values minus the latest slow one."""
    return fast.mean(axis=1) - slow[:, -1]


def _graph(parallelism: int | None, source_parallelism: int | None = None) -> sd.Graph:
    """Every operator family; ``z`` keeps 3 shards whatever the default (uneven exchanges)."""
    ticks = sd.source("ticks", topic="ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"}
                      ).with_options(parallelism=source_parallelism)
    fast = ticks.rolling_mean("price", window=5, name="fast")
    slow = ticks.ema("price", span=12, name="slow")
    cross = fast.crossover(slow, name="cross")
    z = ticks.zscore("price", window=8, name="z", parallelism=3 if parallelism else None)
    joined = z.asof_join(cross, name="joined")
    bars = ticks.ohlcv(bar=50_000_000, name="bars")
    gap = spread(fast, slow, name="spread")
    return sd.Graph("all", outputs=[joined, bars, gap.to_topic("gaps", name="gaps")],
                    parallelism=parallelism)


def _batches() -> list[Batch]:
    walk = RandomWalk(symbols=9, seed=11)
    return [walk.next_batch(n) for n in (300, 1, 450, 250, 80)]


def _per_key(result: RunResult, name: str) -> Records:
    found: Records = {}
    for record in result.records(name):
        found.setdefault(str(record["key"]), []).append(record)
    return found


def _sink_per_key(sink: ListSink) -> Records:
    found: Records = {}
    for record in sink.records():
        found.setdefault(str(record["key"]), []).append(dict(record))
    return found


def _run_local(graph: sd.Graph) -> RunResult:
    return LocalRunner().run(graph, sources={"ticks": _Script(_batches())},
                             sinks={"gaps": ListSink})


def test_four_shards_output_per_key_exactly_what_one_host_does() -> None:
    one = _run_local(_graph(None))
    four = _run_local(_graph(4, source_parallelism=2))

    for name in ("joined", "bars", "gaps"):
        assert len(one.records(name)) > 100, f"{name} produced too little to compare"
        assert _per_key(four, name) == _per_key(one, name), name
    assert len(_per_key(one, "gaps")) == 9


def test_a_sharded_node_is_one_logical_node_in_the_figures() -> None:
    one = _run_local(_graph(None))
    four = _run_local(_graph(4))

    assert [len(four.shards[name]) for name in ("fast", "z", "joined")] == [4, 3, 4]
    assert "ticks" not in four.shards and "gaps" not in four.shards
    for name in ("fast", "z", "joined", "bars", "gaps"):
        assert four.stats[name].events_in == one.stats[name].events_in, name
        assert four.stats[name].events_out == one.stats[name].events_out, name
        assert sum(s.events_in for s in four.shards.get(name, ())) in (
            0, one.stats[name].events_in)
    # Every shard got some of the 9 keys.
    assert all(shard.events_in for shard in four.shards["fast"])


def test_the_plan_shards_hosts_and_exchanges_by_key() -> None:
    graph = _graph(2)
    keyed, edges = shard_plan(graph, *wire_graph(graph, {"ticks": _Script([])},
                                                 {"gaps": ListSink}))
    hosts = {key: host for generation in keyed for key, host in generation}
    fast, joined = (graph.node(n).node_id for n in ("fast", "joined"))
    assert sorted(k for k in hosts if k.startswith(fast)) == [f"{fast}.0of2", f"{fast}.1of2"]
    # z (3 shards) into joined (2 shards): each joined shard has one slot per z shard.
    assert hosts[f"{joined}.1of2"].fan_in == (3, 1)
    into_joined = [e for e in edges if e.downstream == f"{joined}.1of2"]
    assert sorted((e.input_index, e.route) for e in into_joined) == [
        (0, KeyRoute(1, 2)), (1, KeyRoute(1, 2)), (2, KeyRoute(1, 2)), (3, None)]
    # Node ids do not depend on parallelism.
    assert graph.node_ids == _graph(None).node_ids


def test_the_text_plan_shows_each_sharded_node_s_shards() -> None:
    from runtime.planning.planner import plan_graph
    from runtime.planning.render import render_text

    graph = _graph(4)
    rows = {line.split()[0]: line for line in render_text(plan_graph(graph), graph).splitlines()
            if line.startswith("  ")}
    assert rows["z"].endswith("<- ticks  (3 shards)")
    assert rows["fast"].endswith("(4 shards)")
    assert not rows["ticks"].endswith("shards)") and not rows["gaps"].endswith("shards)")


def test_the_key_split_is_numpy_and_stable() -> None:
    batch = Batch.from_columns(ts=np.arange(6), key=["a", "b", "c", "a", "d", "b"],
                               v=np.arange(6.0))
    owners = key_shards(batch.key, 3)
    assert owners.tolist() == key_shards(np.array([b"a", b"b", b"c", b"a", b"d", b"b"]),
                                         3).tolist()
    parts = [shard_part(batch, KeyRoute(s, 3)) for s in range(3)]
    assert sorted(t for part in parts for t in part.ts.tolist()) == list(range(6))
    for shard, part in enumerate(parts):
        assert set(key_shards(part.key, 3).tolist()) <= {shard}


@given(keys=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=80),
       shards=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)),
       cut=st.integers(1, 30))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sharded_rolling_equals_a_plain_python_reference(
        keys: list[str], shards: tuple[int, int, int], cut: int) -> None:
    values = [float((i * 37) % 11) for i in range(len(keys))]
    batch = Batch.from_columns(ts=np.arange(len(keys)), key=keys, value=values)
    script = [batch.slice(i, i + cut) for i in range(0, len(keys), cut)]
    ticks = sd.source("t", topic="t", key="k", schema={"value": "float64"}
                      ).with_options(parallelism=shards[0])
    total = ticks.rolling_sum(window=3, name="sum", parallelism=shards[1]).map(
        "value * 2", name="total", parallelism=shards[2])
    result = LocalRunner().run(sd.Graph("g", outputs=[total]),
                               sources={"t": _Script(script)})

    expected: dict[str, list[tuple[int, float]]] = {}
    history: dict[str, list[float]] = {}
    for ts, (key, value) in enumerate(zip(keys, values, strict=True)):
        seen = history.setdefault(key, [])
        seen.append(value)
        if len(seen) >= 3:  # a rolling sum emits once its window is full
            expected.setdefault(key, []).append((ts, 2 * sum(seen[-3:])))
    found: dict[str, list[tuple[int, float]]] = {}
    for record in result.records("total"):
        found.setdefault(str(record["key"]), []).append((int(str(record["ts"])),
                                                         float(str(record["value"]))))
    assert found == expected


def test_bad_parallelism_is_refused_when_the_graph_is_built() -> None:
    ticks = sd.source("t", topic="t", key="k", schema={"value": "float64"})
    with pytest.raises(GraphError, match=r"node 'm': parallelism must be an int from 1 to "
                                         r"256 .* got 0"):
        ticks.rolling_mean(window=2, name="m", parallelism=0)
    with pytest.raises(GraphError, match="a sink runs as one actor"):
        ticks.to_topic("o", name="o", parallelism=2)
    with pytest.raises(GraphError, match=r"graph 'g': parallelism must be .* got True"):
        sd.Graph("g", outputs=[ticks], parallelism=True)  # type: ignore[arg-type]


def test_a_snapshot_restores_only_to_the_same_input_slots() -> None:
    ticks = sd.source("t", topic="t", key="k", schema={"value": "float64"})
    config = ticks.rolling_mean(window=2, name="m").config()
    worker = NodeWorker(config)
    worker.connect("e", 0)
    worker.feed(0, sd.Batch.from_columns(ts=[1], key=["a"], value=[1.0]))
    from runtime.dataplane.messages import Barrier

    worker.feed(0, Barrier(1))
    snapshot = worker.snapshots[1]
    import dataclasses

    with pytest.raises(ValueError, match="snapshot has 1 input slot"):
        NodeWorker(dataclasses.replace(config, fan_in=(2,)), snapshot=snapshot)


@pytest.fixture
def _disarm() -> Iterator[None]:
    yield
    failpoints.disarm_all()


def test_shards_checkpoint_and_recover_with_exact_output(_disarm: None) -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    graph = sd.Graph("ema", outputs=[ticks.ema("price", span=7, name="smooth")
                                     .to_topic("out", name="out")], parallelism=3)
    keys = [f"k{i}" for i in range(7)]
    script: list[Batch] = [
        Batch.from_columns(ts=np.arange(b * 30, b * 30 + 30),
                           key=[keys[i % 7] for i in range(b * 30, b * 30 + 30)],
                           price=np.arange(b * 30, b * 30 + 30) % 13 / 10.0)
        for b in range(40)]

    class Slow(TestingSource):
        async def read(self, max_records: int, linger_s: float):  # type: ignore[no-untyped-def]
            import asyncio

            await asyncio.sleep(0.005)
            return await super().read(max_records, linger_s)

    def run(checkpoints: CheckpointSettings | None) -> tuple[ListSink, LocalRunner]:
        sink = ListSink()
        runner = LocalRunner(checkpoints=checkpoints)
        runner.run(graph, sources={"ticks": lambda: Slow(script)}, sinks={"out": lambda: sink},
                   timeout_s=60)
        return sink, runner

    expected, _ = run(None)
    failpoints.arm("after_persist_before_ack")
    recovered, runner = run(CheckpointSettings(interval_s=0.05, backoff_s=0.01,
                                               max_backoff_s=0.05))
    assert runner.recoveries == 1
    assert not failpoints.armed("after_persist_before_ack")
    assert len(recovered.records()) == 40 * 30
    assert _sink_per_key(recovered) == _sink_per_key(expected)


def test_specs_carry_parallelism_on_nodes_and_the_graph() -> None:
    from streamdag.spec import dumps, loads

    text = """
name = "g"
parallelism = 3

[[nodes]]
name = "t"
type = "kafka_source"
parallelism = 2
params = { topic = "t", key = "k", schema = { value = "float64" } }

[[nodes]]
name = "m"
type = "rolling_mean"
inputs = ["t"]
parallelism = 4
params = { window = 2 }

[[nodes]]
name = "s"
type = "rolling_sum"
inputs = ["m"]
params = { window = 2 }
"""
    graph = loads(text, "toml")
    assert [graph.parallelism_of(node) for node in graph.nodes] == [2, 4, 3]
    assert dumps(loads(dumps(graph, "toml"), "toml"), "toml") == dumps(graph, "toml")
    assert loads(dumps(graph, "toml"), "toml").parallelism == 3
    with pytest.raises(GraphError, match="node 'm': parallelism must be an int"):
        loads(text.replace("parallelism = 4", "parallelism = 'four'"), "toml")


@pytest.mark.integration
def test_ray_a_killed_shard_is_recovered_with_exact_output(
        ray_session: None, bootstrap: str, tmp_path: Path) -> None:
    """Source in 2 partition groups -> EMA in 2 shards -> sink: kill -9 one EMA shard while
    the stream flows; the output per key equals a run of one host without faults."""
    from actor_kills import kill_actor_process, wait_for
    from ema_oracle import expected, per_key, produce, produce_in_background

    from connectors.topics import ensure_topics
    from runtime.runners.kafka_binding import KafkaBinding
    from streamdag.testing import read_topic

    total, half = 3000, 1500
    topic, out = f"shard-in-{uuid.uuid4().hex[:8]}", f"shard-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"}
                      ).with_options(parallelism=2)
    graph = sd.Graph("ema", outputs=[ticks.ema("price", span=7, name="smooth", parallelism=2)
                                     .to_topic(out, name="out")])
    # Idle after 1 s, not 10: the stream's last events need not wait out the default.
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, idle_timeout_s=1.0)
    runner = RayRunner(checkpoints=CheckpointSettings(url=tmp_path.as_uri(), interval_s=0.3,
                                                      backoff_s=0.2),
                       default_source=binding.source_for, default_sink=binding.sink_for)
    running = runner.start(graph)
    try:
        asyncio.run(produce(bootstrap, topic, 0, half))
        # Each source shard's watermark passes only its own partition's newest event while
        # the stream pauses, so the last few events wait for the second half.
        wait_for(lambda: (running.checkpoints is not None
                          and running.checkpoints.completed >= 2
                          and running.stats()["out"].events_in >= half - 5),
                 "two checkpoints and the first half through", timeout_s=120)
        flowing = produce_in_background(bootstrap, topic, half, total)
        wait_for(lambda: running.stats()["out"].events_in >= half + 300, "the second half",
                 timeout_s=120)
        kill_actor_process(running.actor("smooth", 1))
        flowing.join(timeout=120)
        # A tail moves both source shards' watermarks past the last events (a paused stream
        # holds them: each shard's idle watermark passes only its own partition's newest).
        asyncio.run(produce(bootstrap, topic, total, total + 10))
        # Deadlines, not sleeps: a busy machine restores the actors in a minute or more.
        records = [record for record in asyncio.run(read_topic(bootstrap, out, total + 5,
                                                               timeout_s=240))
                   if json.loads(record.value)["ts"] < total]
        shards = [s.events_in for s in running.shard_stats()["smooth"]]
    finally:
        running.stop()
    assert running.recoveries == 1
    assert len(records) == total  # 0 lost, 0 duplicated
    assert per_key(records) == expected(total)  # per-key order and exact values
    assert len(shards) == 2 and all(shards)


@pytest.mark.integration
def test_kafka_source_shards_read_partition_groups_with_the_same_output(bootstrap: str) -> None:
    from aiokafka import AIOKafkaProducer

    from connectors.topics import ensure_topics
    from runtime.runners.kafka_binding import KafkaBinding

    topic = f"sharding-groups-{np.random.default_rng().integers(1 << 30)}"
    keys = [f"s{i}" for i in range(10)]

    async def produce() -> None:
        await ensure_topics(bootstrap, {topic: 4})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for partition in range(4):
                builder = producer.create_batch()
                for i in range(300):
                    key = keys[(partition + 4 * i) % 10]
                    value = {"symbol": key, "ts": i * 10 + partition, "price": float(i % 17)}
                    builder.append(key=key.encode(), value=json.dumps(value).encode(),
                                   timestamp=None)
                await (await producer.send_batch(builder, topic, partition=partition))
        finally:
            await producer.stop()

    asyncio.run(produce())

    def graph(parallelism: int | None) -> sd.Graph:
        ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"}
                          ).with_options(parallelism=parallelism)
        return sd.Graph("g", outputs=[ticks.rolling_mean("price", window=4, name="mean")],
                        parallelism=3 if parallelism else None)

    binding = KafkaBinding(bootstrap, start="earliest", end=300)
    one = LocalRunner(None, *binding.defaults()).run(graph(None), timeout_s=60)
    two = LocalRunner(None, *binding.defaults()).run(graph(2), timeout_s=60)
    assert len(one.records("mean")) == 4 * 300 - 10 * 3
    assert _per_key(two, "mean") == _per_key(one, "mean")
    # Each source shard read its own two partitions, whole.
    assert [sorted(shard.lag) for shard in two.shards["ticks"]] == [[0, 2], [1, 3]]
    assert [shard.events_out for shard in two.shards["ticks"]] == [600, 600]
