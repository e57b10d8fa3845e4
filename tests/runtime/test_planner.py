"""The planner: structure validation, graph re-checks, execution plans and diffs."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import streamdag as sd
from runtime.cli.plan import ORDER_LEGENDS
from runtime.planning.planner import (
    ExecutionPlan,
    IterateBlock,
    diff_graph,
    plan_graph,
    validate_graph,
    validate_structure,
)
from runtime.planning.render import render_dot, render_mermaid, render_text
from streamdag.cli import main
from streamdag.errors import (
    CycleError,
    DanglingInputError,
    DuplicateNameError,
    DuplicateSinkTopicError,
    PlanError,
    SchemaMismatchError,
    SpecError,
    TopicLoopError,
    UnknownOperatorError,
)
from streamdag.graph import Graph, Node, make_node
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema
from streamdag.spec import load_graph


@register
class PlannerTestMeanDef(OperatorDef):
    """Test-only stand-in for a rolling statistic: one input, a ``window`` param."""

    type_name: ClassVar[str] = "planner_test_mean"
    params: ClassVar[tuple[Param, ...]] = (Param("window", "int", minimum=1),)

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 ``value``."""
        return Schema.of(value="float64")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Planning never builds logic."""
        raise AssertionError("the planner must not build operator logic")


@register
class PlannerTestCombineDef(OperatorDef):
    """Test-only operator of one or more inputs."""

    type_name: ClassVar[str] = "planner_test_combine"
    arity: ClassVar[int | None] = None

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 ``value``."""
        return Schema.of(value="float64")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Planning never builds logic."""
        raise AssertionError("the planner must not build operator logic")


def _ticks() -> Node:
    return sd.source("src", topic="ticks", key="symbol", schema={"price": "float64"})


def _mean(upstream: Node, window: int, name: str) -> Node:
    return make_node("planner_test_mean", (upstream,), {"window": window}, name=name)


def _combine(*inputs: Node, name: str) -> Node:
    return make_node("planner_test_combine", inputs, {}, name=name)


def _diamond() -> Graph:
    """src -> fast, slow -> cross -> out; src -> raw_out."""
    src = _ticks()
    fast = _mean(src, 5, "fast")
    slow = _mean(src, 20, "slow")
    cross = _combine(fast, slow, name="cross")
    return Graph(
        "diamond",
        outputs=[cross.to_topic("signals", name="out"), src.to_topic("raw", name="raw_out")],
    )


def _diamond_with(name: str, change: Callable[[Node], Node]) -> Graph:
    """The diamond with node ``name`` swapped for ``change(node)``, past the SDK's own checks."""
    graph = _diamond()
    old = graph.node(name)
    new = change(old)
    graph.nodes = tuple(new if n is old else n for n in graph.nodes)
    return graph


def _names(plan: ExecutionPlan) -> list[list[str]]:
    return [[plan.names[node_id] for node_id in generation] for generation in plan.generations]


# -- validate_structure ------------------------------------------------------------------


def test_validate_structure_orders_inputs_first_keeping_definition_order() -> None:
    spec = {"out": ["sma"], "sma": ["ticks"], "quotes": [], "ticks": [], "join": ["sma", "quotes"]}
    assert validate_structure(spec) == ["quotes", "ticks", "sma", "out", "join"]


def test_validate_structure_keeps_an_ordered_spec_as_it_is() -> None:
    spec = {"ticks": [], "sma": ["ticks"], "ema": ["ticks"], "out": ["sma", "ema"]}
    assert validate_structure(spec) == ["ticks", "sma", "ema", "out"]


def test_validate_structure_names_a_dangling_input_and_suggests_a_name() -> None:
    with pytest.raises(DanglingInputError) as caught:
        validate_structure({"ticks": [], "sma": ["tick"]})
    assert str(caught.value) == (
        "node 'sma' reads input 'tick', which is not defined in the graph (2 nodes defined); "
        "did you mean 'ticks'?"
    )


def test_validate_structure_dangling_input_without_a_close_name() -> None:
    with pytest.raises(DanglingInputError) as caught:
        validate_structure({"ticks": [], "sma": ["quotes"]})
    assert str(caught.value) == (
        "node 'sma' reads input 'quotes', which is not defined in the graph (2 nodes defined); "
        "define it or fix the name"
    )


