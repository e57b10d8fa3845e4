"""State shared by the incremental kernels: per-key arrays beside a NodeCache, growable rings.

``KeyedState`` (a NodeCache plus per-key state arrays, snapshotted together) is the base the
incremental kernels (the rolling family, ema, zscore, vwap, crossover) build on. Time windows
keep each key's events in a **growable ring**: a segment of two shared pools (positions and
values) that doubles when full; a full pool is compacted into a fresh one twice the live size.
The helpers at the end read batch fields and build outputs the same way for every kernel.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.errors import SnapshotMismatchError
from operators.node_cache import NodeCache
from streamdag.batch import Batch
from streamdag.errors import ParamError, SchemaMismatchError
from streamdag.operator import OperatorDef, require_fields
from streamdag.params import MAX_EVENTS, MAX_SPAN_NS, Param
from streamdag.schema import Schema

__all__ = [
    "GROWABLE_RING",
    "MIN_PERIODS",
    "NUMERIC_TYPES",
    "RING_CAPACITY",
    "RING_OLDEST",
    "RING_SIZE",
    "RING_START",
    "VALUE_SCHEMA",
    "WINDOW_PARAMS",
    "KeyedState",
    "KeyedStateLogic",
    "NumericFieldDef",
    "StateArray",
    "check_min_periods",
    "check_window",
    "compensated_add",
    "evict_expired",
    "float_column",
    "grow_ring",
    "min_periods_of",
    "push_event_time",
    "push_history",
    "ring_pools",
    "rows_emitted",
]

#: The output schema of every single-value operator.
VALUE_SCHEMA = Schema.of(value="float64")
#: Field types the numeric kernels read (int64 is converted to float64).
NUMERIC_TYPES = ("float64", "int64")


class NumericFieldDef(OperatorDef):
    """Base of operators over one numeric ``field`` per key that emit ``{value: float64}``."""

    keys_apart: ClassVar[bool] = True  # per-key state, moved by the key's events alone

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: float64}``; the field must be numeric."""
        require_fields(cls.type_name, inputs[0], [params["field"]], NUMERIC_TYPES)
        return VALUE_SCHEMA


#: Columns of a growable ring's per-key row: its segment of the shared pools.
RING_START, RING_CAPACITY, RING_OLDEST, RING_SIZE = 0, 1, 2, 3
_FIRST_RING = 8
_FIRST_POOL = 1024


@njit(cache=True, inline="always")
def compensated_add(total: float, compensation: float, value: float) -> tuple[float, float]:
    """Neumaier summation step: ``(total, compensation)`` after adding ``value``."""
    updated = total + value
    if abs(total) >= abs(value):
        compensation += (total - updated) + value
    else:
        compensation += (value - updated) + total
    return updated, compensation


@dataclass(frozen=True)
class StateArray:
    """Shape and type of a per-key state array: ``columns`` of ``dtype``, new keys ``fill``."""

    columns: int
    dtype: type[np.generic]
    fill: float | int

    def allocate(self, keys: int) -> npt.NDArray[Any]:
        """A ``keys x columns`` array set to ``fill``."""
        return np.full((keys, self.columns), self.fill, dtype=self.dtype)


#: The per-key row of a growable ring (start, capacity, oldest, size); see ``ring_pools``.
GROWABLE_RING = StateArray(4, np.int64, 0)


