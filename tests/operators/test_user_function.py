"""user_function nodes: window views, alignment of several inputs, missing data, errors."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import aligned_steps
from numba import njit

import streamdag as sd
from operators.errors import DataGapError, UserFunctionOutputError
from streamdag.errors import GraphError, MissingDataError, SchemaMismatchError
from streamdag.graph import make_node
from streamdag.operator import MissingPolicy, OperatorLogic
from streamdag.operator_registry import lookup

Row = tuple[int, str, float]  # ts, key, value


def _source(name: str = "ticks") -> sd.Node:
    return sd.source(name, topic=name, key="symbol", schema={"price": "float64"})


def _create(node: sd.Node, snapshot: bytes | None = None) -> OperatorLogic:
    return lookup(node.operator).create(node.config(), snapshot)


def _batch(rows: Sequence[Row], field: str = "price") -> sd.Batch:
    if not rows:
        return sd.Batch.empty(sd.Schema.of(**{field: "float64"}))
    ts, keys, values = zip(*rows, strict=True)
    return sd.Batch.from_columns(ts=list(ts), key=list(keys), **{field: list(values)})


class Recorder:
    """A user function that records the windows of every call and returns their last column."""

    def __init__(self) -> None:
        self.calls: list[list[list[list[float]]]] = []

    def __call__(self, *windows: np.ndarray) -> np.ndarray:
        self.calls.append([w.tolist() for w in windows])
        return np.sum([w[:, -1] for w in windows], axis=0)

    @property
    def events(self) -> list[list[list[float]]]:
        """Per event, the window row of each input."""
        return [[inputs[i][e] for i in range(len(inputs))]
                for inputs in self.calls for e in range(len(inputs[0]))]


def _recording_node(recorder: Recorder, *inputs: sd.Node | sd.Column, period: int,
                    missing: MissingPolicy = "skip", interval: int | None = None) -> sd.Node:
    function = sd.udf(period=period, missing=missing, interval=interval,
                      shareable=False)(recorder.__call__)
    return function(*inputs, name="recorded")


def change(prices: np.ndarray) -> np.ndarray:
    """Newest minus oldest value of each window."""
    return prices[:, -1] - prices[:, 0]


@njit(cache=True)
def numba_spread(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Newest fast value minus the mean of the slow window, compiled by numba."""
    out = np.empty(fast.shape[0])
    for e in range(fast.shape[0]):
        out[e] = fast[e, -1] - slow[e].mean()
    return out


def wrong_length(prices: np.ndarray) -> np.ndarray:
    """Returns one value too many."""
    return np.zeros(len(prices) + 1)


def not_numbers(prices: np.ndarray) -> list[str]:
    """Returns words."""
    return ["up"] * len(prices)


# -- one input -----------------------------------------------------------------------------
def test_single_input_windows_per_row_after_warm_up() -> None:
    node = sd.udf(period=3)(change)(_source()["price"])
    logic = _create(node)
    rows = [(1, "A", 1.0), (2, "B", 10.0), (3, "A", 2.0), (4, "A", 4.0), (5, "B", 13.0),
            (6, "A", 8.0), (7, "B", 20.0)]
    assert logic.process([_batch(rows)]).to_records() == [
        {"ts": 4, "key": "A", "value": 3.0},
        {"ts": 6, "key": "A", "value": 6.0},
        {"ts": 7, "key": "B", "value": 10.0},
    ]


def test_output_field_name_and_lineage_are_kept() -> None:
    node = sd.udf(period=1, output="last")(change)(_source()["price"])
    batch = _batch([(1, "A", 1.0), (2, "A", 2.0)])
    with_lineage = sd.Batch(batch.ts, batch.key, batch.columns,
                            np.array([0, 0], dtype=np.int32), np.array([7, 8]))
    out = _create(node).process([with_lineage])
    assert out.to_records() == [{"ts": 1, "key": "A", "last": 0.0},
                                {"ts": 2, "key": "A", "last": 0.0}]
    assert out.offset is not None and out.offset.tolist() == [7, 8]


