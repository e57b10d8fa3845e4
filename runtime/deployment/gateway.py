"""The HTTP gateway (aiohttp) over a deployment's controller.

Routes: ``POST /graphs`` (a graph spec, JSON or TOML by Content-Type; 201 with the diff and an
id), ``GET /graphs``, ``GET /graphs/{id}``, ``DELETE /graphs/{id}``, ``GET /nodes``,
``GET /nodes/{id}`` (a tag query: what it follows and skips), ``GET /healthz`` (open) and
``GET /metrics`` (Prometheus text). Everything but ``/healthz`` needs
``Authorization: Bearer <token>``. Errors answer ``{"errors": [{"node", "type",
"message"}]}``.

The pieces live by concern: the errors in ``gateway_errors``, reading specs (data only, checked
completely, off the event loop within ``SpecLimits``) in ``gateway_specs``, the token, body limit
and error answers in ``gateway_middleware``, the calls to the controller in
``controller_calls``; this module wires the routes and serves them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from runtime.backtest.cache import ResultCache
from runtime.deployment.controller_calls import CONTROLLER_CALL_TIMEOUT_S, ControllerCalls
from runtime.deployment.gateway_errors import (
    BodyTooLargeError,
    ErrorDetail,
    GatewayRequestError,
    RouteNotFoundError,
    SpecRejectedError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from runtime.deployment.gateway_middleware import (
    MAX_BODY_KEY,
    TOKEN_KEY,
    answer_errors,
    error_answer,
    json_answer,
    require_token,
    too_large,
)
from runtime.deployment.gateway_specs import (
    JSON_CONTENT_TYPES,
    TOML_CONTENT_TYPES,
    SpecReaders,
    check_spec,
    parse_spec_body,
    read_spec_body,
    require_spec_content_type,
)
from runtime.deployment.lifecycle import failure_cause
from runtime.deployment.metrics import BacktestCacheCollector, StreamdagCollector
from runtime.deployment.spec_limits import SpecLimits
from streamdag.config import ConfigError, GatewaySettings

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

#: The Prometheus text format that ``generate_latest`` writes, understood by every Prometheus.
_PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_HEALTH_TIMEOUT_S = 5.0
_METRICS_TIMEOUT_S = 10.0

_CONTROLLER = web.AppKey("controller", ControllerCalls)
_REGISTRY = web.AppKey("registry", CollectorRegistry)
_COLLECTOR = web.AppKey("collector", StreamdagCollector)
_SPEC_READERS_KEY = web.AppKey("spec_readers", SpecReaders)


def create_app(
    controller: Any,
    settings: GatewaySettings,
    token: str,
    *,
    registry: CollectorRegistry | None = None,
    spec_limits: SpecLimits | None = None,
    call_timeout_s: float = CONTROLLER_CALL_TIMEOUT_S,
) -> web.Application:
    """The gateway's aiohttp app over ``controller`` (a Controller or its Ray actor handle).

    ``token`` is the bearer token every route but ``/healthz`` requires. ``/metrics`` renders
    ``registry`` (a fresh one unless injected), on which a StreamdagCollector is registered.
    ``spec_limits`` bounds the specs ``POST /graphs`` reads. A call the controller does not
    answer within ``call_timeout_s`` gets 504.
    """
    if not token:
        raise ConfigError(
            "the gateway got an empty token; pass the bearer token clients must send "
            "(gateway.token, or let `streamdag up` generate one)"
        )
    app = web.Application(
        middlewares=[answer_errors, require_token], client_max_size=settings.max_body_bytes
    )
    registry = registry if registry is not None else CollectorRegistry()
    app[_CONTROLLER] = ControllerCalls(controller, call_timeout_s)
    app[TOKEN_KEY] = token.encode()
    app[MAX_BODY_KEY] = settings.max_body_bytes
    app[_REGISTRY] = registry
    app[_COLLECTOR] = StreamdagCollector(registry)
    readers = SpecReaders(spec_limits or SpecLimits())
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
    return json_answer(request.app[_BACKTEST_CACHE].stats())


async def _cache_clear(request: web.Request) -> web.Response:
    return json_answer({"cleared": await asyncio.to_thread(request.app[_BACKTEST_CACHE].clear)})


# -- graphs and nodes -------------------------------------------------------------------------
async def _submit(request: web.Request) -> web.Response:
    # Step 1: refuse what is too large or not JSON/TOML before reading a byte of it.
    limit = request.app[MAX_BODY_KEY]
    if request.content_length is not None and request.content_length > limit:
        return error_answer([too_large(request)], 413)
    require_spec_content_type(request.content_type)
    # Step 2: read (aiohttp stops at client_max_size); then, off the event loop and within the
    # time limit, scan it against the limits, parse it as data and validate it completely.
    spec = await request.app[_SPEC_READERS_KEY].read(await request.read(), request.content_type)
    # Step 3: hand the controller only a spec known to be valid.
    submission = await request.app[_CONTROLLER].submit_spec(spec)
    location = f"/graphs/{submission.get('id')}"
    return json_answer(submission, 201, {"Location": location})


async def _list(request: web.Request) -> web.Response:
    return json_answer({"graphs": await request.app[_CONTROLLER].list_submissions()})


async def _status(request: web.Request) -> web.Response:
    return json_answer(await request.app[_CONTROLLER].status(request.match_info["id"]))


async def _remove(request: web.Request) -> web.Response:
    return json_answer(await request.app[_CONTROLLER].remove(request.match_info["id"]))


async def _stop(request: web.Request) -> web.Response:
    return json_answer(await request.app[_CONTROLLER].stop(request.match_info["id"]))


async def _resume(request: web.Request) -> web.Response:
    return json_answer(await request.app[_CONTROLLER].resume(request.match_info["id"]))


async def _checkpoints(request: web.Request) -> web.Response:
    return json_answer({"regions": await request.app[_CONTROLLER].checkpoints(
        request.match_info["id"])})


async def _nodes(request: web.Request) -> web.Response:
    return json_answer({"nodes": await request.app[_CONTROLLER].nodes()})


async def _node(request: web.Request) -> web.Response:
    from runtime.deployment.controller import UnknownNodeError

    try:
        return json_answer(await request.app[_CONTROLLER].node(request.match_info["id"]))
    except UnknownNodeError as exc:
        return error_answer([ErrorDetail.of(exc)], 404)


# -- health and metrics -----------------------------------------------------------------------
async def _health(request: web.Request) -> web.Response:
    # A cheap read proves the controller answers; its health check takes the submission
    # lock, so a long submission would make a probe of it look like an outage.
    try:
        await asyncio.wait_for(request.app[_CONTROLLER].list_submissions(), _HEALTH_TIMEOUT_S)
    except Exception as exc:
        return json_answer({"status": "unavailable",
                            "problems": [f"the controller does not answer: "
                                         f"{failure_cause(exc)}"]}, 503)
    return json_answer({"status": "ok", "problems": []})


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
