"""Tumbling, hopping, session and count windows against plain-Python references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from window_reference import (
    AGGREGATIONS,
    Event,
    ReferenceWindows,
    Round,
    Window,
    assert_same,
    batch_of,
    run_operator,
    run_reference,
)

import streamdag as sd
from streamdag.errors import GraphError, ParamError, SchemaMismatchError, SpecError
from streamdag.operator_registry import lookup
from streamdag.spec import dumps, loads

TICKS = sd.source("ticks", topic="ticks", key="symbol", schema={"value": "float64"})


@st.composite
def scripts(draw: st.DrawFn, late_range: int = 30, in_order: bool = True) -> list[Round]:
    """Rounds of events around the watermark (some late), each followed by a watermark;
    ``in_order=False``: on-time events in any order too."""
    rounds: list[Round] = []
    watermark = 0
    for _ in range(draw(st.integers(1, 8))):
        events = draw(st.lists(
            st.tuples(st.integers(-late_range, 40), st.sampled_from("ABC"),
                      st.integers(-400, 400).map(lambda n: n / 4)),
            max_size=25))
        # On-time events come in time order, as the runtime releases them; late ones anywhere.
        on_time = [e for e in events if e[0] >= 0]
        if in_order:
            on_time.sort(key=lambda e: e[0])
        late = [e for e in events if e[0] < 0]
        batch: list[Event] = [(watermark + dt, key, x) for dt, key, x in late + on_time]
        step = draw(st.one_of(st.none(), st.integers(0, 40)))
        if step is not None:
            watermark += step
        rounds.append((batch, None if step is None else watermark))
    return rounds


options = st.fixed_dictionaries({
    "lateness": st.sampled_from([0, 7, 25]),
    "late": st.sampled_from(["drop", "side"]),
    "early_every": st.sampled_from([0, 2, 3]),
    "early_interval": st.sampled_from([0, 0, 2, 3, 4]),
})
session_options = st.fixed_dictionaries({
    "lateness": st.sampled_from([0, 7, 25]),
    "late": st.sampled_from(["drop", "side"]),
    "early_every": st.sampled_from([0, 2, 3]),
    # Shorter and longer than the gaps (3, 8, 15): a pane may hold several sessions.
    "early_interval": st.sampled_from([0, 1, 2, 4, 5, 20]),
})
aggregation_lists = st.lists(st.sampled_from(AGGREGATIONS), min_size=1, max_size=8,
                             unique=True)
cut_lists = st.lists(st.integers(0, 30), max_size=4)


def _check(node: sd.Node, reference: ReferenceWindows, script: list[Round], cuts: list[int],
           restore_after: int | None) -> None:
    expected = run_reference(reference, script)
    actual, dropped = run_operator(node, script)
    assert_same(actual, expected)
    assert dropped == reference.late_dropped
    # Batching and a snapshot in between change nothing.
    assert_same(run_operator(node, script, cuts, restore_after)[0], expected)


@settings(max_examples=40, deadline=None)
@given(scripts(), st.sampled_from([5, 10, 16]), options, aggregation_lists, cut_lists,
       st.one_of(st.none(), st.integers(0, 7)))
def test_tumbling_window_matches_reference(script: list[Round], size: int, opts: dict[str, Any],
                                           aggs: list[str], cuts: list[int],
                                           restore_after: int | None) -> None:
    node = TICKS.tumbling_window(size, agg=aggs, name="w", **opts)
    _check(node, ReferenceWindows(aggs, size=size, step=size, **opts), script, cuts,
           restore_after)


@settings(max_examples=40, deadline=None)
@given(scripts(), st.sampled_from([(10, 5), (12, 5), (6, 9), (9, 3)]), options,
       aggregation_lists, cut_lists, st.one_of(st.none(), st.integers(0, 7)))
def test_hopping_window_matches_reference(script: list[Round], size_step: tuple[int, int],
                                          opts: dict[str, Any], aggs: list[str],
                                          cuts: list[int], restore_after: int | None) -> None:
    size, step = size_step
    node = TICKS.hopping_window(size, step, agg=aggs, name="w", **opts)
    _check(node, ReferenceWindows(aggs, size=size, step=step, **opts), script, cuts,
           restore_after)


@settings(max_examples=150, deadline=None)
@given(st.booleans().flatmap(lambda in_order: scripts(in_order=in_order)),
       st.sampled_from([3, 8, 15]), session_options, aggregation_lists, cut_lists,
       st.one_of(st.none(), st.integers(0, 7)))
def test_session_window_matches_reference(script: list[Round], gap: int, opts: dict[str, Any],
                                          aggs: list[str], cuts: list[int],
                                          restore_after: int | None) -> None:
    node = TICKS.session_window(gap, agg=aggs, name="s", **opts)
    _check(node, ReferenceWindows(aggs, gap=gap, **opts), script, cuts, restore_after)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from("ABC"),
                          st.integers(-400, 400).map(lambda n: n / 4)), max_size=60),
       st.integers(1, 5), aggregation_lists, cut_lists, st.one_of(st.none(), st.integers(0, 7)))
def test_count_window_matches_reference(steps: list[Event], count: int, aggs: list[str],
                                        cuts: list[int], restore_after: int | None) -> None:
    events, ts = [], 0
    for dt, key, x in steps:
        ts += dt
        events.append((ts, key, x))
    expected: list[dict[str, Any]] = []
    open_windows: dict[str, list[Event]] = {}
    for event in events:
        held = open_windows.setdefault(event[1], [])
        held.append(event)
        if len(held) == count:
            window = reference_window(held)
            expected.append(window.record(event[1], aggs, ts=event[0]))
            held.clear()
    node = TICKS.count_window(count, agg=aggs, name="c")
    rounds: list[Round] = [(events[i : i + 7], None) for i in range(0, len(events), 7)]
    assert_same(run_operator(node, rounds)[0], expected)
    assert_same(run_operator(node, rounds, cuts, restore_after)[0], expected)


def reference_window(events: list[Event]) -> Window:
    """A reference window of ``events`` in order: start = first ts, end = last ts + 1."""
    window = Window(events[0][0], events[-1][0] + 1)
    for seq, (ts, _, x) in enumerate(events):
        window.add(ts, seq, x)
    return window


def weighted(values: np.ndarray) -> float:
    """An order-sensitive function of a window's values."""
    return float(np.dot(values, np.arange(1, len(values) + 1)))


