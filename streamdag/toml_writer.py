"""A small TOML 1.0 emitter for plain data: Python 3.11 reads TOML (tomllib) but cannot write it.

Output is deterministic: keys keep their mapping order, floats use the shortest repr that reads
back to the same value, and strings are TOML basic strings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps", "format_key", "format_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def dumps(document: Mapping[str, Any], *, section_depth: int = 2) -> str:
    """The TOML text of ``document``.

    Non-empty mappings become ``[sections]`` and non-empty lists of mappings become
    ``[[arrays of tables]]`` down to ``section_depth`` levels; deeper ones are inline tables.

    >>> print(dumps({"name": "g", "nodes": [{"id": 1, "opts": {"ab": [1, 2], "c": {"x": 1.5}}}]}))
    name = "g"
    <BLANKLINE>
    [[nodes]]
    id = 1
    <BLANKLINE>
    [nodes.opts]
    ab = [1, 2]
    c = { x = 1.5 }
    <BLANKLINE>
    """
    lines: list[str] = []
    _write_table(lines, (), document, section_depth)
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines) + "\n"


def format_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, quoted otherwise.

    >>> format_key("price"), format_key("a.b")
    ('price', '"a.b"')
    """
    return key if _BARE_KEY.fullmatch(key) else _format_string(key)


def format_value(value: Any) -> str:
    """One value as inline TOML: scalars, arrays and inline tables.

    >>> format_value({"price": "float64", "n": [1, True, 2.0]})
    '{ price = "float64", n = [1, true, 2.0] }'
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _format_string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        inner = ", ".join(f"{format_key(str(k))} = {format_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    raise TypeError(
        f"TOML cannot hold {value!r} ({type(value).__name__}); give a string, number, bool, "
        "list or mapping (TOML has no null: leave the key out instead)"
    )


def _format_string(text: str) -> str:
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            # TOML basic strings may not hold raw control characters (DEL included).
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _is_table_list(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(item, Mapping) for item in value)
    )


def _write_table(
    lines: list[str], path: tuple[str, ...], table: Mapping[str, Any], section_depth: int
) -> None:
    nested = len(path) < section_depth

    def is_section(value: Any) -> bool:
        return nested and ((isinstance(value, Mapping) and bool(value)) or _is_table_list(value))

    # Plain keys come first: after a [header] every key belongs to that header's table.
    for key, value in table.items():
        if not is_section(value):
            lines.append(f"{format_key(key)} = {format_value(value)}")
    for key, value in table.items():
        if not is_section(value):
            continue
        child = (*path, format_key(key))
        header = ".".join(child)
        if isinstance(value, Mapping):
            lines += ["", f"[{header}]"]
            _write_table(lines, child, value, section_depth)
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _write_table(lines, child, item, section_depth)
