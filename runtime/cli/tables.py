"""The tables every ``streamdag`` command prints: one formatting for all of them."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render_table"]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; columns of numbers (or "-") right-aligned.

    >>> print(render_table(["id", "nodes"], [["a-1", 5], ["bb-22", 12]]))
    id     nodes
    a-1        5
    bb-22     12
    """
    cells = [[str(c) for c in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [_numeric_column([row[i] for row in rows]) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if num else cell.ljust(w)
                 for cell, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _numeric_column(values: Sequence[object]) -> bool:
    # "-" stands for "no figure" in a column of numbers; it must not break their alignment.
    def is_number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return bool(values) and all(v == "-" or is_number(v) for v in values)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