@settings(max_examples=30, deadline=None)
@given(scripts(), st.sampled_from(["tumbling", "hopping", "session"]), options,
       st.lists(st.sampled_from(AGGREGATIONS), max_size=2, unique=True), cut_lists,
       st.one_of(st.none(), st.integers(0, 7)))
def test_a_user_function_sees_each_window_s_values_in_event_time_order(
        script: list[Round], kind: str, opts: dict[str, Any], aggs: list[str],
        cuts: list[int], restore_after: int | None) -> None:
    if kind == "tumbling":
        node = TICKS.tumbling_window(10, agg=[*aggs, weighted], name="w", **opts)
        reference = ReferenceWindows(aggs, size=10, step=10, function=weighted, **opts)
    elif kind == "hopping":
        node = TICKS.hopping_window(12, 5, agg=[*aggs, weighted], name="w", **opts)
        reference = ReferenceWindows(aggs, size=12, step=5, function=weighted, **opts)
    else:
        node = TICKS.session_window(8, agg=[*aggs, weighted], name="w", **opts)
        reference = ReferenceWindows(aggs, gap=8, function=weighted, **opts)
    _check(node, reference, script, cuts, restore_after)


def test_a_window_function_is_part_of_the_node_id_and_never_goes_into_a_spec() -> None:
    def spread(values: np.ndarray) -> float:
        return float(values.max() - values.min())

    def spread_too(values: np.ndarray) -> float:
        return float(values.max() - values.min())

    def other(values: np.ndarray) -> float:
        return float(values.min())

    other.__name__ = "spread"
    one = TICKS.tumbling_window(10, agg=spread, name="w")
    assert one.output_schema.names == ("start", "end", "spread", "revision", "early", "late")
    assert TICKS.tumbling_window(10, agg=spread, name="w").node_id == one.node_id
    assert TICKS.tumbling_window(10, agg=other, name="w").node_id != one.node_id
    assert TICKS.tumbling_window(10, agg=spread_too, name="w").node_id != one.node_id
    with pytest.raises(SpecError, match="graph specs are data only"):
        dumps(sd.Graph("g", outputs=[one]), "toml")
    spec = dumps(sd.Graph("g", outputs=[TICKS.tumbling_window(10, agg="sum", name="w")]),
                 "toml").replace('agg = [\n    "sum",\n]', 'agg = []\nfunction_output = "spread"')
    assert "function_output" in spec
    with pytest.raises(SpecError, match="function_output"):
        loads(spec, "toml")
    with pytest.raises(GraphError, match="takes one function"):
        TICKS.session_window(10, agg=[spread, other])


