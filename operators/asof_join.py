"""As-of join: each left event joined with the latest right event of its key at or before it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from operators.asof_ahead import AsofAheadLogic
from operators.latest_rows import LatestRowJoin, joined_schema
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["AsofJoinDef"]


@register
class AsofJoinDef(OperatorDef):
    """Each left event joined with the latest right event of the same key at or before it.

    Inputs: (left, right). Output: the left fields, then every right field renamed
    ``prefix + name`` as float64, NaN when the key has no right event at or before the left
    event's time, or (with ``tolerance`` > 0) only one older than ``tolerance``. A right event
    at exactly the left event's time matches; among right events with one timestamp the last
    to arrive wins. The last right event of every key is kept across batches and snapshots.

    ``direction="forward"`` matches the first right event at or after the left event (ties:
    the first to arrive), ``"nearest"`` the closer of the two (equally close: the backward
    one), within ``tolerance``, which must be > 0 for them. A left event waits until its match comes
    or the watermark shows none can, and left events come out in their own order, the node's
    output watermark held at the oldest waiting one (see ``operators.asof_ahead``).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> trades = sd.source("trades", topic="t", key="symbol", schema={"size": "float64"})
    >>> quotes = sd.source("quotes", topic="q", key="symbol", schema={"bid": "float64"})
    >>> joined = trades.asof_join(quotes, tolerance=5, name="joined")
    >>> logic = lookup("asof_join").create(joined.config())
    >>> left = sd.Batch.from_columns(ts=[2, 3, 9], key=["A", "B", "A"], size=[1.0, 2.0, 3.0])
    >>> right = sd.Batch.from_columns(ts=[1, 3], key=["A", "B"], bid=[99.5, 50.0])
    >>> logic.process([left, right]).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 2, 'key': 'A', 'size': 1.0, 'right_bid': 99.5},
     {'ts': 3, 'key': 'B', 'size': 2.0, 'right_bid': 50.0},
     {'ts': 9, 'key': 'A', 'size': 3.0, 'right_bid': nan}]
    """

    type_name: ClassVar[str] = "asof_join"
    arity: ClassVar[int | None] = 2
    summary: ClassVar[str] = "join with the latest right event of the key at or before each event"
    handles_events: ClassVar[str] = (
        "joins each left event with its key's latest right event and does not bucket events "
        "by interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("tolerance", "duration", default=0,
              doc="largest age of a matching right event; 0 = unlimited"),
        Param("prefix", "str", default="right_", doc="prefix of the right fields in the output"),
        Param("direction", "str", default="backward", choices=("backward", "forward", "nearest"),
              doc="match the latest right event at or before, the first at or after, or the "
                  "closer of the two"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """Left fields, then the right fields prefixed, as float64."""
        left, right = inputs
        if params["direction"] != "backward" and not params["tolerance"]:
            raise ParamError(
                f"asof_join: direction={params['direction']!r} needs a tolerance > 0: without "
                "one, a left event whose key gets no later right event would wait forever and "
                "hold the node's output watermark (and all downstream) with it; pass e.g. "
                "tolerance='5s'"
            )
        return joined_schema("asof_join", left, right, str(params["prefix"]), "right")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        if config.params["direction"] != "backward":
            return AsofAheadLogic(config, snapshot)
        return LatestRowJoin(config.input_schemas[1].names, str(config.params["prefix"]),
                             int(config.params["tolerance"]), snapshot)
