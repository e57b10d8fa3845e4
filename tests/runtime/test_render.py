"""Rendering: exact text, Mermaid and DOT output for a small graph with fixed node ids."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytest

from runtime.planning.planner import IterateBlock, plan_graph
from runtime.planning.render import (
    node_label,
    render_dot,
    render_mermaid,
    render_text,
    short_ids,
)
from streamdag.errors import PlanError
from streamdag.graph import Graph, Node, make_node
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic, Role
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema


class _RenderTestDef(OperatorDef):
    """Test-only operators with a fixed code hash, so node ids (and the goldens) are stable."""

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 ``price``."""
        return Schema.of(price="float64")

    @classmethod
    def code_hash(cls) -> str:
        """Fixed, unlike a module's source hash, which changes with every edit of this file."""
        return "render-test-code"

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Rendering never builds logic."""
        raise AssertionError("rendering must not build operator logic")


@register
class RenderTestSourceDef(_RenderTestDef):
    """A source bound to a topic."""

    type_name: ClassVar[str] = "render_test_source"
    role: ClassVar[Role] = "source"
    arity: ClassVar[int | None] = 0
    params: ClassVar[tuple[Param, ...]] = (
        Param("topic", "str"),
        Param("schema", "schema", default=Schema.of(price="float64")),
        Param("key", "str", default="key"),
    )


@register
class RenderTestWindowDef(_RenderTestDef):
    """A windowed statistic with defaults that labels leave out."""

    type_name: ClassVar[str] = "render_test_window"
    params: ClassVar[tuple[Param, ...]] = (
        Param("field", "str", default="price"),
        Param("window", "duration", default=0),
        Param("note", "str", default=""),
        Param("fields", "str_list", default=()),
    )


@register
class RenderTestPairDef(_RenderTestDef):
    """Two inputs, so edges carry port labels."""

    type_name: ClassVar[str] = "render_test_pair"
    arity: ClassVar[int | None] = 2


@register
class RenderTestSinkDef(_RenderTestDef):
    """A sink writing a topic."""

    type_name: ClassVar[str] = "render_test_sink"
    role: ClassVar[Role] = "sink"
    params: ClassVar[tuple[Param, ...]] = (Param("topic", "str"),)


def _graph() -> Graph:
    ticks = make_node("render_test_source", (), {"topic": "ticks", "key": "symbol"}, name="ticks")
    bars = make_node("render_test_window", (ticks,), {"window": "5s"}, name="bars")
    smooth = make_node(
        "render_test_window",
        (ticks,),
        {"window": 1500, "note": "fast one", "fields": ["bid", "ask"]},
        name="smooth",
    )
    cross = make_node("render_test_pair", (bars, smooth), {}, name='cross<"x">#1')
    out = make_node("render_test_sink", (cross,), {"topic": "signals"}, name="out")
    return Graph("golden", outputs=[out])


def _by_name(graph: Graph) -> dict[str, Node]:
    return {node.name: node for node in graph.nodes}


def test_render_text_streaming_plan() -> None:
    graph = _graph()
    assert render_text(plan_graph(graph), graph) == (
        "graph 'golden': streaming plan: 5 nodes, 5 edges, 4 generations, max parallelism 2, "
        "0 iterate blocks\n"
        "generation 0:\n"
        "  out           render_test_sink topic=signals                                   "
        'd0ee8fc0bf96  <- cross<"x">#1\n'
        "generation 1:\n"
        '  cross<"x">#1  render_test_pair                                                 '
        "7e4800ef553e  <- bars, smooth\n"
        "generation 2:\n"
        "  bars          render_test_window window=5s                                     "
        "2c103217ff54  <- ticks\n"
        "  smooth        render_test_window window=1500ns note='fast one' fields=bid,ask  "
        "c04d6687c009  <- ticks\n"
        "generation 3:\n"
        "  ticks         render_test_source topic=ticks key=symbol                        "
        "147c859ae0b9\n"
    )


def test_render_text_batch_plan_lists_iterate_blocks() -> None:
    graph = _graph()
    smooth = _by_name(graph)["smooth"]
    plan = dataclasses.replace(
        plan_graph(graph, mode="batch"),
        iterate_blocks=(IterateBlock(smooth.node_id, 1e-9, 50),),
    )
    assert render_text(plan, graph) == (
        "graph 'golden': batch plan: 5 nodes, 5 edges, 4 generations, max parallelism 2, "
        "1 iterate block\n"
        "generation 0:\n"
        "  ticks         render_test_source topic=ticks key=symbol                        "
        "147c859ae0b9\n"
        "generation 1:\n"
        "  bars          render_test_window window=5s                                     "
        "2c103217ff54  <- ticks\n"
        "  smooth        render_test_window window=1500ns note='fast one' fields=bid,ask  "
        "c04d6687c009  <- ticks\n"
        "generation 2:\n"
        '  cross<"x">#1  render_test_pair                                                 '
        "7e4800ef553e  <- bars, smooth\n"
        "generation 3:\n"
        "  out           render_test_sink topic=signals                                   "
        'd0ee8fc0bf96  <- cross<"x">#1\n'
        "iterate blocks:\n"
        "  smooth  tolerance=1e-09  max_iterations=50  c04d6687c009\n"
    )


def test_render_mermaid_escapes_labels_and_numbers_ports() -> None:
    assert render_mermaid(_graph()) == (
        "flowchart LR\n"
        '  n147c859ae0b9(["ticks<br/>render_test_source topic=ticks key=symbol<br/>'
        '147c859ae0b9"])\n'
        '  n2c103217ff54["bars<br/>render_test_window window=5s<br/>2c103217ff54"]\n'
        "  nc04d6687c009[\"smooth<br/>render_test_window window=1500ns note='fast one' "
        'fields=bid,ask<br/>c04d6687c009"]\n'
        '  n7e4800ef553e["cross#lt;#quot;x#quot;#gt;#35;1<br/>render_test_pair<br/>'
        '7e4800ef553e"]\n'
        '  nd0ee8fc0bf96[/"out<br/>render_test_sink topic=signals<br/>d0ee8fc0bf96"/]\n'
        "  n147c859ae0b9 --> n2c103217ff54\n"
        "  n147c859ae0b9 --> nc04d6687c009\n"
        "  n2c103217ff54 -->|in0| n7e4800ef553e\n"
        "  nc04d6687c009 -->|in1| n7e4800ef553e\n"
        "  n7e4800ef553e --> nd0ee8fc0bf96\n"
    )


def test_render_dot_escapes_labels_and_shapes_endpoints() -> None:
    assert render_dot(_graph()) == (
        'digraph "golden" {\n'
        "  rankdir=LR;\n"
        '  node [shape=box, fontname="Helvetica"];\n'
        '  "n147c859ae0b9" [label="ticks\\nrender_test_source topic=ticks key=symbol\\n'
        '147c859ae0b9", shape=invhouse];\n'
        '  "n2c103217ff54" [label="bars\\nrender_test_window window=5s\\n2c103217ff54"];\n'
        '  "nc04d6687c009" [label="smooth\\nrender_test_window window=1500ns note=\'fast one\' '
        'fields=bid,ask\\nc04d6687c009"];\n'
        '  "n7e4800ef553e" [label="cross<\\"x\\">#1\\nrender_test_pair\\n7e4800ef553e"];\n'
        '  "nd0ee8fc0bf96" [label="out\\nrender_test_sink topic=signals\\nd0ee8fc0bf96", '
        "shape=house];\n"
        '  "n147c859ae0b9" -> "n2c103217ff54";\n'
        '  "n147c859ae0b9" -> "nc04d6687c009";\n'
        '  "n2c103217ff54" -> "n7e4800ef553e" [label="in0"];\n'
        '  "nc04d6687c009" -> "n7e4800ef553e" [label="in1"];\n'
        '  "n7e4800ef553e" -> "nd0ee8fc0bf96";\n'
        "}\n"
    )


def test_renderings_are_identical_for_a_rebuilt_graph() -> None:
    first, second = _graph(), _graph()
    assert render_text(plan_graph(first), first) == render_text(plan_graph(second), second)
    assert render_mermaid(first) == render_mermaid(second)
    assert render_dot(first) == render_dot(second)


def test_render_text_refuses_a_plan_of_another_graph() -> None:
    graph = _graph()
    other_source = make_node("render_test_source", (), {"topic": "other"}, name="other")
    other = Graph("other", outputs=[other_source])
    with pytest.raises(PlanError) as caught:
        render_text(plan_graph(other), graph)
    assert str(caught.value) == (
        f"the plan names node id {other_source.node_id[:12]}, which graph 'golden' does not "
        "hold; render a plan together with the graph it was made from"
    )


def test_short_ids_grow_until_they_tell_every_id_apart() -> None:
    shared = "f" * 12
    first, second = shared + "0" * 52, shared + "1" + "0" * 51
    assert short_ids([first, second]) == {first: shared + "0" * 12, second: shared + "1" + "0" * 11}
    assert short_ids([first]) == {first: shared}


def test_node_label_abbreviates_long_values() -> None:
    ticks = make_node("render_test_source", (), {"topic": "t"}, name="t")
    noisy = make_node("render_test_window", (ticks,), {"note": "x" * 40, "window": "2m"})
    assert node_label(noisy) == "render_test_window window=2m note=" + "x" * 29 + "..."