def test_late_event_revises_a_closed_window_then_goes_to_the_side_output() -> None:
    node = TICKS.tumbling_window("10ns", agg=["sum", "count"], lateness=5, late="side",
                                 name="w")
    records, dropped = run_operator(node, [
        ([(1, "A", 1.0), (4, "A", 2.0)], 10),
        ([(3, "A", 4.0)], 15),   # late, within the lateness: a revision; then 10 + 5 passes
        ([(2, "A", 8.0)], None),  # later than the lateness: a side record
    ])
    assert [(r["ts"], r["start"], r["end"], r["sum"], r["count"], r["revision"], r["late"])
            for r in records] == [
        (9, 0, 10, 3.0, 2, 0, False), (9, 0, 10, 7.0, 3, 1, False), (2, 0, 10, 8.0, 1, 0, True)
    ]
    assert dropped == 1


def test_refuses_unknown_or_repeated_aggregations_and_missing_fields() -> None:
    with pytest.raises(ParamError, match="unknown aggregation 'median'"):
        TICKS.tumbling_window(10, agg="median")
    with pytest.raises(ParamError, match="names an aggregation twice"):
        TICKS.session_window(10, agg=["sum", "sum"])
    with pytest.raises(SchemaMismatchError, match="needs field 'price'"):
        TICKS.count_window(3, agg="sum", field="price")
    with pytest.raises(ParamError, match="over the maximum of 1000"):
        TICKS.hopping_window("1h", "1s", agg="sum")
    with pytest.raises(GraphError, match="set the window length with size="):
        TICKS.tumbling_window(10, agg="sum", interval="1s")


def test_window_nodes_round_trip_through_a_spec() -> None:
    graph = sd.Graph("windows", outputs=[
        TICKS.tumbling_window("1m", agg=["mean", "std"], lateness="5s", late="side",
                              early_interval="10s", name="t"),
        TICKS.hopping_window("1m", "10s", agg="max", early_every=100, name="h"),
        TICKS.session_window("30s", agg="count", name="s"),
        TICKS.count_window(20, agg="last", name="c"),
    ])
    loaded = loads(dumps(graph, "toml"), "toml")
    assert loaded.node_ids == graph.node_ids


def test_empty_batch_gives_an_empty_result_of_the_output_schema() -> None:
    node = TICKS.tumbling_window(10, agg="mean", name="w")
    logic: Any = lookup("tumbling_window").create(node.config())
    assert logic.process([batch_of([])]).schema == node.output_schema


@pytest.mark.parametrize(("size", "step", "interval"), [(10, 10, 4), (9, 3, 3), (8, 2, 4),
                                                        (12, 5, 4)])
def test_early_interval_updates_do_not_depend_on_batching_or_watermark_steps(
        size: int, step: int, interval: int) -> None:
    events: list[Event] = [(t, "AB"[t % 3 == 0], float(t * t % 7)) for t in range(0, 40)]
    aggs = ["sum", "count", "first", "last", "std"]
    node = TICKS.hopping_window(size, step, agg=[*aggs, weighted], early_interval=interval,
                                name="w")
    # Every event at once then one watermark; a watermark after each event; events ahead of
    # a watermark that lags by 7: the early updates come out the same.
    at_once: list[Round] = [(events, 100)]
    one_by_one: list[Round] = [([e], e[0]) for e in events] + [([], 100)]
    lagging: list[Round] = [(events[i : i + 5], max(0, i - 7)) for i in range(0, 40, 5)]
    lagging.append(([], 100))
    expected = run_reference(ReferenceWindows(aggs, size=size, step=step, function=weighted,
                                              early_interval=interval), at_once)
    assert sum(r["early"] for r in expected) > 10
    for script in (at_once, one_by_one, lagging):
        actual, _ = run_operator(node, script, cuts=[3, 11], restore_after=0)
        assert_same(actual, expected)


def test_early_interval_is_part_of_the_node_id_and_refused_where_it_cannot_fire() -> None:
    plain = TICKS.tumbling_window("1m", agg="sum", name="w")
    every_10s = TICKS.tumbling_window("1m", agg="sum", early_interval="10s", name="w")
    assert every_10s.config().params["early_interval"] == 10_000_000_000
    assert len({plain.node_id, every_10s.node_id,
                TICKS.tumbling_window("1m", agg="sum", early_interval="20s", name="w").node_id,
                TICKS.tumbling_window("1m", agg="sum", early_every=10, name="w").node_id}) == 4
    with pytest.raises(ParamError, match="not shorter than the window size"):
        TICKS.tumbling_window("1m", agg="sum", early_interval="1m")
    with pytest.raises(ParamError, match="over the maximum of 1000; use a larger"):
        TICKS.hopping_window("1h", "1m", agg="sum", early_interval="1s")
    with pytest.raises(ParamError, match=r"session_window: early_interval 1000000000 ns gives "
                                         r"each event up to 1800 early updates"):
        TICKS.session_window("30m", agg="sum", early_interval="1s")
    # A spec round-trips, a session one too, and a spec is refused as the SDK call is.
    spec = dumps(sd.Graph("g", outputs=[every_10s]), "toml")
    assert "early_interval = 10000000000" in spec
    assert loads(spec, "toml").node_ids == sd.Graph("g", outputs=[every_10s]).node_ids
    sessions = TICKS.session_window("30s", agg="sum", early_interval="10s", name="s")
    assert sessions.node_id != TICKS.session_window("30s", agg="sum", name="s").node_id
    session_spec = dumps(sd.Graph("g", outputs=[sessions]), "toml")
    assert loads(session_spec, "toml").node_ids == sd.Graph("g", outputs=[sessions]).node_ids
    with pytest.raises(ParamError, match="session_window: early_interval 1 ns gives each"):
        loads(session_spec.replace("early_interval = 10000000000", "early_interval = 1"),
              "toml")


