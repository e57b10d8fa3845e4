"""Tag-query inputs: a node whose inputs are every running node with given tags.

``tag_query(tags=[...], match="all" | "any", schema=...)`` is a node without static inputs.
In a deployment the controller resolves it against the node registry at every submission and
removal: each running node whose tags match and whose output carries the query's ``schema``
is followed (subscribed to), one that leaves is let go. Its identity covers the query and the
schema only, never what it matched, so two graphs that declare one query share its actor.

Records keep their origin: the key of each record becomes ``<origin>/<key>``, where origin is
the name of the upstream node it came from, so a keyed operator downstream groups by both.
The inputs are merged by event time like those of any multi-input node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from streamdag.batch import Batch
from streamdag.errors import GraphError, ParamError, SchemaMismatchError
from streamdag.graph import Graph, Node, make_node
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import MAX_SPAN_NS, Param
from streamdag.schema import Schema

__all__ = [
    "DEFAULT_JOIN_GRACE_NS",
    "MATCHES",
    "ORIGIN_SEPARATOR",
    "TagQuery",
    "TagQueryDef",
    "TagQueryMerge",
    "label_origin",
    "refuse_in_runner",
    "tag_query",
]

#: How a query's tags must match a node's: every one of them, or at least one.
MATCHES = ("all", "any")
#: Default event time a newly followed node may hold the others back: 5 s.
DEFAULT_JOIN_GRACE_NS = 5_000_000_000
#: Between a record's origin and its own key in the key a tag query emits.
ORIGIN_SEPARATOR = b"/"


@dataclass(frozen=True)
class TagQuery:
    """A query over node tags and the schema a followed node's output must carry.

    >>> query = TagQuery(("crypto", "signal"), "all", Schema.of(value="float64"))
    >>> query.matches(["signal", "crypto", "fast"]), query.matches(["signal"])
    (True, False)
    >>> query.unfit(Schema.of(value="int64"))
    "its output's field 'value' is int64, the query's schema wants float64"
    """

    tags: tuple[str, ...]
    match: str
    schema: Schema
    #: Event time (ns) a node followed later may hold the others back before its first
    #: watermark.
    join_grace: int = 0

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> TagQuery:
        """The query of a ``tag_query`` node's params."""
        schema = params["schema"]
        assert isinstance(schema, Schema)
        return cls(tuple(params["tags"]), str(params["match"]), schema,
                   int(params["join_grace"]))

    def matches(self, tags: Iterable[str]) -> bool:
        """Whether a node with ``tags`` answers this query."""
        present = set(tags)
        wanted = (tag in present for tag in self.tags)
        return all(wanted) if self.match == "all" else any(wanted)

    def unfit(self, schema: Schema) -> str | None:
        """Why an output of ``schema`` cannot be followed (a field missing or of another
        type), or None when it carries every field of the query's schema."""
        for name, type_name in self.schema:
            if name not in schema:
                return (f"its output has no field {name!r} (it has {list(schema.names)}), "
                        "which the query's schema wants")
            if schema.type_of(name) != type_name:
                return (f"its output's field {name!r} is {schema.type_of(name)}, the query's "
                        f"schema wants {type_name}")
        return None

    def describe(self) -> str:
        """The query in words, for logs and errors."""
        return f"tags {self.match} of {list(self.tags)} with {self.schema}"


def label_origin(batch: Batch, origin: str, schema: Schema) -> Batch:
    """The fields of ``schema`` of ``batch``, each key prefixed with ``origin`` and ``/``.

    >>> batch = Batch.from_columns(ts=[1, 2], key=["BTC", "ETH"], value=[1.0, -1.0],
    ...                            extra=[0.0, 0.0])
    >>> [r["key"] for r in label_origin(batch, "momentum", Schema.of(value="float64"))
    ...  .to_records()]
    ['momentum/BTC', 'momentum/ETH']
    >>> label_origin(batch, "momentum", Schema.of(value="float64")).schema
    Schema(value: float64)
    """
    prefix = np.bytes_(origin.encode("utf-8") + ORIGIN_SEPARATOR)
    keys = np.char.add(prefix, batch.key) if len(batch) else batch.key
    return Batch(batch.ts, keys, {name: batch.columns[name] for name in schema.names})


