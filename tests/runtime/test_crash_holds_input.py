"""A node whose subscriber dies holds, never drops it: nothing read is lost, input stays in Kafka.

In-process hosts with scripted subscribers first, then a real Kafka source, then real Ray
actors killed with SIGKILL under the Ray runner (deployments: tests/runtime/test_controller.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import uuid
from typing import Any

import pytest
import ray
from actor_kills import is_held, kill_actor_process, wait_for
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import streamdag as sd
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from connectors.topics import ensure_topics
from runtime.dataplane.channels import LocalTarget
from runtime.dataplane.host import NodeHeldError, NodeHost, RuntimeSettings, SubscriberFailedError
from runtime.dataplane.messages import Envelope
from runtime.deployment.crashes import held_keys, respond_to_crashes, reuse_refusal
from runtime.deployment.lifecycle import SubmissionNode, SubmissionRecord, SubmissionState
from runtime.deployment.node_registry import NodeRegistry, NodeRequest, acquire, mark_dead
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.ray_runner import GraphFailedError, RayRunner
from streamdag.batch import Batch
from streamdag.schema import Schema
from streamdag.testing import ListSink


def _ticks(topic: str = "ticks") -> sd.Node:
    return sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})


def _tick(seq: int) -> Envelope:
    return Envelope("in", 0, seq, Batch.from_columns(ts=[seq], key=["a"], price=[float(seq)]))


class _Subscriber:
    """A scripted receiver: passes pushes on to a host, then dies, like a killed actor.

    It dies on the push of seq ``fail_from``, or on the batch after the first
    ``batches_before_failing`` ones; a push of seq ``gate_at`` waits for ``gate`` first, so a
    test decides when the failure becomes known.
    """

    def __init__(self, host: NodeHost, *, fail_from: int | None = None,
                 batches_before_failing: int | None = None, gate_at: int | None = None) -> None:
        self.host = host
        self.fail_from = fail_from
        self.batches_left = batches_before_failing
        self.gate_at = gate_at
        self.gate = asyncio.Event()

    async def push(self, envelope: Envelope) -> None:
        if envelope.seq == self.gate_at:
            await self.gate.wait()
        if isinstance(envelope.payload, Batch) and self.batches_left is not None:
            self.batches_left -= 1
        if (self.fail_from is not None and envelope.seq >= self.fail_from) or (
                self.batches_left is not None and self.batches_left < 0):
            raise ConnectionError(f"the subscriber's actor died at push {envelope.seq}")
        await self.host.push(envelope)


async def _hosts(*configs: Any) -> list[NodeHost]:
    hosts = [NodeHost(config, capture=True) for config in configs]
    for host in hosts:
        await host.ready()
    return hosts


def _values(host: NodeHost) -> list[float]:
    return [v for batch in host.results() for v in batch.columns["value"].tolist()]


async def test_a_failing_subscriber_holds_its_producer_instead_of_being_dropped() -> None:
    double = _ticks().map("price * 2", name="double")
    producer, healthy, doomed = await _hosts(
        double.config(), double.map("value + 0", name="healthy").config(),
        double.map("value + 1", name="doomed").config())
    producer.connect_input("in", 0)
    healthy.connect_input("p->healthy", 0)
    doomed.connect_input("p->doomed", 0)
    dying = _Subscriber(doomed, fail_from=2)
    producer.subscribe("p->healthy", LocalTarget(healthy.push))
    producer.subscribe("p->doomed", LocalTarget(dying.push))
    for seq in range(3):
        await producer.push(_tick(seq))
    with pytest.raises(SubscriberFailedError) as failure:
        await producer.drain()
    with pytest.raises(NodeHeldError) as refusal:
        await producer.push(_tick(3))
    stats = producer.stats()
    for host in (producer, healthy, doomed):
        await host.stop()

    message = ("node 'double' stopped: its subscriber on edge p->doomed did not take a push "
               "(ConnectionError: the subscriber's actor died at push 2); it holds its input, so "
               "nothing more is read or sent")
    assert str(failure.value) == message
    assert str(producer.error) == message
    assert str(refusal.value) == (
        f"node 'double' refused a push: it holds its input (SubscriberFailedError: {message})")
    assert producer.subscribers() == ["p->doomed", "p->healthy"]  # held, not dropped
    # Events 0 and 1 reached both subscribers; 2 reached one of them, so it was not delivered.
    assert (stats.events_in, stats.events_out, stats.subscribers_lost) == (3, 2, 1)
    assert _values(healthy) == [0.0, 2.0, 4.0]
    assert _values(doomed) == [1.0, 3.0]


async def test_a_subscriber_removed_on_purpose_is_dropped_and_the_producer_goes_on() -> None:
    double = _ticks().map("price * 2", name="double")
    producer, healthy, removed = await _hosts(
        double.config(), double.map("value + 0", name="healthy").config(),
        double.map("value + 1", name="removed").config())
    producer.connect_input("in", 0)
    healthy.connect_input("p->healthy", 0)
    removed.connect_input("p->removed", 0)
    dying = _Subscriber(removed, fail_from=1, gate_at=1)
    producer.subscribe("p->healthy", LocalTarget(healthy.push))
    producer.subscribe("p->removed", LocalTarget(dying.push))
    await producer.push(_tick(0))
    await producer.push(_tick(1))  # its push to `removed` fails only once the gate opens
    unsubscribing = asyncio.ensure_future(producer.unsubscribe("p->removed"))
    await asyncio.sleep(0)  # let it take the channel off before the failure is known
    dying.gate.set()
    await unsubscribing
    await producer.push(_tick(2))
    await producer.drain()
    stats = producer.stats()
    for host in (producer, healthy, removed):
        await host.stop()

    assert producer.error is None
    assert producer.subscribers() == ["p->healthy"]
    assert (stats.events_in, stats.events_out, stats.subscribers_lost) == (3, 3, 1)
    assert _values(healthy) == [0.0, 2.0, 4.0]
    assert _values(removed) == [1.0]


@pytest.mark.integration
async def test_a_held_kafka_source_gives_back_what_was_not_delivered(bootstrap: str) -> None:
    topic = f"held-{uuid.uuid4().hex[:8]}"
    await _write(bootstrap, topic, 1, 1_000)
    config = KafkaSourceConfig(bootstrap, topic, Schema.of(price="float64"), key_field="symbol",
                               lag_refresh_s=0.0)
    source = NodeHost(_ticks(topic).config(), source=lambda: KafkaSourceReader(config),
                      settings=RuntimeSettings(credits=2, max_batch_records=150))
    downstream, = await _hosts(_ticks(topic).map("price * 2", name="double").config())
    downstream.connect_input("s->d", 0)
    dying = _Subscriber(downstream, batches_before_failing=2)
    source.subscribe("s->d", LocalTarget(dying.push))
    await source.ready()
    await source.start_source()
    with pytest.raises(SubscriberFailedError):
        await asyncio.wait_for(source.wait_finished(), 30)
    await source.hold("a test holds it")  # returns once the source has rewound
    reader = source.source
    assert isinstance(reader, KafkaSourceReader)
    delivered = sum(len(batch) for batch in downstream.results())
    position, lag, stats = reader.position(), await reader.measure_lag(), source.stats()
    await source.stop()
    await downstream.stop()

    assert 0 < delivered <= 300
    assert source.delivered_position() == {0: delivered}
    assert position == {0: delivered}  # the reader rewound: the rest is still Kafka's
    assert lag == {0: 1_000 - delivered}
    assert stats.events_out == delivered


# -- the deployment's response, as pure functions ------------------------------------------------
def _deployment(graphs: dict[str, list[tuple[str, tuple[str, ...]]]]) -> tuple[
        NodeRegistry, dict[str, SubmissionRecord]]:
    """A registry and executing records of graphs given as ``id -> [(node, inputs)]``."""
    registry = NodeRegistry()
    records = {}
    for graph, nodes in graphs.items():
        registry = acquire(registry, graph, [
            NodeRequest(name, name, f"act-{name}", name, "op", "source" if not ins else "op", ins)
            for name, ins in nodes])
        record = SubmissionRecord.new(graph, graph, now=0.0)
        for state in (SubmissionState.PROCESSING, SubmissionState.MAPPED,
                      SubmissionState.EXECUTING):
            record = record.advance(state, now=0.0)
        records[graph] = dataclasses.replace(record, holds_nodes=True, nodes=tuple(
            SubmissionNode(name, name, name, "op", "op", leaf=False) for name, _ in nodes))
    return registry, records


def test_a_crash_fails_every_graph_of_its_region_and_holds_the_region_sources_first() -> None:
    registry, records = _deployment({
        "g1": [("s1", ()), ("d1", ("s1",)), ("k1", ("d1",))],
        "g2": [("s1", ()), ("e1", ("s1",)), ("k2", ("e1",))],  # shares s1: the same region
        "g3": [("s2", ()), ("k3", ("s2",))],
        "g4": [("s3", ()), ("x3", ("s3",)), ("k4", ("x3",))],
    })
    registry = mark_dead(registry, ["d1", "x3"])
    response = respond_to_crashes(registry, records.values(), {"d1": "boom", "x3": "oom"})

    assert response.failures == {
        "g1": "node(s) ['d1'] crashed: actor act-d1 died (boom)",
        "g2": "node 'd1' of its region crashed: actor act-d1 died (boom); the graphs sharing "
              "nodes with it stop with it",
        "g4": "node(s) ['x3'] crashed: actor act-x3 died (oom)",
    }
    first = "node 'd1' of its region crashed: actor act-d1 died (boom)"
    second = "node 'x3' of its region crashed: actor act-x3 died (oom)"
    assert response.holds == (("s1", first), ("s3", second), ("e1", first), ("k1", first),
                              ("k2", first), ("k4", second))

    failed = {graph: record.advance(SubmissionState.FAILED, "x", now=1.0)
              if graph != "g3" else record for graph, record in records.items()}
    assert held_keys(registry, failed) == {"s1", "e1", "k1", "k2", "s3", "k4"}
    assert reuse_refusal(registry, failed, "again", {"s2": "s2", "k3": "k3"}) is None
    assert reuse_refusal(registry, failed, "again", {"s3": "s3", "x3": "x3"}) == (
        "node(s) ['x3'] of graph 'again' run in actors that died; remove the failed "
        "submissions using them (['g4']) and submit again")
    assert reuse_refusal(registry, failed, "again", {"s1": "s1", "e1": "e1"}) == (
        "node(s) ['s1', 'e1'] of graph 'again' hold their input since their region failed; "
        "remove the failed submissions using them (['g1', 'g2']) and submit again")


# -- real Ray actors, killed with SIGKILL -------------------------------------------------------
async def _write(bootstrap: str, topic: str, first: int, last: int) -> None:
    """Ticks ts = price = first..last of symbol A, on partition 0 of ``topic``."""
    await ensure_topics(bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(first, last + 1):
            value = json.dumps({"symbol": "A", "ts": i, "price": float(i)}).encode()
            await producer.send(topic, value, key=b"A", partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def produce(bootstrap: str, topic: str, first: int, last: int) -> None:
    """``_write`` from synchronous code."""
    asyncio.run(_write(bootstrap, topic, first, last))


def _committed(bootstrap: str, topic: str, group: str) -> int | None:
    async def read() -> int | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            committed: int | None = await consumer.committed(TopicPartition(topic, 0))
            return committed
        finally:
            await consumer.stop()

    return asyncio.run(read())


@pytest.mark.integration
def test_ray_runner_a_killed_interior_actor_stops_the_source_with_its_input_in_kafka(
    ray_session: None, bootstrap: str
) -> None:
    topic, group = f"crash-{uuid.uuid4().hex[:8]}", f"crash-{uuid.uuid4().hex[:8]}"
    produce(bootstrap, topic, 1, 500)
    graph = sd.Graph("crash", outputs=[
        _ticks(topic).map("price * 2", name="double").to_topic("unused", name="out")])
    binding = KafkaBinding(bootstrap, group_id=group)
    running = RayRunner(default_source=binding.source_for).start(graph, sinks={"out": ListSink})
    try:
        ticks, double = running.actor("ticks"), running.actor("double")
        wait_for(lambda: running.stats()["out"].events_in == 500, "the first 500 to arrive")
        kill_actor_process(double)
        produce(bootstrap, topic, 501, 800)  # read, pushed into the dead actor: not delivered
        wait_for(lambda: is_held(ticks), "the source to hold")
        produce(bootstrap, topic, 801, 900)  # arrives while the source holds: never read
        wait_for(lambda: ray.get(ticks.stats.remote()).lag == {0: 400}, "the lag to be 400")

        with pytest.raises(GraphFailedError) as failed:
            running.wait(timeout_s=30)
        assert str(failed.value).startswith(
            "graph 'crash' failed: node(s) ['double'] crashed: its actor died (ActorDiedError: ")
        with pytest.raises(SubscriberFailedError) as held:
            ray.get(ticks.wait_finished.remote())
        assert re.fullmatch(r"node 'ticks' stopped: its subscriber on edge \S+ did not take a "
                            r"push \(ReceiverGoneError: [^)]*\); it holds its input, so nothing "
                            r"more is read or sent", str(held.value.cause))
        assert ray.get(ticks.delivered_position.remote()) == {0: 500}
        ticks_stats = ray.get(ticks.stats.remote())  # the dead actor answers no more
        out_stats = ray.get(running.actor("out").stats.remote())
        assert (ticks_stats.events_out, ticks_stats.lag, ticks_stats.subscribers_lost) == (
            500, {0: 400}, 1)
        assert out_stats.events_in == 500
        outputs = [v for b in ray.get(running.actor("out").results.remote())
                   for v in b.columns["value"].tolist()]
        assert outputs == [2.0 * i for i in range(1, 501)]
    finally:
        running.stop()
    assert _committed(bootstrap, topic, group) == 500  # monitoring: what was delivered
