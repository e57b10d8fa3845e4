"""The local runner checkpoints and recovers by itself: a fault at every step of the checkpoint
protocol, and a node that fails once, each give exactly the output of a run without faults."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import streamdag as sd
from runtime.checkpoints import failpoints
from runtime.runners.local_runner import LocalRunner
from runtime.runners.recovery import GraphFailedError
from streamdag.batch import Batch
from streamdag.config import CheckpointSettings
from streamdag.testing import ListSink, Marker, TestingSource

KEYS = ("A", "B", "C")
BATCHES = 60


def _script() -> list[Batch | Marker]:
    """60 batches of 30 events, keys round robin, times 0..1799, then a pause of the stream."""
    items: list[Batch | Marker] = []
    for b in range(BATCHES):
        n = np.arange(b * 30, (b + 1) * 30)
        items.append(Batch.from_columns(ts=n, key=[KEYS[i % 3] for i in n.tolist()],
                                        price=((n * 7919) % 1000) / 10.0))
    return items


def _graph() -> sd.Graph:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    return sd.Graph("ema", outputs=[ticks.ema("price", span=7, name="smooth")
                                    .to_topic("out", name="out")])


class _SlowSource(TestingSource):
    """A TestingSource that yields to the loop between reads, so checkpoints happen mid-run."""

    async def read(self, max_records: int, linger_s: float):  # type: ignore[no-untyped-def]
        import asyncio

        await asyncio.sleep(0.005)
        return await super().read(max_records, linger_s)


def _run(settings: CheckpointSettings | None, arm: str | None = None) -> tuple[ListSink, int]:
    shared = ListSink()  # one topic for every incarnation of the sink
    runner = LocalRunner(checkpoints=settings)
    if arm is not None:
        failpoints.arm(arm)
    runner.run(_graph(), sources={"ticks": lambda: _SlowSource(_script())},
               sinks={"out": lambda: shared}, timeout_s=60)
    return shared, runner.recoveries


def _by_key(sink: ListSink) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for record in sink.records():
        found.setdefault(str(record["key"]), []).append((int(record["ts"]),
                                                         float(record["value"])))
    return found


@pytest.fixture(autouse=True)
def _no_failpoint_left_armed() -> Iterator[None]:
    yield
    failpoints.disarm_all()


SETTINGS = CheckpointSettings(interval_s=0.05, backoff_s=0.01, max_backoff_s=0.05)


@pytest.mark.parametrize("step", failpoints.STEPS)
def test_a_fault_at_each_protocol_step_recovers_with_exact_output(step: str) -> None:
    expected, _ = _run(None)
    recovered, recoveries = _run(SETTINGS, arm=step)

    assert recoveries == 1
    assert not failpoints.armed(step)  # it was hit
    assert len(recovered.records()) == BATCHES * 30  # 0 lost, 0 duplicated
    keys = [record["key"] for record in recovered.records()]  # an id is the key's, with it
    assert len(set(zip(keys, recovered.record_ids, strict=True))) == BATCHES * 30
    assert _by_key(recovered) == _by_key(expected)  # per-key order and exact values


def test_at_least_once_delivery_duplicates_after_a_recovery_so_the_oracle_can_fail() -> None:
    recovered, recoveries = _run(
        CheckpointSettings(interval_s=0.05, backoff_s=0.01, delivery="at_least_once"),
        arm="after_persist_before_ack")
    assert recoveries == 1
    assert len(recovered.records()) > BATCHES * 30  # what came after the checkpoint, twice


def _boom(price: np.ndarray) -> np.ndarray:
    raise ValueError("a bad tick")


def test_a_node_failing_every_time_gives_up_after_max_failures_with_the_cause() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    failing = sd.udf(period=1)(_boom)(ticks["price"], name="boom")
    graph = sd.Graph("bad", outputs=[failing.to_topic("o", name="o")])
    runner = LocalRunner(checkpoints=CheckpointSettings(interval_s=0.05, backoff_s=0.01,
                                                        max_failures=2))
    with pytest.raises(GraphFailedError) as failure:
        runner.run(graph, sources={"ticks": lambda: TestingSource(_script()[:1])},
                   sinks={"o": ListSink}, timeout_s=30)
    assert str(failure.value) == (
        "graph 'bad' failed: ValueError: a bad tick (3 failures within 300 s: more than "
        "checkpoint.max_failures = 2, so the graph is not restarted again)")


def test_a_graph_chooses_its_own_delivery_over_the_configured_one() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    graph = sd.Graph("ema", outputs=[ticks.ema("price", span=7, name="smooth")
                                     .to_topic("out", name="out")], delivery="at_least_once")
    shared = ListSink()
    runner = LocalRunner(checkpoints=SETTINGS)  # configured: exactly once
    failpoints.arm("after_persist_before_ack")
    runner.run(graph, sources={"ticks": lambda: _SlowSource(_script())},
               sinks={"out": lambda: shared}, timeout_s=60)

    assert runner.recoveries == 1
    assert shared.commits == []  # published at once, never by epoch
    assert len(shared.records()) > BATCHES * 30
    assert graph.node_ids == _graph().node_ids  # delivery is no part of a node's identity
