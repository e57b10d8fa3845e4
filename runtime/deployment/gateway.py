"""The HTTP gateway (aiohttp) over a deployment's controller.

Routes: ``POST /graphs`` (a graph spec, JSON or TOML by Content-Type; 201 with the diff and an
id), ``GET /graphs``, ``GET /graphs/{id}``, ``DELETE /graphs/{id}``, ``GET /nodes``,
``GET /nodes/{id}`` (a tag query: what it follows and skips), ``GET /healthz`` (open) and
``GET /metrics`` (Prometheus text). Everything but ``/healthz`` needs
``Authorization: Bearer <token>``. Errors answer ``{"errors": [{"node", "type",
"message"}]}``.

Specs are data only: a body is parsed as JSON or TOML, never unpickled or imported, and it is
validated completely (``streamdag.spec.graph_from_dict``) before the controller sees it, so a
refused spec leaves nothing deployed. A TOML body is first scanned against ``SpecLimits`` (key
depth, nesting, keys, lines: TOML's dotted keys parse in quadratic time), and reading and
checking a spec runs off the event loop within ``SpecLimits.parse_timeout_s``, so no request
can hold ``/healthz`` or any other route.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import hmac
import inspect
import json
import logging
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from runtime.backtest.cache import ResultCache
from runtime.deployment.lifecycle import UnknownSubmissionError, failure_cause
from runtime.deployment.metrics import BacktestCacheCollector, StreamdagCollector
from runtime.deployment.spec_limits import (
    SpecLimitError,
    SpecLimits,
    SpecTimeoutError,
    scan_toml,
)
from streamdag.config import ConfigError, GatewaySettings
from streamdag.errors import GraphError, SpecError, StreamdagError
from streamdag.operator_registry import lookup
from streamdag.params import validate_params
from streamdag.spec import graph_from_dict

if TYPE_CHECKING:
    from runtime.deployment.metrics import MetricsSnapshot

__all__ = [
    "JSON_CONTENT_TYPES",
    "TOML_CONTENT_TYPES",
    "BodyTooLargeError",
    "ControllerCalls",
    "ErrorDetail",
    "GatewayRequestError",
    "GatewayServer",
    "RouteNotFoundError",
    "SpecRejectedError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "add_cache_routes",
    "check_spec",
    "create_app",
    "parse_spec_body",
    "read_spec_body",
]

_log = logging.getLogger(__name__)

#: Content types read as a JSON graph spec.
JSON_CONTENT_TYPES: frozenset[str] = frozenset({"application/json"})
#: Content types read as a TOML graph spec.
TOML_CONTENT_TYPES: frozenset[str] = frozenset(
    {"application/toml", "text/toml", "application/x-toml", "text/x-toml"}
)
#: Paths answered without a token (probes cannot carry one).
_OPEN_PATHS = frozenset({"/healthz"})
_NODE_IN_MESSAGE = re.compile(r"^node (['\"])(?P<name>.*?)\1")
#: The Prometheus text format that ``generate_latest`` writes, understood by every Prometheus.
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_TOO_DEEP = ("the graph spec nests deeper than Python can read; a spec is a table of nodes "
             "whose params nest a few levels at most")
_HEALTH_TIMEOUT_S = 5.0
_METRICS_TIMEOUT_S = 10.0
#: Specs read at once; more wait (within their time limit) so they cannot take every core.
_SPEC_READERS = 2


# -- errors -----------------------------------------------------------------------------------
class GatewayRequestError(StreamdagError):
    """A request the gateway refuses before it reaches the controller."""

    status: ClassVar[int] = 400


class UnauthorizedError(GatewayRequestError):
    """The request carries no bearer token, or the wrong one."""

    status = 401


class RouteNotFoundError(GatewayRequestError):
    """No route answers this method and path."""

    status = 404


class BodyTooLargeError(GatewayRequestError):
    """The request body is larger than ``gateway.max_body_bytes``."""

    status = 413


class UnsupportedMediaTypeError(GatewayRequestError):
    """The request body is neither JSON nor TOML."""

    status = 415


@dataclass(frozen=True)
class ErrorDetail:
    """One entry of an error answer: the node at fault (None: the request as a whole)."""

    node: str | None
    type: str
    message: str

    @classmethod
    def of(cls, error: StreamdagError, node: str | None = None) -> ErrorDetail:
        """The problem ``error`` reports; the node is read from its message when not given."""
        message = str(error)
        if node is None:
            named = _NODE_IN_MESSAGE.match(message)
            node = named.group("name") if named else None
        return cls(node, type(error).__name__, message)


class SpecRejectedError(GraphError):
    """A submitted spec is malformed or invalid; ``details`` says what, node by node."""

    def __init__(self, details: Sequence[ErrorDetail]) -> None:
        self.details = tuple(details)
        super().__init__("; ".join(detail.message for detail in self.details))


# -- specs ------------------------------------------------------------------------------------
def parse_spec_body(body: bytes, content_type: str, limits: SpecLimits | None = None) -> Any:
    """The raw data of a spec body: JSON or TOML by ``content_type``, nothing else.

    A TOML body past ``limits`` (key depth, nesting, keys, lines) is refused before parsing.

    >>> parse_spec_body(b'name = "g"', "application/toml")
    {'name': 'g'}
    >>> parse_spec_body(b"\\x80\\x04K\\x01.", "application/octet-stream")
    Traceback (most recent call last):
    runtime.deployment.gateway.UnsupportedMediaTypeError: ...
    """
    _require_spec_content_type(content_type)
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


def _require_spec_content_type(content_type: str) -> None:
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


class _SpecReaders:
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


# -- the controller ---------------------------------------------------------------------------
class ControllerCalls:
    """Awaitable calls to a controller: the plain ``Controller`` or its Ray actor handle.

    A Ray method is called with ``.remote`` and its ref awaited; a plain method is called and
    awaited when it is a coroutine. A Ray task error is unwrapped to the StreamdagError the
    controller raised, so callers handle one set of exceptions.
    """

    def __init__(self, target: Any) -> None:
        self._target = target

    async def call(self, method: str, *args: Any) -> Any:
        """The result of ``target.method(*args)``."""
        bound = getattr(self._target, method)
        remote = getattr(bound, "remote", None)
        try:
            result = remote(*args) if callable(remote) else bound(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StreamdagError):
                raise cause from None
            raise
        return result

    async def submit_spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a validated spec; the submission with its id and diff."""
        return dict(await self.call("submit_spec", dict(spec)))

    async def remove(self, submission_id: str) -> dict[str, Any]:
        """Remove a submission."""
        return dict(await self.call("remove", submission_id))

    async def stop(self, submission_id: str) -> dict[str, Any]:
        """Stop a submission with a final checkpoint."""
        return dict(await self.call("stop", submission_id))

    async def resume(self, submission_id: str) -> dict[str, Any]:
        """Resume a stopped submission from its final checkpoint."""
        return dict(await self.call("resume", submission_id))

    async def checkpoints(self, submission_id: str) -> list[dict[str, Any]]:
        """The checkpoints and recoveries of a submission's regions."""
        return list(await self.call("checkpoints", submission_id))

    async def list_submissions(self) -> list[dict[str, Any]]:
        """Every submission."""
        return list(await self.call("list_submissions"))

    async def status(self, submission_id: str) -> dict[str, Any]:
        """One submission's state, cause, diff and nodes."""
        return dict(await self.call("status", submission_id))

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node of the deployment."""
        return list(await self.call("nodes"))

    async def node(self, node_id: str) -> dict[str, Any]:
        """One node of the deployment (a tag query with what it follows and skips)."""
        return dict(await self.call("node", node_id))

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """The controller's figures now, for the Prometheus collector."""
        snapshot: MetricsSnapshot = await self.call("metrics_snapshot")
        return snapshot


