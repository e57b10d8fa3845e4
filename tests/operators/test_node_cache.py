"""NodeCache: rings across wraparound, doubling, snapshots, memory, interval policies, lateness."""

from __future__ import annotations

import io
import itertools
import tracemalloc
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.node_cache import LATE_FILL, NodeCache
from streamdag.errors import MissingDataError
from streamdag.operator import MissingPolicy

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


def test_an_event_older_than_its_keys_newest_is_dropped_even_inside_its_bucket() -> None:
    # 6 arrives after 8: letting it win bucket 0 would replace newer data with older.
    cache = _bucketed("skip", 2, [5, 8, 6], [1.0, 2.0, 3.0])
    assert cache.window(0, 0)[0].tolist() == [0]
    assert cache.window(0, 0)[1].tolist() == [2.0]
    assert cache.stats.tolist() == [0, 0, 1]


def test_a_late_event_gets_no_window() -> None:
    cache = NodeCache(inputs=1, period=2, interval=10)
    slots = cache.slots(np.array([b"k", b"k", b"k", b"k"]))
    windows, filled = cache.append_windows(0, slots, np.array([25, 3, 27, 26]),
                                           np.array([[1.0], [2.0], [3.0], [4.0]]))
    np.testing.assert_array_equal(
        windows, [[np.nan, 1.0], [np.nan, np.nan], [np.nan, 3.0], [np.nan, np.nan]])
    assert filled.tolist() == [1, LATE_FILL, 1, LATE_FILL]
    assert cache.window(0, 0)[1].tolist() == [3.0]
    assert cache.stats.tolist() == [0, 0, 2]


def test_on_time_counts_the_cache_and_the_earlier_events_of_the_call() -> None:
    cache = NodeCache(inputs=1, period=2, interval=10)
    cache.append(0, cache.slots(np.array([b"a"])), np.array([10]), np.array([[1.0]]))
    slots = cache.slots(np.array([b"a", b"a", b"b", b"a", b"b"]))
    ts = np.array([9, 12, 5, 11, 5])
    assert cache.on_time(0, slots, ts).tolist() == [False, True, True, False, True]
    assert cache.stats.tolist() == [0, 0, 2]
    # Asking appends nothing: the same question gets the same answer.
    assert cache.on_time(0, slots, ts).tolist() == [False, True, True, False, True]
    assert cache.window(0, 0)[1].tolist() == [1.0]
    plain = NodeCache(inputs=1, period=2)
    assert plain.on_time(0, plain.slots(np.array([b"a", b"a"])), np.array([5, 1])).all()
    assert plain.stats.tolist() == [0, 0, 0]


def test_snapshot_keeps_each_keys_newest_time() -> None:
    cache = _bucketed("skip", 2, [15], [1.0])
    restored = NodeCache.restore(cache.snapshot())
    restored.append(0, np.array([0]), np.array([12]), np.array([[2.0]]))
    assert restored.window(0, 0)[1].tolist() == [1.0]
    assert restored.stats.tolist() == [0, 0, 1]
    # A snapshot taken before newest times were kept falls back to the bucket's start.
    saved = dict(np.load(io.BytesIO(cache.snapshot())))
    del saved["newest"]
    buffer = io.BytesIO()
    np.savez(buffer, **saved)
    older = NodeCache.restore(buffer.getvalue())
    older.append(0, np.array([0]), np.array([12]), np.array([[2.0]]))
    assert older.window(0, 0)[1].tolist() == [2.0]
    assert older.stats.tolist() == [0, 0, 0]


def test_append_until_gap_stops_before_the_gap_and_describes_it() -> None:
    cache = NodeCache(inputs=1, period=3, interval=10, missing="fail")
    slots = cache.slots(np.array([b"k"] * 4))
    windows, filled, gap = cache.append_windows_until_gap(
        0, slots, np.array([0, 10, 40, 50]), np.array([[1.0], [2.0], [5.0], [6.0]]))
    assert gap == 2
    np.testing.assert_array_equal(windows[:2], [[np.nan, np.nan, 1.0], [np.nan, 1.0, 2.0]])
    assert filled.tolist() == [1, 2, 0, 0]
    assert cache.window(0, 0)[1].tolist() == [1.0, 2.0]
    assert cache.describe_gap(0, 0, 40) == (
        "input 0, key 'k': event at 40 follows the bucket at 10, skipping 2 interval(s) of 10 "
        "ns; the node's missing-data policy is 'fail'. Use missing='skip' or 'interpolate' to "
        "continue over gaps"
    )


