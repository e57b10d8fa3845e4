"""lookup_join by event time: against a plain-Python table as of each event, whatever the
interleaving and batching of the two inputs, and a table gone idle holding nothing back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from runtime.dataplane.messages import IDLE, EndOfStream, Envelope, Payload, Watermark
from runtime.dataplane.worker import NodeWorker
from streamdag.errors import SchemaMismatchError
from streamdag.operator_registry import lookup

TRADES = sd.source("trades", topic="t", key="k", schema={"size": "float64"})
LIMITS = sd.source("limits", topic="l", key="k", schema={"max": "float64"})
Event = tuple[int, str, float]


def _batch(events: list[Event], field: str) -> sd.Batch:
    return sd.Batch.from_columns(ts=np.array([e[0] for e in events], dtype=np.int64),
                                 key=[e[1] for e in events] or np.empty(0, "S1"),
                                 **{field: np.array([e[2] for e in events], dtype=np.float64)})


def _as_of(left: list[Event], table: list[Event]) -> list[tuple[int, str, float, float]]:
    """The reference: each left event (in time order) with its key's newest row at or before."""
    joined = []
    for t, key, size in sorted(left):
        rows = [(ts, value) for ts, k, value in table if k == key and ts <= t]
        joined.append((t, key, size, max(rows)[1] if rows else math.nan))
    return joined


def _found(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["ts"], r["key"], r["size"], r["limit_max"]) for r in records]


def _same(found: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    return repr(found) == repr(want)  # NaN equals NaN as text


@st.composite
def _events(draw: st.DrawFn, base: float) -> list[Event]:
    # Unique times per input (left) and per key and time (table), so that the reference is
    # one answer; values unique, so a test sees which row matched.
    stamps = draw(st.lists(st.integers(0, 40), unique=True, max_size=14))
    return [(t, draw(st.sampled_from("ABC")), base + n) for n, t in enumerate(stamps)]


@st.composite
def _deliveries(draw: st.DrawFn, events: list[Event]) -> list[tuple[list[Event], int | None]]:
    """``events`` in an arbitrary order and chunks, each chunk with the watermark after it:
    the oldest time still to come (never past an event not yet delivered)."""
    order = draw(st.permutations(events))
    chunks: list[tuple[list[Event], int | None]] = []
    start = 0
    while start < len(order):
        size = draw(st.integers(1, 4))
        rest = order[start + size:]
        chunks.append((list(order[start:start + size]),
                       min(e[0] for e in rest) if rest else None))
        start += size
    return chunks


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_lookup_join_equals_a_plain_table_as_of_each_event_in_any_interleaving(
        data: st.DataObject) -> None:
    left = data.draw(_events(100.0))
    table = data.draw(_events(200.0))
    worker = NodeWorker(TRADES.lookup_join(LIMITS, prefix="limit_", name="j").config())
    worker.connect("trades", 0)
    worker.connect("limits", 1)
    plan = [("trades", chunk) for chunk in data.draw(_deliveries(left))] + [
        ("limits", chunk) for chunk in data.draw(_deliveries(table))]
    schedule = data.draw(st.permutations(range(len(plan))))
    # Per input, its chunks keep their order; which input goes next is arbitrary.
    queues: dict[str, list[tuple[list[Event], int | None]]] = {"trades": [], "limits": []}
    for edge, chunk in plan:
        queues[edge].append(chunk)
    seq = {"trades": 0, "limits": 0}
    out: list[Payload] = []
    for turn in schedule:
        edge = plan[turn][0]
        if not queues[edge]:
            continue
        events, watermark = queues[edge].pop(0)
        field = "size" if edge == "trades" else "max"
        payloads: tuple[Payload, ...] = (_batch(events, field),)
        if watermark is not None:
            payloads += (Watermark(watermark),)
        out += worker.accept(Envelope(edge, 0, seq[edge], payloads[0], trailing=payloads[1:]))
        seq[edge] += 1
    for edge in ("trades", "limits"):
        out += worker.accept(Envelope(edge, 0, seq[edge], EndOfStream()))
    records = [r for p in out if isinstance(p, sd.Batch) for r in p.to_records()]
    assert _same(_found(records), _as_of(left, table))
    assert out[-1] == EndOfStream()


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_lookup_join_restored_from_a_snapshot_goes_on_as_if_never_stopped(
        data: st.DataObject) -> None:
    left = sorted(data.draw(_events(100.0)))
    table = sorted(data.draw(_events(200.0)))
    cut = data.draw(st.integers(0, 41))
    node = TRADES.lookup_join(LIMITS, prefix="limit_", name="j")
    definition = lookup("lookup_join")
    logic: Any = definition.create(node.config())
    first = logic.process([_batch([e for e in left if e[0] < cut], "size"),
                           _batch([e for e in table if e[0] < cut], "max")])
    logic = definition.create(node.config(), logic.snapshot())
    second = logic.process([_batch([e for e in left if e[0] >= cut], "size"),
                            _batch([e for e in table if e[0] >= cut], "max")])
    assert _same(_found(first.to_records() + second.to_records()), _as_of(left, table))


def test_a_table_gone_idle_never_holds_the_left_stream_back() -> None:
    worker = NodeWorker(TRADES.lookup_join(LIMITS, prefix="limit_", name="j").config())
    worker.connect("trades", 0)
    worker.connect("limits", 1)
    # The table's only records (a compacted topic read to its end), then it goes idle.
    assert worker.accept(Envelope("limits", 0, 0, _batch([(1, "A", 10.0), (600, "A", 20.0)],
                                                         "max"), trailing=(Watermark(601),))) == []
    assert worker.accept(Envelope("trades", 0, 0, _batch([(500, "A", 1.0), (900, "B", 2.0),
                                                          (700, "A", 3.0)], "size"))) == []
    out = worker.accept(Envelope("trades", 0, 1, Watermark(1000)))
    # Up to the table's watermark, while it is active...
    assert _found(out[0].to_records()) == [(500, "A", 1.0, 10.0)]
    assert out[1:] == [Watermark(601)]
    out = worker.accept(Envelope("limits", 0, 1, IDLE))
    # ...and the idle table holds nothing back: the trades go up to their own watermark.
    assert repr(_found(out[0].to_records())) == repr([(700, "A", 3.0, 20.0),
                                                      (900, "B", 2.0, math.nan)])
    assert out[1:] == [Watermark(1000)]
    worker.accept(Envelope("trades", 0, 2, EndOfStream()))
    assert worker.accept(Envelope("limits", 0, 2, EndOfStream()))[-1] == EndOfStream()


def test_a_table_field_clashing_with_a_left_field_is_refused_with_the_fix() -> None:
    clash = sd.source("c", topic="c", key="k", schema={"size": "float64"})
    with pytest.raises(SchemaMismatchError, match=r"lookup_join: table field 'size' becomes "
                                                     r"'size'.*pass another prefix="):
        TRADES.lookup_join(clash, prefix="", name="j")
