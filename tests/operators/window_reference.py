"""Plain-Python references of the window operators, and a driver feeding both the same script.

A script is a list of rounds ``(events, watermark)``: a batch of ``(ts, key, value)`` events,
then the watermark advanced to ``watermark`` (None: not advanced). The references fold one
event at a time, with a list of events and running aggregates per window, as the operators'
docstrings describe.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import streamdag as sd
from streamdag.graph import Node
from streamdag.operator_registry import lookup

Event = tuple[int, str, float]
Round = tuple[list[Event], int | None]
Record = dict[str, Any]
AGGREGATIONS = ("sum", "mean", "min", "max", "count", "first", "last", "std")


@dataclass
class Window:
    """One window's events and aggregates, folded in arrival order."""

    start: int
    end: int
    values: list[float] = field(default_factory=list)
    events: list[tuple[int, int, float]] = field(default_factory=list)
    total: float = 0.0
    first: tuple[int, int, float] = (0, 0, 0.0)
    last: tuple[int, int, float] = (0, 0, 0.0)
    emitted: int = 0
    opened: int = 0

    def add(self, ts: int, seq: int, x: float) -> None:
        if not self.values:
            self.total, self.first, self.last = x, (ts, seq, x), (ts, seq, x)
        else:
            self.total += x
            self.first = min(self.first, (ts, seq, x), key=lambda e: (e[0], e[1]))
            self.last = max(self.last, (ts, seq, x), key=lambda e: (e[0], e[1]))
        self.values.append(x)
        self.events.append((ts, seq, x))

    def absorb(self, other: Window) -> None:
        self.total += other.total
        self.first = min(self.first, other.first, key=lambda e: (e[0], e[1]))
        self.last = max(self.last, other.last, key=lambda e: (e[0], e[1]))
        self.values += other.values
        self.events += other.events
        self.emitted = max(self.emitted, other.emitted)
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)

    def record(self, key: str, aggs: Sequence[str], ts: int | None = None, revision: int = 0,
               early: bool = False, late: bool = False,
               function: Callable[[np.ndarray], float] | None = None) -> Record:
        values = self.values
        computed = {
            "sum": self.total, "mean": self.total / len(values), "min": min(values),
            "max": max(values), "count": len(values), "first": self.first[2],
            "last": self.last[2],
            "std": statistics.stdev(values) if len(values) > 1 else math.nan,
        }
        return {"ts": self.end - 1 if ts is None else ts, "key": key, "start": self.start,
                "end": self.end, **{name: computed[name] for name in aggs},
                **({} if function is None else {function.__name__: float(function(np.array(
                    [x for _, _, x in sorted(self.events)], dtype=np.float64)))}),
                "revision": revision, "early": early, "late": late}


