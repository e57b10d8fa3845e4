"""Deployment settings: a TOML file, overridden by STREAMDAG_* environment variables and flags.

Every setting ``section.key`` can be set three ways, later ones winning: the TOML file
(``[section] key = ...``), the environment variable ``STREAMDAG_SECTION_KEY``, and the command
line flag ``--section-key`` (or the generic ``--set section.key=value``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from streamdag.errors import StreamdagError

__all__ = [
    "DELIVERIES",
    "CheckpointSettings",
    "ConfigError",
    "DemoSettings",
    "GatewaySettings",
    "KafkaSettings",
    "LimitSettings",
    "RaySettings",
    "RuntimeSection",
    "Settings",
    "add_setting_flags",
    "load_settings",
    "settings_from_args",
]

ENV_PREFIX = "STREAMDAG_"


class ConfigError(StreamdagError):
    """A configuration file, variable or flag is malformed."""


@dataclass(frozen=True)
class RaySettings:
    """Where Ray runs."""

    #: Address of an existing Ray cluster; empty starts a local Ray bound to 127.0.0.1.
    address: str = ""
    #: CPUs a local Ray may use.
    num_cpus: int = 2


@dataclass(frozen=True)
class KafkaSettings:
    """Which Kafka to use."""

    #: Bootstrap servers of an existing Kafka; empty starts the embedded broker (Tansu).
    bootstrap_servers: str = ""
    #: Default partitions of topics the project creates.
    partitions: int = 4
    #: Fetch wait of consumers (Tansu waits it out even when data is there; keep it low).
    fetch_max_wait_ms: int = 10
    #: Seconds a live source's partition may be quiet before it holds the watermark back no
    #: more (Flink's ``withIdleness``); the last events of a quiet stream wait this long. 0
    #: turns idleness off: a quiet partition holds the watermark until it has records again.
    idle_timeout_s: float = 10.0
    #: Compression of the record batches the Kafka sinks write: empty (none), gzip, snappy,
    #: lz4 or zstd (the last three need cramjam: ``pip install 'aiokafka[snappy]'``).
    compression: str = ""

    def __post_init__(self) -> None:
        if self.idle_timeout_s < 0:
            raise ConfigError(f"kafka.idle_timeout_s must be 0 (no idleness) or more seconds, "
                              f"got {self.idle_timeout_s}")
        from connectors.compression import compression_problem  # the codecs live there

        problem = compression_problem(self.compression or None, none="''")
        if problem is not None:
            raise ConfigError(f"kafka.compression: {problem}")


@dataclass(frozen=True)
class RuntimeSection:
    """Data-plane settings of node actors."""

    #: Unacknowledged pushes per channel (backpressure window).
    credits: int = 4
    #: A source cuts a batch at this many records...
    max_batch_records: int = 100_000
    #: ...or after this many milliseconds once it holds a record.
    linger_ms: float = 5.0
    #: Booted, warmed idle node actors a deployment keeps for its next nodes (0: none).
    warm_pool: int = 3
    #: Pushes between node actors go over TCP connections of their own, on ports the system
    #: picks; false sends them as Ray actor calls (about 1 ms more CPU per push on each
    #: side), for clusters whose machines reach each other on Ray's own ports only.
    data_connections: bool = True

    def __post_init__(self) -> None:
        if self.warm_pool < 0:
            raise ConfigError(f"runtime.warm_pool must be 0 (no pool) or more, got "
                              f"{self.warm_pool}")


@dataclass(frozen=True)
class DemoSettings:
    """The `streamdag demo` main job."""

    #: Synthetic ticks produced per second.
    rate: float = 20_000.0
    #: Number of symbols in the random walk.
    symbols: int = 100
    #: Seconds to run before the summary (0 runs until Ctrl-C).
    duration_s: float = 30.0
    #: Graph specs to run: file paths, or names of the example graphs shipped with streamdag.
    graphs: tuple[str, ...] = ("momentum", "mean_reversion")
    #: Topic the synthetic ticks are written to.
    topic: str = "market.ticks"


@dataclass(frozen=True)
class GatewaySettings:
    """The HTTP gateway and the metrics endpoint."""

    host: str = "127.0.0.1"
    port: int = 8686
    #: Bearer token the gateway requires; empty generates one at start and prints it.
    token: str = ""
    #: Largest accepted request body, in bytes.
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class LimitSettings:
    """What one deployment admits; a graph over a limit is refused before any actor starts.

    The defaults suit one 24 GiB machine: 64 node actors of ~200 MB each (~12.5 GiB) plus
    8 GiB of node caches leave room for Ray, the broker and the system.
    """

    #: Most nodes one graph may have.
    max_nodes_per_graph: int = 64
    #: Most node actors a deployment (or a Ray runner's graph) may run at once.
    max_actors: int = 64
    #: Estimated node-cache bytes a deployment's nodes (or a runner's graph) may hold.
    memory_budget_bytes: int = 8 << 30
    #: Keys (entities, e.g. symbols) a node is expected to see, for the memory estimate.
    expected_keys: int = 10_000

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if value < 1:
                raise ConfigError(f"limits.{limit.name} must be at least 1, got {value}")


#: How a graph's sinks may publish (``checkpoint.delivery``, ``Graph(delivery=...)``).
DELIVERIES = ("exactly_once", "at_least_once")


@dataclass(frozen=True)
class CheckpointSettings:
    """Checkpoints and recovery (DESIGN.md §7)."""

    #: Deployments: checkpoint every region and recover it by itself when an actor dies (off
    #: by default, as in Flink; runners take their ``checkpoints=`` settings directly).
    enabled: bool = False
    #: Where checkpoints go, as an fsspec URL; empty: ``file://<state_dir>/checkpoints``.
    url: str = ""
    #: Seconds between the starts of two checkpoints (one is in flight at a time).
    interval_s: float = 1.0
    #: Seconds a checkpoint may take before it is abandoned for the next one.
    timeout_s: float = 30.0
    #: Complete checkpoints kept per region.
    keep: int = 2
    #: ``exactly_once`` (sinks publish an epoch once its checkpoint is complete) or
    #: ``at_least_once`` (sinks publish at once: lower latency, duplicates after a recovery).
    delivery: str = "exactly_once"
    #: Recoveries allowed within ``failure_window_s`` before the graph ends Failed.
    max_failures: int = 5
    failure_window_s: float = 300.0
    #: Seconds before the first restart of a failed region, doubling up to ``max_backoff_s``.
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.delivery not in DELIVERIES:
            raise ConfigError(f"checkpoint.delivery must be one of {list(DELIVERIES)}, "
                              f"got {self.delivery!r}")
        if self.interval_s <= 0 or self.timeout_s <= 0 or self.keep < 1:
            raise ConfigError("checkpoint.interval_s and timeout_s must be positive and "
                              f"checkpoint.keep at least 1; got {self.interval_s}, "
                              f"{self.timeout_s}, {self.keep}")

    def store_url(self, state_dir: str) -> str:
        """``url``, or the default under ``state_dir``.

        >>> CheckpointSettings().store_url("/var/streamdag")
        'file:///var/streamdag/checkpoints'
        """
        if self.url:
            return self.url
        return Path(state_dir).resolve().joinpath("checkpoints").as_uri()


@dataclass(frozen=True)
class Settings:
    """All settings of a deployment."""

    #: Name of the deployment (the controller's actor name derives from it).
    name: str = "local"
    #: Where the deployment keeps its state (registry, checkpoints, broker files).
    state_dir: str = ".state"
    ray: RaySettings = field(default_factory=RaySettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    demo: DemoSettings = field(default_factory=DemoSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)


def _settings_keys() -> list[tuple[str | None, str, Any]]:
    """Every (section or None, key, type) pair."""
    keys: list[tuple[str | None, str, Any]] = []
    top_hints = get_type_hints(Settings)
    for f in fields(Settings):
        section = top_hints[f.name]
        if dataclasses.is_dataclass(section):
            hints = get_type_hints(section)
            keys.extend((f.name, g.name, hints[g.name]) for g in fields(section))
        else:
            keys.append((None, f.name, section))
    return keys


def _convert(where: str, value: Any, kind: Any) -> Any:
    text_given = isinstance(value, str)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if text_given and value.lower() in ("1", "true", "yes", "on"):
                return True
            if text_given and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == tuple[str, ...]:
            if text_given:
                return tuple(part.strip() for part in value.split(",") if part.strip())
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError
    except ValueError:
        pass
    expected = {tuple[str, ...]: "a list of strings (comma-separated in variables and flags)"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )
    raise ConfigError(f"{where}: got {value!r}; expected {expected}")


def _apply(settings: Settings, section: str | None, key: str, value: Any, where: str) -> Settings:
    for candidate_section, candidate_key, kind in _settings_keys():
        if candidate_section == section and candidate_key == key:
            converted = _convert(where, value, kind)
            if section is None:
                return replace(settings, **{key: converted})
            current = getattr(settings, section)
            try:
                updated = replace(current, **{key: converted})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            return replace(settings, **{section: updated})
    known = [f"{s}.{k}" if s else k for s, k, _ in _settings_keys()]
    name = f"{section}.{key}" if section else key
    raise ConfigError(f"{where}: unknown setting {name!r}; known settings: {', '.join(known)}")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    flags: argparse.Namespace | None = None,
) -> Settings:
    """Settings from ``path`` (TOML), then STREAMDAG_* variables, then flags and overrides.

    >>> load_settings(environ={"STREAMDAG_DEMO_RATE": "500"}, overrides=["kafka.partitions=2"]
    ...               ).demo.rate
    500.0
    """
    settings = Settings()
    if path is not None:
        file = Path(path)
        try:
            document = tomllib.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(file)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(file)!r} is not valid TOML: {exc}") from None
        for key, value in document.items():
            if isinstance(value, dict):
                for inner, inner_value in value.items():
                    settings = _apply(settings, key, inner, inner_value, f"{file}: [{key}]")
            else:
                settings = _apply(settings, None, key, value, f"{file}")
    env = os.environ if environ is None else environ
    for section, key, _ in _settings_keys():
        variable = ENV_PREFIX + (f"{section}_{key}" if section else key).upper()
        if variable in env:
            settings = _apply(settings, section, key, env[variable], variable)
    if flags is not None:
        for section, key, _ in _settings_keys():
            value = getattr(flags, _dest(section, key), None)
            if value is not None:
                settings = _apply(settings, section, key, value, f"--{_flag(section, key)}")
    for override in overrides:
        name, separator, value = override.partition("=")
        if not separator:
            raise ConfigError(f"--set {override!r}: expected section.key=value")
        section, _, key = name.rpartition(".")
        settings = _apply(settings, section or None, key, value, f"--set {override}")
    return settings


def _flag(section: str | None, key: str) -> str:
    return (f"{section}-{key}" if section else key).replace("_", "-")


def _dest(section: str | None, key: str) -> str:
    return f"setting_{section}_{key}" if section else f"setting_{key}"


def add_setting_flags(
    parser: argparse.ArgumentParser, sections: Sequence[str | None] | None = None
) -> None:
    """Add ``--config``, ``--set`` and one ``--section-key`` flag per setting to ``parser``.

    ``sections`` limits the flags to the settings of those sections (None: the top-level
    ``name`` and ``state_dir``), so a command's help lists only what it uses; default: all.
    """
    parser.add_argument("--config", default=None, help="settings file (TOML); default: none")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override any setting (repeatable)",
    )
    group = parser.add_argument_group("settings (also STREAMDAG_SECTION_KEY variables)")
    for section, key, _ in _settings_keys():
        if sections is not None and section not in sections:
            continue
        group.add_argument(f"--{_flag(section, key)}", dest=_dest(section, key), default=None,
                           metavar="VALUE")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings for a command whose parser went through ``add_setting_flags``."""
    return load_settings(args.config, overrides=args.set, flags=args)