# -- the app ----------------------------------------------------------------------------------
_CONTROLLER = web.AppKey("controller", ControllerCalls)
_TOKEN = web.AppKey("token", bytes)
_MAX_BODY = web.AppKey("max_body_bytes", int)
_REGISTRY = web.AppKey("registry", CollectorRegistry)
_COLLECTOR = web.AppKey("collector", StreamdagCollector)
_SPEC_READERS_KEY = web.AppKey("spec_readers", _SpecReaders)


def create_app(
    controller: Any,
    settings: GatewaySettings,
    token: str,
    *,
    registry: CollectorRegistry | None = None,
    spec_limits: SpecLimits | None = None,
) -> web.Application:
    """The gateway's aiohttp app over ``controller`` (a Controller or its Ray actor handle).

    ``token`` is the bearer token every route but ``/healthz`` requires. ``/metrics`` renders
    ``registry`` (a fresh one unless injected), on which a StreamdagCollector is registered.
    ``spec_limits`` bounds the specs ``POST /graphs`` reads.
    """
    if not token:
        raise ConfigError(
            "the gateway got an empty token; pass the bearer token clients must send "
            "(gateway.token, or let `streamdag up` generate one)"
        )
    app = web.Application(
        middlewares=[_answer_errors, _require_token], client_max_size=settings.max_body_bytes
    )
    registry = registry if registry is not None else CollectorRegistry()
    app[_CONTROLLER] = ControllerCalls(controller)
    app[_TOKEN] = token.encode()
    app[_MAX_BODY] = settings.max_body_bytes
    app[_REGISTRY] = registry
    app[_COLLECTOR] = StreamdagCollector(registry)
    readers = _SpecReaders(spec_limits or SpecLimits())
    app[_SPEC_READERS_KEY] = readers

    async def close_readers(_: web.Application) -> None:
        readers.close()

    app.on_cleanup.append(close_readers)
    app.router.add_post("/graphs", _submit)
    app.router.add_get("/graphs", _list)
    app.router.add_get("/graphs/{id}", _status)
    app.router.add_delete("/graphs/{id}", _remove)
    app.router.add_post("/graphs/{id}/stop", _stop)
    app.router.add_post("/graphs/{id}/resume", _resume)
    app.router.add_get("/graphs/{id}/checkpoints", _checkpoints)
    app.router.add_get("/nodes", _nodes)
    app.router.add_get("/nodes/{id}", _node)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/metrics", _metrics)
    # Interactive inference requests, ahead of the inference node's streams.
    from runtime.inference.gateway_route import infer_handler

    app.router.add_post("/infer/{node}", infer_handler(controller))
    return app


