"""sd.tag_query: identity covers the query and schema only; specs carry it; bad queries are
refused when built."""

from __future__ import annotations

import pytest

import streamdag as sd
from streamdag.errors import GraphError, ParamError, SchemaMismatchError
from streamdag.spec import graph_from_dict, graph_to_dict, loads


def _query(**overrides: object) -> sd.Node:
    arguments: dict[str, object] = {"tags": ["signal", "crypto"], "schema": {"value": "float64"},
                                    **overrides}
    return sd.tag_query(**arguments)  # type: ignore[arg-type]


def test_identity_is_the_query_and_schema_whatever_the_tag_order_or_name() -> None:
    base = _query(name="signals")
    assert _query(tags=["crypto", "signal", "signal"], name="other").node_id == base.node_id
    assert _query(match="any").node_id != base.node_id
    assert _query(tags=["signal"]).node_id != base.node_id
    assert _query(schema={"value": "float64", "size": "float64"}).node_id != base.node_id
    assert base.params["tags"] == ("crypto", "signal")
    assert base.inputs == () and base.role == "operator"


def test_a_spec_declares_the_same_query_node() -> None:
    portfolio = _query(name="signals").rolling_sum("value", window=3, name="total")
    graph = sd.Graph("portfolio", outputs=[portfolio.to_topic("portfolio.out", name="out")])
    data = graph_to_dict(graph)
    assert data["nodes"][0] == {"name": "signals", "type": "tag_query", "params": {
        "tags": ["crypto", "signal"], "schema": {"value": "float64"}}}
    assert graph_from_dict(data).node_ids == graph.node_ids
    text = """
name = "portfolio"
[[nodes]]
name = "signals"
type = "tag_query"
params = { tags = ["signal", "crypto"], match = "all", schema = { value = "float64" } }
[[nodes]]
name = "total"
type = "rolling_sum"
inputs = ["signals"]
params = { field = "value", window = 3 }
[[nodes]]
name = "out"
type = "kafka_sink"
inputs = ["total"]
params = { topic = "portfolio.out" }
"""
    assert loads(text, "toml").node_ids == graph.node_ids


def test_bad_queries_are_refused_when_built() -> None:
    with pytest.raises(ParamError, match="at least one tag"):
        _query(tags=[])
    with pytest.raises(ParamError, match=r"param 'match' got 'some'.*\['all', 'any'\]"):
        _query(match="some")
    with pytest.raises(SchemaMismatchError, match="at least one field"):
        _query(schema={})
    with pytest.raises(ParamError, match="param 'tags' got 'signal'"):
        sd.make_node("tag_query", (), {"tags": "signal", "schema": {"value": "float64"}})


def test_runners_refuse_a_tag_query_and_say_where_it_runs() -> None:
    from runtime.runners.local_runner import LocalRunner

    signals = _query(name="signals")
    graph = sd.Graph("portfolio", outputs=[signals.rolling_sum("value", window=2, name="sum")])
    with pytest.raises(GraphError, match=r"tag query node\(s\) \['signals'\] follow the running "
                       r"nodes of a deployment, which a LocalRunner does not have; submit"):
        LocalRunner().run(graph)
