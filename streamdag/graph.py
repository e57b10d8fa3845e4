"""The graph-building SDK: immutable nodes chained into streams, and named graphs of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, get_args

from streamdag.config import DELIVERIES
from streamdag.errors import (
    DuplicateNameError,
    DuplicateSinkTopicError,
    GraphError,
    ParamError,
    SchemaMismatchError,
    TopicLoopError,
    UnknownOperatorError,
)
from streamdag.identity import compute_node_id
from streamdag.operator import MissingPolicy, NodeConfig, OperatorDef
from streamdag.operator_registry import lookup
from streamdag.params import MAX_EVENTS, parse_duration, validate_params
from streamdag.record_format import record_format_of
from streamdag.schema import Schema

__all__ = ["Column", "Graph", "Node", "make_node"]

DurationLike = int | str
#: Aggregation names, or a function of a window's values, or a list of them.
WindowAggregations = str | Callable[..., Any] | Sequence[str | Callable[..., Any]]


@dataclass(frozen=True, eq=False)
class Node:
    """One operator instance in a graph; immutable, and its ``node_id`` is fixed at birth.

    Nodes are also streams: operator methods (``rolling_mean``, ``crossover``, ``to_topic``, …)
    return new downstream nodes and never change this one, so a stale id cannot exist.
    """

    name: str
    operator: str
    params: Mapping[str, Any]
    inputs: tuple[Node, ...]
    output_schema: Schema
    node_id: str
    code_hash: str
    interval: int | None = None
    period: int = 1
    missing: MissingPolicy = "skip"
    tags: tuple[str, ...] = ()
    shareable: bool = True
    function: Callable[..., Any] | None = field(default=None, repr=False)
    #: Actors its keys are sharded over (None: the graph's default); not part of its id.
    parallelism: int | None = None

    def __hash__(self) -> int:
        return hash(self.node_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.node_id == self.node_id

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.operator}, id={self.node_id[:12]})"

    @property
    def role(self) -> str:
        """``source``, ``operator`` or ``sink``."""
        return lookup(self.operator).role

    def config(self) -> NodeConfig:
        """The data a node's runtime logic is built from."""
        return NodeConfig(
            node_id=self.node_id,
            name=self.name,
            operator=self.operator,
            params=self.params,
            input_schemas=tuple(i.output_schema for i in self.inputs),
            output_schema=self.output_schema,
            interval=self.interval,
            period=self.period,
            missing=self.missing,
            tags=self.tags,
            function=self.function,
        )

    def with_options(
        self,
        *,
        name: str | None = None,
        interval: DurationLike | None = None,
        period: int | None = None,
        missing: MissingPolicy | None = None,
        tags: Iterable[str] | None = None,
        parallelism: int | None = None,
    ) -> Node:
        """A new node like this one with other options; its id (and only its) is recomputed.

        Downstream nodes built from this one keep pointing at this one: rebuild them from the
        returned node to carry a change downstream.
        """
        return make_node(
            self.operator,
            self.inputs,
            self.params,
            name=name if name is not None else self.name,
            interval=interval if interval is not None else self.interval,
            period=period if period is not None else self.period,
            missing=missing if missing is not None else self.missing,
            tags=tags if tags is not None else self.tags,
            function=self.function,
            code_hash=self.code_hash,
            shareable=self.shareable,
            parallelism=parallelism if parallelism is not None else self.parallelism,
        )

    # -- fluent operators ----------------------------------------------------------------
    def __getitem__(self, field_name: str) -> Column:
        """The column ``field_name`` of this stream, as an input of a user function."""
        if field_name not in self.output_schema:
            raise SchemaMismatchError(
                f"node {self.name!r} has no field {field_name!r}; "
                f"its fields are {list(self.output_schema.names)}"
            )
        return Column(self, field_name)

    def apply(self, operator: str, *others: Node, **params_and_options: Any) -> Node:
        """Chain any registered operator by type name, with ``others`` as further inputs."""
        options = _node_options(params_and_options)
        return make_node(operator, (self, *others), params_and_options, **options)

    def rolling_mean(self, field: str = "value", **kw: Any) -> Node:
        """Mean of ``field`` over the last ``window`` events or ``time_window`` per key."""
        return self.apply("rolling_mean", field=field, **kw)

    def rolling_sum(self, field: str = "value", **kw: Any) -> Node:
        """Sum of ``field`` over the last ``window`` events or ``time_window`` per key."""
        return self.apply("rolling_sum", field=field, **kw)

    def rolling_std(self, field: str = "value", **kw: Any) -> Node:
        """Sample standard deviation of ``field`` over a rolling window per key."""
        return self.apply("rolling_std", field=field, **kw)

    def rolling_min(self, field: str = "value", **kw: Any) -> Node:
        """Minimum of ``field`` over a rolling window per key."""
        return self.apply("rolling_min", field=field, **kw)

    def rolling_max(self, field: str = "value", **kw: Any) -> Node:
        """Maximum of ``field`` over a rolling window per key."""
        return self.apply("rolling_max", field=field, **kw)

    def ema(self, field: str = "value", **kw: Any) -> Node:
        """Exponential moving average of ``field`` per key (``span`` events)."""
        return self.apply("ema", field=field, **kw)

    def zscore(self, field: str = "value", **kw: Any) -> Node:
        """(x - rolling mean) / rolling std of ``field`` over ``window`` events per key."""
        return self.apply("zscore", field=field, **kw)

    def vwap(self, price: str = "price", size: str = "size", **kw: Any) -> Node:
        """Volume-weighted average price over the last ``window`` events per key."""
        return self.apply("vwap", price=price, size=size, **kw)

    def ohlcv(self, price: str = "price", size: str = "size", **kw: Any) -> Node:
        """Open/high/low/close/volume bars per key over ``bar`` intervals of event time."""
        return self.apply("ohlcv", price=price, size=size, **kw)

    def crossover(self, slow: Node, **kw: Any) -> Node:
        """+1 where this stream crosses above ``slow``, -1 where below, else 0, per event."""
        return self.apply("crossover", slow, **kw)

    def asof_join(self, right: Node, **kw: Any) -> Node:
        """Each event joined with the latest ``right`` event of its key at or before its time."""
        return self.apply("asof_join", right, **kw)

    def map(self, expression: str = "", output: str = "value", **kw: Any) -> Node:
        """A column computed by a vectorized expression over this stream's fields, or several
        named ones: ``map(mid="(bid + ask) / 2", spread="ask - bid")``."""
        options = _node_options(kw)
        named = {"expressions": kw} if kw else {}
        return self.apply("map", expression=expression, output=output, **named, **options)

    def filter(self, expression: str, **kw: Any) -> Node:
        """The events for which a vectorized boolean expression holds."""
        return self.apply("filter", expression=expression, **kw)

    def iterate(
        self, initial: Mapping[str, str], update: Mapping[str, str], output: str = "value",
        **kw: Any,
    ) -> Node:
        """A fixed-point block: vars start at ``initial`` and repeat ``update`` until converged."""
        return self.apply("iterate", initial=initial, update=update, output=output, **kw)

    def infer(self, model: Any, features: Sequence[str],
              outputs: Sequence[str] = ("prediction",), **kw: Any) -> Node:
        """Model outputs per event from ``features``, batched dynamically (``operators.inference``).

        ``model``: an ONNX (.onnx) or TorchScript (.pt) file, or a callable on numpy rows; ``kw``:
        max_batch, max_wait_ms, device ("auto", "cuda", "cpu"), dtype, shareable, name, tags.
        """
        from streamdag.inference import infer_node

        return infer_node(self, model, features, outputs, **kw)

    def tumbling_window(self, size: DurationLike, agg: WindowAggregations, field: str = "value",
                        **kw: Any) -> Node:
        """Aggregates ``agg`` of ``field`` per key over consecutive ``size`` windows.

        ``agg`` names aggregations (``"mean"``, ``["min", "max"]``) and may hold one function
        of a window's values returning a number: its result fills a column of its name.
        """
        return self._window("tumbling_window", agg, size=size, field=field, **kw)

    def hopping_window(self, size: DurationLike, step: DurationLike, agg: WindowAggregations,
                       field: str = "value", **kw: Any) -> Node:
        """Aggregates ``agg`` of ``field`` per key over ``size`` windows starting every ``step``."""
        return self._window("hopping_window", agg, size=size, step=step, field=field, **kw)

    def session_window(self, gap: DurationLike, agg: WindowAggregations, field: str = "value",
                       **kw: Any) -> Node:
        """Aggregates ``agg`` of ``field`` per key over sessions that a ``gap`` of time closes."""
        return self._window("session_window", agg, gap=gap, field=field, **kw)

    def _window(self, operator: str, agg: WindowAggregations, **kw: Any) -> Node:
        items = [agg] if isinstance(agg, str) or callable(agg) else list(agg)
        names = [item for item in items if isinstance(item, str)]
        functions = [item for item in items if not isinstance(item, str)]
        if not functions:
            return self.apply(operator, agg=names, **kw)
        from operators.window_values import window_function_code_hash  # registers operators

        display = kw.get("name", operator)
        output = getattr(functions[0], "__name__", "")
        if len(functions) > 1 or not output.isidentifier():
            raise GraphError(
                f"node {display!r}: agg= takes one function of a window's values, defined with "
                f"def (its name names the output column); got {functions!r}"
            )
        frozen, code_hash = window_function_code_hash(operator, functions[0])
        options = _node_options(kw)
        return make_node(operator, (self,), {**kw, "agg": names, "function_output": output},
                         function=frozen, code_hash=code_hash, **options)

    def count_window(self, count: int, agg: str | Sequence[str], field: str = "value",
                     **kw: Any) -> Node:
        """Aggregates ``agg`` of ``field`` per key over every ``count`` consecutive events."""
        aggregations = [agg] if isinstance(agg, str) else agg
        return self.apply("count_window", count=count, agg=aggregations, field=field, **kw)

    def lookup_join(self, table: Node, **kw: Any) -> Node:
        """Each event with its key's row in ``table`` (a changelog) as of the event's time."""
        return self.apply("lookup_join", table, **kw)

    def interval_join(self, right: Node, **kw: Any) -> Node:
        """Pairs of this stream's and ``right``'s events of a key within ``lower``/``upper``."""
        return self.apply("interval_join", right, **kw)

    def rolling_count(self, **kw: Any) -> Node:
        """Events per key over the last ``window`` events or ``time_window`` (int64)."""
        return self.apply("rolling_count", **kw)

    def running_count(self, **kw: Any) -> Node:
        """How many events each key has had so far, the event included (int64)."""
        return self.apply("running_count", **kw)

    def to_topic(self, topic: str, codec: str = "json", *, shared: bool = False,
                 **kw: Any) -> Node:
        """A sink writing this stream to Kafka ``topic``, keyed by the stream's key.

        ``topic`` must follow Kafka's naming rules and must not be one this graph reads. A
        deployment refuses a second graph writing the same topic unless every writer says
        ``shared=True``. Records are ``{time_field, key_field, *fields}``: ``fields`` maps
        record names to stream fields (default: all), ``time_unit`` defaults to the sources'
        (``streamdag.record_format``).
        """
        return self.apply("kafka_sink", topic=topic, codec=codec, shared=shared, **kw)


