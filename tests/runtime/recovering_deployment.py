"""A deployment for fault tests: checkpoints every 0.3 s, recovers after a 0.2 s backoff."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

from runtime.deployment.controller import ControllerOptions
from runtime.deployment.handle import Deployment
from streamdag.config import CheckpointSettings, KafkaSettings, RuntimeSection, Settings


def recovering_deployment(bootstrap: str, tmp_path: Path, prefix: str) -> Iterator[Deployment]:
    """Yield a new deployment named ``<prefix><random>`` (health checks off), then shut it."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    # No warm pool: the fault tests find a node's actor by the name its submission reported,
    # which a recovery onto a pool actor changes (tests/runtime/test_warm_pool.py covers it).
    # A quiet partition is idle after 1 s, not 10: the last events of a test's stream need
    # not wait out the default (connectors/watermarks.py: one with records left never idles).
    settings = Settings(name=name, state_dir=str(tmp_path),
                        kafka=KafkaSettings(partitions=2, idle_timeout_s=1.0),
                        runtime=RuntimeSection(warm_pool=0),
                        checkpoint=CheckpointSettings(enabled=True, interval_s=0.3,
                                                      backoff_s=0.2))
    options = ControllerOptions(grace_s=0.0, health_interval_s=0.0,
                                lifecycle_topic=f"{name}.lifecycle")
    handle = Deployment.connect(settings, bootstrap, state_dir=tmp_path / name, options=options)
    yield handle
    handle.shutdown()
