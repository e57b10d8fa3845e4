"""Lookup join by event time: each left event with its key's row in a table as of its time.

The right input is a table's changelog, such as a compacted topic read by a source: every
record replaces its key's row from its event time on. A left event is joined with the row of
the newest table record at or before it (Flink's event-time temporal join), so the output
depends only on the events, never on how the two inputs' arrivals interleaved: both inputs are
put in event-time order like any other join's. A table that no longer changes does not hold
the left stream back: its source goes idle once read to its end (``WatermarkStatus``), and an
idle input holds back no other input's events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from operators.latest_rows import LatestRowJoin, joined_schema
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["LookupJoinDef"]


@register
class LookupJoinDef(OperatorDef):
    """Each left event joined with its key's row in a table (the right input) as of its time.

    Inputs: (left, table). The table input is a changelog, e.g. a source reading a compacted
    topic: each record replaces its key's row from its event time on. A left event gets the row
    of its key's newest table record at or before its own time (equal times match; of records
    of one key and one time, the last to arrive wins), whatever the order the inputs arrived
    in. Output: the left fields, then the table's fields renamed ``prefix + name`` as float64,
    NaN while the key has no row yet.

    Version 2: event time. Version 1 applied the table as it arrived (the row present when a
    left event was released, as Kafka Streams' stream-table join), which depended on arrival
    order; the version is part of the node's id, so the two never share a node or a snapshot.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> trades = sd.source("trades", topic="t", key="symbol", schema={"size": "float64"})
    >>> limits = sd.source("limits", topic="limits", key="symbol", schema={"max": "float64"})
    >>> checked = trades.lookup_join(limits, prefix="limit_", name="checked")
    >>> logic = lookup("lookup_join").create(checked.config())
    >>> table = sd.Batch.from_columns(ts=[1, 6], key=["A", "A"], max=[10.0, 20.0])
    >>> left = sd.Batch.from_columns(ts=[5, 6, 7], key=["A", "A", "B"], size=[3.0, 4.0, 5.0])
    >>> logic.process([left, table]).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 5, 'key': 'A', 'size': 3.0, 'limit_max': 10.0},
     {'ts': 6, 'key': 'A', 'size': 4.0, 'limit_max': 20.0},
     {'ts': 7, 'key': 'B', 'size': 5.0, 'limit_max': nan}]
    """

    type_name: ClassVar[str] = "lookup_join"
    version: ClassVar[int] = 2
    arity: ClassVar[int | None] = 2
    summary: ClassVar[str] = "join with the key's row as of each event in a table read from a topic"
    handles_events: ClassVar[str] = (
        "joins each left event with its key's table row as of its time and does not bucket "
        "events by interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("prefix", "str", default="right_", doc="prefix of the table's fields in the output"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """Left fields, then the table's fields prefixed, as float64."""
        left, table = inputs
        return joined_schema("lookup_join", left, table, str(params["prefix"]), "table")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        return LatestRowJoin(config.input_schemas[1].names, str(config.params["prefix"]), 0,
                             snapshot)