def test_validate_structure_refuses_a_string_as_inputs() -> None:
    with pytest.raises(SpecError) as caught:
        validate_structure({"ticks": [], "sma": "ticks"})
    assert str(caught.value) == (
        "node 'sma': inputs must be a list of node names, got the string 'ticks'; "
        "write inputs = ['ticks']"
    )


def test_validate_structure_names_the_cycle_from_its_first_defined_node() -> None:
    spec = {"ticks": [], "c": ["b"], "a": ["ticks", "c"], "b": ["a"], "out": ["c"]}
    with pytest.raises(CycleError) as caught:
        validate_structure(spec)
    assert caught.value.cycle == ["c", "a", "b"]
    assert str(caught.value) == (
        "cycle found: c -> a -> b -> c. Streams must flow one way; break the cycle, or wrap "
        "the nodes that feed back into each other in an `iterate` block with a tolerance and "
        "a maximum number of iterations."
    )


def test_validate_structure_refuses_a_node_reading_itself() -> None:
    with pytest.raises(CycleError) as caught:
        validate_structure({"loop": ["loop"]})
    assert caught.value.cycle == ["loop"]


# -- validate_graph ------------------------------------------------------------------------


def test_validate_graph_accepts_an_sdk_graph() -> None:
    validate_graph(_diamond())


def test_validate_graph_refuses_duplicate_names() -> None:
    original = _diamond()
    fast, slow = original.node("fast"), original.node("slow")
    graph = _diamond_with("slow", lambda node: dataclasses.replace(node, name="fast"))
    with pytest.raises(DuplicateNameError) as caught:
        validate_graph(graph)
    assert str(caught.value) == (
        f"graph 'diamond': two different nodes are named 'fast' (planner_test_mean, id "
        f"{fast.node_id[:12]} and planner_test_mean, id {slow.node_id[:12]}); give each a "
        "unique name="
    )


def test_validate_graph_refuses_an_input_outside_the_graph() -> None:
    graph = _diamond()
    slow = graph.node("slow")
    graph.nodes = tuple(n for n in graph.nodes if n is not slow)
    with pytest.raises(DanglingInputError) as caught:
        validate_graph(graph)
    assert str(caught.value) == (
        f"graph 'diamond': node 'cross' reads 'slow' (id {slow.node_id[:12]}), which is not a "
        "node of the graph; build the graph from its outputs so every upstream node is included"
    )


def test_validate_graph_names_a_cycle_by_node_names() -> None:
    src = _ticks()
    first = _mean(src, 3, "first")
    second = _mean(first, 4, "second")
    # A node that claims `first`'s id but reads `second` closes a loop no SDK call can build.
    looped_first = dataclasses.replace(first, inputs=(second,))
    graph = Graph("loop", outputs=[second])
    graph.nodes = (src, looped_first, second)
    with pytest.raises(CycleError) as caught:
        validate_graph(graph)
    assert caught.value.cycle == ["first", "second"]


def test_validate_graph_refuses_two_sinks_on_one_topic() -> None:
    graph = _diamond_with(
        "raw_out",
        lambda raw_out: make_node("kafka_sink", raw_out.inputs, {"topic": "signals"},
                                  name="raw_out"),
    )
    with pytest.raises(DuplicateSinkTopicError) as caught:
        validate_graph(graph)
    assert str(caught.value) == (
        "graph 'diamond': sinks 'out' and 'raw_out' both write topic 'signals'; give each sink "
        "its own topic"
    )


def test_validate_graph_and_plan_graph_refuse_a_sink_writing_what_the_graph_reads() -> None:
    graph = _diamond_with(
        "out",
        lambda out: make_node("kafka_sink", out.inputs, {"topic": "ticks"}, name="out"),
    )
    for check in (validate_graph, plan_graph, lambda g: diff_graph(g, ())):
        with pytest.raises(TopicLoopError) as caught:
            check(graph)
        assert str(caught.value) == (
            "graph 'diamond': sink 'out' writes topic 'ticks', which source 'src' of the same "
            "graph reads, so the graph's output would come back as its input (a loop through "
            "Kafka); write another topic"
        )


