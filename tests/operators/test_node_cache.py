"""NodeCache: ring order across wraparound, doubling, snapshots, memory, interval policies."""

from __future__ import annotations

import tracemalloc
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamdag.errors import MissingDataError
from streamdag.operator import MissingPolicy
from streamdag.operators.node_cache import NodeCache

# (input, key, value) appends; ts is the position in the list.
_appends = st.lists(
    st.tuples(st.integers(0, 1), st.sampled_from([b"a", b"b", b"c", b"dd"]),
              st.integers(-50, 50).map(float)),
    max_size=80,
)


def _append_all(cache: NodeCache, appends: list[tuple[int, bytes, float]], t0: int = 0) -> None:
    for input_index in range(cache.inputs):
        picked = [(t0 + i, k, v) for i, (inp, k, v) in enumerate(appends) if inp == input_index]
        if not picked:
            continue
        keys = np.array([k for _, k, _ in picked])
        ts = np.array([t for t, _, _ in picked], dtype=np.int64)
        rows = np.array([[v, -v] for _, _, v in picked])
        cache.append(input_index, cache.slots(keys), ts, rows)


def _windows(cache: NodeCache) -> dict[tuple[int, bytes, int], tuple[list[int], list[float]]]:
    result = {}
    for input_index in range(cache.inputs):
        for slot, key in enumerate(cache.key_slots.keys().tolist()):
            for feature in range(cache.features):
                times, values = cache.window(input_index, slot, feature)
                result[input_index, key, feature] = (times.tolist(), values.tolist())
    return result


@settings(max_examples=80, deadline=None)
@given(appends=_appends, period=st.integers(1, 5))
def test_windows_read_oldest_to_newest_across_wraparound(
    appends: list[tuple[int, bytes, float]], period: int
) -> None:
    cache = NodeCache(inputs=2, period=period, features=2, key_capacity=1)
    _append_all(cache, appends)
    reference: dict[tuple[int, bytes], deque[tuple[int, float]]] = {}
    for t, (input_index, key, value) in enumerate(appends):
        reference.setdefault((input_index, key), deque(maxlen=period)).append((t, value))
    for (input_index, key), ring in reference.items():
        slot = int(cache.slots(np.array([key]))[0])
        times, values = cache.window(input_index, slot, 0)
        assert times.tolist() == [t for t, _ in ring]
        assert values.tolist() == [v for _, v in ring]
        assert cache.window(input_index, slot, 1)[1].tolist() == [-v for _, v in ring]
        expected_row = [np.nan] * (period - len(ring)) + [v for _, v in ring]
        np.testing.assert_array_equal(cache.gather(input_index, slot, 0), expected_row)


def test_append_windows_returns_the_window_after_each_event() -> None:
    cache = NodeCache(inputs=1, period=3)
    slots = cache.slots(np.array([b"x", b"y", b"x", b"x", b"x"]))
    rows = np.array([[1.0], [10.0], [2.0], [3.0], [4.0]])
    windows, filled = cache.append_windows(0, slots, np.arange(5, dtype=np.int64), rows)
    np.testing.assert_array_equal(
        windows,
        [[np.nan, np.nan, 1.0], [np.nan, np.nan, 10.0], [np.nan, 1.0, 2.0], [1.0, 2.0, 3.0],
         [2.0, 3.0, 4.0]],
    )
    assert filled.tolist() == [1, 1, 2, 3, 3]


def test_gather_windows_reads_many_keys_without_appending() -> None:
    cache = NodeCache(inputs=1, period=3, features=2)
    slots = cache.slots(np.array([b"x", b"y", b"x"]))
    cache.append(0, slots, np.arange(3, dtype=np.int64),
                 np.array([[1.0, -1.0], [10.0, -10.0], [2.0, -2.0]]))
    windows, filled = cache.gather_windows(0, np.array([1, 0, 1]), feature=1)
    np.testing.assert_array_equal(
        windows, [[np.nan, np.nan, -10.0], [np.nan, -1.0, -2.0], [np.nan, np.nan, -10.0]])
    assert filled.tolist() == [1, 2, 1]
    assert cache.window(0, 0)[1].tolist() == [1.0, 2.0]  # reading appended nothing


def test_key_capacity_doubles_and_keeps_windows() -> None:
    cache = NodeCache(inputs=1, period=2, key_capacity=8)
    first = cache.slots(np.array([b"k0", b"k1"]))
    cache.append(0, first, np.array([1, 2]), np.array([[1.0], [2.0]]))
    many = np.array([f"k{i}".encode() for i in range(100)])
    slots = cache.slots(many)
    assert slots.tolist() == list(range(100))
    assert cache.key_capacity == 128
    assert cache.window(0, 0)[1].tolist() == [1.0]
    assert cache.window(0, 1)[1].tolist() == [2.0]
    assert cache.window(0, 99)[1].tolist() == []


