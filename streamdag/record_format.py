"""What a sink's records look like: which fields under which names, the key's and the event
time's names, and the event time's unit (by default the unit its sources read)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamdag.batch import Batch
from streamdag.errors import GraphError, SchemaMismatchError
from streamdag.schema import Schema

if TYPE_CHECKING:
    from streamdag.graph import Node

__all__ = [
    "DEFAULT_RECORD_FORMAT",
    "SOURCE_TIME_UNIT",
    "TIME_UNIT_NANOS",
    "RecordFormat",
    "check_record_params",
    "record_format_of",
]

#: Nanoseconds in one of each event-time unit a source reads or a sink writes.
TIME_UNIT_NANOS: Mapping[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000,
                                      "s": 1_000_000_000}
#: A sink's ``time_unit`` meaning "the unit the graph's sources read".
SOURCE_TIME_UNIT = "source"


@dataclass(frozen=True)
class RecordFormat:
    """The shape of a sink's records: ``{time_field, key_field, *fields}`` in that order
    (``{key_field, time_field, *fields}`` with ``key_first``).

    ``fields`` pairs each record field with the stream field it holds (empty: every stream
    field under its own name); the event time is written in ``time_unit``, rounded down.

    >>> shape = RecordFormat((("sma", "value"),), key_field="symbol", time_unit="ms")
    >>> shape.shape(Batch.from_columns(ts=[5_000_000], key=["a"], value=[1.5])).to_records()
    [{'ts': 5, 'key': 'a', 'sma': 1.5}]
    """

    fields: tuple[tuple[str, str], ...] = ()
    key_field: str = "key"
    time_field: str = "ts"
    time_unit: str = "ns"
    key_first: bool = False

    def shape(self, batch: Batch) -> Batch:
        """The batch as it is written: the chosen fields renamed, event time in its unit."""
        columns = (batch.columns if not self.fields
                   else {name: batch.columns[field] for name, field in self.fields})
        divisor = TIME_UNIT_NANOS[self.time_unit]
        ts = batch.ts if divisor == 1 else batch.ts // divisor
        return Batch(ts, batch.key, dict(columns), batch.partition, batch.offset)


#: The format of a sink given no options: ``{"ts" (ns), "key", <every field>}``.
DEFAULT_RECORD_FORMAT = RecordFormat()


def check_record_params(params: Mapping[str, Any], schema: Schema) -> None:
    """Raise SchemaMismatchError unless the sink's record params fit the stream it writes."""
    key_field, time_field = params["key_field"], params["time_field"]
    for label, name in (("key_field", key_field), ("time_field", time_field)):
        if not name.isidentifier():
            raise SchemaMismatchError(
                f"kafka_sink {label}={name!r} is not a valid field name; use letters, digits "
                "and _ (not starting with a digit)"
            )
    if key_field == time_field:
        raise SchemaMismatchError(
            f"kafka_sink key_field and time_field are both {key_field!r}; give them two names"
        )
    fields = params["fields"] or tuple((name, name) for name in schema.names)
    for name, field in fields:
        if not name.isidentifier():
            raise SchemaMismatchError(
                f"kafka_sink fields: record field {name!r} is not a valid field name; use "
                "letters, digits and _"
            )
        if field not in schema:
            raise SchemaMismatchError(
                f"kafka_sink fields: record field {name!r} takes stream field {field!r}, but "
                f"the stream carries {list(schema.names)}"
            )
        if name in (key_field, time_field):
            what, option = (("key", "key_field") if name == key_field
                            else ("event time", "time_field"))
            raise SchemaMismatchError(
                f"kafka_sink writes the {what} as {name!r}, and a field of that name too; "
                f"rename one, e.g. with fields={{'{name}_value': '{field}'}} or {option}=..."
            )


def record_format_of(sink: Node) -> RecordFormat:
    """The record format of a ``kafka_sink`` node, its ``source`` time unit resolved.

    That unit is the one every source upstream of the sink reads; sources reading different
    units leave it to the sink's ``time_unit`` (a GraphError says so).
    """
    params = sink.params
    unit = str(params["time_unit"])
    if unit == SOURCE_TIME_UNIT:
        units = _source_units(sink.inputs)
        if len(units) > 1:
            listed = ", ".join(f"{name} ({unit})" for unit, name in sorted(units.items()))
            raise GraphError(
                f"sink {sink.name!r} writes event time in its sources' unit, but its sources "
                f"read different units: {listed}; pass time_unit= one of "
                f"{list(TIME_UNIT_NANOS)} to the sink"
            )
        # A stream of no Kafka source (a test's) has its event time in ns.
        unit = next(iter(units), "ns")
    return RecordFormat(tuple(params["fields"]), str(params["key_field"]),
                        str(params["time_field"]), unit, bool(params["key_first"]))


def _source_units(inputs: Sequence[Node]) -> dict[str, str]:
    # Unit -> the name of one source reading it, over every source upstream of ``inputs``.
    units: dict[str, str] = {}
    pending, seen = list(inputs), set()
    while pending:
        node = pending.pop()
        if node.node_id in seen:
            continue
        seen.add(node.node_id)
        if node.operator == "kafka_source":
            units.setdefault(str(node.params["time_unit"]), node.name)
        pending.extend(node.inputs)
    return units