def test_validate_graph_refuses_an_output_schema_its_inputs_do_not_give() -> None:
    graph = _diamond_with(
        "out", lambda out: dataclasses.replace(out, output_schema=Schema.of(value="int64")))
    with pytest.raises(SchemaMismatchError) as caught:
        validate_graph(graph)
    assert str(caught.value) == (
        "graph 'diamond': node 'out' declares output Schema(value: int64) but kafka_sink gives "
        "Schema(value: float64) from its inputs ['cross']; rebuild the node from its current inputs"
    )


def test_validate_graph_refuses_an_unknown_operator() -> None:
    graph = _diamond_with(
        "cross", lambda cross: dataclasses.replace(cross, operator="no_such_operator"))
    prefix = "graph 'diamond': node 'cross': unknown operator type 'no_such_operator'; "
    with pytest.raises(UnknownOperatorError, match="^" + re.escape(prefix)):
        validate_graph(graph)


# -- plan_graph and ExecutionPlan -------------------------------------------------------------


def test_batch_plan_puts_sources_first_in_longest_path_layers() -> None:
    plan = plan_graph(_diamond(), mode="batch")
    assert plan.mode == "batch"
    assert _names(plan) == [["src"], ["fast", "raw_out", "slow"], ["cross"], ["out"]]
    assert plan.max_parallelism == 3
    assert [plan.names[n] for n in plan.order] == ["src", "fast", "raw_out", "slow", "cross", "out"]


def test_streaming_plan_puts_every_sink_in_generation_zero() -> None:
    plan = plan_graph(_diamond())
    assert plan.mode == "streaming"
    assert _names(plan) == [["out", "raw_out"], ["cross"], ["fast", "slow"], ["src"]]
    assert plan.max_parallelism == 2


def test_plan_records_every_edge_once_and_a_summary() -> None:
    graph = _diamond()
    plan = plan_graph(graph)
    named_edges = {(plan.names[a], plan.names[b]) for a, b in plan.edges}
    assert named_edges == {
        ("src", "fast"),
        ("src", "slow"),
        ("fast", "cross"),
        ("slow", "cross"),
        ("cross", "out"),
        ("src", "raw_out"),
    }
    assert len(plan.edges) == 6
    assert plan.iterate_blocks == ()
    assert plan.summary() == (
        "streaming plan: 6 nodes, 6 edges, 4 generations, max parallelism 2, 0 iterate blocks"
    )


def test_a_node_reading_one_input_twice_gives_one_edge() -> None:
    src = _ticks()
    both = _combine(src, src, name="both")
    plan = plan_graph(Graph("twice", outputs=[both]), mode="batch")
    assert plan.edges == ((src.node_id, both.node_id),)
    assert _names(plan) == [["src"], ["both"]]


def test_plans_are_deterministic_whatever_the_output_order() -> None:
    src = _ticks()
    sinks = [_mean(src, window, f"m{window}").to_topic(f"t{window}") for window in (3, 1, 2)]
    forward = plan_graph(Graph("g", outputs=sinks))
    backward = plan_graph(Graph("g", outputs=sinks[::-1]))
    assert forward == backward
    assert _names(forward)[1] == ["m1", "m2", "m3"]


def test_plan_graph_refuses_an_unknown_mode() -> None:
    with pytest.raises(PlanError) as caught:
        plan_graph(_diamond(), mode="sideways")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "plan mode 'sideways' is not one of ['batch', 'streaming']; pick 'batch' (sources "
        "first, for replays) or 'streaming' (sinks first, for deployment)"
    )


def _hand_plan(mode: Any, generations: tuple[tuple[str, ...], ...], **extra: Any) -> ExecutionPlan:
    names = {"s": "source", "m": "middle", "k": "sink"}
    edges = (("s", "m"), ("m", "k"))
    return ExecutionPlan(mode=mode, generations=generations, names=names, edges=edges, **extra)


def test_validate_accepts_hand_built_plans_that_follow_their_rule() -> None:
    _hand_plan("batch", (("s",), ("m",), ("k",))).validate()
    _hand_plan("streaming", (("k",), ("m",), ("s",))).validate()


