"""The gateway's ``POST /infer/{node}``: an interactive request to an inference node.

The body is JSON, ``{"features": {"<name>": [numbers...]}, "timeout_ms": 250}``; the answer
is ``{"node": ..., "node_id": ..., "outputs": {"<output>": [numbers...]}}``. Errors come in
the gateway's shape, ``{"errors": [{"node", "type", "message"}]}``, with a status that says
what to do: 400 a bad request, 404 no such node, 429 too many waiting (retry), 503 the node
is stopping, 504 the request waited longer than its timeout (it was dropped, never computed).

A client that disconnects before the answer cancels its request all the way down (the
controller's call, then the node's), so the model never computes it if it has not yet.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

from aiohttp import web

from operators.inference_errors import (
    InferenceBusyError,
    InferenceStoppedError,
    RequestAbandonedError,
)
from runtime.inference.requests import (
    InferenceRequestError,
    UnknownInferenceNodeError,
    own_error,
    read_request,
)
from streamdag.errors import StreamdagError

__all__ = ["infer_handler"]

#: Seconds between two looks at whether the client is still connected.
_WATCH_S = 0.02

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InferenceRequestError, 400),
    (UnknownInferenceNodeError, 404),
    (InferenceBusyError, 429),
    (InferenceStoppedError, 503),
    (RequestAbandonedError, 504),
    (TimeoutError, 504),
)


def infer_handler(controller: Any) -> Any:
    """The aiohttp handler of ``POST /infer/{node}`` over ``controller`` (a Controller or its
    Ray actor handle)."""

    async def handle(request: web.Request) -> web.Response:
        node = request.match_info["node"]
        try:
            # Step 1: a JSON object of features, checked before the controller sees it.
            if request.content_type != "application/json":
                raise InferenceRequestError(
                    f"POST /infer/{node} takes application/json, got {request.content_type!r}")
            try:
                data = json.loads(await request.read())
            except ValueError as exc:
                raise InferenceRequestError(f"the body is not JSON: {exc}") from None
            features, timeout_s = read_request(data)
            # Step 2: the controller finds the node and runs the request ahead of its streams;
            # if the client goes meanwhile, the request is cancelled.
            answer = await _unless_client_leaves(request, controller, node, features, timeout_s)
        except (StreamdagError, TimeoutError) as exc:
            status = next((code for kind, code in _STATUS if isinstance(exc, kind)), None)
            if status is None:
                raise  # the gateway's own mapping (409 and the like)
            headers = ({"Retry-After": f"{max(1, round(exc.retry_after_s))}"}
                       if isinstance(exc, InferenceBusyError) else None)
            message = str(exc) or f"the request waited longer than its timeout on {node!r}"
            problem = {"node": node, "type": type(exc).__name__, "message": message}
            return web.json_response({"errors": [problem]}, status=status, headers=headers)
        return web.json_response(answer)

    return handle


async def _unless_client_leaves(request: web.Request, controller: Any, node: str,
                                features: dict[str, list[float]], timeout_s: float) -> Any:
    """The controller's answer; cancelled (here and remotely) if the client disconnects."""
    remote = getattr(controller.infer, "remote", None)
    ref = remote(node, features, timeout_s) if callable(remote) else None
    call = asyncio.ensure_future(ref if ref is not None else _awaited(
        controller.infer(node, features, timeout_s)))
    try:
        while True:
            done, _ = await asyncio.wait([call], timeout=_WATCH_S)
            if done:
                break
            transport = request.transport
            if transport is None or transport.is_closing():
                raise asyncio.CancelledError  # the caller has gone: nobody wants the answer
    except asyncio.CancelledError:
        call.cancel()
        if ref is not None:
            import ray

            ray.cancel(ref)
        raise
    try:
        return call.result()
    except Exception as exc:  # a Ray task error carries the controller's own error
        raise own_error(exc) from None


async def _awaited(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result