class KeyedState:
    """A node's key slots and history rings (a NodeCache) with per-key kernel state; one snapshot.

    Per-key arrays grow with the cache's key capacity; ``shared`` arrays (pools not indexed by
    key) are saved whole. Kernels index everything by the slots that ``slots()`` returns.

    >>> state = KeyedState(inputs=1, period=2, features=1,
    ...                    per_key={"total": StateArray(1, np.float64, 0.0)})
    >>> slots = state.slots(np.array([b"a", b"b", b"a"]))
    >>> np.add.at(state.per_key["total"][:, 0], slots, [1.0, 2.0, 3.0])
    >>> restored = KeyedState(inputs=1, period=2, features=1,
    ...                       per_key={"total": StateArray(1, np.float64, 0.0)},
    ...                       snapshot=state.snapshot())
    >>> restored.per_key["total"][:2, 0].tolist()
    [4.0, 2.0]
    """

    def __init__(
        self,
        *,
        inputs: int,
        period: int,
        features: int,
        per_key: Mapping[str, StateArray],
        shared: Mapping[str, npt.NDArray[Any]] | None = None,
        snapshot: bytes | None = None,
    ) -> None:
        self._specs = dict(per_key)
        self.shared: dict[str, npt.NDArray[Any]] = dict(shared or {})
        if snapshot is None:
            self.cache = NodeCache(inputs, period, features)
            self.per_key = {n: spec.allocate(self.cache.key_capacity)
                            for n, spec in self._specs.items()}
            return
        saved = np.load(io.BytesIO(snapshot))
        self.cache = NodeCache.restore(saved["history"].tobytes())
        found = (self.cache.inputs, self.cache.period, self.cache.features)
        if found != (inputs, period, features):
            raise SnapshotMismatchError(
                f"the snapshot holds history for (inputs, period, features) = {found}, but "
                f"this node needs {(inputs, period, features)}; it belongs to another node "
                "configuration. Restore the checkpoint taken by this node"
            )
        keys = len(self.cache.key_slots)
        self.per_key = {}
        for name, spec in self._specs.items():
            array = spec.allocate(self.cache.key_capacity)
            array[:keys] = saved[f"per_key_{name}"]
            self.per_key[name] = array
        for name in self.shared:
            self.shared[name] = saved[f"shared_{name}"]

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """Dense slots of ``keys`` (new keys get new slots); grows every per-key array."""
        slots = self.cache.slots(keys)
        capacity = self.cache.key_capacity
        for name, array in self.per_key.items():
            if len(array) < capacity:
                grown = self._specs[name].allocate(capacity)
                grown[: len(array)] = array
                self.per_key[name] = grown
        return slots

    def check_slots(self, slots: npt.NDArray[np.int64]) -> None:
        """Raise IndexError unless every slot was handed out by ``slots()``."""
        if len(slots) and (int(slots.min()) < 0 or int(slots.max()) >= len(self.cache.key_slots)):
            raise IndexError(
                f"slots must lie in [0, {len(self.cache.key_slots)}), got "
                f"[{int(slots.min())}, {int(slots.max())}]; map keys with slots() first"
            )

    def snapshot(self) -> bytes:
        """The history, key table and every state array as bytes, for ``snapshot=``."""
        keys = len(self.cache.key_slots)
        history = np.frombuffer(self.cache.snapshot(), dtype=np.uint8)
        arrays: dict[str, npt.NDArray[Any]] = {"history": history}
        arrays.update({f"per_key_{n}": a[:keys] for n, a in self.per_key.items()})
        arrays.update({f"shared_{n}": a for n, a in self.shared.items()})
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        return buffer.getvalue()


class KeyedStateLogic:
    """Base of the runtimes whose whole state is one ``KeyedState`` that moves on events only."""

    _state: KeyedState

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """Dense slots of ``keys`` in this node's key table (new keys get new ones)."""
        return self._state.slots(keys)

    def on_watermark(self, watermark: int) -> Batch | None:
        """The state moves on events, not on event time passing: nothing to emit."""
        return None

    def snapshot(self) -> bytes:
        """Key table, history rings and per-key state, from which ``create`` restores exactly."""
        return self._state.snapshot()


# -- growable per-key rings ------------------------------------------------------------------
def ring_pools() -> dict[str, npt.NDArray[Any]]:
    """Empty shared pools of growable rings, for ``KeyedState(shared=...)``; see ``grow_ring``."""
    return {"positions": np.empty(0, dtype=np.int64), "pool": np.empty(0),
            "used": np.zeros(1, dtype=np.int64)}


@njit(cache=True)
def _move_ring(ring: Any, source_positions: Any, source_values: Any, positions: Any,
               values: Any, used: Any, k: int, capacity: int) -> None:
    # Copies key k's entries, oldest first, to a fresh segment of `capacity` at the pool's end.
    start, old_capacity = ring[k, RING_START], ring[k, RING_CAPACITY]
    oldest = ring[k, RING_OLDEST]
    target = used[0]
    for j in range(ring[k, RING_SIZE]):
        p = start + ((oldest + j) & (old_capacity - 1))
        positions[target + j] = source_positions[p]
        values[target + j] = source_values[p]
    ring[k, RING_START] = target
    ring[k, RING_CAPACITY] = capacity
    ring[k, RING_OLDEST] = 0
    used[0] = target + capacity


@njit(cache=True)
def grow_ring(ring: Any, positions: Any, values: Any, used: Any, s: int) -> tuple[Any, Any]:
    """Double key ``s``'s ring; the pools ``(positions, values)`` to use from now on."""
    # A full pool is compacted into one twice the live size, so abandoned segments never cost
    # more than the live ones.
    capacity = max(_FIRST_RING, 2 * ring[s, RING_CAPACITY])
    if used[0] + capacity > positions.shape[0]:
        live = capacity
        for k in range(ring.shape[0]):
            live += ring[k, RING_CAPACITY]
        new_positions = np.empty(max(_FIRST_POOL, 2 * live), dtype=np.int64)
        new_values = np.empty(max(_FIRST_POOL, 2 * live), dtype=np.float64)
        used[0] = 0
        for k in range(ring.shape[0]):
            if ring[k, RING_CAPACITY] > 0:
                _move_ring(ring, positions, values, new_positions, new_values, used, k,
                           ring[k, RING_CAPACITY])
        positions, values = new_positions, new_values
    _move_ring(ring, positions, values, positions, values, used, s, capacity)
    return positions, values


