"""KeyedState and growable rings: growth with keys, snapshots, rings kept in order when pools
are compacted, and the shared field and output helpers."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

import streamdag as sd
from operators.errors import SnapshotMismatchError
from operators.keyed_state import (
    GROWABLE_RING,
    RING_CAPACITY,
    RING_OLDEST,
    RING_SIZE,
    RING_START,
    KeyedState,
    StateArray,
    float_column,
    grow_ring,
    ring_pools,
    rows_emitted,
)
from streamdag.errors import SchemaMismatchError


def _state(snapshot: bytes | None = None, period: int = 2) -> KeyedState:
    return KeyedState(inputs=1, period=period, features=1,
                      per_key={"total": StateArray(2, np.float64, -1.0)},
                      shared={"pool": np.zeros(3)}, snapshot=snapshot)


def test_per_key_arrays_grow_with_the_key_table_and_new_keys_get_the_fill() -> None:
    state = _state()
    first = state.per_key["total"]
    slots = state.slots(np.array([f"k{i}".encode() for i in range(200)]))
    assert slots.tolist() == list(range(200))
    grown = state.per_key["total"]
    assert len(grown) >= 200 and len(first) < 200
    assert bool((grown == -1.0).all())


def test_snapshot_restores_keys_per_key_state_and_shared_pools() -> None:
    state = _state()
    slots = state.slots(np.array([b"a", b"b"]))
    state.per_key["total"][slots, 0] = [1.5, 2.5]
    state.shared["pool"][:] = [7.0, 8.0, 9.0]
    restored = _state(state.snapshot())
    assert restored.slots(np.array([b"b", b"a", b"c"])).tolist() == [1, 0, 2]
    assert restored.per_key["total"][:3].tolist() == [[1.5, -1.0], [2.5, -1.0], [-1.0, -1.0]]
    assert restored.shared["pool"].tolist() == [7.0, 8.0, 9.0]


def test_snapshot_of_another_configuration_is_refused() -> None:
    with pytest.raises(SnapshotMismatchError) as caught:
        _state(_state(period=3).snapshot(), period=2)
    assert str(caught.value) == (
        "the snapshot holds history for (inputs, period, features) = (1, 3, 1), but this node "
        "needs (1, 2, 1); it belongs to another node configuration. Restore the checkpoint "
        "taken by this node"
    )


def test_slots_not_handed_out_are_refused() -> None:
    state = _state()
    state.slots(np.array([b"a"]))
    state.check_slots(np.array([0]))
    with pytest.raises(IndexError, match=r"slots must lie in \[0, 1\), got \[0, 1\]"):
        state.check_slots(np.array([0, 1]))


def _ring_contents(ring: np.ndarray, positions: np.ndarray, values: np.ndarray,
                   key: int) -> list[tuple[int, float]]:
    start, capacity = ring[key, RING_START], ring[key, RING_CAPACITY]
    oldest, size = ring[key, RING_OLDEST], ring[key, RING_SIZE]
    spots = [start + (oldest + j) % capacity for j in range(size)]
    return [(int(positions[p]), float(values[p])) for p in spots]


def _push(ring: np.ndarray, pools: dict[str, np.ndarray], key: int, t: int) -> None:
    if ring[key, RING_SIZE] == ring[key, RING_CAPACITY]:
        pools["positions"], pools["pool"] = grow_ring(ring, pools["positions"], pools["pool"],
                                                      pools["used"], key)
    start, capacity = ring[key, RING_START], ring[key, RING_CAPACITY]
    spot = start + (ring[key, RING_OLDEST] + ring[key, RING_SIZE]) % capacity
    pools["positions"][spot], pools["pool"][spot] = t, t / 2
    ring[key, RING_SIZE] += 1


def test_growable_rings_keep_every_key_in_order_through_growth_and_compaction() -> None:
    ring = GROWABLE_RING.allocate(3)
    pools = ring_pools()
    expected: list[deque[tuple[int, float]]] = [deque(), deque(), deque()]
    for t in range(3_000):  # interleaved keys: every ring doubles, the pools compact often
        key = t % 3
        _push(ring, pools, key, t)
        expected[key].append((t, t / 2))
        if t % 7 == 0:  # drop the oldest entry now and then, so rings wrap around
            ring[key, RING_OLDEST] = (ring[key, RING_OLDEST] + 1) % ring[key, RING_CAPACITY]
            ring[key, RING_SIZE] -= 1
            expected[key].popleft()
    for key in range(3):
        assert _ring_contents(ring, pools["positions"], pools["pool"], key) == list(
            expected[key])
    live = int(ring[:, RING_CAPACITY].sum())
    assert int(pools["used"][0]) <= len(pools["positions"]) <= max(1024, 4 * live)


def test_float_column_reads_ints_as_floats_and_names_a_missing_field() -> None:
    batch = sd.Batch.from_columns(ts=[1, 2], key=["a", "b"], size=[3, 4])
    column = float_column(batch, "size", "n")
    assert (column.dtype, column.tolist()) == (np.dtype(np.float64), [3.0, 4.0])
    with pytest.raises(SchemaMismatchError) as caught:
        float_column(batch, "price", "n")
    assert str(caught.value) == (
        "node 'n' reads field 'price', but the batch carries ['size']; the upstream node's "
        "output schema changed, so rebuild the graph"
    )


def test_rows_emitted_keeps_the_emitted_rows_with_their_lineage() -> None:
    batch = sd.Batch(np.array([1, 2, 3], dtype=np.int64), np.array([b"a", b"b", b"c"]),
                     {"price": np.array([1.0, 2.0, 3.0])},
                     partition=np.array([0, 1, 0], dtype=np.int32),
                     offset=np.array([5, 6, 7], dtype=np.int64))
    out = rows_emitted(batch, np.array([10.0, 20.0, 30.0]), np.array([True, False, True]))
    assert out.to_records() == [{"ts": 1, "key": "a", "value": 10.0},
                                {"ts": 3, "key": "c", "value": 30.0}]
    assert out.offset is not None and out.offset.tolist() == [5, 7]
    every = rows_emitted(batch, np.array([1.0, 2.0, 3.0]), np.ones(3, dtype=np.bool_))
    assert every.ts is batch.ts
