"""Tag queries in a deployment (real Ray, real broker): a portfolio node follows every node
tagged ``signal`` as strategy graphs come and go."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from actor_kills import kill_actor_process
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import streamdag as sd
from connectors.broker import EmbeddedBroker
from connectors.topics import ensure_topics
from runtime.cli.status import describe_status
from runtime.deployment.controller import ControllerOptions
from runtime.deployment.gateway import create_app
from runtime.deployment.handle import Deployment
from runtime.deployment.node_registry import NODE_NAMESPACE
from streamdag.config import (
    CheckpointSettings,
    GatewaySettings,
    KafkaSettings,
    RuntimeSection,
    Settings,
)
from streamdag.spec import graph_to_dict

pytestmark = pytest.mark.integration

Record = tuple[int, str, float]


@pytest.fixture(scope="module")
def deployment(ray_session: None, broker: EmbeddedBroker,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment for the module, checkpointing every 0.3 s and recovering after a 0.2 s
    backoff; shut down (every node actor gone) afterwards."""
    name = f"tqc{uuid.uuid4().hex[:8]}"
    state: Path = tmp_path_factory.mktemp("tag-queries-checkpointed")
    opened = Deployment.connect(
        Settings(name=name, state_dir=str(state), kafka=KafkaSettings(partitions=1),
                 runtime=RuntimeSection(warm_pool=0),  # actors found by their node names
                 checkpoint=CheckpointSettings(enabled=True, interval_s=0.3, backoff_s=0.2)),
        str(broker.bootstrap_servers), state_dir=state / name,
        options=ControllerOptions(grace_s=0.0, health_interval_s=0.0,
                                  lifecycle_topic=f"{name}.lifecycle"))
    yield opened
    opened.shutdown()
    prefix = f"streamdag-{name}-node-"
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == NODE_NAMESPACE and a["name"].startswith(prefix)]


def _topic(stem: str) -> str:
    return f"tq-{stem}-{uuid.uuid4().hex[:8]}"


def _ticks(topic: str) -> sd.Node:
    return sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})


def _strategy(k: int, ticks_topic: str, *extra: sd.Node) -> sd.Graph:
    """Signal ``s<k>`` = k * price, tagged ``signal`` (the portfolio is what reads it)."""
    signal = _ticks(ticks_topic).map(f"price * {k}", name=f"s{k}", tags=["signal"])
    return sd.Graph(f"strategy{k}", outputs=[signal, *extra])


def _portfolio(name: str, topic: str) -> sd.Graph:
    signals = sd.tag_query(["signal"], schema={"value": "float64"}, name="signals")
    return sd.Graph(name, outputs=[signals.to_topic(topic, name=f"{name}_out")])


def _produce(bootstrap: str, topic: str, first: int, last: int) -> None:
    """Ticks of symbol A with ts = price = first..last, in order, on one partition."""

    async def write() -> None:
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