@dataclass(frozen=True)
class Column:
    """One field of a stream, given to a user function as its window input."""

    node: Node
    field: str


#: Keywords of an SDK call that are the node's options, not its operator's params.
_NODE_OPTIONS = ("name", "interval", "period", "missing", "tags", "parallelism")


def _node_options(keywords: dict[str, Any]) -> dict[str, Any]:
    """Take the node options out of ``keywords`` (what is left are params)."""
    return {k: keywords.pop(k) for k in _NODE_OPTIONS if k in keywords}


def make_node(
    operator: str,
    inputs: Sequence[Node],
    params: Mapping[str, Any],
    *,
    name: str | None = None,
    interval: DurationLike | None = None,
    period: int | None = None,
    missing: MissingPolicy = "skip",
    tags: Iterable[str] = (),
    function: Callable[..., Any] | None = None,
    code_hash: str | None = None,
    shareable: bool = True,
    parallelism: int | None = None,
) -> Node:
    """Validate and build a node: params, arity, schemas and options checked here, at build time."""
    display = name or operator
    try:
        definition = lookup(operator)
    except UnknownOperatorError as exc:
        where = f"node {name!r}" if name else f"a node reading {[node.name for node in inputs]}"
        raise UnknownOperatorError(f"{where}: {exc}") from None
    if definition.arity is not None and len(inputs) != definition.arity:
        raise GraphError(
            f"node {display!r}: operator {operator!r} takes {definition.arity} input(s), "
            f"got {len(inputs)}"
        )
    if definition.arity is None and not inputs and definition.role != "source":
        raise GraphError(f"node {display!r}: operator {operator!r} needs at least one input")
    canonical = validate_params(display, operator, definition.params, params)
    try:
        canonical = definition.resolve_params(canonical, function)
    except ParamError as exc:
        raise ParamError(f"node {display!r}: {exc}") from None
    input_schemas = [node.output_schema for node in inputs]
    try:
        output_schema = definition.output_schema(canonical, input_schemas)
    except (SchemaMismatchError, ParamError) as exc:
        message = str(exc)
        if message.startswith(f"node {display!r}"):
            raise
        raise type(exc)(f"node {display!r}: {message}") from None
    if missing not in get_args(MissingPolicy):
        raise GraphError(
            f"node {display!r}: missing-data policy {missing!r} is not one of "
            f"{list(get_args(MissingPolicy))}"
        )
    interval_ns = None if interval is None else parse_duration(interval)
    if interval_ns == 0:
        raise GraphError(f"node {display!r}: interval must be positive, got 0")
    _refuse_ignored_options(definition, display, interval_ns, missing)
    check_parallelism(f"node {display!r}", parallelism, definition.role)
    resolved_period = definition.history(canonical) if period is None else int(period)
    if resolved_period < 1:
        raise GraphError(f"node {display!r}: period must be at least 1, got {period!r}")
    if resolved_period > MAX_EVENTS:
        raise GraphError(
            f"node {display!r}: period {resolved_period} is over the maximum of {MAX_EVENTS} "
            "events per key and input; a node holds its period of history in memory for every "
            "key, so ask for less"
        )
    resolved_code_hash = code_hash if code_hash is not None else definition.code_hash()
    identity_params = {
        **canonical,
        "__interval__": interval_ns,
        "__period__": resolved_period,
        "__missing__": missing,
    }
    node_id = compute_node_id(
        operator,
        definition.version,
        resolved_code_hash,
        identity_params,
        output_schema,
        [node.node_id for node in inputs],
    )
    return Node(
        name=name or f"{operator}_{node_id[:8]}",
        operator=operator,
        params=MappingProxyType(dict(canonical)),
        inputs=tuple(inputs),
        output_schema=output_schema,
        node_id=node_id,
        code_hash=resolved_code_hash,
        interval=interval_ns,
        period=resolved_period,
        missing=missing,
        tags=tuple(tags),
        shareable=shareable and all(node.shareable for node in inputs),
        function=function,
        parallelism=parallelism,
    )


