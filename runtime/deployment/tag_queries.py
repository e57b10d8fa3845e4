"""A deployment's tag queries: which running nodes each ``tag_query`` node follows.

The controller tells ``TagQueries`` every node a submission registers (``learn``) and calls
``apply`` after every submission and removal. ``resolve`` (pure) says, for one query, which
live nodes to follow and which to let go: a node is followed when its tags match, its output
carries the query's schema, following it makes no loop (it does not read the query's own
output) and no other followed node has its name (the origin its records are labelled with).
Every node that matches but is not followed is skipped with its reason, logged once.

``apply`` then carries it out on the node actors: a new upstream is connected to the query as
a new input before it is subscribed (from its next batch on); one let go is unsubscribed
first (what it sent is delivered), then the query unfollows its input, which stops counting
for watermarks at once. What each query follows is persisted in the state directory.

>>> from streamdag.schema import Schema
>>> from streamdag.tag_query import TagQuery
>>> signal = Schema.of(value="float64")
>>> known = {
...     "q": KnownNode("q", "signals", (), signal, (), TagQuery(("signal",), "all", signal)),
...     "a": KnownNode("a", "ema_a", ("signal",), signal, ()),
...     "b": KnownNode("b", "bars", ("signal",), Schema.of(close="float64"), ()),
... }
>>> plan = resolve("q", known, {"q", "a", "b"}, {}, {}, next_index=0)
>>> [(f.upstream, f.origin, f.index) for f in plan.follow], plan.skipped["b"][:31]
([('a', 'ema_a', 0)], "its output has no field 'value'")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.dataplane.messages import edge_id
from runtime.deployment.node_registry import RegistryFileError
from runtime.deployment.state_files import read_json, write_json_atomically
from streamdag.schema import Schema
from streamdag.tag_query import TagQuery

if TYPE_CHECKING:
    from runtime.deployment.node_actors import NodeActors
    from runtime.deployment.node_registry import NodeEntry
    from streamdag.graph import Graph

__all__ = ["Following", "KnownNode", "Resolution", "TagQueries", "resolve"]

_log = logging.getLogger("streamdag.controller")
#: Version of the persisted document; a different one is refused when loading.
_FORMAT = 1


@dataclass(frozen=True)
class KnownNode:
    """What tag queries need of a registered node: name, tags, output schema, static inputs.

    Tags are not part of a node's id: a node shared by several graphs carries the tags any
    of them gives it.
    """

    key: str
    name: str
    tags: tuple[str, ...]
    schema: Schema
    #: Registry keys of its static inputs.
    inputs: tuple[str, ...]
    #: Set when the node is itself a tag query.
    query: TagQuery | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        data: dict[str, Any] = {"key": self.key, "name": self.name, "tags": list(self.tags),
                                "schema": [list(pair) for pair in self.schema.fields],
                                "inputs": list(self.inputs)}
        if self.query is not None:
            data["query"] = {"tags": list(self.query.tags), "match": self.query.match,
                             "schema": [list(pair) for pair in self.query.schema.fields],
                             "join_grace": self.query.join_grace}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KnownNode:
        """The node ``to_dict`` wrote."""
        raw = data.get("query")
        query = None if raw is None else TagQuery(
            tuple(raw["tags"]), str(raw["match"]), Schema.from_mapping(raw["schema"]),
            int(raw["join_grace"]))
        return cls(str(data["key"]), str(data["name"]), tuple(data["tags"]),
                   Schema.from_mapping(data["schema"]), tuple(data["inputs"]), query)


@dataclass(frozen=True)
class Following:
    """One node a query follows: its key, the edge into the query, the input, the origin."""

    upstream: str
    edge: str
    index: int
    origin: str


@dataclass(frozen=True)
class Resolution:
    """What one query should do now: nodes to follow, ones to let go, and why others are not."""

    follow: tuple[Following, ...]
    drop: tuple[Following, ...]
    #: Key of every matching node that is not followed, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)


def resolve(
    query_key: str,
    known: Mapping[str, KnownNode],
    live: Iterable[str],
    current: Mapping[str, Following],
    all_followings: Mapping[str, Mapping[str, Following]],
    *,
    next_index: int,
) -> Resolution:
    """Which ``live`` nodes the query ``query_key`` follows from now on (see the module).

    ``current`` is what it follows now, by upstream key; ``all_followings`` what every query
    follows (to refuse loops through other queries); new inputs are numbered from
    ``next_index``, so an input index is never used twice.
    """
    query = known[query_key].query
    assert query is not None, f"node {query_key} is not a tag query"
    alive = set(live)
    # Step 1: followed nodes that are gone (removed, or their actor died) or no longer carry
    # the tags (the graph that tagged a shared node was removed) are let go.
    kept = {key: f for key, f in current.items()
            if key in alive and key in known and query.matches(known[key].tags)}
    drop = tuple(f for key, f in sorted(current.items()) if key not in kept)
    # Step 2: what reads the query's output, through static inputs and followings alike.
    readers = _downstream_of(query_key, known, all_followings)
    origins = {f.origin for f in kept.values()}
    follow: list[Following] = []
    skipped: dict[str, str] = {}
    candidates = sorted((node for key, node in known.items()
                         if key in alive and key != query_key and key not in kept
                         and query.matches(node.tags)), key=lambda n: (n.name, n.key))
    for node in candidates:
        # Step 3: a matching node is followed unless its schema, a loop or its name forbid.
        reason = query.unfit(node.schema)
        if reason is None and node.key in readers:
            reason = "it reads this query's output, so following it would make a loop"
        if reason is None and node.name in origins:
            reason = (f"another followed node is named {node.name!r}, and records are "
                      "labelled with the name of the node they come from; rename one")
        if reason is not None:
            skipped[node.key] = reason
            continue
        index = next_index + len(follow)
        follow.append(Following(node.key, edge_id(node.key, query_key, index), index, node.name))
        origins.add(node.name)
    return Resolution(tuple(follow), drop, skipped)


def _downstream_of(start: str, known: Mapping[str, KnownNode],
                   followings: Mapping[str, Mapping[str, Following]]) -> set[str]:
    readers: dict[str, set[str]] = {}
    for node in known.values():
        for upstream in node.inputs:
            readers.setdefault(upstream, set()).add(node.key)
    for query_key, followed in followings.items():
        for upstream in followed:
            readers.setdefault(upstream, set()).add(query_key)
    seen: set[str] = set()
    pending = [start]
    while pending:
        for reader in readers.get(pending.pop(), ()):
            if reader not in seen:
                seen.add(reader)
                pending.append(reader)
    return seen


@dataclass
class _QueryState:
    followed: dict[str, Following] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    next_index: int = 0


class TagQueries:
    """The tag queries of one deployment, what they follow, persisted at ``path``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._known: dict[str, KnownNode] = {}
        #: The tags each submission gives each node, by key then submission.
        self._tags: dict[str, dict[str, tuple[str, ...]]] = {}
        self._queries: dict[str, _QueryState] = {}
        document = read_json(path)
        if document is not None:
            if document.get("format") != _FORMAT:
                raise RegistryFileError(
                    f"{path} has format {document.get('format')!r}, expected {_FORMAT}; it was "
                    "written by another streamdag version: stop the deployment with that "
                    "version, or move the state directory away")
            self._known = {n["key"]: KnownNode.from_dict(n) for n in document["nodes"]}
            self._tags = {key: {graph: tuple(tags) for graph, tags in by_graph.items()}
                          for key, by_graph in document["tags"].items()}
            for key, raw in document["queries"].items():
                self._queries[key] = _QueryState(
                    {f["upstream"]: Following(f["upstream"], f["edge"], int(f["index"]),
                                              f["origin"]) for f in raw["followed"]},
                    dict(raw["skipped"]), int(raw["next_index"]))

    def learn(self, submission: str, graph: Graph, keys: Mapping[str, str]) -> None:
        """Remember the nodes of ``graph`` (submitted as ``submission``), each under
        ``keys[node_id]``, and the tags it gives them."""
        for node in graph.nodes:
            key = keys[node.node_id]
            self._tags.setdefault(key, {})[submission] = node.tags
            query = TagQuery.of(node.params) if node.operator == "tag_query" else None
            self._known.setdefault(key, KnownNode(
                key, node.name, node.tags, node.output_schema,
                tuple(keys[i.node_id] for i in node.inputs), query))
            if query is not None:
                self._queries.setdefault(key, _QueryState())

    async def apply(self, live: Iterable[str], registered: Mapping[str, NodeEntry],
                    actors: NodeActors) -> None:
        """Resolve every query against the ``live`` nodes and carry it out on ``actors``.

        ``registered`` are the registry's entries: a query no longer among them is being
        retired, and every node it followed stops sending to it first; a node carries the
        tags the graphs that use it give it.
        """
        alive, present = set(live), set(registered)
        self._tags = {key: {graph: tags for graph, tags in self._tags[key].items()
                            if graph in entry.graphs}
                      for key, entry in registered.items() if key in self._tags}
        known = {key: replace(node, tags=tuple(sorted(
                     {tag for tags in self._tags.get(key, {}).values() for tag in tags})))
                 for key, node in self._known.items()}
        # Step 1: retired queries let go of everything (before their actors are stopped).
        for key in [k for k in self._queries if k not in present]:
            state = self._queries.pop(key)
            await asyncio.gather(*(actors.unsubscribe(f.upstream, f.edge)
                                   for f in state.followed.values()))
            for following in state.followed.values():
                actors.origins.pop(following.edge, None)
        # Step 2: each query, in key order, follows what matches now and lets go of the rest.
        for key in sorted(self._queries):
            if key not in alive:
                continue
            state = self._queries[key]
            plan = resolve(key, known, alive, state.followed,
                           {k: s.followed for k, s in self._queries.items()},
                           next_index=state.next_index)
            for following in plan.drop:
                await self._let_go(actors, key, following)
                del state.followed[following.upstream]
            for following in plan.follow:
                failure = await self._follow(actors, key, following)
                if failure is None:
                    state.followed[following.upstream] = following
                else:  # tried again at the next resolution
                    plan.skipped[following.upstream] = failure
            state.next_index += len(plan.follow)
            for upstream, reason in plan.skipped.items():
                if state.skipped.get(upstream) != reason:
                    _log.warning("tag query %r skips node %r: %s", known[key].name,
                                 known[upstream].name, reason)
            state.skipped = plan.skipped
            # A query resumed from a snapshot may hold edges nothing sends on any more.
            handle = actors.handles.get(key)
            if handle is not None:
                with contextlib.suppress(Exception):  # a dead or hung query: its region recovers
                    await actors.within_call_timeout(
                        handle.keep_following.remote([f.edge for f in state.followed.values()]))
        # Step 3: nodes no longer registered are forgotten.
        self._known = {k: n for k, n in self._known.items() if k in present}
        self._save()

    async def _follow(self, actors: NodeActors, key: str, following: Following) -> str | None:
        """Follow one node; why it failed (and was undone), or None."""
        from runtime.deployment.lifecycle import failure_cause

        actors.origins[following.edge] = following.origin
        try:
            await actors.subscribe(following.edge, following.upstream, key, following.index)
        except Exception as exc:  # a node that just died: its region recovers or fails
            await self._let_go(actors, key, following)
            return f"following it failed: {failure_cause(exc)}"
        _log.info("tag query %r follows node %r", self._known[key].name, following.origin)
        return None

    async def _let_go(self, actors: NodeActors, key: str, following: Following) -> None:
        await actors.unsubscribe(following.upstream, following.edge)
        actors.origins.pop(following.edge, None)
        handle = actors.handles.get(key)
        if handle is not None:
            with contextlib.suppress(Exception):  # a dead query has nothing to let go
                await actors.within_call_timeout(handle.unfollow.remote(following.edge))
        _log.info("tag query %r lets go of node %r", self._known[key].name, following.origin)

    def follows(self) -> dict[str, tuple[tuple[str, int, str], ...]]:
        """What every query follows, as the registry holds it (``with_follows``)."""
        return {key: tuple((f.upstream, f.index, f.origin)
                           for f in sorted(state.followed.values(), key=lambda f: f.index))
                for key, state in self._queries.items()}

    def origins(self) -> dict[str, str]:
        """The origin of every edge into a query (``NodeActors.origins``)."""
        return {f.edge: f.origin for state in self._queries.values()
                for f in state.followed.values()}

    async def after_recovery(self, keys: Iterable[str], actors: NodeActors) -> None:
        """Restored queries among ``keys`` let go of what their checkpoint followed and the
        deployment no longer does (what it follows now was wired by the recovery)."""
        for key in keys:
            state = self._queries.get(key)
            handle = actors.handles.get(key)
            if state is not None and handle is not None:
                try:
                    await actors.within_call_timeout(
                        handle.keep_following.remote([f.edge for f in state.followed.values()]))
                except Exception:  # a dead or hung query is found by the next health check
                    _log.warning("restored tag query %r could not be told what it follows",
                                 self._known[key].name if key in self._known else key,
                                 exc_info=True)

    def describe(self, key: str) -> dict[str, Any] | None:
        """What the query of ``key`` follows and skips; None when ``key`` is no tag query."""
        state = self._queries.get(key)
        node = self._known.get(key)
        if state is None or node is None or node.query is None:
            return None
        names = {k: n.name for k, n in self._known.items()}
        return {
            "query": {"tags": list(node.query.tags), "match": node.query.match,
                      "schema": node.query.schema.to_dict(),
                      "join_grace": node.query.join_grace},
            "follows": [{"name": names.get(f.upstream, f.origin), "key": f.upstream,
                         "origin": f.origin}
                        for f in sorted(state.followed.values(), key=lambda f: f.origin)],
            "skipped": [{"name": names.get(k, k), "key": k, "reason": reason}
                        for k, reason in sorted(state.skipped.items(),
                                                key=lambda item: names.get(item[0], item[0]))],
        }

    def _save(self) -> None:
        write_json_atomically(self._path, {
            "format": _FORMAT,
            "nodes": [node.to_dict() for _, node in sorted(self._known.items())],
            "tags": {key: {graph: list(tags) for graph, tags in sorted(by_graph.items())}
                     for key, by_graph in sorted(self._tags.items())},
            "queries": {key: {"followed": [vars(f) for f in state.followed.values()],
                              "skipped": state.skipped, "next_index": state.next_index}
                        for key, state in sorted(self._queries.items())},
        })
