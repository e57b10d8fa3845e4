"""User-function nodes: a Python (or numba) function of per-input window views, per event.

The node keeps one NodeCache with a ring per input; for every event it hands the function, per
input, the last ``period`` values of that input's field for the event's key, oldest first. The
function is called once per ``process`` call, vectorized over all of the call's events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.errors import DataGapError, UserFunctionOutputError
from operators.keyed_state import float_column
from operators.node_cache import NodeCache
from streamdag.batch import Batch
from streamdag.code_freezing import FrozenFunction, describe_function, freeze_function
from streamdag.errors import GraphError, ParamError, SchemaMismatchError
from streamdag.operator import MissingPolicy, NodeConfig, OperatorDef, OperatorLogic, require_fields
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["UserFunctionDef", "UserFunctionLogic", "output_names"]


@njit(cache=True)
def _last_rows(
    event_ts: Any, event_slots: Any, row_ts: Any, row_slots: Any, latest: Any, out: Any
) -> None:
    # out[e] = the last row of the key of event e with ts <= the event's ts, or -1. `latest` is
    # per-slot scratch holding -1 on entry; it is reset on exit so it can be reused.
    r = 0
    rows = row_ts.shape[0]
    for e in range(event_ts.shape[0]):
        while r < rows and row_ts[r] <= event_ts[e]:
            latest[row_slots[r]] = r
            r += 1
        out[e] = latest[event_slots[e]]
    for k in range(rows):
        latest[row_slots[k]] = -1


def output_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The output fields of a user-function node: ``outputs``, or the one ``output``."""
    outputs, output = tuple(params.get("outputs", ())), str(params["output"])
    if outputs and output != "value":
        raise ParamError(
            f"user function got output={output!r} and outputs={list(outputs)}; give one "
            "field name as output, or several as outputs"
        )
    return outputs or (output,)


def _describe_result(result: Any) -> str:
    if isinstance(result, np.ndarray):
        return f"an array of shape {result.shape} and dtype {result.dtype}"
    return f"{type(result).__name__} {result!r}"[:200]


