"""Inline SVG for the HTML report: line charts with signal markers, bars, and the plan's graph.

Everything is drawn here as text; the page needs no script library and no network.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PALETTE", "Markers", "Series", "bar_chart", "graph_drawing", "line_chart"]

#: Colours of successive series (colour-blind safe, Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")

_MAX_POINTS = 1500
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 64, 12, 26, 34


@dataclass(frozen=True)
class Series:
    """A line: x (event time, ns) and y values."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str


@dataclass(frozen=True)
class Markers:
    """Signals: an up triangle where ``up`` is true, a down triangle elsewhere."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    up: Sequence[bool]
    colors: tuple[str, str] = ("#009E73", "#D55E00")


@dataclass
class _Frame:
    """The plotting area and the value ranges it maps."""

    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    parts: list[str] = field(default_factory=list)

    def x(self, value: float) -> float:
        low, high = self.x_range
        span = (high - low) or 1.0
        return _PAD_LEFT + (value - low) / span * (self.width - _PAD_LEFT - _PAD_RIGHT)

    def y(self, value: float) -> float:
        low, high = self.y_range
        span = (high - low) or 1.0
        return self.height - _PAD_BOTTOM - (value - low) / span * (
            self.height - _PAD_TOP - _PAD_BOTTOM)


def _escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def _range(values: list[np.ndarray]) -> tuple[float, float]:
    finite = [v[np.isfinite(v)] for v in values if len(v)]
    joined = np.concatenate(finite) if finite else np.empty(0)
    if not len(joined):
        return (0.0, 1.0)
    low, high = float(joined.min()), float(joined.max())
    margin = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return (low - margin, high + margin)


def _thinned(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # A polyline of more points than pixels draws nothing more.
    if len(xs) <= _MAX_POINTS:
        return xs, ys
    step = int(np.ceil(len(xs) / _MAX_POINTS))
    return xs[::step], ys[::step]


def line_chart(
    title: str,
    series: Sequence[Series],
    markers: Sequence[Markers] = (),
    *,
    x_labels: tuple[str, str] = ("", ""),
    width: int = 760,
    height: int = 240,
) -> str:
    """An SVG line chart: one polyline per series, triangles for markers, axes and a legend.

    >>> svg = line_chart("t", [Series("price", [0, 1, 2], [1.0, 2.0, 1.5], "#000")])
    >>> svg.count("<polyline"), 'class="chart"' in svg
    (1, True)
    """
    arrays = [(np.asarray(s.xs, dtype=float), np.asarray(s.ys, dtype=float)) for s in series]
    xs_all = [x for x, _ in arrays] + [np.asarray(m.xs, dtype=float) for m in markers]
    frame = _Frame(width, height, _range(xs_all), _range(
        [y for _, y in arrays] + [np.asarray(m.ys, dtype=float) for m in markers]))
    parts = frame.parts
    bottom, right = height - _PAD_BOTTOM, width - _PAD_RIGHT
    parts.append(f'<rect x="{_PAD_LEFT}" y="{_PAD_TOP}" width="{right - _PAD_LEFT}" '
                 f'height="{bottom - _PAD_TOP}" fill="#fafafa" stroke="#ccc"/>')
    for fraction in (0.0, 0.5, 1.0):
        value = frame.y_range[0] + fraction * (frame.y_range[1] - frame.y_range[0])
        y = frame.y(value)
        parts.append(f'<text x="{_PAD_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" '
                     f'font-size="11">{value:,.4g}</text>')
        parts.append(f'<line x1="{_PAD_LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#e4e4e4"/>')
    parts.append(f'<text x="{_PAD_LEFT}" y="{height - 8}" font-size="11">'
                 f'{_escape(x_labels[0])}</text>')
    parts.append(f'<text x="{right}" y="{height - 8}" font-size="11" text-anchor="end">'
                 f'{_escape(x_labels[1])}</text>')
    for one, (xs, ys) in zip(series, arrays, strict=True):
        keep = np.isfinite(ys)
        thin_x, thin_y = _thinned(xs[keep], ys[keep])
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}"
                          for x, y in zip(thin_x.tolist(), thin_y.tolist(), strict=True))
        parts.append(f'<polyline class="series" data-name="{_escape(one.name)}" fill="none" '
                     f'stroke="{one.color}" stroke-width="1.4" points="{points}"/>')
    for group in markers:
        for x, y, up in zip(group.xs, group.ys, group.up, strict=True):
            cx, cy = frame.x(float(x)), frame.y(float(y))
            tip = -7 if up else 7
            color = group.colors[0] if up else group.colors[1]
            parts.append(f'<path class="marker" d="M{cx:.1f},{cy + tip:.1f} l-5,{-tip} l10,0 z" '
                         f'fill="{color}" stroke="#333" stroke-width="0.5"/>')
    legend_x = _PAD_LEFT
    for one in series:
        parts.append(f'<rect x="{legend_x}" y="8" width="12" height="3" fill="{one.color}"/>'
                     f'<text x="{legend_x + 16}" y="13" font-size="11">{_escape(one.name)}'
                     "</text>")
        legend_x += 24 + 7 * len(one.name)
    for group in markers:
        parts.append(f'<text x="{legend_x}" y="13" font-size="11">&#9650;&#9660; '
                     f'{_escape(group.name)} ({len(group.xs)})</text>')
        legend_x += 40 + 7 * len(group.name)
    return (f'<svg class="chart" role="img" aria-label="{_escape(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str,
              *, width: int = 760) -> str:
    """Horizontal bars, one per label, with the value written beside each.

    >>> bar_chart("rate", ["a", "b"], [10.0, 5.0], "events/s").count('class="bar"')
    2
    """
    row = 22
    height = 10 + row * len(labels)
    label_width = 160
    top = max(values, default=0.0) or 1.0
    parts = []
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 5 + index * row
        length = (width - label_width - 140) * value / top
        parts.append(f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end" '
                     f'font-size="12">{_escape(label)}</text>')
        parts.append(f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{length:.1f}" '
                     f'height="{row - 8}" fill="{PALETTE[0]}"/>')
        parts.append(f'<text x="{label_width + length + 6:.1f}" y="{y + 14}" font-size="12">'
                     f'{value:,.0f} {_escape(unit)}</text>')
    return (f'<svg class="bars" role="img" aria-label="{_escape(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def graph_drawing(
    columns: Sequence[Sequence[str]],
    edges: Sequence[tuple[str, str]],
    captions: dict[str, str],
) -> str:
    """Boxes in columns (left to right, data flowing right) joined by arrows.

    ``columns`` lists node names per column, ``edges`` (upstream, downstream) pairs,
    ``captions`` a second line per node (its operator).

    >>> svg = graph_drawing([["a"], ["b"]], [("a", "b")], {"a": "src", "b": "op"})
    >>> svg.count('class="node"'), svg.count('class="edge"')
    (2, 1)
    """
    box_w, box_h, gap_x, gap_y = 150, 40, 60, 18
    place: dict[str, tuple[float, float]] = {}
    tallest = max((len(column) for column in columns), default=1)
    height = 20 + tallest * (box_h + gap_y)
    for c, column in enumerate(columns):
        offset = (height - len(column) * (box_h + gap_y)) / 2
        for r, name in enumerate(column):
            place[name] = (10 + c * (box_w + gap_x), offset + r * (box_h + gap_y) + gap_y / 2)
    width = 20 + len(columns) * (box_w + gap_x) - gap_x
    parts = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
             "</marker></defs>"]
    for upstream, downstream in edges:
        (x1, y1), (x2, y2) = place[upstream], place[downstream]
        parts.append(f'<path class="edge" d="M{x1 + box_w:.0f},{y1 + box_h / 2:.0f} '
                     f'C{x1 + box_w + gap_x / 2:.0f},{y1 + box_h / 2:.0f} '
                     f'{x2 - gap_x / 2:.0f},{y2 + box_h / 2:.0f} {x2:.0f},{y2 + box_h / 2:.0f}" '
                     'fill="none" stroke="#555" marker-end="url(#arrow)"/>')
    for name, (x, y) in place.items():
        parts.append(f'<g class="node"><rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" '
                     f'height="{box_h}" rx="6" fill="#eef4fb" stroke="{PALETTE[0]}"/>'
                     f'<text x="{x + box_w / 2:.0f}" y="{y + 17:.0f}" text-anchor="middle" '
                     f'font-size="13" font-weight="bold">{_escape(name)}</text>'
                     f'<text x="{x + box_w / 2:.0f}" y="{y + 32:.0f}" text-anchor="middle" '
                     f'font-size="11" fill="#555">{_escape(captions.get(name, ""))}</text></g>')
    return (f'<svg class="plan" role="img" aria-label="plan" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'{"".join(parts)}</svg>')