class _Reader:
    """Reads a topic from its start, a given number of records at a time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic, self.offset = bootstrap, topic, 0

    def next(self, count: int, timeout_s: float = 30.0) -> list[Record]:
        """Exactly the next ``count`` records as (ts, key, value), or fail."""

        async def read() -> list[Record]:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                        enable_auto_commit=False, fetch_max_wait_ms=10)
            await consumer.start()
            try:
                partition = TopicPartition(self.topic, 0)
                consumer.assign([partition])
                consumer.seek(partition, self.offset)
                records: list[Any] = []
                deadline = time.monotonic() + timeout_s
                while len(records) < count and time.monotonic() < deadline:
                    for batch in (await consumer.getmany(timeout_ms=100)).values():
                        records.extend(batch)
                assert len(records) == count, f"read {len(records)} of {count} records"
                assert not await consumer.getmany(timeout_ms=300), "more records than expected"
            finally:
                await consumer.stop()
            self.offset += count
            values = [json.loads(record.value) for record in records]
            return [(v["ts"], v["key"], v["value"]) for v in values]

        return asyncio.run(read())


def _expected(first: int, last: int, strategies: list[int]) -> list[Record]:
    """What the portfolio releases for ts first..last: by time, then by followed input."""
    return [(ts, f"s{k}/A", float(ts * k)) for ts in range(first, last + 1) for k in strategies]


def _follows(deployment: Deployment, submission: dict[str, Any]) -> tuple[list[str], list[str]]:
    node = next(n for n in deployment.status(submission["id"])["nodes"]
                if n["name"] == "signals")
    query = node["tag_query"]
    return [f["origin"] for f in query["follows"]], [s["name"] for s in query["skipped"]]


async def _through_the_gateway(
    deployment: Deployment, spec: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], tuple[int, list[str]]]:
    """Submit ``spec``, then GET its query node and an unknown node, over HTTP."""
    auth = {"Authorization": "Bearer token"}
    app = create_app(deployment.controller, GatewaySettings(), "token")
    async with TestClient(TestServer(app)) as client:
        submitted = await (await client.post("/graphs", json=spec, headers=auth)).json()
        query_id = next(n["node_id"] for n in submitted["nodes"] if n["name"] == "signals")
        node = await (await client.get(f"/nodes/{query_id}", headers=auth)).json()
        missing = await client.get("/nodes/nope", headers=auth)
        errors = [e["type"] for e in (await missing.json())["errors"]]
        return submitted, node, (missing.status, errors)


def test_a_portfolio_follows_strategies_as_they_come_and_go_and_through_a_recovery(
    deployment: Deployment, broker: EmbeddedBroker
) -> None:
    bootstrap = str(broker.bootstrap_servers)
    ticks, out, out2 = _topic("ticks"), _topic("portfolio"), _topic("portfolio2")
    asyncio.run(ensure_topics(bootstrap, {ticks: 1}))
    portfolio = deployment.submit(_portfolio("portfolio", out))
    assert portfolio["state"] == "executing"
    assert _follows(deployment, portfolio) == ([], [])
    reader = _Reader(bootstrap, out)

    # Strategy 1: ticks 1..10 reach the portfolio through s1 (10 waits for the watermark);
    # its sink publishes them once a checkpoint holds them.
    first = deployment.submit(_strategy(1, ticks))
    assert _follows(deployment, portfolio) == (["s1"], [])
    _produce(bootstrap, ticks, 1, 10)
    assert reader.next(9) == _expected(1, 9, [1])

    # Strategy 2 joins after the query's last checkpoint, and the query's actor is killed:
    # the restored query follows s1 and s2 again; from the next ticks on, both, merged by
    # event time, each record once.
    second = deployment.submit(_strategy(2, ticks))
    query = next(n["actor"] for n in portfolio["nodes"] if n["name"] == "signals")
    kill_actor_process(ray.get_actor(query, namespace=NODE_NAMESPACE))
    problems = deployment.check_health()  # finds the dead actor; its region recovers
    assert len(problems) == 1 and " died: " in problems[0]
    [region] = deployment.checkpoints(portfolio["id"])  # the query joined the strategies'
    assert region["recoveries"] == 1
    assert _follows(deployment, portfolio) == (["s1", "s2"], [])
    _produce(bootstrap, ticks, 11, 20)
    assert reader.next(1 + 9 * 2) == [(10, "s1/A", 10.0), *_expected(11, 19, [1, 2])]

    # Strategy 3 brings a node tagged "signal" without a "value": skipped, not fatal.
    raw = _ticks(ticks).filter("price > 0", name="raw", tags=["signal"])
    third = deployment.submit(_strategy(3, ticks, raw))
    assert third["state"] == "executing"
    assert _follows(deployment, portfolio) == (["s1", "s2", "s3"], ["raw"])
    _produce(bootstrap, ticks, 21, 30)
    assert reader.next(2 + 9 * 3) == [(20, "s1/A", 20.0), (20, "s2/A", 40.0),
                                       *_expected(21, 29, [1, 2, 3])]

    # Strategy 2 is removed: the portfolio lets go of s2, and what s2 sent still comes out.
    assert deployment.remove(second["id"])["retired"] == ["s2"]
    assert _follows(deployment, portfolio) == (["s1", "s3"], ["raw"])
    _produce(bootstrap, ticks, 31, 40)
    assert reader.next(3 + 9 * 2) == [*_expected(30, 30, [1, 2, 3]),
                                       *_expected(31, 39, [1, 3])]

    # A second graph declaring the same query (a spec, through the gateway) shares its node,
    # and what it follows; GET /nodes/{id} and `streamdag status` show it.
    again, node, missing = asyncio.run(_through_the_gateway(deployment, graph_to_dict(
        _portfolio("portfolio2", out2))))
    assert again["diff"]["reused"] == ["signals"] and again["diff"]["new"] == ["portfolio2_out"]
    assert _follows(deployment, again) == (["s1", "s3"], ["raw"])
    assert (node["refcount"], node["tag_query"]["query"]) == (2, {
        "tags": ["signal"], "match": "all", "schema": {"value": "float64"},
        "join_grace": 5_000_000_000})
    assert missing == (404, ["UnknownNodeError"])
    assert ("tag query signals (all of ['signal']) follows: s1, s3\n  skips raw: its output "
            "has no field 'value'") in describe_status(deployment.status(again["id"]))
    _produce(bootstrap, ticks, 41, 45)
    assert _Reader(bootstrap, out2).next(2 * 5) == _expected(40, 44, [1, 3])
    assert reader.next(2 * 5) == _expected(40, 44, [1, 3])

    for submission in (first, third, portfolio, again):
        deployment.remove(submission["id"])
    assert deployment.nodes() == []
