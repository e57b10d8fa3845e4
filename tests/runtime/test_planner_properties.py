"""Property tests of the planner over random DAGs: valid, layered, ordered and deterministic."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.planning.planner import ExecutionPlan, diff_graph, plan_graph, validate_structure
from streamdag.errors import CycleError, DanglingInputError
from streamdag.graph import Graph, Node, make_node
from streamdag.testing import declaration_only_operator

_SETTINGS = settings(max_examples=60, deadline=None)


declaration_only_operator("planner_property_source", role="source", arity=0)
declaration_only_operator("planner_property_combine")


@dataclass(frozen=True)
class _Dag:
    """A random DAG: node i reads only nodes below i; names are unique and unordered."""

    inputs: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    #: A permutation of the node indexes: the order the nodes are listed in.
    listing: tuple[int, ...]

    def spec(self) -> dict[str, list[str]]:
        """The DAG as raw ``name -> input names`` data, listed in ``listing`` order."""
        return {self.names[i]: [self.names[j] for j in self.inputs[i]] for i in self.listing}

    def graph(self, reverse_outputs: bool = False) -> Graph:
        """The DAG built from test operators, with its sinks as outputs."""
        nodes: list[Node] = []
        for index, inputs in enumerate(self.inputs):
            operator = "planner_property_combine" if inputs else "planner_property_source"
            upstream = tuple(nodes[j] for j in inputs)
            nodes.append(make_node(operator, upstream, {"tag": index}, name=self.names[index]))
        consumed = {j for inputs in self.inputs for j in inputs}
        sinks = [nodes[i] for i in self.listing if i not in consumed]
        return Graph("random", outputs=sinks[::-1] if reverse_outputs else sinks)


@st.composite
def _dags(draw: st.DrawFn, max_nodes: int = 25) -> _Dag:
    size = draw(st.integers(min_value=1, max_value=max_nodes))
    inputs = tuple(
        tuple(sorted(draw(st.sets(st.integers(0, index - 1), max_size=3)))) if index else ()
        for index in range(size)
    )
    names = draw(
        st.lists(
            st.text("abcxyz_", min_size=1, max_size=6), min_size=size, max_size=size, unique=True
        )
    )
    listing = draw(st.permutations(range(size)))
    return _Dag(inputs=inputs, names=tuple(names), listing=tuple(listing))


def _ancestors_and_self(dag: _Dag, index: int) -> set[int]:
    found, pending = {index}, [index]
    while pending:
        for upstream in dag.inputs[pending.pop()]:
            if upstream not in found:
                found.add(upstream)
                pending.append(upstream)
    return found


def _generation_of(plan: ExecutionPlan) -> dict[str, int]:
    return {node_id: g for g, generation in enumerate(plan.generations) for node_id in generation}


@_SETTINGS
@given(_dags())
def test_validate_structure_returns_every_name_inputs_first(dag: _Dag) -> None:
    spec = dag.spec()
    order = validate_structure(spec)
    assert sorted(order) == sorted(spec)
    position = {name: index for index, name in enumerate(order)}
    for name, inputs in spec.items():
        assert all(position[upstream] < position[name] for upstream in inputs)
    assert validate_structure(dict(spec)) == order


@_SETTINGS
@given(_dags())
def test_validate_structure_keeps_a_topologically_listed_spec(dag: _Dag) -> None:
    pairs = zip(dag.names, dag.inputs, strict=True)
    in_index_order = {name: [dag.names[j] for j in inputs] for name, inputs in pairs}
    assert validate_structure(in_index_order) == list(in_index_order)


@_SETTINGS
@given(_dags(), st.data())
def test_validate_structure_names_a_real_cycle(dag: _Dag, data: st.DataObject) -> None:
    spec = dag.spec()
    # Feeding a node back into one of its ancestors (or itself) always closes a loop.
    consumer = data.draw(st.integers(0, len(dag.names) - 1))
    ancestor = data.draw(st.sampled_from(sorted(_ancestors_and_self(dag, consumer))))
    spec[dag.names[ancestor]] = [*spec[dag.names[ancestor]], dag.names[consumer]]
    with pytest.raises(CycleError) as caught:
        validate_structure(spec)
    cycle = caught.value.cycle
    assert cycle and len(set(cycle)) == len(cycle)
    for producer, reader in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        assert producer in spec[reader]


@_SETTINGS
@given(_dags(), st.data())
def test_validate_structure_finds_a_dangling_input(dag: _Dag, data: st.DataObject) -> None:
    spec = dag.spec()
    reader = data.draw(st.sampled_from(sorted(spec)))
    spec[reader] = [*spec[reader], "MISSING"]
    with pytest.raises(DanglingInputError, match=f"^node '{reader}' reads input 'MISSING', "):
        validate_structure(spec)


@_SETTINGS
@given(_dags())
def test_plans_are_longest_path_layers_in_both_modes(dag: _Dag) -> None:
    graph = dag.graph()
    batch = plan_graph(graph, mode="batch")
    streaming = plan_graph(graph, mode="streaming")
    forward, backward = _generation_of(batch), _generation_of(streaming)
    consumers: dict[str, list[str]] = {node.node_id: [] for node in graph.nodes}
    for node in graph.nodes:
        for upstream in node.inputs:
            consumers[upstream.node_id].append(node.node_id)
    for node in graph.nodes:
        inputs = [upstream.node_id for upstream in node.inputs]
        assert forward[node.node_id] == (1 + max(forward[i] for i in inputs) if inputs else 0)
        readers = consumers[node.node_id]
        assert backward[node.node_id] == (1 + max(backward[c] for c in readers) if readers else 0)
    assert sorted(batch.order) == sorted(graph.node_ids) == sorted(streaming.order)
    assert len(batch.generations) == len(streaming.generations)
    for plan in (batch, streaming):
        for generation in plan.generations:
            keys = [(plan.names[node_id], node_id) for node_id in generation]
            assert keys == sorted(keys)
        assert plan.max_parallelism == max(len(generation) for generation in plan.generations)
        plan.validate()


@_SETTINGS
@given(_dags())
def test_plans_do_not_depend_on_how_the_graph_was_listed(dag: _Dag) -> None:
    for mode in ("batch", "streaming"):
        first = plan_graph(dag.graph(), mode=mode)
        assert plan_graph(dag.graph(reverse_outputs=True), mode=mode) == first
        assert plan_graph(dag.graph(), mode=mode) == first


@_SETTINGS
@given(_dags(), st.data())
def test_diffs_create_new_nodes_after_their_new_consumers(dag: _Dag, data: st.DataObject) -> None:
    graph = dag.graph()
    existing = data.draw(st.sets(st.sampled_from(graph.node_ids)))
    diff = diff_graph(graph, existing)
    assert set(diff.new) == set(graph.node_ids) - existing
    assert set(diff.reused) == existing
    assert diff.reuse_ratio == len(existing) / len(graph.node_ids)
    assert diff.new == tuple(node_id for layer in diff.creation_order for node_id in layer)
    created_at = {node_id: index for index, node_id in enumerate(diff.new)}
    for producer, consumer in diff.plan.edges:
        if producer in created_at and consumer in created_at:
            assert created_at[consumer] < created_at[producer]