def test_validate_catches_a_batch_plan_with_a_consumer_before_its_producer() -> None:
    plan = _hand_plan("batch", (("s",), ("k",), ("m",)))
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert str(caught.value) == (
        "batch plan: edge 'middle' -> 'sink' has the producer in generation 2 and the consumer "
        "in generation 1, but every producer runs in an earlier generation than its consumers; "
        "rebuild the plan with plan_graph()"
    )


def test_validate_catches_a_streaming_plan_in_batch_order() -> None:
    plan = _hand_plan("streaming", (("s",), ("m",), ("k",)))
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert str(caught.value) == (
        "streaming plan: edge 'source' -> 'middle' has the producer in generation 0 and the "
        "consumer in generation 1, but every consumer is started in an earlier generation than "
        "its producers; rebuild the plan with plan_graph()"
    )


def test_validate_catches_producer_and_consumer_in_one_generation() -> None:
    plan = _hand_plan("streaming", (("k",), ("m", "s")))
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert str(caught.value) == (
        "streaming plan: edge 'source' -> 'middle' has the producer in generation 1 and the "
        "consumer in generation 1, but every consumer is started in an earlier generation than "
        "its producers; rebuild the plan with plan_graph()"
    )


def test_validate_catches_a_node_listed_twice() -> None:
    plan = _hand_plan("batch", (("s",), ("m",), ("k", "m")))
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert str(caught.value) == (
        "batch plan: node 'middle' appears in generations 1 and 2; each node runs exactly once"
    )


def test_validate_catches_an_edge_to_a_node_in_no_generation() -> None:
    plan = _hand_plan("batch", (("s",), ("m",)))
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert str(caught.value) == (
        "batch plan: edge 'middle' -> 'sink' names node 'sink', which is in no generation; "
        "rebuild the plan with plan_graph()"
    )


def test_validate_catches_an_empty_generation_and_an_unknown_mode() -> None:
    with pytest.raises(PlanError) as caught:
        _hand_plan("batch", (("s",), (), ("m",), ("k",))).validate()
    assert str(caught.value) == (
        "batch plan: generation 1 is empty; every generation holds at least one node"
    )
    with pytest.raises(PlanError) as caught:
        _hand_plan("eager", (("s",), ("m",), ("k",))).validate()
    assert str(caught.value) == (
        "plan mode 'eager' is not one of ['batch', 'streaming']; build plans with "
        "plan_graph(graph, mode=...)"
    )


def test_validate_catches_a_broken_iterate_block() -> None:
    plan = _hand_plan(
        "batch", (("s",), ("m",), ("k",)), iterate_blocks=(IterateBlock("m", 0.0, 10),)
    )
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert str(caught.value) == (
        "batch plan: iterate block 'middle' has tolerance 0.0 and max_iterations 10; expected a "
        "tolerance > 0 and max_iterations >= 1"
    )
    stray = _hand_plan(
        "batch", (("s",), ("m",), ("k",)), iterate_blocks=(IterateBlock("x" * 64, 1e-6, 10),)
    )
    with pytest.raises(PlanError) as caught:
        stray.validate()
    assert str(caught.value) == (
        "batch plan: iterate block id xxxxxxxxxxxx is in no generation; rebuild the plan with "
        "plan_graph()"
    )


def test_plans_are_immutable() -> None:
    plan = plan_graph(_diamond())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.mode = "batch"  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.names["x"] = "y"  # type: ignore[index]


# -- diff_graph ------------------------------------------------------------------------------


def test_diff_reuses_shared_upstream_nodes_and_creates_new_ones_sinks_first() -> None:
    src = _ticks()
    sma = _mean(src, 20, "sma")
    first = Graph("g1", outputs=[sma.to_topic("sma", name="sma_out")])
    sig = _combine(sma, name="sig")
    sig_out = sig.to_topic("signals", name="sig_out")
    second = Graph("g2", outputs=[sig_out])

    diff = diff_graph(second, set(first.node_ids))

    assert diff.new == (sig_out.node_id, sig.node_id)
    assert diff.creation_order == ((sig_out.node_id,), (sig.node_id,))
    assert diff.reused == (sma.node_id, src.node_id)
    assert diff.reuse_ratio == 0.5
    assert diff.plan == plan_graph(second)