def test_early_interval_under_a_watermark_at_the_int64_maximum() -> None:
    top = int(np.iinfo(np.int64).max)
    node = TICKS.tumbling_window(10, agg="count", early_interval=4, name="w")
    script: list[Round] = [([(1, "A", 1.0), (5, "A", 2.0), (12, "A", 4.0)], 3), ([], top)]
    expected = run_reference(ReferenceWindows(["count"], size=10, step=10, early_interval=4),
                             script)
    assert [(r["ts"], r["count"], r["early"]) for r in expected] == [
        (3, 1, True), (7, 2, True), (9, 2, False), (13, 1, True), (17, 1, True),
        (19, 1, False)]
    assert_same(run_operator(node, script)[0], expected)


def test_session_early_updates_at_multiples_of_the_interval_over_events_before_them() -> None:
    # Key A: sessions 1..7 and 12, which the event at 9 joins (the later one's head goes to a
    # pane), then 21 and 30; key B: sessions shorter than the interval, two in one pane.
    node = TICKS.session_window(5, agg=["sum", "count"], early_interval=8, name="s")
    events: list[Event] = [(1, "A", 1.0), (0, "B", 1.0), (5, "A", 2.0), (6, "B", 2.0),
                           (12, "A", 4.0), (7, "A", 8.0), (9, "A", 16.0), (17, "B", 4.0),
                           (21, "A", 32.0), (30, "A", 64.0)]
    expected = [
        # boundary 8: A's events before it (1, 5, 7: it ends at 7 + 5), B's session at 6
        (7, "A", 1, 12, 11.0, 3, True), (7, "B", 6, 11, 2.0, 1, True),
        (4, "B", 0, 5, 1.0, 1, False), (10, "B", 6, 11, 2.0, 1, False),
        # boundary 16: A's merged session 1..12, open until 17
        (15, "A", 1, 17, 31.0, 5, True), (16, "A", 1, 17, 31.0, 5, False),
        (21, "B", 17, 22, 4.0, 1, False),
        (23, "A", 21, 26, 32.0, 1, True), (25, "A", 21, 26, 32.0, 1, False),
        (31, "A", 30, 35, 64.0, 1, True), (34, "A", 30, 35, 64.0, 1, False),
    ]
    at_once: list[Round] = [(events, 40)]
    by_event: list[Round] = [([e], None) for e in events] + [([], 40)]
    # The watermark passes 8 before 9 arrives, or after 9 and 21 arrived.
    stepping: list[Round] = [(events[:6], 8), (events[6:8], 9), ([], 17), (events[8:], 30),
                             ([], 40)]
    ahead: list[Round] = [(events[:9], 8), (events[9:], 20), ([], 40)]
    for script in (at_once, by_event, stepping, ahead):
        records = run_operator(node, script, cuts=[2, 5], restore_after=0)[0]
        got = [(r["ts"], r["key"], r["start"], r["end"], r["sum"], r["count"], r["early"])
               for r in records]
        assert sorted(got) == sorted(expected), script
        assert_same(records, run_reference(
            ReferenceWindows(["sum", "count"], gap=5, early_interval=8), script))


def test_session_early_updates_under_a_watermark_at_the_int64_maximum() -> None:
    top = int(np.iinfo(np.int64).max)
    node = TICKS.session_window(6, agg="count", early_interval=4, name="s")
    script: list[Round] = [([(1, "A", 1.0), (5, "A", 2.0), (14, "A", 4.0)], 3), ([], top)]
    expected = run_reference(ReferenceWindows(["count"], gap=6, early_interval=4), script)
    assert [(r["ts"], r["end"], r["count"], r["early"]) for r in expected] == [
        (3, 7, 1, True), (7, 11, 2, True), (10, 11, 2, False), (15, 20, 1, True),
        (19, 20, 1, False)]
    assert_same(run_operator(node, script)[0], expected)
