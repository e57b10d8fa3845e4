"""Interval join: every pair of left and right events of a key with right.ts in
``[left.ts - lower, left.ts + upper]``.

Both inputs come in event-time order; each side keeps the events a later event of the other
side may still pair with, linked per key from newest to oldest. A pair is emitted when the
later of its two events is processed, with ts = the later of the two times (as Flink's
interval join), so the output never falls behind the watermark. One numba pass merges a
release of both sides; the watermark only forgets events no future event can pair with.
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
from streamdag.params import DAY_NS, Param
from streamdag.schema import Schema

__all__ = ["IntervalJoinDef", "IntervalJoinLogic"]

_NO_WATERMARK = int(np.iinfo(np.int64).min)
_OK, _GROW = 0, 1


@njit(cache=True, inline="always")
def _pair_with(ts: Any, base: int, prev: Any, newest: int, earliest: int, partner: int,
               out_mine: Any, out_other: Any, out_size: Any) -> bool:
    # Pair event ``partner`` (of this side) with the other side's events of its key from
    # ``newest`` back to time ``earliest``, written oldest first; False if they do not fit.
    count = 0
    other = newest
    while other >= base and ts[other - base] >= earliest:
        count += 1
        other = prev[other - base]
    k = out_size[0]
    if k + count > out_mine.shape[0]:
        return False
    other = newest
    for m in range(count):
        out_mine[k + count - 1 - m] = partner
        out_other[k + count - 1 - m] = other
        other = prev[other - base]
    out_size[0] = k + count
    return True


@njit(cache=True)
def _join(l_ts: Any, l_slot: Any, l_prev: Any, l_last: Any, l_base: int, r_ts: Any,
          r_slot: Any, r_prev: Any, r_last: Any, r_base: int, i: int, j: int, lower: int,
          upper: int, out_left: Any, out_right: Any, out_size: Any) -> tuple[int, int, int]:
    # Merge both sides' new events (from buffer positions i and j) in time order, a right
    # event before a left one of the same time; returns (status, i, j) to resume from.
    while i < l_ts.shape[0] or j < r_ts.shape[0]:
        if j < r_ts.shape[0] and (i >= l_ts.shape[0] or r_ts[j] <= l_ts[i]):
            slot = r_slot[j]
            # Left a pairs with this right b when a.ts - lower <= b.ts <= a.ts + upper.
            if not _pair_with(l_ts, l_base, l_prev, l_last[slot], r_ts[j] - upper, r_base + j,
                              out_right, out_left, out_size):
                return _GROW, i, j
            r_prev[j] = r_last[slot]
            r_last[slot] = r_base + j
            j += 1
        else:
            slot = l_slot[i]
            if not _pair_with(r_ts, r_base, r_prev, r_last[slot], l_ts[i] - lower, l_base + i,
                              out_left, out_right, out_size):
                return _GROW, i, j
            l_prev[i] = l_last[slot]
            l_last[slot] = l_base + i
            i += 1
    return _OK, i, j


class _Side:
    """One input's kept events (ts order), their key slots and per-key links, by absolute id."""

    def __init__(self, schema: Schema, arrays: Mapping[str, npt.NDArray[Any]] | None,
                 prefix: str) -> None:
        self.names = schema.names
        if arrays is None:
            self.events = Batch.empty(schema)
            self.slot = np.empty(0, dtype=np.int64)
            self.prev = np.empty(0, dtype=np.int64)
            self.last = np.empty(0, dtype=np.int64)
            self.base = 0
        else:
            self.events = Batch(arrays[f"{prefix}ts"], arrays[f"{prefix}key"],
                                {name: arrays[f"{prefix}field_{name}"] for name in self.names})
            self.slot, self.prev = arrays[f"{prefix}slot"], arrays[f"{prefix}prev"].copy()
            self.last = arrays[f"{prefix}last"].copy()
            self.base = int(arrays[f"{prefix}base"][0])

    def add(self, batch: Batch, slots: npt.NDArray[np.int64], keys: int) -> int:
        """Keep ``batch`` (its links are set as it is joined); the position of its first event."""
        first = len(self.events)
        if len(batch):
            self.events = Batch.concat([self.events, batch]) if first else batch
            self.slot = np.concatenate([self.slot, slots])
            self.prev = np.concatenate([self.prev, np.full(len(batch), -1, dtype=np.int64)])
        if len(self.last) < keys:
            last = np.full(2 * keys, -1, dtype=np.int64)
            last[: len(self.last)] = self.last
            self.last = last
        return first

    def forget_before(self, bound: int) -> None:
        """Forget the events with ts < ``bound`` (a prefix: they are in time order)."""
        cut = int(np.searchsorted(self.events.ts, bound, "left"))
        if cut:
            self.events = self.events.slice(cut, len(self.events))
            self.slot, self.prev = self.slot[cut:], self.prev[cut:]
            self.base += cut

    def rows(self, ids: npt.NDArray[np.int64]) -> Batch:
        """The kept events with absolute ids ``ids``."""
        return self.events.take(ids - self.base)

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        """The side as named arrays, for a snapshot."""
        return {f"{prefix}ts": self.events.ts, f"{prefix}key": self.events.key,
                **{f"{prefix}field_{n}": self.events.columns[n] for n in self.names},
                f"{prefix}slot": self.slot, f"{prefix}prev": self.prev,
                f"{prefix}last": self.last, f"{prefix}base": np.array([self.base])}