def test_append_to_known_keys_is_in_place() -> None:
    # O(1) per event: once a key's ring exists, appending writes into the same arrays; the
    # footprint stays put however many events go through.
    cache = NodeCache(inputs=1, period=4, key_capacity=8)
    keys = np.array([b"a", b"b", b"c"] * 1000)
    slots = cache.slots(keys)
    arrays = (cache.times, cache.values, cache.head, cache.count)
    footprint = cache.resident_bytes()
    for chunk in range(10):
        ts = np.arange(chunk * 3000, (chunk + 1) * 3000, dtype=np.int64)
        cache.append(0, slots, ts, ts[:, None].astype(np.float64))
    assert (cache.times, cache.values, cache.head, cache.count) == arrays
    assert cache.resident_bytes() == footprint
    assert cache.window(0, 2)[0].tolist() == [29990, 29993, 29996, 29999]


@settings(max_examples=60, deadline=None)
@given(before=_appends, after=_appends, period=st.integers(1, 4),
       interval=st.sampled_from([None, 2, 3]),
       missing=st.sampled_from(["skip", "interpolate"]))
def test_snapshot_restore_round_trip(
    before: list[tuple[int, bytes, float]],
    after: list[tuple[int, bytes, float]],
    period: int,
    interval: int | None,
    missing: MissingPolicy,
) -> None:
    cache = NodeCache(inputs=2, period=period, features=2, interval=interval,
                      missing=missing, key_capacity=1)
    _append_all(cache, before)
    restored = NodeCache.restore(cache.snapshot())
    assert (restored.inputs, restored.period, restored.features) == (2, period, 2)
    assert (restored.interval, restored.missing) == (cache.interval, cache.missing)
    assert _windows(restored) == _windows(cache)
    assert restored.stats.tolist() == cache.stats.tolist()
    # Carrying on from the restored cache is indistinguishable from never stopping.
    _append_all(cache, after, t0=len(before))
    _append_all(restored, after, t0=len(before))
    assert _windows(restored) == _windows(cache)
    assert restored.stats.tolist() == cache.stats.tolist()


def test_resident_bytes_matches_traced_allocations() -> None:
    keys = np.array([f"k{i}".encode() for i in range(5000)])
    NodeCache(inputs=1, period=2).slots(keys[:10])  # compile before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = NodeCache(inputs=2, period=64, features=2, key_capacity=8)
        slots = cache.slots(keys)
        del slots
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.key_capacity == 8192
    assert abs(allocated - cache.resident_bytes()) <= 0.01 * cache.resident_bytes()


def _bucketed(
    missing: MissingPolicy, period: int, ts: list[int], values: list[float]
) -> NodeCache:
    cache = NodeCache(inputs=1, period=period, interval=10, missing=missing)
    slots = cache.slots(np.array([b"k"] * len(ts)))
    cache.append(0, slots, np.array(ts, dtype=np.int64), np.array(values)[:, None])
    return cache


def test_interval_buckets_keep_the_last_event_of_each_bucket() -> None:
    cache = _bucketed("skip", 4, [1, 5, 12, 19, 23], [1.0, 2.0, 3.0, 4.0, 5.0])
    times, values = cache.window(0, 0)
    assert times.tolist() == [0, 10, 20]
    assert values.tolist() == [2.0, 4.0, 5.0]
    assert cache.stats.tolist() == [0, 0, 0]


def test_interval_drops_events_older_than_the_last_bucket() -> None:
    cache = _bucketed("skip", 4, [25, 3, 27], [1.0, 2.0, 3.0])
    assert cache.window(0, 0)[1].tolist() == [3.0]
    assert cache.stats.tolist() == [0, 0, 1]


def test_skip_policy_continues_over_a_gap() -> None:
    cache = _bucketed("skip", 5, [0, 10, 40], [1.0, 2.0, 5.0])
    times, values = cache.window(0, 0)
    assert times.tolist() == [0, 10, 40]
    assert values.tolist() == [1.0, 2.0, 5.0]
    assert cache.stats.tolist() == [1, 0, 0]


def test_fail_policy_raises_at_the_gap_and_keeps_what_came_before() -> None:
    with pytest.raises(MissingDataError, match=r"input 0, key 'k': event at 40.*2 interval"):
        _bucketed("fail", 5, [0, 10, 40, 50], [1.0, 2.0, 5.0, 6.0])
    cache = NodeCache(inputs=1, period=5, interval=10, missing="fail")
    slots = cache.slots(np.array([b"k"] * 4))
    with pytest.raises(MissingDataError):
        cache.append_windows(0, slots, np.array([0, 10, 40, 50]),
                             np.array([[1.0], [2.0], [5.0], [6.0]]))
    assert cache.window(0, 0)[1].tolist() == [1.0, 2.0]
    assert cache.stats.tolist() == [1, 0, 0]


def test_interpolate_policy_fills_missing_buckets_linearly() -> None:
    cache = _bucketed("interpolate", 5, [0, 10, 40], [1.0, 2.0, 5.0])
    times, values = cache.window(0, 0)
    assert times.tolist() == [0, 10, 20, 30, 40]
    assert values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert cache.stats.tolist() == [1, 2, 0]


def test_interpolate_longer_than_the_window_keeps_only_the_newest_buckets() -> None:
    cache = _bucketed("interpolate", 3, [0, 100], [0.0, 10.0])
    times, values = cache.window(0, 0)
    assert times.tolist() == [80, 90, 100]
    assert values.tolist() == [8.0, 9.0, 10.0]
    assert cache.stats.tolist() == [1, 3, 0]
