"""Shared fixtures: one real local Ray for the whole run (bound to 127.0.0.1, no dashboard)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from connectors.broker import EmbeddedBroker

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Test modules are imported by their folder (no __init__.py); Ray workers inherit this path so
# they can unpickle test-defined factories and functions.
_TEST_DIRS = [str(p) for p in Path(__file__).parent.glob("*") if p.is_dir()]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*_TEST_DIRS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A real local Ray instance shared by every test that needs one."""
    import ray

    from runtime.runners.ray_runner import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The real embedded Kafka-compatible broker, started once for the session, then stopped."""
    from connectors.broker import EmbeddedBroker

    with EmbeddedBroker.start(tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def bootstrap(broker: EmbeddedBroker) -> str:
    """The embedded broker's bootstrap servers."""
    return str(broker.bootstrap_servers)