# -- the backtest cache: GET /cache/stats, POST /cache/clear, and its Prometheus families -------
_BACKTEST_CACHE = web.AppKey("backtest_cache", ResultCache)


def add_cache_routes(app: web.Application, cache: ResultCache) -> None:
    """Serve ``cache`` (the deployment's backtest cache) on ``/cache/*`` and ``/metrics``."""
    app[_BACKTEST_CACHE] = cache
    BacktestCacheCollector(app[_REGISTRY], cache.figures)
    app.router.add_get("/cache/stats", _cache_stats)
    app.router.add_post("/cache/clear", _cache_clear)


async def _cache_stats(request: web.Request) -> web.Response:
    return _json(request.app[_BACKTEST_CACHE].stats())


async def _cache_clear(request: web.Request) -> web.Response:
    return _json({"cleared": await asyncio.to_thread(request.app[_BACKTEST_CACHE].clear)})


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
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


def _errors(details: Sequence[ErrorDetail], status: int) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="streamdag"'} if status == 401 else None
    return _json({"errors": [dataclasses.asdict(d) for d in details]}, status, headers)


def _status_of(error: StreamdagError) -> int:
    if isinstance(error, GatewayRequestError | SpecLimitError):
        return error.status
    if isinstance(error, GraphError):
        return 400
    if isinstance(error, UnknownSubmissionError):
        return 404
    # The deployment refused the request in its current state (e.g. an illegal transition).
    return 409


@web.middleware
async def _answer_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except SpecRejectedError as exc:
        return _errors(exc.details, 400)
    except StreamdagError as exc:
        return _errors([ErrorDetail.of(exc)], _status_of(exc))
    except web.HTTPRequestEntityTooLarge:
        return _errors([_too_large(request)], 413)
    except web.HTTPNotFound:
        missing = RouteNotFoundError(
            f"no route {request.method} {request.path}; routes are POST/GET /graphs, "
            "GET/DELETE /graphs/{id}, POST /graphs/{id}/stop and /resume, "
            "GET /graphs/{id}/checkpoints, GET /nodes, GET /nodes/{id}, GET /healthz, "
            "GET /metrics")
        return _errors([ErrorDetail.of(missing)], 404)
    except web.HTTPException as exc:
        answer = ErrorDetail(None, type(exc).__name__, f"{request.method} {request.path}: "
                             f"{exc.reason}")
        return _errors([answer], exc.status)
    except Exception as exc:
        _log.exception("gateway: %s %s failed", request.method, request.path)
        return _errors([ErrorDetail(None, type(exc).__name__, str(exc))], 500)


