"""Where the command lines find Kafka and the backtest cache: flags, settings, the state dir."""

from __future__ import annotations

from pathlib import Path

from connectors.broker import DEFAULT_STATE_DIR, EmbeddedBroker
from runtime.backtest.cache import ResultCache
from runtime.backtest.errors import BacktestError
from streamdag.config import Settings

__all__ = ["CACHE_FOLDER", "bootstrap_servers_of", "cache_directory", "open_cache"]

#: The cache's folder under the state directory.
CACHE_FOLDER = "backtest-cache"


def bootstrap_servers_of(settings: Settings) -> str:
    """``kafka.bootstrap_servers``, else the embedded broker running for this state dir."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    status = EmbeddedBroker.status_of(DEFAULT_STATE_DIR)
    if status.running:
        return EmbeddedBroker.attach(DEFAULT_STATE_DIR).bootstrap_servers
    raise BacktestError("no Kafka to read recorded input from: start the embedded broker "
                        "(`streamdag broker start`) or pass --kafka-bootstrap-servers HOST:PORT")


def cache_directory(settings: Settings, url: str | None = None) -> str:
    """``url`` (a path or fsspec URL), else ``<state_dir>/backtest-cache``."""
    return url if url else str(Path(settings.state_dir) / CACHE_FOLDER)


def open_cache(settings: Settings, url: str | None = None,
               max_bytes: int = 1 << 30) -> ResultCache:
    """The cache at ``url`` (default: under the state dir): a memory tier over it."""
    return ResultCache(max_bytes=max_bytes, directory=cache_directory(settings, url))
