"""Reading a graph spec a client posts: JSON or TOML data only, checked completely.

A body is parsed as JSON or TOML, never unpickled or imported, and validated completely
(``streamdag.spec.graph_from_dict``) before the controller sees it, so a refused spec leaves
nothing deployed. A TOML body is first scanned against ``SpecLimits`` (key depth, nesting, keys,
lines: TOML's dotted keys parse in quadratic time), and ``SpecReaders`` reads and checks a spec
off the event loop within ``SpecLimits.parse_timeout_s``, so no request can hold another route.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import tomllib
from collections.abc import Mapping
from typing import Any, cast

from runtime.deployment.gateway_errors import (
    ErrorDetail,
    SpecRejectedError,
    UnsupportedMediaTypeError,
)
from runtime.deployment.spec_limits import SpecLimits, SpecTimeoutError, scan_toml
from streamdag.errors import SpecError, StreamdagError
from streamdag.operator_registry import lookup
from streamdag.params import validate_params
from streamdag.spec import graph_from_dict

__all__ = [
    "JSON_CONTENT_TYPES",
    "TOML_CONTENT_TYPES",
    "SpecReaders",
    "check_spec",
    "parse_spec_body",
    "read_spec_body",
    "require_spec_content_type",
]

#: Content types read as a JSON graph spec.
JSON_CONTENT_TYPES: frozenset[str] = frozenset({"application/json"})
#: Content types read as a TOML graph spec.
TOML_CONTENT_TYPES: frozenset[str] = frozenset(
    {"application/toml", "text/toml", "application/x-toml", "text/x-toml"}
)
_TOO_DEEP = ("the graph spec nests deeper than Python can read; a spec is a table of nodes "
             "whose params nest a few levels at most")
#: Specs read at once; more wait (within their time limit) so they cannot take every core.
_SPEC_READERS = 2


def parse_spec_body(body: bytes, content_type: str, limits: SpecLimits | None = None) -> Any:
    """The raw data of a spec body: JSON or TOML by ``content_type``, nothing else.

    A TOML body past ``limits`` (key depth, nesting, keys, lines) is refused before parsing.

    >>> parse_spec_body(b'name = "g"', "application/toml")
    {'name': 'g'}
    >>> parse_spec_body(b"\\x80\\x04K\\x01.", "application/octet-stream")
    Traceback (most recent call last):
    runtime.deployment.gateway_errors.UnsupportedMediaTypeError: ...
    """
    require_spec_content_type(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"the spec body is not UTF-8 text ({exc}); send the spec file as "
                        "UTF-8") from None
    try:
        if content_type in TOML_CONTENT_TYPES:
            scan_toml(text, limits or SpecLimits())
            return tomllib.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        language = "TOML" if content_type in TOML_CONTENT_TYPES else "JSON"
        raise SpecError(f"cannot parse the graph spec as {language}: {exc}; fix the syntax "
                        "there") from None
    except RecursionError:
        raise SpecError(_TOO_DEEP) from None


def require_spec_content_type(content_type: str) -> None:
    """Refuse (UnsupportedMediaTypeError) a body that is neither JSON nor TOML."""
    if content_type not in JSON_CONTENT_TYPES | TOML_CONTENT_TYPES:
        accepted = ", ".join(sorted(JSON_CONTENT_TYPES | TOML_CONTENT_TYPES))
        raise UnsupportedMediaTypeError(
            f"got a body of Content-Type {content_type or 'none'!r}; a graph spec is a JSON or "
            f"TOML document, sent as one of {accepted} (no pickles, code or import paths)"
        )


def _refuse_constant(name: str) -> Any:
    raise SpecError(f"the JSON spec holds {name}, which is not a number in JSON; write a "
                    "finite number or a string")


def check_spec(data: Any) -> Mapping[str, Any]:
    """``data`` once it is known to be a valid spec; SpecRejectedError with every problem else.

    ``graph_from_dict`` stops at the first problem; when it does, every other node is still
    checked on its own (operator type, then params) so one answer names all the bad nodes.
    """
    try:
        graph_from_dict(data)
    except RecursionError:
        raise SpecRejectedError([ErrorDetail(None, "SpecError", _TOO_DEEP)]) from None
    except StreamdagError as exc:
        first = ErrorDetail.of(exc)
        others = [detail for detail in _node_errors(data) if detail.node != first.node]
        raise SpecRejectedError([first, *others]) from None
    # graph_from_dict accepts nothing but a table.
    return cast(Mapping[str, Any], data)


def _node_errors(data: Any) -> list[ErrorDetail]:
    raw_nodes = data.get("nodes") if isinstance(data, Mapping) else None
    if not isinstance(raw_nodes, list):
        return []
    details: list[ErrorDetail] = []
    for raw in raw_nodes:
        if not isinstance(raw, Mapping):
            continue
        name, type_name, params = raw.get("name"), raw.get("type"), raw.get("params", {})
        if not isinstance(name, str) or not isinstance(type_name, str):
            continue
        try:
            definition = lookup(type_name)
            if isinstance(params, Mapping):
                validate_params(name, type_name, definition.params, params)
        except StreamdagError as exc:
            details.append(ErrorDetail.of(exc, node=name))
    return details


def read_spec_body(body: bytes, content_type: str, limits: SpecLimits) -> Mapping[str, Any]:
    """A spec body parsed (``parse_spec_body``) and checked (``check_spec``): what is submitted."""
    return check_spec(parse_spec_body(body, content_type, limits))


class SpecReaders:
    """Reads spec bodies in worker threads, each within ``limits.parse_timeout_s``."""

    def __init__(self, limits: SpecLimits) -> None:
        self.limits = limits
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def read(self, body: bytes, content_type: str) -> Mapping[str, Any]:
        """The checked spec of ``body``; SpecTimeoutError when it takes too long."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                _SPEC_READERS, thread_name_prefix="streamdag-spec-reader")
        job = asyncio.get_running_loop().run_in_executor(
            self._pool, read_spec_body, body, content_type, self.limits)
        try:
            return await asyncio.wait_for(job, self.limits.parse_timeout_s)
        except TimeoutError:
            # A job already running cannot be stopped; the limits bound how long it runs on.
            raise SpecTimeoutError.after(self.limits.parse_timeout_s) from None

    def close(self) -> None:
        """Stop the worker threads (a job still running finishes on its own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
