"""What the event-time window logics share: keys, rows, emissions, the watermark, snapshots,
and an optional user function over each window's values."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from operators.window_early import EarlyPanes
from operators.window_state import (
    GROW_OUT,
    GROW_PANES,
    GROW_ROWS,
    NO_WATERMARK,
    Emissions,
    WindowKeys,
    WindowTable,
    late_params,
    load_arrays,
    save_arrays,
    window_schema,
)
from operators.window_values import ValueLog, WindowFunction
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic
from streamdag.params import MAX_EVENTS, MAX_SPAN_NS, Param
from streamdag.schema import Schema

__all__ = ["EventTimeWindowDef", "EventTimeWindowLogic"]


class EventTimeWindowLogic(ABC):
    """Runtime logic of an event-time window node; subclasses run their own fold kernel.

    ``late_dropped`` counts events later than the allowed lateness (dropped, or sent on as
    side records); it is part of the snapshot.
    """

    #: Cached rows per key slot in ``latest`` (a power of two).
    ways = 1

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        params = config.params
        self._field = str(params["field"])
        self._aggregations = tuple(params["agg"])
        self._lateness = int(params["lateness"])
        self._side = params["late"] == "side"
        self._early_every = int(params["early_every"])
        interval = int(params.get("early_interval", 0))
        self._function = WindowFunction(config)
        self._emissions = Emissions()
        arrays: Mapping[str, npt.NDArray[Any]] | None = None
        if snapshot is None:
            self._keys = WindowKeys()
            self._table = WindowTable()
            self._watermark, self._sequence, self.late_dropped = NO_WATERMARK, 0, 0
            self._latest = np.empty(0, dtype=np.int64)
        else:
            arrays = load_arrays(snapshot)
            self._keys = WindowKeys(arrays["keys"].tobytes())
            self._table = WindowTable.from_arrays(arrays)
            self._watermark, self._sequence, self.late_dropped = (
                int(v) for v in arrays["scalars"])
            self._latest = arrays["latest"].copy()
        self._log = ValueLog(arrays)
        self._early = self._early_panes(interval, arrays) if interval else None
        if self._early is not None:
            self._early.fit(len(self._table.meta))

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Fold events into their windows; emits early updates, revisions and side records."""
        batch = inputs[0]
        if not len(batch):
            return self._results()
        return self.fold(self.slots(batch.key), batch.ts,
                         np.ascontiguousarray(batch.columns[self._field], dtype=np.float64))

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """The slot of every key, making room for new keys' state."""
        slots = self._keys.slots(keys)
        if len(self._latest) < self._keys.count * self.ways:
            grown = np.full(2 * self._keys.count * self.ways, -1, dtype=np.int64)
            grown[: len(self._latest)] = self._latest
            self._latest = grown
        if self._early is not None:
            self._early.fit_keys(self._keys.count)
        return slots

    def fold(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
             values: npt.NDArray[np.float64]) -> Batch:
        """Fold events of known key slots (see ``slots``); what they emitted at once."""
        kept = np.zeros(len(slots), dtype=np.bool_)
        first = 0
        while first < len(slots):
            status, first, dropped = self._kernel(slots, ts, values, kept, first)
            self.late_dropped += dropped
            if status == GROW_ROWS:
                self._table.grow()
                if self._early is not None:
                    self._early.fit(len(self._table.meta))
            elif status == GROW_PANES and self._early is not None:
                self._early.panes.grow()
            elif status == GROW_OUT:
                self._emissions.reserve(len(self._emissions.meta))
        if self._function:
            self._log.add(slots, ts, self._sequence, values, kept)
        self._sequence += len(slots)
        return self._results()

    def on_watermark(self, watermark: int) -> Batch | None:
        """Emit every window whose end <= watermark and every early update by event time
        whose boundary <= watermark, by that time (ties: early updates first, each kind in the
        order the windows opened)."""
        passed, self._watermark = self._watermark, max(self._watermark, int(watermark))
        if self._watermark == passed:
            return None
        first = len(self._emissions)
        if self._early is not None:
            self._early.emit(passed, self._watermark, self._table, self._emissions)
        moved = self._table.close(passed, self._watermark, self._lateness, self._emissions,
                                  self._latest, emitted_from=first)
        if self._early is not None:
            self._early.settle(moved, self._watermark)
        results = self._results() if len(self._emissions) else None
        if self._function:
            self._log.forget_before(self._forget_before())
        return results

    def snapshot(self) -> bytes:
        """Keys, live windows, cached rows, watermark, arrivals, late count, logged values,
        and the prefixes and panes of early updates by event time."""
        scalars = np.array([self._watermark, self._sequence, self.late_dropped], dtype=np.int64)
        early = {} if self._early is None else self._early.arrays(len(self._table))
        return save_arrays(keys=self._keys.snapshot(), scalars=scalars, latest=self._latest,
                           **self._table.arrays(), **self._log.arrays(), **early)

    def _results(self) -> Batch:
        meta, acc = self._emissions.take()
        extra = {}
        if self._function:
            extra[self._function.output] = self._function.apply(self._log, meta, acc)
        return self._keys.results(meta, acc, self._aggregations, extra)

    def _early_panes(self, interval: int,
                     arrays: Mapping[str, npt.NDArray[Any]] | None) -> EarlyPanes:
        """The state of early updates by event time, fresh or from snapshot ``arrays``."""
        return EarlyPanes(interval, arrays)

    @abstractmethod
    def _kernel(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
                values: npt.NDArray[np.float64], kept: npt.NDArray[np.bool_],
                first: int) -> tuple[int, int, int]:
        """Run the fold kernel from event ``first``: (status, event to resume from, dropped)."""

    @abstractmethod
    def _forget_before(self) -> int:
        """Logged events before this time belong to no live window."""


class EventTimeWindowDef(OperatorDef):
    """What the event-time window declarations share: aggregations, lateness, early updates."""

    handles_late_events: ClassVar[bool] = True  # lateness=, late=
    #: The runtime logic the declaration builds.
    logic: ClassVar[type[EventTimeWindowLogic]]

    @staticmethod
    def window_params() -> tuple[Param, ...]:
        """The params every event-time window takes after its own size, step or gap."""
        return (
            Param("agg", "str_list",
                  doc="aggregations: sum, mean, min, max, count, first, last, std"),
            Param("field", "str", default="value", doc="field aggregated"),
            Param("early_every", "int", default=0, minimum=0, maximum=MAX_EVENTS,
                  doc="also emit a window's partial result every this many of its events; "
                      "0 = off"),
            # Not a size param: a short interval is what costs (the window's size, or a
            # session's gap, / it, bounded by MAX_EARLY_PER_WINDOW when the graph is built).
            Param("early_interval", "duration", default=0, minimum=0, maximum=MAX_SPAN_NS,
                  doc="also emit a window's partial result over its events before start + "
                      "k * this (sessions: k * this), when the watermark passes it; 0 = off"),
            *late_params(),
        )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """start, end, the aggregations (and function), revision, early, late."""
        return window_schema(cls.type_name, params, inputs)

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``."""
        return cls.logic(config, snapshot)
