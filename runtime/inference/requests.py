"""Interactive inference requests: reading them, finding their node, calling its actor.

A request names an inference node (by name or node id) and gives its features as JSON: one
number or a list of numbers per feature, one per row. It runs ahead of the node's streams and
waits at most ``timeout_ms``; a request whose caller has gone by the time the model is free is
dropped, never computed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from runtime.deployment.node_registry import NodeEntry, NodeRegistry
from runtime.inference.host import INFERENCE_OPERATOR, INTERACTIVE_GROUP
from runtime.runners.ray_nodes import awaited
from streamdag.errors import StreamdagError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_ROWS",
    "MAX_TIMEOUT_S",
    "InferenceRequestError",
    "UnknownInferenceNodeError",
    "call_interactive",
    "find_inference_node",
    "own_error",
    "read_request",
]

#: Most rows one interactive request may carry (larger work belongs on a stream).
MAX_ROWS = 10_000
#: How long a request waits when it does not say; and the most it may ask for.
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0
#: Extra seconds the caller waits beyond the request's own deadline for the answer to travel.
_TRANSIT_S = 5.0


class InferenceRequestError(StreamdagError):
    """An interactive request is malformed: what was wrong, and what is expected."""


class UnknownInferenceNodeError(StreamdagError):
    """No running inference node has the requested name or id."""


def read_request(data: Any) -> tuple[dict[str, list[float]], float]:
    """``(features, timeout_s)`` from a request's JSON body, or InferenceRequestError.

    >>> read_request({"features": {"a": [1, 2], "b": [0.5, 1.5]}, "timeout_ms": 250})
    ({'a': [1.0, 2.0], 'b': [0.5, 1.5]}, 0.25)
    >>> read_request({"features": {"a": 1.0, "b": [2.0, 3.0]}})
    Traceback (most recent call last):
    ...
    runtime.inference.requests.InferenceRequestError: features have different row counts ...
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("features"), Mapping):
        raise InferenceRequestError(
            'an inference request is a JSON object {"features": {"<name>": [numbers...]}, '
            '"timeout_ms": <optional number>}; the body has no "features" object')
    unknown = sorted(set(data) - {"features", "timeout_ms"})
    if unknown:
        raise InferenceRequestError(
            f"unknown key(s) {unknown} in the request; it takes 'features' and 'timeout_ms'")
    features: dict[str, list[float]] = {}
    for name, raw in data["features"].items():
        values = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values):
            raise InferenceRequestError(
                f"feature {name!r} got {str(raw)[:80]}; expected a finite number or a list of "
                "them (one per row)")
        features[str(name)] = [float(v) for v in values]
    counts = {len(values) for values in features.values()}
    if len(counts) > 1:
        raise InferenceRequestError(
            f"features have different row counts {sorted(counts)}; give every feature one "
            "value per row")
    rows = counts.pop() if counts else 0
    if not 1 <= rows <= MAX_ROWS:
        raise InferenceRequestError(
            f"the request has {rows} rows; send between 1 and {MAX_ROWS} (more belongs on a "
            "stream through the node's input topic)")
    timeout_ms = data.get("timeout_ms", DEFAULT_TIMEOUT_S * 1000)
    if (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float)
            or not 0 < timeout_ms <= MAX_TIMEOUT_S * 1000):
        raise InferenceRequestError(
            f"timeout_ms got {timeout_ms!r}; expected a number of milliseconds between 0 and "
            f"{int(MAX_TIMEOUT_S * 1000)}")
    return features, float(timeout_ms) / 1000.0


def find_inference_node(registry: NodeRegistry, node: str) -> NodeEntry:
    """The live inference node named ``node`` (or with that node id); a clear error otherwise."""
    candidates = [entry for entry in registry.entries.values()
                  if entry.operator == INFERENCE_OPERATOR and entry.alive]
    matches = [e for e in candidates if node in (e.node_id, e.key)] or [
        e for e in candidates if e.name == node]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownInferenceNodeError(
            f"{len(matches)} inference nodes are named {node!r} (in different graphs); name "
            f"one by its node id: {sorted(e.node_id for e in matches)}")
    known = sorted({e.name for e in candidates})
    raise UnknownInferenceNodeError(
        f"no running inference node is named {node!r}; running inference nodes: "
        f"{known or 'none (submit a graph with stream.infer(...) first)'}")


async def call_interactive(
    handle: Any, features: Mapping[str, list[float]], timeout_s: float
) -> dict[str, list[float]]:
    """Run one interactive request on an inference node's actor; its output columns.

    The call runs in the actor's interactive concurrency group, so it is queued at once even
    while the node's stream waits in the model. Cancelling this coroutine cancels the actor's
    call, which drops the request if the model has not taken it yet.
    """
    import ray

    ref = handle.infer.options(concurrency_group=INTERACTIVE_GROUP).remote(
        dict(features), timeout_s)
    try:
        outputs: dict[str, list[float]] = await asyncio.wait_for(
            awaited(ref), timeout_s + _TRANSIT_S)
    except (asyncio.CancelledError, TimeoutError):
        ray.cancel(ref)
        raise
    except Exception as exc:  # the node's own error (e.g. RequestAbandonedError) as raised
        raise own_error(exc) from None
    return outputs


def own_error(error: Exception) -> Exception:
    """The error an actor raised, out of the Ray task error that carries it (else ``error``)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error
