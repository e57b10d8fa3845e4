"""Declarations of the graph's endpoints: Kafka-bound sources and sinks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from streamdag.batch import Batch
from streamdag.errors import SchemaMismatchError
from streamdag.graph import Node, make_node
from streamdag.operator import MissingPolicy, NodeConfig, OperatorDef, OperatorLogic, Role
from streamdag.operator_registry import register
from streamdag.params import OrderedMapParam, Param
from streamdag.record_format import SOURCE_TIME_UNIT, check_record_params
from streamdag.schema import Schema

__all__ = ["KafkaSinkDef", "KafkaSourceDef", "PassThrough", "source"]

_CODECS = ("json", "msgpack")
_TIME_UNITS = ("ns", "us", "ms", "s")


class PassThrough:
    """Logic of an endpoint node: batches pass unchanged (the connector does the I/O)."""

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Return the single input batch as it is."""
        return inputs[0]

    def on_watermark(self, watermark: int) -> Batch | None:
        """Endpoints hold no windows."""
        return None

    def snapshot(self) -> bytes:
        """Endpoints hold no state here; offsets live in the connector's own snapshot."""
        return b""


@register
class KafkaSourceDef(OperatorDef):
    """A stream read from a Kafka topic: its binding (topic, key, time, schema) is its identity."""

    type_name: ClassVar[str] = "kafka_source"
    needs_time_order: ClassVar[bool] = False  # it hands on what its connector reads
    role: ClassVar[Role] = "source"
    arity: ClassVar[int | None] = 0
    handles_events: ClassVar[str] = (
        "hands on events as they are read and does not bucket events by interval"
    )
    interval_hint: ClassVar[str] = (
        "bucket downstream instead, e.g. with ohlcv bars (.ohlcv(bar='1s')) or a user function "
        "built with sd.udf(interval=...)"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("topic", "topic", doc="Kafka topic to read"),
        Param("schema", "schema", doc="value fields and their types"),
        Param("key", "str", default="key", doc="payload field holding the entity key"),
        Param("time", "str", default="ts", doc="payload field holding event time; '' = record ts"),
        Param("time_unit", "str", default="ns", choices=_TIME_UNITS),
        Param("codec", "str", default="json", choices=_CODECS),
        Param("partitioned_by_key", "bool", default=False,
              doc="every record of a key is in one partition (the producer partitions by it): "
                  "keyed nodes release each partition's events by its own event time"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The declared value schema."""
        schema = params["schema"]
        assert isinstance(schema, Schema)
        if not len(schema):
            raise SchemaMismatchError("a source needs at least one value field in its schema")
        return schema

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Sources pass batches through; reading is the connector's job."""
        return PassThrough()


@register
class KafkaSinkDef(OperatorDef):
    """A stream written to a Kafka topic, keyed by the stream's key.

    Each record is ``{time_field, key_field, *fields}``, or with ``key_first``
    ``{key_field, time_field, *fields}`` (``streamdag.record_format``).

    >>> ticks = source("ticks", topic="ticks", key="symbol", time_unit="ms",
    ...                schema={"price": "float64"})
    >>> sink = ticks.to_topic("out", fields={"p": "price"}, key_field="symbol")
    >>> from streamdag.record_format import record_format_of
    >>> record_format_of(sink)
    RecordFormat(fields=(('p', 'price'),), key_field='symbol', time_field='ts', time_unit='ms',
                 key_first=False)
    """

    type_name: ClassVar[str] = "kafka_sink"
    needs_time_order: ClassVar[bool] = False  # it writes what it gets, as it gets it
    role: ClassVar[Role] = "sink"
    handles_events: ClassVar[str] = (
        "writes every event it receives and does not bucket events by interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("topic", "topic", doc="Kafka topic to write"),
        Param("codec", "str", default="json", choices=_CODECS),
        Param("shared", "bool", default=False,
              doc="other graphs may write this topic too, on purpose (each must say so)"),
        OrderedMapParam("fields", "str_map", default=(),
                        doc="record field -> stream field, in record order (default: all)"),
        Param("key_field", "str", default="key", doc="record field holding the key"),
        Param("time_field", "str", default="ts", doc="record field holding the event time"),
        Param("time_unit", "str", default=SOURCE_TIME_UNIT,
              choices=(SOURCE_TIME_UNIT, *_TIME_UNITS),
              doc="unit of the written event time; 'source': the unit the sources read"),
        Param("key_first", "bool", default=False,
              doc="write the key field before the time field (default: time first)"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """A sink's output is what it writes: its input schema; the record params must fit."""
        check_record_params(params, inputs[0])
        return inputs[0]

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Sinks pass batches through to their connector."""
        return PassThrough()


def source(
    name: str,
    *,
    topic: str,
    schema: Mapping[str, str] | Schema,
    key: str = "key",
    time: str = "ts",
    time_unit: str = "ns",
    codec: str = "json",
    partitioned_by_key: bool = False,
    interval: int | str | None = None,
    period: int | None = None,
    missing: MissingPolicy = "skip",
    tags: Iterable[str] = (),
) -> Node:
    """A source node bound to a Kafka topic.

    ``partitioned_by_key`` declares that the producer puts every record of a key in one
    partition (Kafka's default partitioner does, keyed by it): keyed nodes reading the source
    then release each partition's events by that partition's own event time, not the slowest
    partition's, and a record behind an earlier one of its partition is late.

    >>> ticks = source("ticks", topic="market.ticks", key="symbol", schema={"price": "float64"})
    >>> ticks.output_schema
    Schema(price: float64)
    """
    params = {
        "topic": topic,
        "schema": schema,
        "key": key,
        "time": time,
        "time_unit": time_unit,
        "codec": codec,
        "partitioned_by_key": partitioned_by_key,
    }
    return make_node(
        "kafka_source",
        (),
        params,
        name=name,
        interval=interval,
        period=period,
        missing=missing,
        tags=tags,
    )