@njit(cache=True, inline="always")
def evict_expired(ring: Any, positions: Any, s: int, cutoff: int) -> tuple[int, int]:
    """Drop key ``s``'s oldest ring entries while their position is at or before ``cutoff``;
    the ring's (oldest, size) after that, also stored."""
    start, mask = ring[s, RING_START], ring[s, RING_CAPACITY] - 1
    oldest, size = ring[s, RING_OLDEST], ring[s, RING_SIZE]
    while size > 0 and positions[start + oldest] <= cutoff:
        oldest, size = (oldest + 1) & mask, size - 1
    ring[s, RING_OLDEST], ring[s, RING_SIZE] = oldest, size
    return oldest, size


@njit(cache=True, inline="always")
def push_event_time(ring: Any, positions: Any, s: int, t: int, time_window: int) -> int:
    """Write event time ``t`` behind key ``s``'s times still in ``(t - time_window, t]``; the
    events that makes, or 0 when the ring is full (grow it, then push again).

    The ring's size is left to the caller, to store once the whole event is taken, so a push
    repeated after a grow counts ``t`` once.
    """
    oldest, size = evict_expired(ring, positions, s, t - time_window)
    capacity = ring[s, RING_CAPACITY]
    if size == capacity:
        return 0
    positions[ring[s, RING_START] + ((oldest + size) & (capacity - 1))] = t
    events: int = size + 1
    return events


# -- min_periods -----------------------------------------------------------------------------
#: The ``min_periods`` param of every rolling operator; 0 takes pandas' default.
MIN_PERIODS = Param(
    "min_periods", "int", default=0, minimum=0, maximum=MAX_EVENTS,
    doc="emit once the window holds this many events (0: the window for a count window, 1 "
        "for a time window, as pandas)",
)


#: The window of every rolling operator: a count of events, or a span of event time.
WINDOW_PARAMS = (
    Param("window", "int", default=0, minimum=0, maximum=MAX_EVENTS, size=True,
          doc="window length in events"),
    Param("time_window", "duration", default=0, minimum=0, maximum=MAX_SPAN_NS, size=True,
          doc="window length in event time: events with ts in (t - time_window, t]"),
    MIN_PERIODS,
)


def check_window(operator: str, params: Mapping[str, Any], hint: str = "") -> None:
    """Raise ParamError unless exactly one of window and time_window is set, and
    ``min_periods`` fits it."""
    window, time_window = params["window"], params["time_window"]
    if (window > 0) == (time_window > 0):
        raise ParamError(
            f"{operator} needs exactly one of window (events) and time_window (event "
            f"time) above 0, got window={window} and time_window={time_window}; pass e.g. "
            f"window=20 or time_window='5s'{hint}"
        )
    check_min_periods(operator, params)


def min_periods_of(params: Mapping[str, Any]) -> int:
    """The events a window must hold before it emits: ``min_periods``, or pandas' default."""
    given = int(params.get("min_periods", 0))
    if given:
        return given
    return int(params["window"]) if params.get("window") else 1


def check_min_periods(operator: str, params: Mapping[str, Any]) -> None:
    """Raise ParamError when ``min_periods`` is above a count window (it could never emit)."""
    window, given = int(params.get("window") or 0), int(params.get("min_periods", 0))
    if window and given > window:
        raise ParamError(
            f"{operator} min_periods={given} is above its window={window}, so it could never "
            f"emit; pass a min_periods between 1 and {window}"
        )


# -- count windows in a NodeCache ring ------------------------------------------------------
@njit(cache=True, inline="always")
def push_history(times: Any, values: Any, head: Any, count: Any, window: int, s: int, t: int,
                  x: float) -> tuple[float, int, int]:
    """Write an event into key ``s``'s NodeCache ring of a count ``window``; the value that
    leaves the window (NaN if none), the events now in the window, and the position written."""
    h, n = head[0, s], count[0, s]
    leaving = values[0, s, h, 0] if n == window else np.nan
    n = n + 1 if n < window else n
    count[0, s] = n
    times[0, s, h] = t
    values[0, s, h, 0] = x
    head[0, s] = h + 1 if h + 1 < window else 0
    return leaving, n, h


# -- reading fields and building outputs -----------------------------------------------------
def float_column(batch: Batch, field: str, node: str) -> npt.NDArray[np.float64]:
    """Field ``field`` of ``batch`` as a contiguous float64 array; SchemaMismatchError if absent."""
    column = batch.columns.get(field)
    if column is None:
        raise SchemaMismatchError(
            f"node {node!r} reads field {field!r}, but the batch carries {list(batch.columns)}; "
            "the upstream node's output schema changed, so rebuild the graph"
        )
    return np.ascontiguousarray(column, dtype=np.float64)


def rows_emitted(batch: Batch, values: npt.NDArray[np.float64],
                 emitted: npt.NDArray[np.bool_]) -> Batch:
    """The rows of ``batch`` where ``emitted`` holds (ts, key, lineage) with ``values`` as value."""
    output = batch.with_columns({"value": values})
    return output if bool(emitted.all()) else output.take(emitted)
