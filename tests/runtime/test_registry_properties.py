"""The node registry against a pure model: refcounts, garbage collection, regions, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from runtime.deployment.node_registry import (
    NodeEntry,
    NodeRegistry,
    NodeRequest,
    RegistryFileError,
    acquire,
    instance_key,
    mark_alive,
    mark_dead,
    node_actor_name,
    release,
    retirement_order,
)
from runtime.deployment.state_files import load_registry, save_registry, write_json_atomically


def _key(index: int) -> str:
    return f"{index:02d}" + "ab" * 31


def _request(index: int, inputs: tuple[int, ...]) -> NodeRequest:
    key = _key(index)
    return NodeRequest(key, key, node_actor_name("prop", key), f"n{index}",
                       "rolling_mean" if inputs else "kafka_source",
                       "operator" if inputs else "source", tuple(_key(i) for i in inputs))


def _closure(universe: dict[int, tuple[int, ...]], outputs: list[int]) -> set[int]:
    seen: set[int] = set()
    stack = list(outputs)
    while stack:
        index = stack.pop()
        if index not in seen:
            seen.add(index)
            stack.extend(universe[index])
    return seen


class RegistryModel(RuleBasedStateMachine):
    """Random submit/remove sequences; the registry must agree with a dict of graph -> nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = NodeRegistry()
        self.model: dict[str, set[str]] = {}
        self.universe: dict[int, tuple[int, ...]] = {}
        self.graph_numbers = 0

    @initialize(data=st.data(), size=st.integers(min_value=1, max_value=10))
    def build_universe(self, data: st.DataObject, size: int) -> None:
        for index in range(size):
            upstream = st.lists(st.integers(0, index - 1), max_size=2) if index else st.just([])
            self.universe[index] = tuple(data.draw(upstream))

    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        outputs = data.draw(st.lists(st.sampled_from(sorted(self.universe)), min_size=1,
                                     max_size=3))
        members = _closure(self.universe, outputs)
        graph = f"g{self.graph_numbers}"
        self.graph_numbers += 1
        before = self.registry
        self.registry = acquire(
            self.registry, graph, [_request(i, self.universe[i]) for i in sorted(members)]
        )
        self.model[graph] = {_key(i) for i in members}
        for key, entry in before.entries.items():
            after = self.registry.entries[key]
            assert (after.actor_name, after.name, after.inputs) == (
                entry.actor_name, entry.name, entry.inputs)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        graph = data.draw(st.sampled_from(sorted(self.model)))
        before = self.registry
        self.registry, retired = release(self.registry, graph)
        removed = self.model.pop(graph)
        still_used = set().union(*self.model.values()) if self.model else set()
        assert set(retired) == removed - still_used
        assert not set(retired) & still_used  # a node still in use is never stopped
        position = {key: index for index, key in enumerate(retired)}
        for key in retired:
            for upstream in before.entries[key].inputs:
                if upstream in position:
                    assert position[upstream] < position[key]

    @rule(data=st.data())
    def release_unknown_graph(self, data: st.DataObject) -> None:
        before = self.registry
        self.registry, retired = release(self.registry, "never-submitted")
        assert retired == ()
        assert self.registry == before

    @invariant()
    def refcounts_match_the_model(self) -> None:
        used = set().union(*self.model.values()) if self.model else set()
        assert set(self.registry.entries) == used
        for key, entry in self.registry.entries.items():
            users = {graph for graph, keys in self.model.items() if key in keys}
            assert entry.graphs == users
            assert entry.refcount == len(users)

    @invariant()
    def regions_are_connected_components(self) -> None:
        union = nx.Graph()
        union.add_nodes_from(self.registry.entries)
        union.add_edges_from((key, upstream) for key, entry in self.registry.entries.items()
                             for upstream in entry.inputs)
        for component in nx.connected_components(union):
            regions = {self.registry.entries[key].region for key in component}
            assert regions == {f"region-{min(component)[:12]}"}

    @invariant()
    def document_round_trips(self) -> None:
        document = json.loads(json.dumps(self.registry.to_document("prop")))
        assert NodeRegistry.from_document(document) == self.registry


TestRegistryModel = RegistryModel.TestCase
TestRegistryModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


def _entry(key: str, inputs: tuple[str, ...] = (), graphs: tuple[str, ...] = ("g",)) -> NodeEntry:
    return NodeEntry(key, key, f"actor-{key}", key, "op", "operator", inputs, frozenset(graphs))


def test_dead_nodes_leave_the_live_set_until_marked_alive() -> None:
    registry = acquire(NodeRegistry(), "g1", [_request(0, ()), _request(1, (0,))])
    dead = mark_dead(registry, [_key(1)])
    assert dead.live_keys() == {_key(0)}
    assert dead.dead_keys() == {_key(1)}
    assert mark_alive(dead, [_key(1)]) == registry


def test_edges_name_each_input_and_consumer() -> None:
    registry = acquire(NodeRegistry(), "g", [_request(0, ()), _request(1, (0, 0))])
    edges_in = registry.entries[_key(1)].input_edges()
    assert [(upstream, index) for _, upstream, index in edges_in] == [(_key(0), 0), (_key(0), 1)]
    assert [edge for edge, _, _ in edges_in] == [f"{_key(0)[:16]}->{_key(1)[:16]}#0",
                                                  f"{_key(0)[:16]}->{_key(1)[:16]}#1"]
    assert registry.consumer_edges(_key(0)) == [(edge, _key(1), index)
                                                for edge, _, index in edges_in]


def test_retirement_order_puts_producers_first_and_refuses_cycles() -> None:
    entries = {"c": _entry("c", ("b",)), "b": _entry("b", ("a",)), "a": _entry("a")}
    assert retirement_order(entries, {"a", "b", "c"}) == ("a", "b", "c")
    looped = {"a": _entry("a", ("b",)), "b": _entry("b", ("a",))}
    with pytest.raises(RegistryFileError, match=r"read each other in a cycle"):
        retirement_order(looped, {"a", "b"})


def test_keys_are_shared_with_dedup_and_salted_per_graph_without() -> None:
    node_id = "f" * 64
    assert instance_key(node_id, "g1") == instance_key(node_id, "g2") == node_id
    salted = {instance_key(node_id, g, dedup=False) for g in ("g1", "g2")}
    assert len(salted) == 2
    assert all(len(key) == 64 and key != node_id for key in salted)


def test_registry_persists_atomically_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "registry.json"
    registry = acquire(NodeRegistry(), "g1", [_request(0, ()), _request(1, (0,))])
    registry = mark_dead(acquire(registry, "g2", [_request(0, ())]), [_key(1)])
    save_registry(path, registry, "prop")
    assert load_registry(path) == registry
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry.json"]
    assert load_registry(tmp_path / "missing.json") == NodeRegistry()


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    write_json_atomically(path, {"version": "old"})
    with pytest.raises(TypeError):
        write_json_atomically(path, {"version": object()})
    assert json.loads(path.read_text()) == {"version": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["registry.json"]


def test_unreadable_registry_files_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text("{not json")
    with pytest.raises(RegistryFileError, match=r"is not valid JSON .* move it away"):
        load_registry(path)
    path.write_text(json.dumps({"format": 99, "nodes": []}))
    with pytest.raises(RegistryFileError, match=r"format 99, expected 1"):
        load_registry(path)