class TagQueryMerge:
    """Logic of a tag query: the inputs' events, released in event-time order, as one batch.

    Events of equal time keep input order, then arrival order (a stable sort).
    """

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Every input's events in one batch, sorted by event time."""
        present = [batch for batch in inputs if len(batch)]
        if not present:
            return inputs[0] if inputs else Batch(np.empty(0, np.int64), np.empty(0, "S1"))
        return Batch.concat(present).sorted_by_time()

    def on_watermark(self, watermark: int) -> Batch | None:
        """A merge holds no windows."""
        return None

    def snapshot(self) -> bytes:
        """A merge has no state of its own (held events are the aligner's)."""
        return b""


@register
class TagQueryDef(OperatorDef):
    """Every running node whose tags match, merged by event time, keys labelled by origin."""

    type_name: ClassVar[str] = "tag_query"
    arity: ClassVar[int | None] = 0
    dynamic_inputs: ClassVar[bool] = True
    summary: ClassVar[str] = "follows every running node with given tags"
    handles_events: ClassVar[str] = (
        "merges what its followed nodes emit and does not bucket events by interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("tags", "str_set", doc="tags a followed node carries"),
        Param("match", "str", default="all", choices=MATCHES,
              doc="'all': a node carries every tag; 'any': at least one"),
        Param("schema", "schema", doc="fields every followed node's output must carry"),
        Param("join_grace", "duration", default=DEFAULT_JOIN_GRACE_NS, maximum=MAX_SPAN_NS,
              doc="event time a node that joins may hold the others back before its first "
                  "watermark"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The query's schema: what it keeps of every followed node's output."""
        schema = params["schema"]
        assert isinstance(schema, Schema)
        if not params["tags"]:
            raise ParamError("a tag query needs at least one tag, e.g. tags=['signal']")
        if not len(schema):
            raise SchemaMismatchError(
                "a tag query needs at least one field in its schema, e.g. "
                "schema={'value': 'float64'}: the fields it keeps of every node it follows")
        return schema

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A merge; it keeps no state of its own."""
        return TagQueryMerge()


def tag_query(
    tags: Iterable[str],
    *,
    schema: Mapping[str, str] | Schema,
    match: str = "all",
    join_grace: int | str = DEFAULT_JOIN_GRACE_NS,
    name: str | None = None,
) -> Node:
    """A node following every running node of the deployment whose tags match.

    ``match="all"`` follows nodes carrying every tag, ``"any"`` nodes carrying at least one;
    a node is followed only if its output has every field of ``schema`` (with that type).
    Inputs are merged by event time; a node followed later holds the others back until its
    first watermark, but by ``join_grace`` of event time at most (then its events older than
    what was released are late, and dropped).
    The query's node id covers the tags, match and schema, so graphs declaring it alike share
    it. Its records' keys are ``<origin node name>/<key>``.

    >>> signals = tag_query(["signal"], schema={"value": "float64"}, name="signals")
    >>> signals.output_schema, signals.params["tags"]
    (Schema(value: float64), ('signal',))
    >>> tag_query(["b", "a", "a"], schema={"value": "float64"}).node_id == tag_query(
    ...     ["a", "b"], schema={"value": "float64"}).node_id
    True
    """
    params = {"tags": tuple(tags) if not isinstance(tags, str) else tags, "match": match,
              "schema": schema, "join_grace": join_grace}
    return make_node("tag_query", (), params, name=name)


def refuse_in_runner(graph: Graph, runner: str) -> None:
    """Raise GraphError when ``graph`` has a tag query: only a deployment resolves one.

    >>> signals = tag_query(["signal"], schema={"value": "float64"}, name="signals")
    >>> try:
    ...     refuse_in_runner(Graph("g", outputs=[signals]), "LocalRunner")
    ... except GraphError as refusal:
    ...     print(str(refusal)[:72])
    graph 'g': tag query node(s) ['signals'] follow the running nodes of a d
    """
    queries = [node.name for node in graph.nodes if node.operator == TagQueryDef.type_name]
    if queries:
        raise GraphError(
            f"graph {graph.name!r}: tag query node(s) {queries} follow the running nodes of a "
            f"deployment, which a {runner} does not have; submit the graph to a deployment "
            "(Deployment.submit, streamdag submit), or give the node its inputs by name")