class ReferenceWindows:
    """Tumbling (step == size), hopping and session windows, one event at a time."""

    def __init__(self, aggs: Sequence[str], *, size: int = 0, step: int = 0, gap: int = 0,
                 lateness: int = 0, late: str = "drop", early_every: int = 0,
                 early_interval: int = 0,
                 function: Callable[[np.ndarray], float] | None = None) -> None:
        self.aggs, self.size, self.step, self.gap = aggs, size, step, gap
        self.lateness, self.side, self.early = lateness, late == "side", early_every
        self.interval = early_interval
        self.function = function
        self.windows: dict[str, list[Window]] = {}
        self.watermark: int | None = None
        self.seq = 0
        self.opened = 0
        self.late_dropped = 0

    def _open(self, start: int, end: int) -> Window:
        self.opened += 1
        return Window(start, end, opened=self.opened)

    def _past(self, end: int, extra: int = 0) -> bool:
        return self.watermark is not None and end + extra <= self.watermark

    def process(self, events: list[Event]) -> list[Record]:
        out: list[Record] = []
        for ts, key, x in events:
            seq, self.seq = self.seq, self.seq + 1
            windows = self.windows.setdefault(key, [])
            touched = self._sessions(windows, ts) if self.gap else self._fixed(windows, ts)
            if touched is None:
                self.late_dropped += 1
                if self.side:
                    start = ts // self.step * self.step if not self.gap else ts
                    alone = Window(start, start + (self.size or self.gap))
                    alone.add(ts, seq, x)
                    out.append(alone.record(key, self.aggs, ts=ts, late=True,
                                             function=self.function))
                continue
            for window in touched:
                window.add(ts, seq, x)
                if self._past(window.end):
                    out.append(window.record(key, self.aggs, revision=window.emitted,
                                             function=self.function))
                    window.emitted += 1
                elif self.early and len(window.values) % self.early == 0:
                    out.append(window.record(key, self.aggs, revision=window.emitted,
                                             early=True, function=self.function))
        return out

    def _fixed(self, windows: list[Window], ts: int) -> list[Window] | None:
        latest = ts // self.step * self.step
        starts = [s for s in range(latest, ts - self.size, -self.step)]
        live = [s for s in starts if not self._past(s + self.size, self.lateness)]
        if not live:
            return None if starts else []
        touched = []
        for start in live:
            window = next((w for w in windows if w.start == start), None)
            if window is None:
                window = self._open(start, start + self.size)
                windows.append(window)
            touched.append(window)
        return touched

    def _sessions(self, windows: list[Window], ts: int) -> list[Window] | None:
        overlapping = sorted((w for w in windows if w.start - self.gap < ts < w.end),
                             key=lambda w: w.start)
        if not overlapping:
            if self._past(ts + self.gap, self.lateness):
                return None
            window = self._open(ts, ts + self.gap)
            windows.append(window)
            return [window]
        kept = overlapping[0]
        for other in overlapping[1:]:
            kept.absorb(other)
            windows.remove(other)
        kept.start, kept.end = min(kept.start, ts), max(kept.end, ts + self.gap)
        return [kept]

    def _boundaries(self, window: Window) -> range:
        # A window's boundaries from its start on; a session's at multiples of the interval
        # after its start and before its (current) end.
        if not self.gap:
            return range(window.start + self.interval, window.end, self.interval)
        return range((window.start // self.interval + 1) * self.interval, window.end,
                     self.interval)

    def on_watermark(self, watermark: int) -> list[Record]:
        passed = self.watermark
        self.watermark = watermark if passed is None else max(passed, watermark)
        # Emissions by the time they fire; at one time early updates first, then by opening.
        due: list[tuple[int, int, int, str, Window, int | None]] = [
            (w.end, 1, w.opened, key, w, None) for key, ws in self.windows.items()
            for w in ws if (passed is None or w.end > passed) and w.end <= self.watermark]
        if self.interval:
            due += [(b, 0, w.opened, key, w, b) for key, ws in self.windows.items() for w in ws
                    for b in self._boundaries(w)
                    if (passed is None or b > passed) and b <= self.watermark]
        out = []
        for *_, key, window, boundary in sorted(due, key=lambda d: d[:3]):
            if boundary is not None:
                part = Window(window.start, window.end)
                for ts, seq, x in window.events:
                    if ts < boundary:
                        part.add(ts, seq, x)
                if self.gap:  # the session as its events before the boundary make it
                    part.end = max(ts for ts, _, _ in part.events) + self.gap
                if part.values:
                    out.append(part.record(key, self.aggs, ts=boundary - 1,
                                           revision=window.emitted, early=True,
                                           function=self.function))
                continue
            out.append(window.record(key, self.aggs, revision=window.emitted,
                                     function=self.function))
            window.emitted += 1
        for key, ws in self.windows.items():
            self.windows[key] = [w for w in ws if not self._past(w.end, self.lateness)]
        return out


def batch_of(events: Sequence[Event]) -> sd.Batch:
    """Events as one batch with a float64 ``value`` column."""
    if not events:
        return sd.Batch.empty(sd.Schema.of(value="float64"))
    return sd.Batch.from_columns(ts=np.array([e[0] for e in events], dtype=np.int64),
                                 key=[e[1] for e in events],
                                 value=np.array([e[2] for e in events], dtype=np.float64))


def run_operator(node: Node, script: Sequence[Round], cuts: Sequence[int] = (),
                 restore_after: int | None = None) -> tuple[list[Record], int]:
    """Records and late count of ``node`` over the script; each round's batch cut at ``cuts``."""
    definition = lookup(node.operator)
    logic: Any = definition.create(node.config())
    out: list[Record] = []
    for index, (events, watermark) in enumerate(script):
        bounds = [0, *sorted(c % (len(events) + 1) for c in cuts), len(events)]
        for a, b in itertools.pairwise(bounds):
            out += logic.process([batch_of(events[a:b])]).to_records()
        if watermark is not None:
            closed = logic.on_watermark(watermark)
            out += closed.to_records() if closed is not None else []
        if index == restore_after:
            logic = definition.create(node.config(), logic.snapshot())
    return out, int(getattr(logic, "late_dropped", 0))


def run_reference(reference: ReferenceWindows, script: Sequence[Round]) -> list[Record]:
    """The reference's records over the script."""
    out: list[Record] = []
    for events, watermark in script:
        out += reference.process(events)
        if watermark is not None:
            out += reference.on_watermark(watermark)
    return out


def assert_same(actual: list[Record], expected: list[Record]) -> None:
    """Equal records; std within rounding (Welford's update against a two-pass stdev)."""
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.keys() == want.keys()
        for name, value in want.items():
            if name == "std" and not math.isnan(value):
                assert got[name] == pytest.approx(value, rel=1e-7, abs=1e-9), (got, want)
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[name]), (name, got, want)
            else:
                assert got[name] == value, (name, got, want)
