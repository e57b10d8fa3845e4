"""As-of join: each left event joined with the latest right event of its key at or before it."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numba import njit

from operators.asof_ahead import AsofAheadLogic
from operators.key_slots import KeySlots
from streamdag.batch import Batch
from streamdag.errors import ParamError, SchemaMismatchError
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["AsofJoinDef", "AsofJoinLogic"]

_NO_TIME = np.iinfo(np.int64).min


@njit(cache=True, inline="always")
def _remember(last_ts: Any, last_values: Any, slot: int, t: int, values: Any) -> None:
    last_ts[slot] = t
    for f in range(values.shape[0]):
        last_values[slot, f] = values[f]


@njit(cache=True)
def _asof_merge(
    left_ts: Any,
    left_slots: Any,
    right_ts: Any,
    right_slots: Any,
    right_values: Any,
    last_ts: Any,
    last_values: Any,
    tolerance: int,
    out: Any,
) -> None:
    # Both sides are ts-sorted; a right event is applied before any left event at its time,
    # so an equal timestamp matches. Rows left over on the right still update the state.
    j = 0
    right_count = right_ts.shape[0]
    for i in range(left_ts.shape[0]):
        t = left_ts[i]
        while j < right_count and right_ts[j] <= t:
            _remember(last_ts, last_values, right_slots[j], right_ts[j], right_values[j])
            j += 1
        slot = left_slots[i]
        matched = last_ts[slot]
        if matched == _NO_TIME or (tolerance > 0 and t - matched > tolerance):
            for f in range(out.shape[1]):
                out[i, f] = np.nan
        else:
            for f in range(out.shape[1]):
                out[i, f] = last_values[slot, f]
    while j < right_count:
        _remember(last_ts, last_values, right_slots[j], right_ts[j], right_values[j])
        j += 1


class AsofJoinLogic:
    """Runtime logic of an ``asof_join`` node: per key, the last right event's time and values."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._tolerance = int(config.params["tolerance"])
        self._prefix = str(config.params["prefix"])
        self._right_fields = config.input_schemas[1].names
        self._output_names = [self._prefix + name for name in self._right_fields]
        self._key_slots = KeySlots()
        self._last_ts = np.empty(0, dtype=np.int64)
        self._last_values = np.empty((0, len(self._right_fields)), dtype=np.float64)
        if snapshot is not None:
            arrays = np.load(io.BytesIO(snapshot))
            self._key_slots = KeySlots.restore(arrays["keys"].tobytes())
            self._last_ts = arrays["last_ts"]
            self._last_values = arrays["last_values"]
        self._grow_state()

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Join every left event with its key's latest right event at or before its time."""
        left, right = inputs[0].sorted_by_time(), inputs[1].sorted_by_time()
        left_slots = self._key_slots.slots(left.key)
        right_slots = self._key_slots.slots(right.key)
        self._grow_state()
        right_values = np.empty((len(right), len(self._right_fields)), dtype=np.float64)
        for f, name in enumerate(self._right_fields):
            right_values[:, f] = right.columns[name]
        joined = np.empty((len(left), len(self._right_fields)), dtype=np.float64)
        _asof_merge(
            left.ts, left_slots, right.ts, right_slots, right_values, self._last_ts,
            self._last_values, self._tolerance, joined,
        )
        columns = dict(left.columns)
        for f, name in enumerate(self._output_names):
            columns[name] = joined[:, f]
        return left.with_columns(columns)

    def on_watermark(self, watermark: int) -> Batch | None:
        """A join emits per left event; time passing emits nothing."""
        return None

    def snapshot(self) -> bytes:
        """Key table and each key's last right time and values."""
        known = len(self._key_slots)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            keys=np.frombuffer(self._key_slots.snapshot(), dtype=np.uint8),
            last_ts=self._last_ts[:known],
            last_values=self._last_values[:known],
        )
        return buffer.getvalue()

    def _grow_state(self) -> None:
        # Per-key state follows the key table's capacity, doubling with it.
        capacity = self._key_slots.capacity
        held = len(self._last_ts)
        if capacity <= held:
            return
        last_ts = np.full(capacity, _NO_TIME, dtype=np.int64)
        last_ts[:held] = self._last_ts
        last_values = np.full((capacity, self._last_values.shape[1]), np.nan, dtype=np.float64)
        last_values[:held] = self._last_values
        self._last_ts, self._last_values = last_ts, last_values


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
        prefix = str(params["prefix"])
        fields = list(left.fields)
        for name in right.names:
            renamed = prefix + name
            if renamed in left:
                raise SchemaMismatchError(
                    f"asof_join: right field {name!r} becomes {renamed!r}, which the left input "
                    f"already carries (left fields: {list(left.names)}); pass another prefix="
                )
            fields.append((renamed, "float64"))
        return Schema(tuple(fields))

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        if config.params["direction"] != "backward":
            return AsofAheadLogic(config, snapshot)
        return AsofJoinLogic(config, snapshot)