def test_empty_batch_does_not_call_the_function() -> None:
    recorder = Recorder()
    logic = _create(_recording_node(recorder, _source()["price"], period=2))
    out = logic.process([_batch([])])
    assert len(out) == 0 and out.schema == sd.Schema.of(value="float64")
    aligned = _create(_recording_node(recorder, _source("x")["price"], _source("y")["price"],
                                      period=2))
    out = aligned.process([_batch([]), _batch([])])
    assert len(out) == 0 and out.schema == sd.Schema.of(value="float64")
    assert recorder.calls == []


def test_fail_policy_names_node_input_and_key_at_a_gap() -> None:
    # A window not yet full is no gap: only the jump from bucket 10 to 30 fails.
    node = sd.udf(period=2, interval=10, missing="fail")(change)(_source()["price"], name="chg")
    with pytest.raises(DataGapError,
                       match=r"^node 'chg', input 0 \(field 'price'\): input 0, key 'A': event "
                             r"at 35 follows the bucket at 10, skipping 1 interval\(s\) of 10 "
                             r"ns") as caught:
        _create(node).process([_batch([(1, "A", 1.0), (12, "A", 2.0), (35, "A", 3.0)])])
    assert caught.value.emitted is not None
    assert caught.value.emitted.to_records() == [{"ts": 12, "key": "A", "value": 1.0}]


def test_interpolate_backfills_from_the_oldest_known_value() -> None:
    recorder = Recorder()
    logic = _create(_recording_node(recorder, _source()["price"], period=3,
                                    missing="interpolate"))
    out = logic.process([_batch([(1, "A", 1.0), (2, "A", 2.0), (3, "A", 3.0)])])
    assert out.columns["value"].tolist() == [1.0, 2.0, 3.0]
    assert recorder.events == [[[1.0, 1.0, 1.0]], [[1.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]]]


def test_interval_buckets_events_and_gap_policy_applies() -> None:
    recorder = Recorder()
    logic = _create(_recording_node(recorder, _source()["price"], period=2, interval=10))
    logic.process([_batch([(1, "A", 1.0), (5, "A", 5.0), (12, "A", 12.0), (14, "A", 14.0)])])
    assert recorder.events == [[[5.0, 12.0]], [[5.0, 14.0]]]

    failing = sd.udf(period=1, interval=10, missing="fail")(change)(_source()["price"],
                                                                    name="gappy")
    with pytest.raises(MissingDataError, match=r"node 'gappy', input 0 \(field 'price'\): "
                                               r"input 0, key 'A': event at 35"):
        _create(failing).process([_batch([(1, "A", 1.0), (35, "A", 2.0)])])


def test_wrong_shape_names_the_function() -> None:
    node = sd.udf(period=1)(wrong_length)(_source()["price"], name="bad")
    line = wrong_length.__code__.co_firstlineno
    with pytest.raises(
        UserFunctionOutputError,
        match=rf"node 'bad': user function {__name__}\.wrong_length \(line {line}\) returned "
              r"an array of shape \(3,\) and dtype float64 for 2 event\(s\); expected a float "
              r"array of shape \(2,\)",
    ):
        _create(node).process([_batch([(1, "A", 1.0), (2, "A", 2.0)])])
    words = sd.udf(period=1)(not_numbers)(_source()["price"], name="words")
    with pytest.raises(UserFunctionOutputError, match=r"not_numbers .*returned list \['up'\]"):
        _create(words).process([_batch([(1, "A", 1.0)])])


def test_numba_function_runs_vectorized() -> None:
    fast, slow = _source("fast"), _source("slow")
    node = sd.udf(period=2, shareable=False)(numba_spread)(fast["price"], slow["price"])
    out = _create(node).process([
        _batch([(1, "A", 1.0), (2, "A", 5.0)]),
        _batch([(1, "A", 2.0), (2, "A", 4.0)]),
    ])
    assert out.to_records() == [{"ts": 2, "key": "A", "value": 2.0}]


def test_no_function_attached_is_refused() -> None:
    node = make_node("user_function", [_source()], {"fields": ["price"]}, name="lost")
    with pytest.raises(GraphError, match="'lost' has no Python function attached"):
        _create(node)