class Graph:
    """A named DAG: every node reachable upstream from ``outputs``.

    Checked when built: node names are unique, no two sinks write one topic and no sink writes
    a topic the graph reads. Cycles cannot be built with the SDK; specs loaded from files are
    checked by the planner's validation.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> g = sd.Graph("demo", outputs=[ticks.rolling_mean("price", window=3, name="sma3")])
    >>> [n.name for n in g.nodes]
    ['ticks', 'sma3']

    ``delivery`` is how its sinks publish once checkpoints are on: ``"exactly_once"`` (an
    epoch once its checkpoint is complete) or ``"at_least_once"`` (at once: lower latency,
    duplicates after a recovery); None takes ``checkpoint.delivery`` (exactly-once by
    default). It does not change any node's id.

    ``parallelism`` shards every operator node that sets none of its own over that many actors
    by a stable hash of the key (``Node.with_options(parallelism=...)`` sets one node's;
    sources take it only from their own option, sinks run as one). Not part of any id: a
    node's output per key is the same whatever its parallelism.
    """

    def __init__(self, name: str, outputs: Sequence[Node], *,
                 delivery: str | None = None, parallelism: int | None = None) -> None:
        if not name or not isinstance(name, str):
            raise GraphError(f"a graph needs a non-empty name, got {name!r}")
        if not outputs:
            raise GraphError(f"graph {name!r} has no outputs; pass outputs=[...] of nodes")
        if delivery not in (None, *DELIVERIES):
            raise GraphError(f"graph {name!r}: delivery {delivery!r} is unknown; expected one "
                             f"of {list(DELIVERIES)}")
        check_parallelism(f"graph {name!r}", parallelism, "operator")
        self.name = name
        #: "exactly_once", "at_least_once", or None (the configured checkpoint.delivery).
        self.delivery = delivery
        #: Shards of every operator node that sets no ``parallelism`` of its own (None: 1).
        self.parallelism = parallelism
        self.outputs: tuple[Node, ...] = tuple(outputs)
        self.nodes: tuple[Node, ...] = _topological(self.outputs)
        self._check_names()
        self._check_sink_topics()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

    @property
    def node_ids(self) -> tuple[str, ...]:
        """The ids of every node, in topological order."""
        return tuple(node.node_id for node in self.nodes)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"graph {self.name!r} has no node {name!r}")

    def parallelism_of(self, node: Node) -> int:
        """How many shards run ``node``: its own ``parallelism``, else the graph's default
        for operators (sources and sinks: 1)."""
        if node.parallelism is not None:
            return node.parallelism
        return self.parallelism or 1 if node.role == "operator" else 1

    @property
    def sources(self) -> tuple[Node, ...]:
        """Nodes without inputs."""
        return tuple(n for n in self.nodes if not n.inputs)

    @property
    def sinks(self) -> tuple[Node, ...]:
        """Nodes that nothing in the graph consumes."""
        consumed = {i.node_id for n in self.nodes for i in n.inputs}
        return tuple(n for n in self.nodes if n.node_id not in consumed)

    def _check_names(self) -> None:
        seen: dict[str, Node] = {}
        for node in self.nodes:
            other = seen.get(node.name)
            if other is not None and other.node_id != node.node_id:
                raise DuplicateNameError(
                    f"graph {self.name!r}: two different nodes are named {node.name!r} "
                    f"({other.operator} and {node.operator}); give each a unique name="
                )
            seen[node.name] = node

    def _check_sink_topics(self) -> None:
        topics: dict[str, str] = {}
        readers = {str(node.params["topic"]): node.name for node in self.nodes
                   if node.operator == "kafka_source"}
        for node in self.nodes:
            if node.operator != "kafka_sink":
                continue
            record_format_of(node)  # a time unit its sources leave open is refused now
            topic = str(node.params["topic"])
            if topic in topics and topics[topic] != node.name:
                raise DuplicateSinkTopicError(
                    f"graph {self.name!r}: sinks {topics[topic]!r} and {node.name!r} both "
                    f"write topic {topic!r}; give each sink its own topic"
                )
            topics[topic] = node.name
            if topic in readers:
                raise TopicLoopError(
                    f"graph {self.name!r}: sink {node.name!r} writes topic {topic!r}, which "
                    f"source {readers[topic]!r} of the same graph reads, so the graph's output "
                    "would come back as its input (a loop through Kafka); write another topic"
                )


