"""How complex a graph spec the gateway reads, checked by one cheap linear scan before parsing.

TOML dotted keys parse in quadratic time (a 100 KB body of ``a.a.a… = 1`` holds a parser for
about a minute), and deep nesting exhausts the stack, so a TOML body is first scanned, token by
token, with one compiled regular expression that skips strings and comments whole: the depth of
every dotted key, the nesting of arrays and inline tables, the number of keys and of lines are
counted, and the scan stops at the first limit passed. Only then is the body parsed (the
gateway does it off its event loop, within ``parse_timeout_s``).

>>> scan_toml('name = "g"\\n[[nodes]]\\nparams = { window = 2 }', SpecLimits())
>>> scan_toml(".".join("a" * 40) + " = 1", SpecLimits())
Traceback (most recent call last):
runtime.deployment.spec_limits.SpecTooDeepError: the TOML spec has a dotted key of more than 16 ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.deployment.gateway_errors import GatewayRequestError

__all__ = [
    "SpecLimitError",
    "SpecLimits",
    "SpecTimeoutError",
    "SpecTooDeepError",
    "SpecTooLargeError",
    "scan_toml",
]


@dataclass(frozen=True)
class SpecLimits:
    """The most complex spec the gateway reads; a graph spec needs a small part of each."""

    #: Parts of one dotted key (``nodes.params.window`` has 3).
    max_key_depth: int = 16
    #: Arrays and inline tables inside one another.
    max_nesting: int = 32
    #: Keys and table headers in the whole document.
    max_keys: int = 20_000
    #: Lines in the whole document.
    max_lines: int = 50_000
    #: Seconds to read and check a spec (waiting for a free reader included).
    parse_timeout_s: float = 5.0


class SpecLimitError(GatewayRequestError):
    """A spec body goes past one of the gateway's limits; ``status`` is the HTTP answer."""


class SpecTooDeepError(SpecLimitError):
    """A spec nests deeper than ``SpecLimits`` allows (dotted keys, arrays, inline tables)."""


class SpecTooLargeError(SpecLimitError):
    """A spec has more keys or lines than ``SpecLimits`` allows."""

    status = 413


class SpecTimeoutError(SpecLimitError):
    """Reading and checking a spec took longer than ``SpecLimits.parse_timeout_s``."""

    status = 422

    @classmethod
    def after(cls, seconds: float) -> SpecTimeoutError:
        """The error for a spec given up on after ``seconds``."""
        return cls(
            f"the gateway gave up reading the graph spec after {seconds:g} s "
            "(SpecLimits.parse_timeout_s); a graph spec takes milliseconds to read: send a "
            "smaller or simpler one"
        )


# Strings and comments are single tokens, so nothing inside them is taken for structure.
_TOKEN = re.compile(
    r'(?P<space>[ \t]+)'
    r'|(?P<newline>\r?\n)'
    r'|(?P<comment>#[^\n]*)'
    r'|(?P<text>"""[^"\\]*(?:(?:\\[\s\S]|"(?!""))[^"\\]*)*"""'
    r"|'''[^']*(?:'(?!'')[^']*)*'''"
    r'|"[^"\\\n]*(?:\\.[^"\\\n]*)*"' r"|'[^'\n]*')"
    r'|(?P<bare>[A-Za-z0-9_+\-.:]+)'
    r'|(?P<punct>[\[\]{}=,])'
    r'|(?P<other>.)'
)
_LINE, _KEY, _HEADER, _VALUE = "line", "key", "header", "value"


def scan_toml(text: str, limits: SpecLimits) -> None:
    """Refuse ``text`` when it goes past ``limits``; a linear pass that does not parse.

    Syntax errors are left to the parser, which names them better.
    """
    lines = text.count("\n") + 1
    if lines > limits.max_lines:
        raise SpecTooLargeError(
            f"the TOML spec has {lines} lines; the gateway reads at most {limits.max_lines} "
            "(SpecLimits.max_lines): split the graph into smaller ones, or raise the limit")
    line, keys, parts = 1, 0, 0
    mode = _LINE
    nested: list[str] = []
    for token in _TOKEN.finditer(text):
        kind, value = token.lastgroup, token.group()
        if kind in ("space", "comment"):
            continue
        if kind == "newline":
            line += 1
            if not nested:
                mode = _LINE
            continue
        if kind == "text":
            line += value.count("\n")
        if mode == _LINE:
            keys += 1
            parts = 1
            mode = _HEADER if value == "[" else _KEY
            if mode == _HEADER:
                continue
        elif mode == _VALUE:
            if value in ("[", "{"):
                nested.append(value)
                if len(nested) > limits.max_nesting:
                    raise SpecTooDeepError(
                        f"the graph spec nests deeper than {limits.max_nesting} levels of "
                        f"arrays and inline tables at line {line} (SpecLimits.max_nesting); a "
                        "spec is a table of nodes whose params nest a few levels at most")
            elif value in ("]", "}") and nested:
                nested.pop()
            if value == "{" or (value == "," and nested and nested[-1] == "{"):
                keys += 1
                parts = 1
                mode = _KEY
            continue
        # In a key (or a [header]): count its dotted parts until '=' (or ']').
        if kind == "bare":
            parts += value.count(".")
        elif value == "=" and mode == _KEY:
            mode = _VALUE
        elif value == "}" and mode == _KEY and nested:  # an empty inline table
            nested.pop()
            mode = _VALUE
        elif value == "]" and mode == _HEADER:
            mode = _VALUE  # what follows on the line is the parser's to judge
        elif not (kind == "text" or (value == "[" and mode == _HEADER)):
            mode = _VALUE  # not a key after all: the parser will say what it is
        if parts > limits.max_key_depth:
            raise SpecTooDeepError(
                f"the TOML spec has a dotted key of more than {limits.max_key_depth} parts at "
                f"line {line} (SpecLimits.max_key_depth); the keys of a graph spec have a few "
                "(nodes.params.window has 3): shorten the key, or write the table out under "
                "a [header]")
        if keys > limits.max_keys:
            raise SpecTooLargeError(
                f"the TOML spec has more than {limits.max_keys} keys (SpecLimits.max_keys): "
                "split the graph into smaller ones, or raise the limit")