def test_diff_against_nothing_creates_everything_and_against_itself_nothing() -> None:
    graph = _diamond()
    fresh = diff_graph(graph, [])
    assert fresh.new == plan_graph(graph).order
    assert fresh.reused == ()
    assert fresh.reuse_ratio == 0.0
    again = diff_graph(graph, list(graph.node_ids))
    assert again.new == ()
    assert again.creation_order == ()
    assert again.reuse_ratio == 1.0


# -- iterate blocks -------------------------------------------------------------------------


def _newton_graph(**block: Any) -> Graph:
    numbers = sd.source("numbers", topic="numbers", schema={"value": "float64"})
    roots = numbers.apply(
        "iterate",
        initial={"x": "value"},
        update={"x": "0.5 * (x + value / x)"},
        output="x",
        name="roots",
        **block,
    )
    return Graph("newton", outputs=[roots.to_topic("roots", name="out")])


def test_plans_record_each_iterate_block_with_its_settings() -> None:
    graph = _newton_graph(tolerance=1e-6, max_iterations=50)
    roots = graph.node("roots")
    for mode in ("batch", "streaming"):
        plan = plan_graph(graph, mode=mode)
        assert plan.iterate_blocks == (IterateBlock(roots.node_id, 1e-6, 50),)
    defaults = _newton_graph()
    assert plan_graph(defaults).iterate_blocks == (
        IterateBlock(defaults.node("roots").node_id, 1e-9, 100),
    )


# -- streamdag plan ---------------------------------------------------------------------------

_NEWTON_SPEC = """
name = "newton"

[[nodes]]
name = "numbers"
type = "kafka_source"
params = { topic = "numbers", schema = { value = "float64" } }

[[nodes]]
name = "roots"
type = "iterate"
inputs = ["numbers"]

[nodes.params]
initial = { x = "value" }
update = { x = "0.5 * (x + value / x)" }
output = "x"
tolerance = 1e-6
max_iterations = 50

[[nodes]]
name = "out"
type = "kafka_sink"
inputs = ["roots"]
params = { topic = "roots" }
"""


def _spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "graph.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_plan_command_prints_the_plan_in_each_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _spec_file(tmp_path, _NEWTON_SPEC)
    graph = load_graph(path)
    roots = graph.node("roots")

    assert main(["plan", str(path), "--mode", "batch"]) == 0
    printed = capsys.readouterr().out
    assert printed == ORDER_LEGENDS["batch"] + "\n" + render_text(
        plan_graph(graph, mode="batch"), graph)
    assert printed.splitlines()[1] == (
        "graph 'newton': batch plan: 3 nodes, 2 edges, 3 generations, max parallelism 1, "
        "1 iterate block"
    )
    assert printed.splitlines()[-2:] == [
        "iterate blocks:",
        f"  roots  tolerance=1e-06  max_iterations=50  {roots.node_id[:12]}",
    ]

    assert main(["plan", str(path)]) == 0
    assert capsys.readouterr().out == (ORDER_LEGENDS["streaming"] + "\n"
                                       + render_text(plan_graph(graph), graph))
    assert main(["plan", str(path), "--both"]) == 0
    assert capsys.readouterr().out == (
        ORDER_LEGENDS["streaming"] + "\n" + render_text(plan_graph(graph), graph) + "\n"
        + ORDER_LEGENDS["batch"] + "\n" + render_text(plan_graph(graph, mode="batch"), graph))
    assert ORDER_LEGENDS["streaming"].startswith(
        "streaming order (live runs and deployments): generation 0 is created first (the sinks)")
    assert main(["plan", str(path), "--format", "mermaid"]) == 0
    assert capsys.readouterr().out == render_mermaid(graph)
    assert main(["plan", str(path), "--format", "dot", "--mode", "batch"]) == 0
    assert capsys.readouterr().out == render_dot(graph)


def test_plan_command_reports_a_cycle_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    looped = _NEWTON_SPEC.replace('inputs = ["numbers"]', 'inputs = ["out"]')
    path = _spec_file(tmp_path, looped)
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: cycle found: roots -> out -> roots. Streams must flow one way; break the cycle, "
        "or wrap the nodes that feed back into each other in an `iterate` block with a "
        "tolerance and a maximum number of iterations.\n"
    )
