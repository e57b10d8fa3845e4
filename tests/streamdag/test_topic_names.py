"""Topic names follow Kafka's rules, and a graph never writes what it reads: checked when built."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

import streamdag as sd
from connectors.errors import TopicError
from connectors.topics import ensure_topics
from runtime.planning.planner import plan_graph, validate_graph
from streamdag.errors import ParamError, TopicLoopError, TopicNameError
from streamdag.graph import Graph, make_node
from streamdag.spec import graph_from_dict
from streamdag.topic_names import topic_name_problem, validate_topic_name

RULES = "1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-', other than '.' and '..'"
LONG = "t" * 300

BAD_NAMES = [
    ("", "a topic name cannot be empty"),
    (".", "'.' alone is not allowed as a topic name"),
    ("..", "'..' alone is not allowed as a topic name"),
    ("../../etc", "'/' is not allowed in a topic name"),
    ("prices📈", "'📈' is not allowed in a topic name"),
    ("a b:c", "' ', ':' are not allowed in a topic name"),
    (LONG, "it has 300 characters, over Kafka's limit of 249"),
]


@pytest.mark.parametrize("name", ["market.ticks", "a", "A-b_c.9", "t" * 249, "..a", "..."])
def test_legal_names_pass(name: str) -> None:
    assert topic_name_problem(name) is None
    assert validate_topic_name(name) == name


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_illegal_names_are_refused_with_the_reason(name: str, problem: str) -> None:
    assert topic_name_problem(name) == problem
    with pytest.raises(TopicNameError) as info:
        validate_topic_name(name)
    shown = repr(name) if len(name) < 40 else f"'{'t' * 39}...' (300 characters)"
    assert str(info.value) == f"topic {shown}: {problem}; a Kafka topic name is {RULES}"


def test_a_topic_name_that_is_not_text_is_refused() -> None:
    assert topic_name_problem(7) == "a topic name is a string, not int"


def _expected(node: str, name: str, problem: str) -> str:
    shown = repr(name) if len(name) < 100 else f"'{'t' * 99}...' (300 characters)"
    return (f"node {node!r}: param 'topic' got {shown} (str), {problem}; expected a Kafka "
            f"topic name ({RULES})")


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_sources_refuse_illegal_topics_when_built(name: str, problem: str) -> None:
    with pytest.raises(ParamError) as info:
        sd.source("ticks", topic=name, key="symbol", schema={"price": "float64"})
    assert str(info.value) == _expected("ticks", name, problem)


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_sinks_refuse_illegal_topics_when_built(name: str, problem: str) -> None:
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    with pytest.raises(ParamError) as sdk:
        ticks.to_topic(name, name="out")
    assert str(sdk.value) == _expected("out", name, problem)
    with pytest.raises(ParamError) as direct:
        make_node("kafka_sink", [ticks], {"topic": name}, name="out")
    assert str(direct.value) == _expected("out", name, problem)


def _spec(source_topic: str, sink_topic: str) -> dict[str, Any]:
    return {"name": "g", "nodes": [
        {"name": "ticks", "type": "kafka_source",
         "params": {"topic": source_topic, "schema": {"price": "float64"}, "key": "symbol"}},
        {"name": "out", "type": "kafka_sink", "inputs": ["ticks"],
         "params": {"topic": sink_topic}},
    ]}


@pytest.mark.parametrize(("name", "problem"), BAD_NAMES)
def test_specs_refuse_illegal_topics(name: str, problem: str) -> None:
    with pytest.raises(ParamError) as source:
        graph_from_dict(_spec(name, "out"))
    assert str(source.value) == _expected("ticks", name, problem)
    with pytest.raises(ParamError) as sink:
        graph_from_dict(_spec("ticks", name))
    assert str(sink.value) == _expected("out", name, problem)


LOOP = ("graph 'g': sink 'out' writes topic 'ticks', which source 'ticks' of the same graph "
        "reads, so the graph's output would come back as its input (a loop through Kafka); "
        "write another topic")


def test_a_sink_writing_the_topic_its_graph_reads_is_refused_when_built() -> None:
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    sma = ticks.rolling_mean("price", window=3, name="sma")
    with pytest.raises(TopicLoopError) as sdk:
        Graph("g", outputs=[sma.to_topic("ticks", name="out")])
    assert str(sdk.value) == LOOP
    with pytest.raises(TopicLoopError) as spec:
        graph_from_dict(_spec("ticks", "ticks"))
    assert str(spec.value) == LOOP


def test_a_sink_writing_what_another_branch_reads_is_refused_too() -> None:
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    quotes = sd.source("quotes", topic="quotes", key="symbol", schema={"bid": "float64"})
    with pytest.raises(TopicLoopError) as info:
        Graph("g", outputs=[ticks.to_topic("quotes", name="out"), quotes])
    assert str(info.value) == (
        "graph 'g': sink 'out' writes topic 'quotes', which source 'quotes' of the same graph "
        "reads, so the graph's output would come back as its input (a loop through Kafka); "
        "write another topic"
    )


def test_the_planner_refuses_a_loop_the_graph_check_did_not_see() -> None:
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    graph = Graph("g", outputs=[ticks.to_topic("out", name="out")])
    # A graph edited after it was built (as a deserializer could) skips Graph's own check.
    looped = dataclasses.replace(graph.nodes[1], params={**graph.nodes[1].params,
                                                         "topic": "ticks"})
    graph.nodes = (graph.nodes[0], looped)
    for check in (validate_graph, plan_graph):
        with pytest.raises(TopicLoopError) as info:
            check(graph)
        assert str(info.value) == LOOP


def test_ensure_topics_refuses_an_illegal_name_before_it_reaches_a_broker() -> None:
    with pytest.raises(TopicError) as info:
        # Nothing listens on port 9: the name is refused before any connection is tried.
        asyncio.run(ensure_topics("127.0.0.1:9", {"ok": 1, "../../etc": 1}))
    assert str(info.value) == (
        f"topic '../../etc' cannot be created: '/' is not allowed in a topic name; a Kafka "
        f"topic name is {RULES}"
    )