def test_fields_must_match_the_inputs() -> None:
    with pytest.raises(SchemaMismatchError, match=r"1 input.* but 2 field"):
        make_node("user_function", [_source()], {"fields": ["price", "price"]}, name="f")
    with pytest.raises(SchemaMismatchError, match="'size'"):
        make_node("user_function", [_source()], {"fields": ["size"]}, name="f")


# -- what runs is what was hashed ----------------------------------------------------------
OFFSET = 1.0
KERNEL = np.array([1.0, 10.0])
SEEN: list[float] = []


def offset_last(prices: np.ndarray) -> np.ndarray:
    """The newest value plus a module-level offset."""
    return prices[:, -1] + OFFSET


def weighted(prices: np.ndarray) -> np.ndarray:
    """Each window weighted by a module-level array."""
    return prices @ KERNEL


@njit(cache=True)
def numba_offset(prices: np.ndarray) -> np.ndarray:
    """The newest value plus a module-level offset, compiled by numba."""
    out = np.empty(prices.shape[0])
    for e in range(prices.shape[0]):
        out[e] = prices[e, -1] + OFFSET
    return out


def remembers(prices: np.ndarray) -> np.ndarray:
    """Keeps state in a module-level list."""
    SEEN.append(1.0)
    return prices[:, -1]


def writes_kernel(prices: np.ndarray) -> np.ndarray:
    """Keeps state in a module-level array."""
    KERNEL[0] = prices[0, -1]
    return prices[:, -1]


def _values(node: sd.Node, rows: Sequence[Row]) -> list[float]:
    return list(_create(node).process([_batch(rows)]).columns["value"].tolist())


def test_udfs_made_in_a_loop_compute_with_their_own_values() -> None:
    # The lambdas bind k late (B023): the bug sd.udf's freezing fixes.
    scalers = [sd.udf(period=1)(lambda prices: prices[:, -1] * k) for k in (2.0, 3.0)]  # noqa: B023
    rows = [(1, "A", 1.0), (2, "A", 5.0)]
    assert [_values(s(_source()["price"]), rows) for s in scalers] == [[2.0, 10.0], [3.0, 15.0]]


def test_values_changed_after_decoration_do_not_change_what_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(globals(), "KERNEL", np.array([1.0, 10.0]))
    offsets = sd.udf(period=1)(offset_last)
    weights = sd.udf(period=2)(weighted)
    compiled = sd.udf(period=1)(numba_offset)
    monkeypatch.setitem(globals(), "OFFSET", 100.0)
    KERNEL[1] = 1000.0
    rows = [(1, "A", 1.0), (2, "A", 2.0)]
    assert _values(offsets(_source()["price"]), rows) == [2.0, 3.0]
    assert _values(weights(_source()["price"]), rows) == [21.0]
    assert _values(compiled(_source()["price"]), rows) == [2.0, 3.0]


def test_a_config_pickled_to_an_actor_runs_the_frozen_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray import cloudpickle

    monkeypatch.setitem(globals(), "KERNEL", np.array([1.0, 10.0]))
    offsets = sd.udf(period=1)(offset_last)(_source()["price"])
    writer = sd.udf(period=1)(writes_kernel)(_source()["price"])
    payloads = [cloudpickle.dumps(node.config()) for node in (offsets, writer)]
    monkeypatch.setitem(globals(), "OFFSET", 100.0)
    configs = [cloudpickle.loads(payload) for payload in payloads]
    batch = _batch([(1, "A", 1.0), (2, "A", 2.0)])
    user_function = lookup("user_function")
    assert user_function.create(configs[0]).process([batch]).columns["value"].tolist() == [
        2.0, 3.0
    ]
    with pytest.raises(ValueError, match=r"^assignment destination is read-only$"):
        user_function.create(configs[1]).process([batch])
    assert KERNEL.tolist() == [1.0, 10.0]


