"""Start a deployment: Kafka (embedded unless configured), Ray, the controller and the gateway.

Prints the gateway's URL and bearer token and writes both to ``<state_dir>/gateway.json``, where
``streamdag submit``, ``ls``, ``status``, ``rm`` and ``top`` find them; ``<state_dir>/up.json``
tells scripts (``Deployment.connect()``, ``bootstrap_servers()``) where Kafka and Ray are. The
token is kept in ``<state_dir>/gateway.token`` (owner-only), so a restart keeps it unless
``--rotate-token`` is given or ``gateway.token`` is set. Runs until Ctrl-C (or
SIGTERM), then stops what it started: the gateway, the controller with its node actors, the
local Ray and the embedded broker. A controller, Ray or broker that was already running is left
running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from runtime.deployment.client import GATEWAY_FILE, GatewayAddress
from runtime.deployment.discovery import UP_FILE, RunningDeployment
from streamdag.config import Settings, add_setting_flags, settings_from_args

__all__ = [
    "EMBEDDED_BROKER_NOTE",
    "TOKEN_FILE",
    "UP_SECTIONS",
    "UpInfo",
    "add_arguments",
    "gateway_token",
    "run",
    "serve",
]


@dataclass(frozen=True)
class UpInfo:
    """What ``streamdag up`` started and where: handed to ``on_ready`` once serving."""

    url: str
    token: str
    bootstrap_servers: str
    controller_name: str
    gateway_file: Path


#: The settings sections ``up`` uses (None: ``name`` and ``state_dir``); ``demo`` is not one.
UP_SECTIONS = (None, "ray", "kafka", "runtime", "gateway", "limits", "checkpoint")

#: Name of the file, in the state directory, that keeps the gateway's token across restarts.
TOKEN_FILE = "gateway.token"

#: What ``up`` says when it starts the embedded broker (BROKER.md: memory is never freed).
EMBEDDED_BROKER_NOTE = (
    "note:     the embedded broker keeps every topic in memory, never frees that memory (about "
    "4 MB/s at 20k events/s)\n"
    "          and loses the topics when it stops: it is for trying streamdag out. For long runs "
    "set kafka.bootstrap_servers\n"
    "          to your own Kafka (README: \"Running on your own Kafka and Ray cluster\")."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings ``up`` uses (``--gateway-port``, ``--kafka-bootstrap-servers``, ...)."""
    parser.add_argument("--rotate-token", action="store_true",
                        help=f"make a new gateway token instead of the one kept in "
                        f"<state_dir>/{TOKEN_FILE}")
    add_setting_flags(parser, UP_SECTIONS)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; 0 after a clean stop, 130 when interrupted while starting."""
    try:
        return serve(settings_from_args(args), rotate_token=args.rotate_token)
    except KeyboardInterrupt:
        print("\ninterrupted while starting; everything started so far has been stopped")
        return 130


def serve(
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    on_ready: Callable[[UpInfo], None] | None = None,
    rotate_token: bool = False,
) -> int:
    """Start everything, serve until SIGINT or SIGTERM, then stop it all; call from the main thread.

    Steps: 1. Kafka; 2. Ray; 3. the controller actor; 4. the gateway, serving until a signal;
    then, in reverse order, everything this call started. ``on_ready`` runs in the gateway's
    event loop once it serves, so it must not block.
    """
    with contextlib.ExitStack() as started:
        # Step 1: Kafka: the configured cluster, or the embedded broker.
        bootstrap = settings.kafka.bootstrap_servers or started.enter_context(
            _embedded_broker(settings, out))
        # Step 2: Ray.
        started.enter_context(_ray(settings))
        # Step 3: the controller (a detached actor, so an existing one is reused).
        controller_name, controller = started.enter_context(
            _controller(settings, bootstrap, out))
        # Step 4: the gateway.
        token = settings.gateway.token or gateway_token(settings.state_dir, rotate=rotate_token)
        asyncio.run(_serve_gateway(settings, controller, token, bootstrap, controller_name,
                                   out, on_ready))
    print("stopped", file=out, flush=True)
    return 0


def gateway_token(state_dir: str, *, rotate: bool = False) -> str:
    """The token kept in ``<state_dir>/gateway.token``; a new one when absent or ``rotate``."""
    path = Path(state_dir) / TOKEN_FILE
    if not rotate:
        with contextlib.suppress(FileNotFoundError):
            kept = path.read_text(encoding="utf-8").strip()
            if kept:
                return kept
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created owner-only before the token is written, so it is never readable by others.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(token + "\n")
    return token


@contextlib.contextmanager
def _embedded_broker(settings: Settings, out: TextIO) -> Iterator[str]:
    from connectors.broker import EmbeddedBroker

    directory = Path(settings.state_dir) / "broker"
    if EmbeddedBroker.status_of(directory).running:
        broker = EmbeddedBroker.attach(directory)
        print(f"kafka:    {broker.bootstrap_servers} (embedded broker already running; left "
              "running)", file=out, flush=True)
        yield broker.bootstrap_servers
        return
    with EmbeddedBroker.start(directory) as broker:
        print(f"kafka:    {broker.bootstrap_servers} (embedded broker, log {broker.log_path})",
              file=out, flush=True)
        print(EMBEDDED_BROKER_NOTE, file=out, flush=True)
        yield broker.bootstrap_servers


@contextlib.contextmanager
def _ray(settings: Settings) -> Iterator[None]:
    import ray

    from runtime.runners.ray_runner import ensure_ray

    started_here = not ray.is_initialized()
    ensure_ray(settings.ray.address or None, settings.ray.num_cpus)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


@contextlib.contextmanager
def _controller(settings: Settings, bootstrap: str, out: TextIO) -> Iterator[tuple[str, Any]]:
    import ray

    from runtime.deployment.controller import controller_actor_name
    from runtime.deployment.handle import Deployment
    from runtime.deployment.node_registry import NODE_NAMESPACE

    name = controller_actor_name(settings.name)
    try:
        ray.get_actor(name, namespace=NODE_NAMESPACE)
        existed = True
    except ValueError:
        existed = False
    deployment = Deployment.connect(settings, bootstrap)
    print(f"controller: {name} ({'already running; left running' if existed else 'started'})",
          file=out, flush=True)
    try:
        yield name, deployment.controller
    finally:
        if not existed:
            deployment.shutdown()


async def _serve_gateway(
    settings: Settings,
    controller: Any,
    token: str,
    bootstrap: str,
    controller_name: str,
    out: TextIO,
    on_ready: Callable[[UpInfo], None] | None,
) -> None:
    from runtime.backtest.locations import open_cache
    from runtime.deployment.gateway import GatewayServer, add_cache_routes, create_app

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    app = create_app(controller, settings.gateway, token)
    add_cache_routes(app, open_cache(settings))
    server = GatewayServer(app, settings.gateway.host, settings.gateway.port)
    address = GatewayAddress(await server.start(), token)
    gateway_file = Path(settings.state_dir) / GATEWAY_FILE
    running = RunningDeployment(settings.name, bootstrap, _ray_address(settings), address.url,
                                os.getpid(), os.environ.get("RAY_AUTH_MODE", ""))
    try:
        address.save(settings.state_dir)
        running.save(settings.state_dir)
        print(f"gateway:  {address.url}\ntoken:    {token}\n"
              f"(both written to {gateway_file}; `streamdag submit FILE` finds them there)\n"
              "Ctrl-C stops everything this command started.", file=out, flush=True)
        if on_ready is not None:
            on_ready(UpInfo(address.url, token, bootstrap, controller_name, gateway_file))
        await stopped.wait()
        print("\nstopping...", file=out, flush=True)
    finally:
        # Another `up` may have taken the file over since; only our own address is removed.
        if GatewayAddress.load(settings.state_dir) == address:
            gateway_file.unlink(missing_ok=True)
        if RunningDeployment.load(settings.state_dir) == running:
            (Path(settings.state_dir) / UP_FILE).unlink(missing_ok=True)
        await server.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _ray_address(settings: Settings) -> str:
    import ray

    # The configured address (a ray:// one works from anywhere), else the GCS address of the
    # local Ray this process started: another driver joins it there.
    configured = settings.ray.address or os.environ.get("RAY_ADDRESS")
    return configured or str(ray.get_runtime_context().gcs_address)
