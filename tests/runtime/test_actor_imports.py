"""A node actor's modules leave out what only the driver, the CLI or a deployment uses."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from runtime.runners.ray_runner import KAFKA_ENDPOINT_MODULES, NODE_ACTOR_MODULES

#: Packages a node actor never calls: each costs every actor its import's memory (networkx
#: alone is about 10 MiB), so the actor's modules must not import them, even indirectly.
#: aiokafka and the Kafka connectors are only a Kafka endpoint's (``KAFKA_ENDPOINT_MODULES``).
_NOT_IN_AN_ACTOR = ("networkx", "aiohttp", "prometheus_client", "ray", "runtime.deployment",
                    "runtime.cli", "runtime.backtest", "runtime.planning", "benchmarks",
                    "aiokafka", "connectors.kafka_source", "connectors.kafka_sink",
                    "connectors.record_batches", "connectors.epoch_batches")


def _banned_after_importing(modules: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``(banned, loaded)``: the ``_NOT_IN_AN_ACTOR`` modules, and every module of their top
    packages, in ``sys.modules`` after importing ``modules`` in a fresh interpreter."""
    code = ("import json, sys; " + "; ".join(f"import {m}" for m in modules)
            + f"; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted({name.split('.')[0] for name in _NOT_IN_AN_ACTOR})!r})))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout
    loaded: list[str] = json.loads(output.strip().splitlines()[-1])
    return [name for name in loaded if any(
        name == banned or name.startswith(f"{banned}.") for banned in _NOT_IN_AN_ACTOR)], loaded


def test_a_node_actors_modules_do_not_import_the_drivers() -> None:
    """Importing ``NODE_ACTOR_MODULES`` in a fresh interpreter loads none of those packages."""
    banned, loaded = _banned_after_importing(NODE_ACTOR_MODULES)
    assert banned == []
    # The check can fail: the actor's own packages are seen, so would a banned one be.
    assert "runtime.dataplane.host" in loaded


def test_only_a_kafka_endpoints_modules_import_aiokafka() -> None:
    """A Kafka endpoint's actor adds ``KAFKA_ENDPOINT_MODULES``: aiokafka and the connectors
    come with them (what the other node actors are spared)."""
    banned, _ = _banned_after_importing(NODE_ACTOR_MODULES + KAFKA_ENDPOINT_MODULES)
    assert {"aiokafka", "connectors.kafka_source", "connectors.kafka_sink"} <= set(banned)
    assert not any(name.startswith(("networkx", "ray", "runtime.planning")) for name in banned)


def _kafka_modules_here(_: object = None) -> list[str]:
    """aiokafka's modules in this process, and numba's linear algebra if one of its compile
    registries was imported (run in a node actor)."""
    return sorted(name for name in sys.modules
                  if name.split(".")[0] == "aiokafka" or name == "numba.np.linalg")


def _collector_here(_: object = None) -> tuple[bool, int]:
    """Whether the cyclic collector runs in this process, and how many objects it skips
    (``gc.freeze``), in a node actor."""
    return gc.isenabled(), gc.get_freeze_count()


@pytest.mark.usefixtures("ray_session")
def test_a_node_actor_that_is_no_kafka_endpoint_never_imports_aiokafka() -> None:
    """In a Ray run, the actors of a graph without Kafka endpoints (a streamdag-started Ray's
    workers preloaded ``NODE_ACTOR_MODULES``) hold no aiokafka module after their run, nor
    numba's compile registries (their kernels loaded lean from the cache); the collector runs,
    and skips the preload's objects."""
    import ray

    import streamdag as sd
    from runtime.runners.ray_runner import RayRunner
    from streamdag.testing import TestingSource

    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=2, name="mean")
    batch = sd.Batch.from_columns(ts=[1, 2], key=["a", "a"], price=[1.0, 3.0])
    running = RayRunner().start(sd.Graph("g", outputs=[mean]),
                                sources={"ticks": lambda: TestingSource([batch])})
    try:
        result = running.wait(60)
        imported = ray.get([running.actor(name).__ray_call__.remote(_kafka_modules_here)
                            for name in ("ticks", "mean")])
        collectors = ray.get([running.actor(name).__ray_call__.remote(_collector_here)
                              for name in ("ticks", "mean")])
    finally:
        running.stop()
    assert result.records("mean") == [{"ts": 2, "key": "a", "value": 2.0}]
    assert imported == [[], []]
    # The preload's imports alone make about 100,000 objects.
    assert [(enabled, frozen > 50_000) for enabled, frozen in collectors] == [(True, True)] * 2