def test_a_shareable_udf_cannot_change_what_it_depends_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(globals(), "KERNEL", np.array([1.0, 10.0]))
    monkeypatch.setitem(globals(), "SEEN", [])
    rows = [(1, "A", 1.0)]
    with pytest.raises(TypeError) as caught:
        _values(sd.udf(period=1)(remembers)(_source()["price"]), rows)
    assert str(caught.value) == (
        "this list is a read-only copy, made by sd.udf, of a value that a shareable user "
        "function depends on: what runs must be exactly what was hashed. Work on a copy "
        "(list(x)), or build the node with udf(..., shareable=False) to run the function "
        "unshared, as it is"
    )
    with pytest.raises(ValueError, match=r"^assignment destination is read-only$"):
        _values(sd.udf(period=1)(writes_kernel)(_source()["price"]), rows)
    assert (SEEN, KERNEL.tolist()) == ([], [1.0, 10.0])
    assert _values(sd.udf(period=1, shareable=False)(remembers)(_source()["price"]), rows) == [
        1.0
    ]
    assert SEEN == [1.0]


# -- several inputs ------------------------------------------------------------------------
def test_events_are_distinct_ts_key_pairs_in_time_then_input_order() -> None:
    recorder = Recorder()
    node = _recording_node(recorder, _source("x")["price"], _source("y")["price"], period=1)
    out = _create(node).process([
        _batch([(1, "A", 1.0), (2, "A", 2.0), (3, "B", 3.0)]),
        _batch([(2, "A", 20.0), (3, "A", 30.0), (3, "B", 31.0)]),
    ])
    # (1, A) lacks y: skipped. At ts 3, B comes first: x (input 0) holds its first row.
    assert [(r["ts"], r["key"]) for r in out.to_records()] == [(2, "A"), (3, "B"), (3, "A")]
    assert recorder.events == [[[2.0], [20.0]], [[3.0], [31.0]], [[2.0], [30.0]]]


def test_input_with_no_value_for_the_key_is_skipped_even_when_interpolating() -> None:
    recorder = Recorder()
    node = _recording_node(recorder, _source("x")["price"], _source("y")["price"], period=2,
                           missing="interpolate")
    out = _create(node).process([_batch([(1, "A", 1.0), (2, "A", 2.0)]),
                                 _batch([(2, "A", 20.0)])])
    assert [(r["ts"], r["key"]) for r in out.to_records()] == [(2, "A")]
    assert recorder.events == [[[1.0, 2.0], [20.0, 20.0]]]


def test_window_from_before_the_batch_when_the_key_has_no_row_yet() -> None:
    recorder = Recorder()
    logic = _create(_recording_node(recorder, _source("x")["price"], _source("y")["price"],
                                    period=1))
    logic.process([_batch([(1, "A", 1.0)]), _batch([(1, "A", 10.0)])])
    logic.process([_batch([(2, "A", 2.0)]), _batch([(3, "A", 30.0)])])
    assert recorder.events == [[[1.0], [10.0]], [[2.0], [10.0]], [[2.0], [30.0]]]


def test_multi_input_fail_names_the_input_with_the_earliest_gap() -> None:
    # B has no y value yet (no gap: it is skipped); y's gap at 25 comes before x's at 31.
    node = sd.udf(period=1, interval=10, missing="fail")(numba_spread)(
        _source("x")["price"], _source("y")["price"], name="sp")
    message = r"^node 'sp', input 1 \(field 'price'\): input 1, key 'A': event at 25 follows"
    with pytest.raises(DataGapError, match=message) as caught:
        _create(node).process([_batch([(1, "A", 1.0), (2, "B", 2.0), (31, "A", 3.0)]),
                               _batch([(1, "A", 1.0), (25, "A", 5.0)])])
    assert caught.value.emitted is not None
    assert caught.value.emitted.to_records() == [{"ts": 1, "key": "A", "value": 0.0}]


def _run_diamond(batches: list[sd.Batch]) -> tuple[list[dict[str, Any]], Recorder]:
    source = _source("a")

    def doubled(prices: np.ndarray) -> np.ndarray:
        return prices[:, -1] * 2.0

    def tenfold(prices: np.ndarray) -> np.ndarray:
        return prices[:, -1] * 10.0

    b = sd.udf(period=1, shareable=False)(doubled)(source["price"], name="b")
    c = sd.udf(period=1, shareable=False)(tenfold)(source["price"], name="c")
    recorder = Recorder()
    d = _recording_node(recorder, b, c, period=1)
    graph = sd.Graph("diamond", outputs=[d])
    logics = {n.name: _create(n) for n in graph.nodes}
    records: list[dict[str, Any]] = []
    for batch in batches:
        outputs: dict[str, sd.Batch] = {"a": batch}
        for node in graph.nodes[1:]:
            outputs[node.name] = logics[node.name].process([outputs[i.name] for i in node.inputs])
        records += outputs["recorded"].to_records()
    return records, recorder


