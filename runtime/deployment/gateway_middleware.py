"""What the gateway does around every route: the bearer token, body limits, error answers.

``require_token`` refuses a request without the gateway's token (``/healthz`` excepted: probes
cannot carry one); ``answer_errors`` turns what a handler raises into
``{"errors": [{"node", "type", "message"}]}`` with the status that says what went wrong.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from runtime.deployment.controller_calls import ControllerTimeoutError
from runtime.deployment.gateway_errors import (
    BodyTooLargeError,
    ErrorDetail,
    GatewayRequestError,
    RouteNotFoundError,
    SpecRejectedError,
    UnauthorizedError,
)
from runtime.deployment.lifecycle import UnknownSubmissionError
from streamdag.errors import GraphError, StreamdagError

__all__ = [
    "MAX_BODY_KEY",
    "TOKEN_KEY",
    "answer_errors",
    "error_answer",
    "json_answer",
    "require_token",
    "too_large",
]

_log = logging.getLogger(__name__)

#: The bearer token every route but the open ones requires.
TOKEN_KEY = web.AppKey("token", bytes)
#: The largest body a request may carry (``gateway.max_body_bytes``).
MAX_BODY_KEY = web.AppKey("max_body_bytes", int)
#: Paths answered without a token (probes cannot carry one).
_OPEN_PATHS = frozenset({"/healthz"})


def json_answer(data: Any, status: int = 200,
                headers: Mapping[str, str] | None = None) -> web.Response:
    """``data`` as a JSON response (dataclasses unfolded, non-finite floats as null)."""
    text = json.dumps(_plain(data), allow_nan=False, ensure_ascii=False)
    return web.Response(text=text, status=status, content_type="application/json",
                        headers=headers)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and tuples unfolded, non-finite floats None."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _plain(item())
    return str(value)


def error_answer(details: Sequence[ErrorDetail], status: int) -> web.Response:
    """An error response: ``{"errors": [...]}`` with ``status``."""
    headers = {"WWW-Authenticate": 'Bearer realm="streamdag"'} if status == 401 else None
    return json_answer({"errors": [dataclasses.asdict(d) for d in details]}, status, headers)


def _status_of(error: StreamdagError) -> int:
    if isinstance(error, GatewayRequestError):
        return error.status
    if isinstance(error, GraphError):
        return 400
    if isinstance(error, UnknownSubmissionError):
        return 404
    if isinstance(error, ControllerTimeoutError):
        return 504
    # The deployment refused the request in its current state (e.g. an illegal transition).
    return 409


@web.middleware
async def answer_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answer what ``handler`` raises in the gateway's error shape."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except SpecRejectedError as exc:
        return error_answer(exc.details, 400)
    except StreamdagError as exc:
        return error_answer([ErrorDetail.of(exc)], _status_of(exc))
    except web.HTTPRequestEntityTooLarge:
        return error_answer([too_large(request)], 413)
    except web.HTTPNotFound:
        missing = RouteNotFoundError(
            f"no route {request.method} {request.path}; routes are POST/GET /graphs, "
            "GET/DELETE /graphs/{id}, POST /graphs/{id}/stop and /resume, "
            "GET /graphs/{id}/checkpoints, GET /nodes, GET /nodes/{id}, GET /healthz, "
            "GET /metrics")
        return error_answer([ErrorDetail.of(missing)], 404)
    except web.HTTPException as exc:
        answer = ErrorDetail(None, type(exc).__name__, f"{request.method} {request.path}: "
                             f"{exc.reason}")
        return error_answer([answer], exc.status)
    except Exception as exc:
        _log.exception("gateway: %s %s failed", request.method, request.path)
        return error_answer([ErrorDetail(None, type(exc).__name__, str(exc))], 500)


@web.middleware
async def require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse (UnauthorizedError) a request without the gateway's bearer token."""
    if request.path not in _OPEN_PATHS:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = credentials.strip().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, request.app[TOKEN_KEY]):
            raise UnauthorizedError(
                f"{request.method} {request.path} needs 'Authorization: Bearer <token>' with "
                f"the gateway's token ({'a wrong token was' if given else 'none was'} given); "
                "`streamdag up` prints it and writes it to <state_dir>/gateway.json"
            )
    response: web.StreamResponse = await handler(request)
    return response


def too_large(request: web.Request) -> ErrorDetail:
    """The problem of a body over the gateway's limit."""
    limit = request.app[MAX_BODY_KEY]
    size = request.content_length
    got = f"{size} bytes" if size is not None else "more bytes than that"
    return ErrorDetail.of(BodyTooLargeError(
        f"the body has {got}; the gateway accepts at most {limit} bytes "
        "(gateway.max_body_bytes); split the graph or raise the limit"))
