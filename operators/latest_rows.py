"""Each key's latest right row at or before a left event: the one kernel, state, snapshot and
output of the backward as-of join and the lookup join (and the output of the forward one).

Both sides arrive in event-time order (the runtime aligns them); a right event is applied before
any left event of its time, so an equal timestamp matches, and among right events of one key and
one time the last to arrive wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.key_slots import KeySlots
from operators.window_state import load_arrays, save_arrays
from streamdag.batch import Batch
from streamdag.errors import SchemaMismatchError
from streamdag.schema import Schema

__all__ = ["LatestRowJoin", "join_output", "joined_schema", "right_rows"]

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


def right_rows(right: Batch, fields: Sequence[str]) -> npt.NDArray[np.float64]:
    """The right input's ``fields`` as one float64 row per event."""
    rows = np.empty((len(right), len(fields)), dtype=np.float64)
    for f, name in enumerate(fields):
        rows[:, f] = right.columns[name]
    return rows


def join_output(left: Batch, names: Sequence[str], matches: npt.NDArray[np.float64]) -> Batch:
    """``left`` with one column per name from the rows ``matches`` (one row per left event)."""
    columns = dict(left.columns)
    for f, name in enumerate(names):
        columns[name] = matches[:, f]
    return left.with_columns(columns)


def joined_schema(operator: str, left: Schema, right: Schema, prefix: str, side: str) -> Schema:
    """The left fields, then the right ones renamed ``prefix + name`` as float64.

    Raises:
        SchemaMismatchError: a renamed field is one the left input already carries.
    """
    fields = list(left.fields)
    for name in right.names:
        renamed = prefix + name
        if renamed in left:
            raise SchemaMismatchError(
                f"{operator}: {side} field {name!r} becomes {renamed!r}, which the left input "
                f"already carries (left fields: {list(left.names)}); pass another prefix="
            )
        fields.append((renamed, "float64"))
    return Schema(tuple(fields))


class LatestRowJoin:
    """Per key, the time and values of its latest right event; each left event joined with it.

    ``tolerance`` > 0: a right event older than that matches nothing (NaN).

    >>> join = LatestRowJoin(["bid"], "q_", tolerance=0)
    >>> left = Batch.from_columns(ts=[2, 5], key=["A", "A"], size=[1.0, 2.0])
    >>> right = Batch.from_columns(ts=[1, 5, 7], key=["A", "A", "A"], bid=[9.0, 8.0, 7.0])
    >>> join.process([left, right]).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 2, 'key': 'A', 'size': 1.0, 'q_bid': 9.0},
     {'ts': 5, 'key': 'A', 'size': 2.0, 'q_bid': 8.0}]
    """

    def __init__(self, right_fields: Sequence[str], prefix: str, tolerance: int,
                 snapshot: bytes | None = None) -> None:
        self._tolerance = tolerance
        self._right_fields = list(right_fields)
        self._output_names = [prefix + name for name in self._right_fields]
        self._key_slots = KeySlots()
        self._last_ts = np.empty(0, dtype=np.int64)
        self._last_values = np.empty((0, len(self._right_fields)), dtype=np.float64)
        if snapshot is not None:
            arrays = load_arrays(snapshot)
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
        joined = np.empty((len(left), len(self._right_fields)), dtype=np.float64)
        _asof_merge(
            left.ts, left_slots, right.ts, right_slots, right_rows(right, self._right_fields),
            self._last_ts, self._last_values, self._tolerance, joined,
        )
        return join_output(left, self._output_names, joined)

    def on_watermark(self, watermark: int) -> Batch | None:
        """A join emits per left event; time passing emits nothing."""
        return None

    def snapshot(self) -> bytes:
        """Key table and each key's last right time and values."""
        known = len(self._key_slots)
        return save_arrays(
            keys=np.frombuffer(self._key_slots.snapshot(), dtype=np.uint8),
            last_ts=self._last_ts[:known],
            last_values=self._last_values[:known],
        )

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