def test_diamond_computes_once_per_event_with_aligned_inputs() -> None:
    rows = [(1, "A", 1.0), (2, "A", 2.0), (3, "A", 3.0)]
    expected = [{"ts": t, "key": "A", "value": 12.0 * v} for t, _, v in rows]
    seen = [[[2.0], [10.0]], [[4.0], [20.0]], [[6.0], [30.0]]]
    one_by_one, recorder = _run_diamond([_batch([row]) for row in rows])
    assert one_by_one == expected
    assert recorder.events == seen and len(recorder.calls) == 3
    together, recorder = _run_diamond([_batch(rows)])
    assert together == expected
    assert recorder.events == seen and len(recorder.calls) == 1


def reference_aligned(steps: list[tuple[list[Row], list[Row]]], period: int,
                      missing: MissingPolicy) -> list[tuple[int, str, list[list[float]]]]:
    """(ts, key, windows) of every computed event, from plain per-key rings.

    Events run in time order, ties in input order; each event appends its own rows, so every
    input's ring holds exactly the input's rows for the key at or before the event's time.
    """
    rings: list[dict[str, deque[float]]] = [{}, {}]
    computed = []
    for inputs in steps:
        firsts = sorted((ts, i, position, key) for i, rows in enumerate(inputs)
                        for position, (ts, key, _) in enumerate(rows))
        events = list(dict.fromkeys((ts, key) for ts, _, _, key in firsts))
        for ts, key in events:
            windows = []
            for i, rows in enumerate(inputs):
                ring = rings[i].setdefault(key, deque(maxlen=period))
                ring.extend(value for t, k, value in rows if (t, k) == (ts, key))
                windows.append(list(ring))
            if all(len(w) == period for w in windows):
                computed.append((ts, key, windows))
            elif missing == "interpolate" and all(windows):
                computed.append((ts, key, [[w[0]] * (period - len(w)) + w for w in windows]))
    return computed


_VALUE = st.integers(0, 99).map(float)


@settings(max_examples=120, deadline=None)
@given(steps=aligned_steps([_VALUE], [_VALUE], max_steps=5, max_span=6), period=st.integers(1, 3),
       missing=st.sampled_from(["skip", "interpolate"]), cut=st.integers(0, 5))
def test_aligned_inputs_match_reference_across_a_snapshot(
    steps: list[tuple[list[Row], list[Row]]], period: int, missing: MissingPolicy, cut: int
) -> None:
    recorder = Recorder()
    node = _recording_node(recorder, _source("x")["price"], _source("y")["price"],
                           period=period, missing=missing)
    logic = _create(node)
    records = []
    for i, (x, y) in enumerate(steps):
        if i == cut:
            logic = _create(node, logic.snapshot())
        records += logic.process([_batch(x), _batch(y)]).to_records()
    expected = reference_aligned(steps, period, missing)
    assert [(r["ts"], r["key"]) for r in records] == [(ts, key) for ts, key, _ in expected]
    assert recorder.events == [windows for _, _, windows in expected]
    assert [r["value"] for r in records] == [w[0][-1] + w[1][-1] for _, _, w in expected]


def test_many_keys_across_inputs() -> None:
    keys = [f"k{i}" for i in range(3000)]
    node = sd.udf(period=1)(numba_spread)(_source("x")["price"], _source("y")["price"])
    logic = _create(node)
    logic.process([_batch([(1, k, float(i)) for i, k in enumerate(keys)]), _batch([])])
    out = logic.process([_batch([]), _batch([(2, k, 1.0) for k in keys])])
    assert out.key.tolist() == [k.encode() for k in keys]
    assert out.columns["value"].tolist() == [float(i) - 1.0 for i in range(3000)]
