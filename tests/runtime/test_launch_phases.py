"""RayRunner's start: planned before Ray starts, each step of the launch timed in the driver."""

from __future__ import annotations

import pytest

import streamdag as sd
from runtime.runners import ray_runner
from runtime.runners.ray_runner import RayRunner
from streamdag.batch import Batch
from streamdag.testing import ListSink, TestingSource


def _chain() -> sd.Graph:
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    doubled = ticks.map("price * 2", name="doubled")
    return sd.Graph("chain", outputs=[doubled.to_topic("out.doubled", name="out")])


class _Script:
    """A picklable source factory over fixed batches (Ray ships it to the source's actor)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __call__(self) -> TestingSource:
        return TestingSource(self.batches)


def test_a_graph_that_cannot_be_bound_is_refused_before_ray_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []
    monkeypatch.setattr(ray_runner, "ensure_ray", lambda *args: started.append(args))
    with pytest.raises(sd.StreamdagError) as caught:
        RayRunner().start(_chain(), sources={"ticks": _Script([])})
    assert str(caught.value) == (
        "sink 'out' (topic 'out.doubled') has no writer: pass sinks={'out': factory} or run "
        "with Kafka configured")
    assert started == []


@pytest.mark.integration
def test_the_launch_steps_are_timed_in_order(ray_session: None) -> None:
    batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[1.0, 2.5])
    running = RayRunner().start(_chain(), sources={"ticks": _Script([batch])},
                                sinks={"out": ListSink})
    try:
        result = running.wait(60)
    finally:
        running.stop()
    assert result.records("out") == [{"ts": 1, "key": "a", "price": 1.0, "value": 2.0},
                                     {"ts": 2, "key": "b", "price": 2.5, "value": 5.0}]
    phases = running.launch_phases
    steps = [phases.launched, phases.planned, phases.ray_ready, phases.created,
             *phases.generations_ready, phases.sources_started]
    assert len(phases.generations_ready) == 3  # out, then doubled, then ticks
    assert steps[0] > 0
    assert steps == sorted(steps)
    spans = phases.spans()
    assert list(spans) == ["planned", "Ray connected or started", "actors asked for",
                           "generation 1 ready", "generation 2 ready", "generation 3 ready",
                           "sources started", "launch -> sources started"]
    assert spans["launch -> sources started"] == round(steps[-1] - steps[0], 6)


def test_the_nodes_of_one_host_class_share_one_actor_class_so_ray_exports_it_once() -> None:
    from runtime.runners.ray_nodes import node_actor_class

    # Ray exports each actor class object once per job: one per actor cost 0.1-0.3 s each.
    assert node_actor_class("kafka_source") is node_actor_class("rolling_mean")
    assert node_actor_class("kafka_sink") is node_actor_class("")
    assert node_actor_class("infer") is node_actor_class("infer")
    assert node_actor_class("infer") is not node_actor_class("")