def bucketed_reference(
    events: list[tuple[int, bytes, float]], period: int, interval: int, missing: MissingPolicy
) -> tuple[list[list[float] | None], int, dict[bytes, list[tuple[int, float]]], list[int]]:
    """What an interval cache does, one event at a time, in plain Python.

    Returns per event the values of its key's window right after it (None: late), the
    position of the event failing under ``fail`` (or -1; nothing from it on is taken), every
    key's final window of (bucket, value), and the stats.
    """
    rings: dict[bytes, deque[tuple[int, float]]] = {}
    last: dict[bytes, int] = {}
    newest: dict[bytes, int] = {}
    windows: list[list[float] | None] = []
    stats = [0, 0, 0]
    failed = -1
    for position, (t, key, value) in enumerate(events):
        ring = rings.setdefault(key, deque(maxlen=period))
        if key in newest and t < newest[key]:
            stats[2] += 1
            windows.append(None)
            continue
        bucket = t // interval * interval
        if key in last and bucket == last[key]:
            ring[-1] = (bucket, value)
        else:
            if key in last and bucket > last[key] + interval:
                stats[0] += 1
                if missing == "fail":
                    failed = position
                    break
                if missing == "interpolate":
                    before, skipped = ring[-1][1], (bucket - last[key]) // interval - 1
                    for k in range(max(1, skipped - period + 1), skipped + 1):
                        filler = before + (value - before) * (k / (skipped + 1.0))
                        ring.append((last[key] + k * interval, filler))
                        stats[1] += 1
            ring.append((bucket, value))
            last[key] = bucket
        newest[key] = t
        windows.append([v for _, v in ring])
    return windows, failed, {key: list(ring) for key, ring in rings.items()}, stats


@st.composite
def _arrivals(draw: st.DrawFn) -> list[tuple[int, bytes, float]]:
    # Mostly forward in time, with steps back (late events) and jumps (gaps).
    steps = draw(st.lists(st.tuples(st.integers(-12, 30), st.sampled_from([b"a", b"b", b"c"]),
                                    st.integers(-20, 20).map(float)), max_size=60))
    events, t = [], 50
    for step, key, value in steps:
        t = max(0, t + step)
        events.append((t, key, value))
    return events


@settings(max_examples=150, deadline=None)
@given(events=_arrivals(), cuts=st.lists(st.integers(0, 60), max_size=5),
       period=st.integers(1, 4), missing=st.sampled_from(["skip", "fail", "interpolate"]),
       restore_at=st.integers(0, 6))
def test_interval_cache_matches_the_reference_however_the_input_is_cut(
    events: list[tuple[int, bytes, float]], cuts: list[int], period: int,
    missing: MissingPolicy, restore_at: int,
) -> None:
    cache = NodeCache(inputs=1, period=period, interval=10, missing=missing, key_capacity=1)
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    windows: list[list[float] | None] = []
    failed = -1
    for index, (start, end) in enumerate(itertools.pairwise(bounds)):
        if index == restore_at:
            cache = NodeCache.restore(cache.snapshot())
        part = events[start:end]
        slots = cache.slots(np.array([key for _, key, _ in part], dtype="S1"))
        out, filled, gap = cache.append_windows_until_gap(
            0, slots, np.array([t for t, _, _ in part], dtype=np.int64),
            np.array([[value] for _, _, value in part]).reshape(len(part), 1))
        taken = gap if gap >= 0 else len(part)
        windows += [None if filled[r] == LATE_FILL else out[r, period - filled[r]:].tolist()
                    for r in range(taken)]
        if gap >= 0:
            failed = start + gap
            break
    expected_windows, expected_failed, final, stats = bucketed_reference(
        events, period, 10, missing)
    assert (windows, failed) == (expected_windows, expected_failed)
    assert cache.stats.tolist() == stats
    for key, ring in final.items():
        slot = int(cache.slots(np.array([key]))[0])
        times, values = cache.window(0, slot)
        assert list(zip(times.tolist(), values.tolist(), strict=True)) == ring
