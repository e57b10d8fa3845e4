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
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from streamdag.config import Settings, add_setting_flags, settings_from_args
from streamdag.runtime.client import GATEWAY_FILE, GatewayAddress

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
    """Serve until Ctrl-C; 0 after a clean stop."""
    return serve(settings_from_args(args))


def serve(
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    stop: threading.Event | None = None,
    on_ready: Callable[[UpInfo], None] | None = None,
) -> int:
    """Start everything, serve until SIGINT/SIGTERM (or ``stop`` is set), then stop it all.

    Steps: 1. Kafka; 2. Ray; 3. the controller actor; 4. the gateway, serving until stopped;
    then, in reverse order, everything this call started.
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
                                   out, stop, on_ready))
    print("stopped", file=out, flush=True)
    return 0


@contextlib.contextmanager
def _embedded_broker(settings: Settings, out: TextIO) -> Iterator[str]:
    from streamdag.connectors.broker import EmbeddedBroker

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

    from streamdag.runtime.ray_runner import ensure_ray

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

    from streamdag.runtime.controller import controller_actor_name
    from streamdag.runtime.deployment import Deployment
    from streamdag.runtime.registry import NODE_NAMESPACE

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
    stop: threading.Event | None,
    on_ready: Callable[[UpInfo], None] | None,
) -> None:
    from streamdag.runtime.gateway import GatewayServer, create_app

    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
    server = GatewayServer(create_app(controller, settings.gateway, token),
                           settings.gateway.host, settings.gateway.port)
    url = await server.start()
    gateway_file = Path(settings.state_dir) / GATEWAY_FILE
    try:
        GatewayAddress(url, token).save(settings.state_dir)
        print(f"gateway:  {url}\ntoken:    {token}\n"
              f"(both written to {gateway_file}; `streamdag submit FILE` finds them there)\n"
              "Ctrl-C stops everything this command started.", file=out, flush=True)
        if on_ready is not None:
            on_ready(UpInfo(url, token, bootstrap, controller_name, gateway_file))
        waiters: list[asyncio.Task[bool]] = [asyncio.create_task(stopped.wait())]
        if stop is not None:
            waiters.append(asyncio.create_task(asyncio.to_thread(stop.wait)))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        print("\nstopping...", file=out, flush=True)
    finally:
        if stop is not None:
            stop.set()  # releases the thread still waiting on it, if the signal came first
        gateway_file.unlink(missing_ok=True)
        await server.stop()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
