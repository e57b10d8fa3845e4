"""OHLCV bars: per key open/high/low/close/volume over fixed intervals of event time.

Events accumulate into open bars keyed by (key slot, bar start) inside a numba hash table; a
bar is emitted once the watermark passes its end plus the allowed lateness. Events for a bar
already emitted are late and follow the node's ``late`` policy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.key_labels import KeyLabels
from operators.row_index import EMPTY, empty_index, find_row, index_rows
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic, require_fields
from streamdag.operator_registry import register
from streamdag.params import DAY_NS, MAX_SPAN_NS, Param
from streamdag.schema import Schema

__all__ = ["OHLCV_SCHEMA", "RECOMPUTE_RETAINED_BARS", "OhlcvDef", "OhlcvLogic"]

#: The output schema of every ``ohlcv`` node.
OHLCV_SCHEMA = Schema.of(
    open="float64",
    high="float64",
    low="float64",
    close="float64",
    volume="float64",
    count="int64",
    revision="int64",
    late="bool",
)

#: Under ``late="recompute"``, emitted bars stay correctable for this many bar lengths of event
#: time after they close; older bars are forgotten so state stays bounded over months of running.
RECOMPUTE_RETAINED_BARS = 100

_LATE_POLICIES = ("drop", "recompute", "side")
_NO_WATERMARK = int(np.iinfo(np.int64).min)
_OK, _GROW = 0, 1
# Column positions in the packed aggregate arrays.
_SLOT, _START = 0, 1
_OPEN_TS, _OPEN_SEQ, _CLOSE_TS, _CLOSE_SEQ = 0, 1, 2, 3
_OPEN, _HIGH, _LOW, _CLOSE, _VOLUME = 0, 1, 2, 3, 4
_COUNT, _REVISION = 0, 1


@njit(cache=True)
def _add_events(
    identity: Any,
    times: Any,
    prices: Any,
    counts: Any,
    index: Any,
    size: Any,
    slots: Any,
    starts: Any,
    ts: Any,
    sequence: Any,
    price: Any,
    volume: Any,
    first_event: int,
    new_revision: int,
    rows: Any,
) -> tuple[int, int]:
    # Returns (status, event to resume from); rows[i] receives the bar row of event i.
    for i in range(first_event, slots.shape[0]):
        slot = slots[i]
        start = starts[i]
        row, position = find_row(identity, index, slot, start)
        if row == EMPTY:
            row = size[0]
            if row >= identity.shape[0] or (row + 1) * 2 > index.shape[0]:
                return _GROW, i
            index[position] = row
            size[0] = row + 1
            identity[row, 0] = slot
            identity[row, 1] = start
            times[row, 0] = ts[i]
            times[row, 1] = sequence[i]
            times[row, 2] = ts[i]
            times[row, 3] = sequence[i]
            prices[row, 0] = price[i]
            prices[row, 1] = price[i]
            prices[row, 2] = price[i]
            prices[row, 3] = price[i]
            prices[row, 4] = volume[i]
            counts[row, 0] = 1
            counts[row, 1] = new_revision
        else:
            # Open is the earliest event by (ts, arrival); close the latest by (ts, arrival).
            if ts[i] < times[row, 0] or (ts[i] == times[row, 0] and sequence[i] < times[row, 1]):
                times[row, 0] = ts[i]
                times[row, 1] = sequence[i]
                prices[row, 0] = price[i]
            if ts[i] > times[row, 2] or (ts[i] == times[row, 2] and sequence[i] > times[row, 3]):
                times[row, 2] = ts[i]
                times[row, 3] = sequence[i]
                prices[row, 3] = price[i]
            prices[row, 1] = max(prices[row, 1], price[i])
            prices[row, 2] = min(prices[row, 2], price[i])
            prices[row, 4] += volume[i]
            counts[row, 0] += 1
        rows[i] = row
    return _OK, slots.shape[0]


class _Events(NamedTuple):
    """Events as the bar kernel takes them: key slot, bar start, ts, arrival, price, size."""

    slots: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    sequence: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    volume: npt.NDArray[np.float64]

    def take(self, rows: npt.NDArray[np.bool_]) -> _Events:
        """The events where ``rows`` holds, in order."""
        return _Events(self.slots[rows], self.starts[rows], self.ts[rows],
                       self.sequence[rows], self.price[rows], self.volume[rows])


class _BarRows:
    """Bars lifted out of a table: identity and aggregate arrays, one row per bar."""

    def __init__(
        self,
        identity: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        prices: npt.NDArray[np.float64],
        counts: npt.NDArray[np.int64],
    ) -> None:
        self.identity, self.times, self.prices, self.counts = identity, times, prices, counts

    def __len__(self) -> int:
        return len(self.identity)


class _BarTable:
    """Bars keyed by (key slot, bar start): packed aggregate arrays plus a hash index.

    Capacity doubles when full; removing bars compacts the arrays and rebuilds the index, so
    the table's cost follows the number of live bars, never the history.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.size = np.zeros(1, dtype=np.int64)
        self._allocate(max(8, 1 << (max(capacity, 1) - 1).bit_length()))

    def __len__(self) -> int:
        return int(self.size[0])

    @property
    def starts(self) -> npt.NDArray[np.int64]:
        """Bar starts of the live rows (a view)."""
        return self.identity[: len(self), _START]

    def add_events(self, events: _Events, new_revision: int) -> npt.NDArray[np.int64]:
        """Fold events into their bars (creating bars as needed); the bar row of each event."""
        rows = np.empty(len(events.slots), dtype=np.int64)
        first = 0
        while first < len(events.slots):
            status, first = _add_events(
                self.identity, self.times, self.prices, self.counts, self.index, self.size,
                *events, first, new_revision, rows,
            )
            if status == _GROW:
                self._resize(len(self.identity) * 2)
        return rows

    def rows(self, selection: npt.NDArray[Any]) -> _BarRows:
        """Copies of the rows at ``selection`` (indices or a mask over the live rows)."""
        n = len(self)
        return _BarRows(
            self.identity[:n][selection],
            self.times[:n][selection],
            self.prices[:n][selection],
            self.counts[:n][selection],
        )

    def remove(self, mask: npt.NDArray[np.bool_]) -> _BarRows:
        """Take out the live rows where ``mask`` holds; the rest are compacted and reindexed."""
        taken = self.rows(mask)
        kept = self.rows(~mask)
        self._replace(kept)
        return taken

    def append(self, bars: _BarRows) -> None:
        """Add whole bars whose identities are not in the table yet."""
        n, extra = len(self), len(bars)
        if not extra:
            return
        capacity = len(self.identity)
        while n + extra > capacity:
            capacity *= 2
        if capacity != len(self.identity):
            self._resize(capacity)
        self.identity[n : n + extra] = bars.identity
        self.times[n : n + extra] = bars.times
        self.prices[n : n + extra] = bars.prices
        self.counts[n : n + extra] = bars.counts
        self.size[0] = n + extra
        index_rows(self.identity, self.index, n, n + extra)

    def arrays(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        """The live rows as named arrays, for a snapshot."""
        n = len(self)
        return {
            f"{prefix}_identity": self.identity[:n],
            f"{prefix}_times": self.times[:n],
            f"{prefix}_prices": self.prices[:n],
            f"{prefix}_counts": self.counts[:n],
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> _BarTable:
        """Rebuild a table from ``arrays(prefix)``."""
        table = cls()
        table.append(
            _BarRows(
                arrays[f"{prefix}_identity"],
                arrays[f"{prefix}_times"],
                arrays[f"{prefix}_prices"],
                arrays[f"{prefix}_counts"],
            )
        )
        return table

    def _replace(self, bars: _BarRows) -> None:
        self.size[0] = 0
        self.index[:] = EMPTY
        self.append(bars)

    def _resize(self, capacity: int) -> None:
        live = self.rows(np.arange(len(self)))
        self._allocate(capacity)
        self.append(live)

    def _allocate(self, capacity: int) -> None:
        # Empty arrays and index for ``capacity`` bars.
        self.identity = np.zeros((capacity, 2), dtype=np.int64)
        self.times = np.zeros((capacity, 4), dtype=np.int64)
        self.prices = np.zeros((capacity, 5), dtype=np.float64)
        self.counts = np.zeros((capacity, 2), dtype=np.int64)
        self.index = empty_index(capacity)
        self.size[0] = 0


class OhlcvLogic:
    """Runtime logic of an ``ohlcv`` node: open bars, emitted bars for recompute, counters.

    ``late_dropped`` counts the late events dropped so far (policy ``drop``, or ``recompute``
    past the retention); it is part of the snapshot.
    """

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        params = config.params
        self._price_field = str(params["price"])
        self._size_field = str(params["size"])
        self._bar = int(params["bar"])
        self._lateness = int(params["lateness"])
        self._policy = str(params["late"])
        if snapshot is None:
            self._keys = KeyLabels()
            self._open = _BarTable()
            self._emitted = _BarTable()
            self._watermark = _NO_WATERMARK
            self._sequence = 0
            self.late_dropped = 0
        else:
            self._restore(snapshot)

    # -- OperatorLogic -------------------------------------------------------------------
    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Fold the batch into open bars; late events give side or recomputed bars, else none."""
        batch = inputs[0]
        n = len(batch)
        if not n:
            return Batch.empty(OHLCV_SCHEMA)
        slots = self._keys.slots(batch.key)
        ts = batch.ts
        starts = ts - np.mod(ts, self._bar)
        sequence = np.arange(self._sequence, self._sequence + n, dtype=np.int64)
        self._sequence += n
        price = batch.columns[self._price_field].astype(np.float64, copy=False)
        volume = batch.columns[self._size_field].astype(np.float64, copy=False)
        events = _Events(slots, starts, ts, sequence, price, volume)
        late = starts <= self._closed_threshold()
        if not late.any():
            self._open.add_events(events, 0)
            return Batch.empty(OHLCV_SCHEMA)
        self._open.add_events(events.take(~late), 0)
        if self._policy == "side":
            return self._side_bars(batch.key[late], starts[late], price[late], volume[late])
        if self._policy == "drop":
            self.late_dropped += int(late.sum())
            return Batch.empty(OHLCV_SCHEMA)
        return self._recompute(events.take(late))

    def on_watermark(self, watermark: int) -> Batch | None:
        """Emit, in (bar start, key) order, every open bar whose end + lateness <= watermark."""
        self._watermark = max(self._watermark, int(watermark))
        closed = self._open.starts <= self._closed_threshold()
        bars = self._open.remove(closed) if closed.any() else None
        if self._policy == "recompute":
            if bars is not None:
                self._emitted.append(bars)
            retired = self._emitted.starts <= self._retired_threshold()
            if retired.any():
                self._emitted.remove(retired)
        if bars is None:
            return None
        return self._bars_batch(bars)

    def snapshot(self) -> bytes:
        """Key table, open and emitted bars, watermark, arrival counter and late count."""
        arrays: dict[str, Any] = {
            "keys": self._keys.snapshot(),
            "scalars": np.array(
                [self._watermark, self._sequence, self.late_dropped], dtype=np.int64
            ),
            **self._open.arrays("open"),
            **self._emitted.arrays("emitted"),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    # -- internals -----------------------------------------------------------------------
    def _restore(self, snapshot: bytes) -> None:
        arrays = np.load(io.BytesIO(snapshot))
        self._keys = KeyLabels(arrays["keys"].tobytes())
        self._open = _BarTable.from_arrays(arrays, "open")
        self._emitted = _BarTable.from_arrays(arrays, "emitted")
        watermark, sequence, late_dropped = (int(v) for v in arrays["scalars"])
        self._watermark, self._sequence, self.late_dropped = watermark, sequence, late_dropped

    def _closed_threshold(self) -> int:
        # Bars starting at or before this have been emitted: start + bar + lateness <= watermark.
        if self._watermark == _NO_WATERMARK:
            return _NO_WATERMARK
        return max(_NO_WATERMARK, self._watermark - self._bar - self._lateness)

    def _retired_threshold(self) -> int:
        closed = self._closed_threshold()
        if closed == _NO_WATERMARK:
            return _NO_WATERMARK
        return max(_NO_WATERMARK, closed - RECOMPUTE_RETAINED_BARS * self._bar)

    def _recompute(self, events: _Events) -> Batch:
        retired = events.starts <= self._retired_threshold()
        if retired.any():
            self.late_dropped += int(retired.sum())
            events = events.take(~retired)
        if not len(events.slots):
            return Batch.empty(OHLCV_SCHEMA)
        # A bar first created by a late event starts at revision -1, so it is emitted as 0.
        touched = np.unique(self._emitted.add_events(events, -1))
        self._emitted.counts[touched, _REVISION] += 1
        return self._bars_batch(self._emitted.rows(touched))

    def _side_bars(
        self,
        keys: npt.NDArray[np.bytes_],
        starts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        volume: npt.NDArray[np.float64],
    ) -> Batch:
        order = np.argsort(starts, kind="stable")
        n = len(order)
        columns: dict[str, npt.NDArray[Any]] = {
            "open": price[order],
            "high": price[order],
            "low": price[order],
            "close": price[order],
            "volume": volume[order],
            "count": np.ones(n, dtype=np.int64),
            "revision": np.zeros(n, dtype=np.int64),
            "late": np.ones(n, dtype=np.bool_),
        }
        return Batch(starts[order], keys[order], columns)

    def _bars_batch(self, bars: _BarRows) -> Batch:
        keys = self._keys.by_slot[bars.identity[:, _SLOT]]
        starts = bars.identity[:, _START]
        order = np.lexsort((keys, starts))
        prices = bars.prices[order]
        counts = bars.counts[order]
        columns: dict[str, npt.NDArray[Any]] = {
            "open": prices[:, _OPEN],
            "high": prices[:, _HIGH],
            "low": prices[:, _LOW],
            "close": prices[:, _CLOSE],
            "volume": prices[:, _VOLUME],
            "count": counts[:, _COUNT],
            "revision": counts[:, _REVISION],
            "late": np.zeros(len(order), dtype=np.bool_),
        }
        return Batch(starts[order], keys[order], columns)


@register
class OhlcvDef(OperatorDef):
    """Open/high/low/close/volume bars per key over ``bar`` intervals of event time.

    A bar covers ``[start, start + bar)`` and is emitted by ``on_watermark`` once the watermark
    reaches ``start + bar + lateness``, in (bar start, key) order, with ts = bar start. Open is
    the price of the earliest event by event time (ties: first to arrive), close of the latest
    (ties: last to arrive). An event whose bar was already emitted is late: ``drop`` counts it
    in the logic's ``late_dropped``; ``side`` emits it at once as a one-event bar with
    ``late=True``; ``recompute`` emits the corrected bar at once with ``revision`` + 1 (a bar
    first opened by a late event comes out as revision 0). Recomputable bars are kept for
    ``RECOMPUTE_RETAINED_BARS`` bar lengths after they close; later events for them are dropped
    and counted.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="t", key="symbol",
    ...                   schema={"price": "float64", "size": "float64"})
    >>> bars = ticks.ohlcv(bar=10, name="bars")
    >>> logic = lookup("ohlcv").create(bars.config())
    >>> trades = sd.Batch.from_columns(ts=[1, 4, 7, 12], key=["A", "A", "A", "A"],
    ...                                price=[10.0, 12.0, 11.0, 13.0], size=[1.0, 2.0, 3.0, 1.0])
    >>> len(logic.process([trades]))
    0
    >>> logic.on_watermark(10).to_records()  # doctest: +NORMALIZE_WHITESPACE
    [{'ts': 0, 'key': 'A', 'open': 10.0, 'high': 12.0, 'low': 10.0, 'close': 11.0,
      'volume': 6.0, 'count': 3, 'revision': 0, 'late': False}]
    """

    type_name: ClassVar[str] = "ohlcv"
    handles_late_events: ClassVar[bool] = True  # the `late` param: drop, side, recompute
    summary: ClassVar[str] = "open/high/low/close/volume bars per key over event-time intervals"
    handles_events: ClassVar[str] = (
        "buckets events into bars of its own bar= length, not by a node interval, and emits a "
        "bar only where there were trades, as a Flink tumbling window does"
    )
    interval_hint: ClassVar[str] = "set the bar length with bar= instead, e.g. .ohlcv(bar='1s')"
    params: ClassVar[tuple[Param, ...]] = (
        Param("price", "str", default="price", doc="field holding the trade price"),
        Param("size", "str", default="size", doc="field holding the traded size"),
        Param("bar", "duration", minimum=1, maximum=MAX_SPAN_NS, size=True, doc="bar length"),
        # Bars wait out the lateness in memory: about keys x (lateness / bar) of them stay open.
        Param("lateness", "duration", default=0, minimum=0, maximum=DAY_NS, size=True,
              doc="wait after a bar's end before emitting"),
        Param("late", "str", default="drop", choices=_LATE_POLICIES,
              doc="what to do with events for an emitted bar"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """Always ``OHLCV_SCHEMA``; the input must carry numeric price and size fields."""
        require_fields("ohlcv", inputs[0], [params["price"], params["size"]],
                       types=("float64", "int64"))
        return OHLCV_SCHEMA

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        return OhlcvLogic(config, snapshot)
