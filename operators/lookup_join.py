"""Lookup join: each left event with the latest value of its key in a table (the right input).

The right input is a table's changelog, such as a compacted topic read by a source: every
record replaces its key's row. It is applied as it arrives, outside event-time order, so a
table that no longer changes (its watermark stalled) never holds the left stream back; the
left events are joined in event-time order with the rows present when they are released.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.key_slots import KeySlots
from operators.window_state import load_arrays, save_arrays
from streamdag.batch import Batch
from streamdag.errors import SchemaMismatchError
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["LookupJoinDef", "LookupJoinLogic"]


@njit(cache=True)
def _apply(slots: Any, values: Any, table: Any, present: Any) -> None:
    # Each record replaces its key's row: the last to arrive wins.
    for i in range(slots.shape[0]):
        table[slots[i]] = values[i]
        present[slots[i]] = True


@njit(cache=True)
def _look_up(slots: Any, table: Any, present: Any, out: Any) -> None:
    for i in range(slots.shape[0]):
        if present[slots[i]]:
            out[i] = table[slots[i]]
        else:
            out[i] = np.nan


class LookupJoinLogic:
    """Runtime logic of a ``lookup_join`` node: the table's rows by key slot."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        prefix = str(config.params["prefix"])
        self._fields = config.input_schemas[1].names
        self._output_names = [prefix + name for name in self._fields]
        if snapshot is None:
            self._keys = KeySlots()
            self._table = np.empty((0, len(self._fields)), dtype=np.float64)
            self._present = np.empty(0, dtype=np.bool_)
        else:
            arrays = load_arrays(snapshot)
            self._keys = KeySlots.restore(arrays["keys"].tobytes())
            self._table, self._present = arrays["table"], arrays["present"]

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Apply the table's new records, then join the left events with it."""
        left, changes = inputs
        if len(changes):
            slots = self._slots(changes.key)
            values = np.empty((len(changes), len(self._fields)), dtype=np.float64)
            for f, name in enumerate(self._fields):
                values[:, f] = changes.columns[name]
            _apply(slots, values, self._table, self._present)
        joined = np.empty((len(left), len(self._fields)), dtype=np.float64)
        if len(left):
            _look_up(self._slots(left.key), self._table, self._present, joined)
        columns = dict(left.columns)
        for f, name in enumerate(self._output_names):
            columns[name] = joined[:, f]
        return left.with_columns(columns)

    def on_watermark(self, watermark: int) -> Batch | None:
        """A lookup emits per left event; time passing emits nothing."""
        return None

    def snapshot(self) -> bytes:
        """Key table and every key's row."""
        known = len(self._keys)
        return save_arrays(keys=np.frombuffer(self._keys.snapshot(), dtype=np.uint8),
                           table=self._table[:known], present=self._present[:known])

    def _slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        slots = self._keys.slots(keys)
        if len(self._present) < self._keys.capacity:
            grown = np.full((self._keys.capacity, len(self._fields)), np.nan)
            grown[: len(self._table)] = self._table
            present = np.zeros(self._keys.capacity, dtype=np.bool_)
            present[: len(self._present)] = self._present
            self._table, self._present = grown, present
        return slots


@register
class LookupJoinDef(OperatorDef):
    """Each left event joined with its key's current row in a table (the right input).

    Inputs: (left, table). The table input is a changelog, e.g. a source reading a compacted
    topic: each record replaces its key's row (the last to arrive wins). It is applied as it
    arrives and its watermark holds nothing back, so the result for a left event depends on
    which records had arrived when the event was released (as in Flink's and Kafka Streams'
    stream-table joins); for a join by event time use ``asof_join``. Output: the left fields,
    then the table's fields renamed ``prefix + name`` as float64, NaN while the key has no row.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> trades = sd.source("trades", topic="t", key="symbol", schema={"size": "float64"})
    >>> limits = sd.source("limits", topic="limits", key="symbol", schema={"max": "float64"})
    >>> checked = trades.lookup_join(limits, prefix="limit_", name="checked")
    >>> logic = lookup("lookup_join").create(checked.config())
    >>> table = sd.Batch.from_columns(ts=[1, 2], key=["A", "A"], max=[10.0, 20.0])
    >>> left = sd.Batch.from_columns(ts=[5, 6], key=["A", "B"], size=[3.0, 4.0])
    >>> logic.process([left, table]).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 5, 'key': 'A', 'size': 3.0, 'limit_max': 20.0},
     {'ts': 6, 'key': 'B', 'size': 4.0, 'limit_max': nan}]
    """

    type_name: ClassVar[str] = "lookup_join"
    arity: ClassVar[int | None] = 2
    unaligned_inputs: ClassVar[tuple[int, ...]] = (1,)
    summary: ClassVar[str] = "join with the latest row of the key in a table read from a topic"
    handles_events: ClassVar[str] = (
        "joins each left event with its key's current table row and does not bucket events by "
        "interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("prefix", "str", default="right_", doc="prefix of the table's fields in the output"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """Left fields, then the table's fields prefixed, as float64."""
        left, table = inputs
        prefix = str(params["prefix"])
        fields = list(left.fields)
        for name in table.names:
            if prefix + name in left:
                raise SchemaMismatchError(
                    f"lookup_join: table field {name!r} becomes {prefix + name!r}, which the "
                    f"left input already carries (left fields: {list(left.names)}); pass "
                    "another prefix="
                )
            fields.append((prefix + name, "float64"))
        return Schema(tuple(fields))

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        return LookupJoinLogic(config, snapshot)
