"""Start a deployment: Kafka (embedded unless configured), Ray, the controller and the gateway.

Prints the gateway's URL and bearer token and writes both to ``<state_dir>/gateway.json``, where
``streamdag submit``, ``ls``, ``status``, ``rm`` and ``top`` find them. Runs until Ctrl-C (or
SIGTERM), then stops what it started: the gateway, the controller with its node actors, the
local Ray and the embedded broker. A controller, Ray or broker that was already running is left
running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from runtime.deployment.client import GATEWAY_FILE, GatewayAddress
from streamdag.config import Settings, add_setting_flags, settings_from_args

__all__ = ["UpInfo", "add_arguments", "run", "serve"]


@dataclass(frozen=True)
class UpInfo:
    """What ``streamdag up`` started and where: handed to ``on_ready`` once serving."""

    url: str
    token: str
    bootstrap_servers: str
    controller_name: str
    gateway_file: Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting has a flag (``--gateway-port``, ``--kafka-bootstrap-servers``, ...)."""
    add_setting_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; 0 after a clean stop, 130 when interrupted while starting."""
    try:
        return serve(settings_from_args(args))
    except KeyboardInterrupt:
        print("\ninterrupted while starting; everything started so far has been stopped")
        return 130


def serve(
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    on_ready: Callable[[UpInfo], None] | None = None,
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
        token = settings.gateway.token or secrets.token_urlsafe(32)
        asyncio.run(_serve_gateway(settings, controller, token, bootstrap, controller_name,
                                   out, on_ready))
    print("stopped", file=out, flush=True)
    return 0


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
    try:
        address.save(settings.state_dir)
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
        await server.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