def _topological(outputs: Sequence[Node]) -> tuple[Node, ...]:
    """Every node upstream of ``outputs``, inputs before consumers, in a stable order."""
    order: list[Node] = []
    seen: set[str] = set()
    stack: list[tuple[Node, bool]] = [(node, False) for node in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            if node.node_id not in seen:
                seen.add(node.node_id)
                order.append(node)
            continue
        if node.node_id in seen:
            continue
        stack.append((node, True))
        stack.extend((i, False) for i in reversed(node.inputs) if i.node_id not in seen)
    return tuple(order)

def _refuse_ignored_options(
    definition: type[OperatorDef], display: str, interval: int | None, missing: MissingPolicy
) -> None:
    """Raise GraphError for an interval or missing-data policy the node's kernel would ignore."""
    operator = definition.type_name
    if interval is not None and not definition.supports_interval:
        raise GraphError(
            f"node {display!r}: {operator} {definition.handles_events}, but interval={interval} "
            f"ns was given; remove interval= from this node and {definition.interval_hint}"
        )
    if missing not in definition.missing_policies:
        raise GraphError(
            f"node {display!r}: {operator} {definition.handles_events}, so it has no gap between "
            f"interval buckets to handle, but missing={missing!r} was given; remove missing= "
            "from this node (the default, 'skip', then applies) or set the policy on a node that "
            f"buckets events by interval, e.g. a user function built with sd.udf(interval=..., "
            f"missing={missing!r})"
        )
    if missing == "fail" and interval is None:
        raise GraphError(
            f"node {display!r}: missing='fail' fails on a gap between interval buckets, but this "
            "node has no interval, so it could never fail; give it one as well (e.g. "
            "sd.udf(interval='1s', missing='fail')) or remove missing="
        )


#: The most shards one node may have.
MAX_PARALLELISM = 256


def check_parallelism(where: str, parallelism: object, role: str) -> None:
    """Raise GraphError unless ``parallelism`` is None or an int in 1..MAX_PARALLELISM that a
    node of ``role`` can take.

    >>> try:
    ...     check_parallelism("sma", 0, "operator")
    ... except GraphError as error:
    ...     print(error)
    sma: parallelism must be an int from 1 to 256 (the actors its keys are sharded over), got 0
    """
    if parallelism is None:
        return
    if (not isinstance(parallelism, int) or isinstance(parallelism, bool)
            or not 1 <= parallelism <= MAX_PARALLELISM):
        raise GraphError(f"{where}: parallelism must be an int from 1 to {MAX_PARALLELISM} "
                         f"(the actors its keys are sharded over), got {parallelism!r}")
    if role == "sink" and parallelism > 1:
        raise GraphError(
            f"{where}: a sink runs as one actor (its writes are batched and its exactly-once "
            f"epochs are one sequence per key), but parallelism={parallelism} was given; remove "
            "parallelism= from the sink and set it on the nodes that feed it")
