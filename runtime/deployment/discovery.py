"""Find what ``streamdag broker start`` or ``streamdag up`` started, from the state directory.

``streamdag up`` writes ``<state_dir>/up.json`` (Kafka's bootstrap servers, the Ray address,
the deployment's name, the gateway URL); ``streamdag broker start`` leaves ``broker.json`` in
``<state_dir>/broker``. A script or a command then needs no address pasted in by hand:
``bootstrap_servers()`` and ``Deployment.connect()`` look there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from runtime.deployment.state_files import read_json, write_json_atomically
from streamdag.config import ConfigError, Settings, load_settings

__all__ = [
    "UP_FILE",
    "RunningDeployment",
    "bootstrap_servers",
    "find_deployment",
    "settings_here",
]

#: Name of the file, in the state directory, that a running ``streamdag up`` keeps.
UP_FILE = "up.json"

_NOTHING_RUNNING = (
    "no Kafka found: start the embedded broker with `streamdag broker start` (or a whole "
    "deployment with `streamdag up`) in this directory first, or set "
    "STREAMDAG_KAFKA_BOOTSTRAP_SERVERS to your own Kafka"
)


@dataclass(frozen=True)
class RunningDeployment:
    """What a running ``streamdag up`` wrote about itself."""

    name: str
    bootstrap_servers: str
    ray_address: str
    url: str
    pid: int
    #: RAY_AUTH_MODE of up's Ray ("token" when a driver must present ~/.ray's token).
    ray_auth_mode: str = ""

    def save(self, state_dir: str | os.PathLike[str]) -> Path:
        """Write ``<state_dir>/up.json`` (owner-only, atomically); returns its path."""
        path = Path(state_dir) / UP_FILE
        write_json_atomically(path, {
            "name": self.name, "bootstrap_servers": self.bootstrap_servers,
            "ray_address": self.ray_address, "url": self.url, "pid": self.pid,
            "ray_auth_mode": self.ray_auth_mode,
        })
        return path

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> RunningDeployment | None:
        """The deployment in ``<state_dir>/up.json`` if its process still runs, else None."""
        try:
            raw = read_json(Path(state_dir) / UP_FILE)
            found = cls(str(raw["name"]), str(raw["bootstrap_servers"]),
                        str(raw["ray_address"]), str(raw["url"]), int(raw["pid"]),
                        str(raw.get("ray_auth_mode", "")))
        except (TypeError, KeyError, ValueError):
            return None
        return found if _process_runs(found.pid) else None


def settings_here(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of this directory: defaults overridden by STREAMDAG_* variables."""
    return load_settings(environ=os.environ if environ is None else environ)


def find_deployment(state_dir: str | os.PathLike[str] | None = None) -> RunningDeployment:
    """The deployment ``streamdag up`` runs from ``state_dir`` (default: the state_dir setting).

    Raises ConfigError saying what to run first when none runs.
    """
    directory = Path(state_dir) if state_dir is not None else Path(settings_here().state_dir)
    found = RunningDeployment.load(directory)
    if found is None:
        raise ConfigError(
            f"no deployment is running from state directory {str(directory)!r} (no live "
            f"{UP_FILE} there): start one with `streamdag up` in another shell, in this "
            "directory"
        )
    return found


def bootstrap_servers(
    state_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Kafka's bootstrap servers: the setting, else what ``up`` or ``broker start`` started.

    Steps: 1. ``kafka.bootstrap_servers`` (STREAMDAG_KAFKA_BOOTSTRAP_SERVERS); 2. the Kafka of
    a running ``streamdag up`` (``<state_dir>/up.json``); 3. a running embedded broker in
    ``<state_dir>/broker``. Raises ConfigError saying what to start when none is found.
    """
    from connectors.broker import EmbeddedBroker

    settings = settings_here(environ)
    # Step 1: the setting.
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    directory = Path(state_dir) if state_dir is not None else Path(settings.state_dir)
    # Step 2: a running `streamdag up`.
    deployment = RunningDeployment.load(directory)
    if deployment is not None:
        return deployment.bootstrap_servers
    # Step 3: `streamdag broker start`.
    status = EmbeddedBroker.status_of(directory / "broker")
    if status.running and status.bootstrap_servers:
        return status.bootstrap_servers
    raise ConfigError(f"{_NOTHING_RUNNING} (looked in {str(directory)!r})")


def _process_runs(pid: int) -> bool:
    import psutil

    return bool(psutil.pid_exists(pid))