class UserFunctionLogic:
    """Runtime logic of a ``user_function`` node: its NodeCache and the user's function."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        if config.function is None:
            raise GraphError(
                f"node {config.name!r} has no Python function attached; user functions reach "
                "a cluster only through the SDK (sd.udf applied in the driver), never from a "
                "data-only graph spec"
            )
        self._name = config.name
        function = config.function
        if isinstance(function, FrozenFunction):
            # Copied again where it runs: values that travelled by pickle (numpy arrays come
            # back writeable) are read-only again, so no call can change what the next sees.
            function = freeze_function(function)
        self._function = function
        self._fields: tuple[str, ...] = tuple(config.params["fields"])
        self._outputs: tuple[str, ...] = output_names(config.params)
        self._period = config.period
        self._missing = config.missing
        if snapshot is None:
            self._cache = NodeCache(
                inputs=len(self._fields), period=config.period, features=1,
                interval=config.interval, missing=config.missing,
            )
        else:
            self._cache = NodeCache.restore(snapshot)
        self._latest_row = np.full(self._cache.key_capacity, -1, dtype=np.int64)

    # -- OperatorLogic -------------------------------------------------------------------
    def process(self, inputs: Sequence[Batch]) -> Batch:
        """One output per event whose windows are complete (or filled); the function runs once."""
        aligned = len(inputs) > 1
        prepared = [self._prepare(i, batch, aligned) for i, batch in enumerate(inputs)]
        if not aligned:
            return self._process_single(*prepared[0])
        return self._process_aligned(prepared)

    def on_watermark(self, watermark: int) -> Batch | None:
        """A user function emits per event; time passing emits nothing."""
        return None

    def snapshot(self) -> bytes:
        """The node's cache: every input's ring of values per key."""
        return self._cache.snapshot()

    # -- the two shapes of input ---------------------------------------------------------
    def _prepare(
        self, input_index: int, batch: Batch, aligned: bool
    ) -> tuple[Batch, npt.NDArray[np.int64]]:
        """The batch to process and its key slots.

        Without an interval, in time order. With one, in arrival order less its late events
        (older than their key's newest), dropped first so batching cannot change which; several
        inputs are then put in time order to align them, which keeps each key's order.
        """
        if not self._cache.interval:
            batch = batch.sorted_by_time()
            return batch, self._cache.slots(batch.key)
        slots = self._cache.slots(batch.key)
        on_time = self._cache.on_time(input_index, slots, batch.ts)
        if not bool(on_time.all()):
            batch, slots = batch.take(on_time), slots[on_time]
        if aligned and len(batch) > 1 and not bool(np.all(batch.ts[1:] >= batch.ts[:-1])):
            order = np.argsort(batch.ts, kind="stable")
            batch, slots = batch.take(order), slots[order]
        return batch, slots

    def _process_single(self, batch: Batch, slots: npt.NDArray[np.int64]) -> Batch:
        # Every row is an event; its window is the input's window right after the row.
        windows, filled, gap = self._append_windows(0, batch, slots)
        if gap < 0:
            keep, filled_windows = self._apply_missing([windows], [filled])
            return batch.take(keep).with_columns(self._call(filled_windows))
        # The events before the gap were processed as if one by one: they leave with the error.
        keep, filled_windows = self._apply_missing([windows[:gap]], [filled[:gap]])
        emitted = batch.take(np.flatnonzero(keep)).with_columns(self._call(filled_windows))
        raise self._gap_error(0, int(slots[gap]), int(batch.ts[gap]), emitted)

    def _process_aligned(self, prepared: list[tuple[Batch, npt.NDArray[np.int64]]]) -> Batch:
        # Events are the distinct (ts, key) pairs of all inputs, in time order with ties in
        # input order; each input's window for an event is that input's window for the key
        # after all its rows at or before the event's time.
        batches = [batch for batch, _ in prepared]
        slots_per_input = [slots for _, slots in prepared]
        self._ensure_scratch()
        event_ts, event_slots, event_keys = _distinct_events(batches, slots_per_input)
        # An event older than its key's newest value of any input (from an earlier batch) would
        # see that newer value: it emits nothing.
        events = event_ts >= self._cache.newest[:, event_slots].max(axis=0)
        windows_per_input: list[npt.NDArray[np.float64]] = []
        filled_per_input: list[npt.NDArray[np.int64]] = []
        gaps: list[tuple[int, int, int]] = []  # (ts, input, slot) of each input's first gap
        for i, (batch, slots) in enumerate(prepared):
            last_row = np.empty(len(event_ts), dtype=np.int64)
            _last_rows(event_ts, event_slots, batch.ts, slots, self._latest_row, last_row)
            windows = np.empty((len(event_ts), self._period), dtype=np.float64)
            filled = np.empty(len(event_ts), dtype=np.int64)
            # Events whose key has no row of this input yet (in this batch) see the window from
            # before the batch, so read it before the batch's rows are appended.
            before = np.flatnonzero(last_row < 0)
            windows[before], filled[before] = self._cache.gather_windows(i, event_slots[before])
            row_windows, row_filled, gap = self._append_windows(i, batch, slots)
            if gap >= 0:
                gaps.append((int(batch.ts[gap]), i, int(slots[gap])))
            after = np.flatnonzero(last_row >= 0)
            windows[after] = row_windows[last_row[after]]
            filled[after] = row_filled[last_row[after]]
            windows_per_input.append(windows)
            filled_per_input.append(filled)
        if gaps:
            # The earliest gap of any input fails the node; the events before its time stand.
            gap_ts, gap_input, gap_slot = min(gaps)
            events &= event_ts < gap_ts
        if not bool(events.all()):
            event_ts, event_keys = event_ts[events], event_keys[events]
            windows_per_input = [w[events] for w in windows_per_input]
            filled_per_input = [f[events] for f in filled_per_input]
        keep, filled_windows = self._apply_missing(windows_per_input, filled_per_input)
        output = Batch(event_ts[keep], event_keys[keep], self._call(filled_windows))
        if gaps:
            raise self._gap_error(gap_input, gap_slot, gap_ts, output)
        return output

    # -- shared steps --------------------------------------------------------------------
    def _append_windows(
        self, input_index: int, batch: Batch, slots: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], int]:
        column = float_column(batch, self._fields[input_index], self._name)
        return self._cache.append_windows_until_gap(input_index, slots, batch.ts,
                                                    column[:, None])

    def _gap_error(self, input_index: int, slot: int, ts: int, emitted: Batch) -> DataGapError:
        return DataGapError(
            f"node {self._name!r}, input {input_index} (field "
            f"{self._fields[input_index]!r}): {self._cache.describe_gap(input_index, slot, ts)}",
            emitted,
        )

    def _apply_missing(
        self, windows: list[npt.NDArray[np.float64]], filled: list[npt.NDArray[np.int64]]
    ) -> tuple[npt.NDArray[np.bool_], list[npt.NDArray[np.float64]]]:
        """Which events produce output, and their windows after the missing-data policy.

        A window not yet full is no gap (gaps lie between interval buckets a key has seen, and
        the cache handles them): ``skip`` and ``fail`` give no output for its event,
        ``interpolate`` fills its front.
        """
        complete = [f >= self._period for f in filled]
        keep = np.logical_and.reduce(complete) if complete else np.ones(0, dtype=np.bool_)
        if bool(keep.all()):
            return keep, windows
        if self._missing != "interpolate":
            return keep, [w[keep] for w in windows]
        # interpolate: an input with no value at all for the key cannot be filled from
        # anything, so the event is left out even here.
        keep = np.logical_and.reduce([f > 0 for f in filled])
        return keep, [
            _backward_fill(w[keep], f[keep], self._period)
            for w, f in zip(windows, filled, strict=True)
        ]

    def _call(self, windows: list[npt.NDArray[np.float64]]) -> dict[str, npt.NDArray[np.float64]]:
        events = len(windows[0])
        if not events:
            return {name: np.empty(0, dtype=np.float64) for name in self._outputs}
        result = self._function(*windows)
        if len(self._outputs) == 1:
            return {self._outputs[0]: self._values(result, result, events, "")}
        # Several outputs: a mapping of each name to its array, or arrays in their order.
        if isinstance(result, Mapping) and set(result) == set(self._outputs):
            return {name: self._values(result[name], result, events, f" for {name!r}")
                    for name in self._outputs}
        if isinstance(result, tuple | list) and len(result) == len(self._outputs):
            return {name: self._values(array, result, events, f" for {name!r}")
                    for name, array in zip(self._outputs, result, strict=True)}
        raise UserFunctionOutputError(
            f"node {self._name!r}: user function {describe_function(self._function)} "
            f"returned {_describe_result(result)}; it declares outputs {list(self._outputs)}, "
            "so it must return a dict of those names to arrays, or a tuple of arrays in that "
            "order, each of one value per event"
        )

    def _values(self, array: Any, result: Any, events: int,
                which: str) -> npt.NDArray[np.float64]:
        try:
            values = np.asarray(array, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.shape != (events,):
            raise UserFunctionOutputError(
                f"node {self._name!r}: user function {describe_function(self._function)} "
                f"returned {_describe_result(result)}{which} for {events} event(s); expected a "
                f"float array of shape ({events},), one value per event (row) of its "
                f"(events, {self._period}) window arrays, e.g. windows[:, -1]"
            )
        return values

    def _ensure_scratch(self) -> None:
        capacity = self._cache.key_capacity
        if len(self._latest_row) < capacity:
            self._latest_row = np.full(capacity, -1, dtype=np.int64)


def _distinct_events(
    batches: Sequence[Batch], slots_per_input: Sequence[npt.NDArray[np.int64]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bytes_]]:
    """ts, slot and key of the distinct (ts, key) pairs, in time order, ties in input order."""
    ts = np.concatenate([batch.ts for batch in batches])
    slots = np.concatenate(slots_per_input)
    keys = np.concatenate([batch.key for batch in batches])
    position = np.arange(len(ts))
    order = np.lexsort((position, slots, ts))
    sorted_ts, sorted_slots = ts[order], slots[order]
    first = np.ones(len(order), dtype=np.bool_)
    first[1:] = (sorted_ts[1:] != sorted_ts[:-1]) | (sorted_slots[1:] != sorted_slots[:-1])
    # Within a (ts, key) group rows are in concatenation order, so the group's first row is
    # its earliest in input order; events are then ordered by time, then by that row.
    earliest = order[first]
    earliest = earliest[np.lexsort((earliest, ts[earliest]))]
    return ts[earliest], slots[earliest], keys[earliest]


def _backward_fill(
    windows: npt.NDArray[np.float64], filled: npt.NDArray[np.int64], period: int
) -> npt.NDArray[np.float64]:
    """Each row's front NaN padding replaced by its oldest known value."""
    padding = period - filled
    oldest = windows[np.arange(len(windows)), np.minimum(padding, period - 1)]
    in_padding = np.arange(period)[None, :] < padding[:, None]
    result: npt.NDArray[np.float64] = np.where(in_padding, oldest[:, None], windows)
    return result


@register
class UserFunctionDef(OperatorDef):
    """A user's function of window views, one or more inputs, one float output per event.

    The function (``NodeConfig.function``, attached by ``sd.udf``) gets one float64 array per
    input shaped (events, period): per event, the last ``period`` values of that input's field
    for the event's key, oldest first. It runs once per batch over all events and returns one
    float per event; a numba ``@njit`` function works too. A shareable function arrives frozen
    (``streamdag.code_freezing``): it runs on read-only copies of the values it was hashed
    with. With one input every row is an event. With several, events are the distinct
    (ts, key) pairs across inputs in event-time order (ties in input order), and each input's
    window is as of all its rows at that time.
    A window with fewer than ``period`` values is not full yet: ``skip`` and ``fail`` give no
    output for the event, ``interpolate`` fills the window's front with its oldest known value
    (an input with no value at all for the key is still skipped). With ``interval``, values are
    interval buckets (see NodeCache): events are taken in arrival order and one older than its
    key's newest on its input is late (dropped, counted, no output); a jump over empty buckets
    is a gap: ``skip`` goes on, ``interpolate`` fills the buckets, ``fail`` raises DataGapError
    carrying the output of the events before the gap (``fail`` needs an interval).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> @sd.udf(period=2)
    ... def change(prices):
    ...     return prices[:, -1] - prices[:, 0]
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> node = change(ticks["price"])
    >>> logic = lookup("user_function").create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["A", "A", "A"], price=[10.0, 11.0, 13.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 2, 'key': 'A', 'value': 1.0}, {'ts': 3, 'key': 'A', 'value': 2.0}]
    """

    type_name: ClassVar[str] = "user_function"
    arity: ClassVar[int | None] = None
    supports_interval: ClassVar[bool] = True
    missing_policies: ClassVar[tuple[MissingPolicy, ...]] = ("skip", "fail", "interpolate")
    summary: ClassVar[str] = "a user's function of per-input window views, one value per event"
    params: ClassVar[tuple[Param, ...]] = (
        Param("fields", "str_list", doc="the field read from each input, in input order"),
        Param("output", "str", default="value", doc="name of the output field"),
        Param("outputs", "str_list", default=(),
              doc="names of several output fields, returned as a dict or tuple of arrays"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{output: float64}`` (or each of ``outputs``); inputs must carry their numbers."""
        fields = tuple(params["fields"])
        if len(fields) != len(inputs):
            raise SchemaMismatchError(
                f"user function has {len(inputs)} input(s) but {len(fields)} field(s) "
                f"{list(fields)}; give one field per input"
            )
        for schema, field in zip(inputs, fields, strict=True):
            require_fields("user function", schema, [field], types=("float64", "int64", "bool"))
        return Schema(tuple((name, "float64") for name in output_names(params)))

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Fresh logic, or the logic saved in ``snapshot``; the function comes from ``config``."""
        return UserFunctionLogic(config, snapshot)