@web.middleware
async def _require_token(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path not in _OPEN_PATHS:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = credentials.strip().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, request.app[_TOKEN]):
            raise UnauthorizedError(
                f"{request.method} {request.path} needs 'Authorization: Bearer <token>' with "
                f"the gateway's token ({'a wrong token was' if given else 'none was'} given); "
                "`streamdag up` prints it and writes it to <state_dir>/gateway.json"
            )
    response: web.StreamResponse = await handler(request)
    return response


def _too_large(request: web.Request) -> ErrorDetail:
    limit = request.app[_MAX_BODY]
    size = request.content_length
    got = f"{size} bytes" if size is not None else "more bytes than that"
    return ErrorDetail.of(BodyTooLargeError(
        f"the body has {got}; the gateway accepts at most {limit} bytes "
        "(gateway.max_body_bytes); split the graph or raise the limit"))


# -- handlers ---------------------------------------------------------------------------------
async def _submit(request: web.Request) -> web.Response:
    # Step 1: refuse what is too large or not JSON/TOML before reading a byte of it.
    limit = request.app[_MAX_BODY]
    if request.content_length is not None and request.content_length > limit:
        return _errors([_too_large(request)], 413)
    _require_spec_content_type(request.content_type)
    # Step 2: read (aiohttp stops at client_max_size); then, off the event loop and within the
    # time limit, scan it against the limits, parse it as data and validate it completely.
    spec = await request.app[_SPEC_READERS_KEY].read(await request.read(), request.content_type)
    # Step 3: hand the controller only a spec known to be valid.
    submission = await request.app[_CONTROLLER].submit_spec(spec)
    location = f"/graphs/{submission.get('id')}"
    return _json(submission, 201, {"Location": location})


async def _list(request: web.Request) -> web.Response:
    return _json({"graphs": await request.app[_CONTROLLER].list_submissions()})


async def _status(request: web.Request) -> web.Response:
    return _json(await request.app[_CONTROLLER].status(request.match_info["id"]))


async def _remove(request: web.Request) -> web.Response:
    return _json(await request.app[_CONTROLLER].remove(request.match_info["id"]))


async def _stop(request: web.Request) -> web.Response:
    return _json(await request.app[_CONTROLLER].stop(request.match_info["id"]))


async def _resume(request: web.Request) -> web.Response:
    return _json(await request.app[_CONTROLLER].resume(request.match_info["id"]))


async def _checkpoints(request: web.Request) -> web.Response:
    return _json({"regions": await request.app[_CONTROLLER].checkpoints(
        request.match_info["id"])})


async def _nodes(request: web.Request) -> web.Response:
    return _json({"nodes": await request.app[_CONTROLLER].nodes()})


async def _node(request: web.Request) -> web.Response:
    from runtime.deployment.controller import UnknownNodeError

    try:
        return _json(await request.app[_CONTROLLER].node(request.match_info["id"]))
    except UnknownNodeError as exc:
        return _errors([ErrorDetail.of(exc)], 404)


async def _health(request: web.Request) -> web.Response:
    # A cheap read proves the controller answers; its health check takes the submission
    # lock, so a long submission would make a probe of it look like an outage.
    try:
        await asyncio.wait_for(request.app[_CONTROLLER].list_submissions(), _HEALTH_TIMEOUT_S)
    except Exception as exc:
        return _json({"status": "unavailable",
                      "problems": [f"the controller does not answer: {failure_cause(exc)}"]}, 503)
    return _json({"status": "ok", "problems": []})


async def _metrics(request: web.Request) -> web.Response:
    snapshot = await asyncio.wait_for(request.app[_CONTROLLER].metrics_snapshot(),
                                      _METRICS_TIMEOUT_S)
    request.app[_COLLECTOR].update(snapshot)
    # Rendering costs ~0.5 ms per node (prometheus_client writes ~60 samples each): off the
    # event loop, so other requests are served meanwhile.
    body = await asyncio.to_thread(generate_latest, request.app[_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": _PROMETHEUS_TEXT})


# -- serving ----------------------------------------------------------------------------------
class GatewayServer:
    """Serves an app on ``host:port`` (port 0 picks a free one) until ``stop``."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self._url = ""

    @property
    def url(self) -> str:
        """``http://host:port`` once started."""
        return self._url

    async def start(self) -> str:
        """Bind and serve; returns the URL."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return self._url

    async def stop(self) -> None:
        """Stop serving and release the port."""
        await self._runner.cleanup()
