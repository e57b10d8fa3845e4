"""A tag query's worker: inputs that join and leave while it runs, merged by event time,
every record labelled with its origin; checked against a plain-Python reference."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from runtime.dataplane.messages import Envelope, Payload, Watermark
from runtime.dataplane.worker import NodeWorker
from runtime.deployment.node_registry import NodeEntry, RegistryFileError
from runtime.deployment.tag_queries import Following, KnownNode, TagQueries, resolve
from streamdag.batch import Batch
from streamdag.schema import Schema
from streamdag.tag_query import TagQuery

_SIGNAL = Schema.of(value="float64")


def _worker(join_grace: int = 5_000_000_000) -> NodeWorker:
    return NodeWorker(sd.tag_query(["signal"], schema={"value": "float64"},
                                   join_grace=join_grace).config())


def _signal(ts: list[int], keys: list[str], values: list[float]) -> Batch:
    return Batch.from_columns(ts=ts, key=keys, value=values, extra=[0.0] * len(ts))


def _records(payloads: list[Payload]) -> list[tuple[int, str, float]]:
    return [(r["ts"], r["key"], r["value"]) for p in payloads if isinstance(p, Batch)
            for r in p.to_records()]


def _watermarks(payloads: list[Payload]) -> list[int]:
    return [p.timestamp for p in payloads if isinstance(p, Watermark)]


def test_inputs_are_merged_by_event_time_and_labelled_with_their_origin() -> None:
    worker = _worker()
    assert worker.follow("ea", "fast") == 0
    assert worker.follow("eb", "slow") == 1
    assert worker.accept(Envelope("ea", 0, 0, _signal([1, 4], ["BTC", "BTC"], [1.0, 4.0]))) == []
    assert worker.accept(Envelope("eb", 0, 0, _signal([2, 3], ["BTC", "ETH"], [2.0, 3.0]))) == []
    assert worker.accept(Envelope("ea", 0, 1, Watermark(5))) == []  # slow has no watermark yet
    out = worker.accept(Envelope("eb", 0, 1, Watermark(4)))
    assert _records(out) == [(1, "fast/BTC", 1.0), (2, "slow/BTC", 2.0), (3, "slow/ETH", 3.0)]
    assert _watermarks(out) == [4]
    assert worker.origins == {"ea": "fast", "eb": "slow"}


def test_an_input_that_joins_holds_the_others_back_until_its_first_watermark() -> None:
    worker = _worker(join_grace=10)
    worker.follow("ea", "fast")
    worker.accept(Envelope("ea", 0, 0, _signal([1, 6], ["X", "X"], [1.0, 6.0])))
    assert _records(worker.accept(Envelope("ea", 0, 1, Watermark(3)))) == [(1, "fast/X", 1.0)]
    worker.follow("eb", "late")
    # Its events below what was released are late, and dropped; the others wait in order.
    assert worker.accept(Envelope("eb", 0, 0, _signal([2, 5], ["X", "X"], [2.0, 5.0]))) == []
    assert worker.stats.late_dropped == 1
    assert worker.accept(Envelope("ea", 0, 2, Watermark(7))) == []  # held for "late"
    out = worker.accept(Envelope("eb", 0, 1, Watermark(10)))
    assert _records(out) == [(5, "late/X", 5.0), (6, "fast/X", 6.0)]
    assert _watermarks(out) == [7]


def test_an_input_that_joins_and_sends_no_watermark_holds_the_others_for_its_grace_only() -> None:
    worker = _worker(join_grace=10)
    worker.follow("ea", "fast")
    worker.follow("eb", "silent")
    worker.accept(Envelope("ea", 0, 0, _signal([1, 12, 20], ["X"] * 3, [1.0, 12.0, 20.0])))
    assert worker.accept(Envelope("ea", 0, 1, Watermark(2))) == []  # silent holds until 12
    assert worker.accept(Envelope("ea", 0, 2, Watermark(11))) == []
    out = worker.accept(Envelope("ea", 0, 3, Watermark(13)))
    assert _records(out) == [(1, "fast/X", 1.0), (12, "fast/X", 12.0)]
    assert _watermarks(out) == [13]


def test_an_input_let_go_no_longer_holds_the_others_back() -> None:
    worker = _worker()
    worker.follow("ea", "fast")
    worker.follow("eb", "stale")
    worker.accept(Envelope("ea", 0, 0, _signal([1, 2], ["X", "X"], [1.0, 2.0])))
    worker.accept(Envelope("eb", 0, 0, _signal([1], ["X"], [9.0])))
    worker.accept(Envelope("eb", 0, 1, Watermark(1)))
    assert _records(worker.accept(Envelope("ea", 0, 1, Watermark(3)))) == []
    out = worker.unfollow("eb")
    assert _records(out) == [(1, "fast/X", 1.0), (1, "stale/X", 9.0), (2, "fast/X", 2.0)]
    assert _watermarks(out) == [3]
    assert worker.unfollow("eb") == []  # once is enough
    assert not worker.finished  # a tag query never ends because its inputs left
    assert worker.origins == {"ea": "fast"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 50), st.floats(-9, 9)), max_size=8),
                min_size=1, max_size=4),
       st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_the_merge_equals_a_plain_python_reference(
    inputs: list[list[tuple[int, float]]], cuts: list[int]
) -> None:
    """Every input's events, cut into batches arbitrarily, come out sorted by time (ties in
    input order), whatever the batching; a final watermark releases everything."""
    worker = _worker()
    out: list[Payload] = []
    for index in range(len(inputs)):
        worker.follow(f"e{index}", f"n{index}")
    for index, events in enumerate(inputs):
        seq, start = 0, 0
        for size in [*cuts, len(events)]:
            part = events[start:start + size]
            start += len(part)
            if part:
                out += worker.accept(Envelope(f"e{index}", 0, seq, _signal(
                    [t for t, _ in part], ["k"] * len(part), [v for _, v in part])))
                seq += 1
        out += worker.accept(Envelope(f"e{index}", 0, seq, Watermark(100)))
    reference = sorted(((t, f"n{i}/k", v, i) for i, events in enumerate(inputs)
                        for t, v in events), key=lambda r: (r[0], r[3]))
    assert _records(out) == [(t, key, v) for t, key, v, _ in reference]


def test_resolution_follows_matches_and_skips_misfits_loops_and_name_clashes() -> None:
    query = TagQuery(("signal",), "all", _SIGNAL)
    known = {
        "q": KnownNode("q", "signals", (), _SIGNAL, (), query),
        "a": KnownNode("a", "momentum", ("signal",), _SIGNAL, ()),
        "b": KnownNode("b", "bars", ("signal", "x"), Schema.of(close="float64"), ()),
        "c": KnownNode("c", "total", ("signal",), _SIGNAL, ("q",)),  # reads the query
        "d": KnownNode("d", "momentum", ("signal",), _SIGNAL, ()),  # a second "momentum"
        "e": KnownNode("e", "quiet", ("other",), _SIGNAL, ()),
    }
    plan = resolve("q", known, known, {}, {}, next_index=3)
    assert [(f.upstream, f.index, f.origin) for f in plan.follow] == [("a", 3, "momentum")]
    assert sorted(plan.skipped) == ["b", "c", "d"]
    assert "loop" in plan.skipped["c"] and "rename one" in plan.skipped["d"]
    # The one followed is gone: it is let go, and the other "momentum" is followed instead.
    current = {"a": plan.follow[0]}
    again = resolve("q", known, set(known) - {"a"}, current, {"q": current}, next_index=4)
    assert again.drop == (plan.follow[0],)
    assert [(f.upstream, f.index) for f in again.follow] == [("d", 4)]
    assert again.follow[0] == Following("d", again.follow[0].edge, 4, "momentum")


class _Method:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name = calls, name

    async def remote(self, argument: object) -> None:
        self.calls.append(f"{self.name} {argument}")


class _Handle:
    def __init__(self, calls: list[str]) -> None:
        self.unfollow = _Method(calls, "unfollow")
        self.keep_following = _Method(calls, "keep_following")


class _Actors:
    """What TagQueries calls on NodeActors, recorded."""

    def __init__(self, keys: list[str]) -> None:
        self.calls: list[str] = []
        self.origins: dict[str, str] = {}
        self.handles = {key: _Handle(self.calls) for key in keys}
        #: Origins whose actor refuses to be followed.
        self.refusing: set[str] = set()

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int) -> None:
        self.calls.append(f"follow {self.origins[edge]} #{index}")
        if self.origins[edge] in self.refusing:
            raise RuntimeError("the actor died")

    def unsubscribe(self, upstream: str, edge: str) -> asyncio.Future[None]:
        self.calls.append(f"unsubscribe {edge}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def within_call_timeout(self, ref: Any) -> Any:
        return await ref


async def test_a_shared_node_carries_the_tags_of_the_graphs_that_still_use_it(
    tmp_path: Path
) -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    tagged = ticks.ema("price", span=5, name="ema", tags=["signal"])
    plain = ticks.ema("price", span=5, name="ema")  # the same node, no tags
    signals = sd.tag_query(["signal"], schema={"value": "float64"}, name="signals")
    graphs = {"g1": sd.Graph("g1", outputs=[tagged]), "g2": sd.Graph("g2", outputs=[plain]),
              "p": sd.Graph("p", outputs=[signals])}
    queries = TagQueries(tmp_path / "tag_queries.json")
    for submission, graph in graphs.items():
        queries.learn(submission, graph, {n.node_id: n.node_id for n in graph.nodes})

    def entries(users: dict[str, set[str]]) -> dict[str, NodeEntry]:
        return {node.node_id: NodeEntry(node.node_id, node.node_id, "a", node.name, "op",
                                        "operator", (), frozenset(users[node.name]))
                for node in (ticks, tagged, signals)}

    actors = _Actors([ticks.node_id, tagged.node_id, signals.node_id])
    both = entries({"ticks": {"g1", "g2"}, "ema": {"g1", "g2"}, "signals": {"p"}})
    await queries.apply(both, both, actors)  # type: ignore[arg-type]
    edge = f"{tagged.node_id[:16]}->{signals.node_id[:16]}#0"
    assert actors.calls == ["follow ema #0", f"keep_following {[edge]}"]
    assert queries.follows() == {signals.node_id: ((tagged.node_id, 0, "ema"),)}
    # g1, which tagged it, is removed: the node runs on for g2, untagged, and is let go.
    untagged = entries({"ticks": {"g2"}, "ema": {"g2"}, "signals": {"p"}})
    await queries.apply(untagged, untagged, actors)  # type: ignore[arg-type]
    assert actors.calls[2:] == [f"unsubscribe {edge}", f"unfollow {edge}", "keep_following []"]
    assert queries.follows() == {signals.node_id: ()}
    # A controller that restarts reads back the same state.
    assert TagQueries(tmp_path / "tag_queries.json").follows() == queries.follows()
    # A node whose actor fails to be followed is skipped (and undone), and tried again later.
    actors.calls.clear()
    actors.refusing.add("ema")
    queries.learn("g1", graphs["g1"], {n.node_id: n.node_id for n in graphs["g1"].nodes})
    await queries.apply(both, both, actors)  # type: ignore[arg-type]
    edge = f"{tagged.node_id[:16]}->{signals.node_id[:16]}#1"
    assert actors.calls == ["follow ema #1", f"unsubscribe {edge}", f"unfollow {edge}",
                            "keep_following []"]
    described = queries.describe(signals.node_id)
    assert described is not None and described["follows"] == []
    assert described["skipped"][0]["reason"] == "following it failed: RuntimeError: the actor died"
    assert actors.origins == {}
    actors.refusing.clear()
    await queries.apply(both, both, actors)  # type: ignore[arg-type]
    assert queries.follows() == {signals.node_id: ((tagged.node_id, 2, "ema"),)}


def test_a_state_file_of_another_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "tag_queries.json").write_text('{"nodes": [], "queries": {}}')
    with pytest.raises(RegistryFileError, match=r"has format None, expected 1; it was written "
                       "by another streamdag version: stop the deployment"):
        TagQueries(tmp_path / "tag_queries.json")