class IntervalJoinLogic:
    """Runtime logic of an ``interval_join`` node: both sides' kept events and links."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._lower, self._upper = int(config.params["lower"]), int(config.params["upper"])
        self._prefix = str(config.params["prefix"])
        self._schema = config.output_schema
        left_schema, right_schema = config.input_schemas
        arrays = None if snapshot is None else load_arrays(snapshot)
        self._keys = KeySlots() if arrays is None else KeySlots.restore(arrays["keys"].tobytes())
        self._left = _Side(left_schema, arrays, "left_")
        self._right = _Side(right_schema, arrays, "right_")
        self._pairs = np.empty((2, 1024), dtype=np.int64)

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Every new pair of a left and a right event of one key within the interval."""
        left, right = inputs[0].sorted_by_time(), inputs[1].sorted_by_time()
        left_slots, right_slots = self._keys.slots(left.key), self._keys.slots(right.key)
        l_first = self._left.add(left, left_slots, len(self._keys))
        r_first = self._right.add(right, right_slots, len(self._keys))
        size = np.zeros(1, dtype=np.int64)
        i, j = l_first, r_first
        while True:
            status, i, j = _join(
                self._left.events.ts, self._left.slot, self._left.prev, self._left.last,
                self._left.base, self._right.events.ts, self._right.slot, self._right.prev,
                self._right.last, self._right.base, i, j, self._lower, self._upper,
                self._pairs[0], self._pairs[1], size,
            )
            if status == _OK:
                break
            grown = np.empty((2, 2 * self._pairs.shape[1]), dtype=np.int64)
            grown[:, : int(size[0])] = self._pairs[:, : int(size[0])]
            self._pairs = grown
        n = int(size[0])
        return self._joined(self._pairs[0, :n], self._pairs[1, :n])

    def on_watermark(self, watermark: int) -> Batch | None:
        """Forget events no event at or after ``watermark`` can pair with; emits nothing."""
        self._left.forget_before(max(_NO_WATERMARK, int(watermark) - self._upper))
        self._right.forget_before(max(_NO_WATERMARK, int(watermark) - self._lower))
        return None

    def snapshot(self) -> bytes:
        """Key table and both sides' kept events with their links."""
        return save_arrays(keys=np.frombuffer(self._keys.snapshot(), dtype=np.uint8),
                           **self._left.arrays("left_"), **self._right.arrays("right_"))

    def _joined(self, left_ids: npt.NDArray[np.int64],
                right_ids: npt.NDArray[np.int64]) -> Batch:
        left, right = self._left.rows(left_ids), self._right.rows(right_ids)
        columns = dict(left.columns)
        columns.update({self._prefix + name: right.columns[name] for name in right.columns})
        columns["left_ts"], columns["right_ts"] = left.ts, right.ts
        return Batch(np.maximum(left.ts, right.ts), left.key,
                     {name: columns[name] for name in self._schema.names})


@register
class IntervalJoinDef(OperatorDef):
    """Every pair of a left and a right event of one key with right.ts - left.ts in
    ``[-lower, upper]``.

    Inputs: (left, right). Output: ts = the later of the two times, the left fields, the right
    fields renamed ``prefix + name``, then ``left_ts`` and ``right_ts``. A pair comes out when
    its later event is processed (a right event before a left one of the same time), pairs
    of one event oldest partner first. Each side keeps its events until the watermark passes
    their time + ``upper`` (left) or + ``lower`` (right), across snapshots.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> orders = sd.source("orders", topic="o", key="user", schema={"amount": "float64"})
    >>> clicks = sd.source("clicks", topic="c", key="user", schema={"page": "int64"})
    >>> joined = orders.interval_join(clicks, lower=5, upper=0, name="joined")
    >>> logic = lookup("interval_join").create(joined.config())
    >>> left = sd.Batch.from_columns(ts=[10, 20], key=["u", "u"], amount=[9.5, 3.0])
    >>> right = sd.Batch.from_columns(ts=[6, 8, 19], key=["u", "v", "u"], page=[1, 2, 3])
    >>> logic.process([left, right]).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 10, 'key': 'u', 'amount': 9.5, 'right_page': 1, 'left_ts': 10, 'right_ts': 6},
     {'ts': 20, 'key': 'u', 'amount': 3.0, 'right_page': 3, 'left_ts': 20, 'right_ts': 19}]
    """

    type_name: ClassVar[str] = "interval_join"
    arity: ClassVar[int | None] = 2
    summary: ClassVar[str] = "pairs of events of a key whose times are within an interval"
    handles_events: ClassVar[str] = (
        "pairs events within its own lower= and upper= bounds and does not bucket events by "
        "interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        # Each side keeps about rate x bound of events: the bounds size the node's memory.
        Param("lower", "duration", default=0, minimum=0, maximum=DAY_NS, size=True,
              doc="how far before a left event a right event may be"),
        Param("upper", "duration", default=0, minimum=0, maximum=DAY_NS, size=True,
              doc="how far after a left event a right event may be"),
        Param("prefix", "str", default="right_", doc="prefix of the right fields in the output"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """Left fields, the right fields prefixed, left_ts and right_ts."""
        left, right = inputs
        prefix = str(params["prefix"])
        fields = list(left.fields)
        taken = set(left.names)
        for name, type_name in [*((prefix + n, t) for n, t in right.fields),
                                ("left_ts", "int64"), ("right_ts", "int64")]:
            if name in taken:
                raise SchemaMismatchError(
                    f"interval_join: output field {name!r} would appear twice (left fields: "
                    f"{list(left.names)}, right fields prefixed {prefix!r}); pass another "
                    "prefix= or rename the left field upstream"
                )
            taken.add(name)
            fields.append((name, type_name))
        return Schema(tuple(fields))

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        return IntervalJoinLogic(config, snapshot)
