"""Checkpoints and recovery under real faults, checked by an oracle: 0 lost, 0 duplicated,
per-key order, exact values (equal to a run without faults).

The aggregate is an EMA per key: an event applied twice or lost changes every later value.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from actor_kills import kill_actor_process, wait_for
from ema_oracle import differences, expected, per_key, produce, produce_in_background

import streamdag as sd
from connectors.topics import ensure_topics
from runtime.checkpoints.store import CheckpointStore
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.ray_runner import RayRunner
from runtime.runners.recovery import GraphFailedError
from streamdag.config import CheckpointSettings
from streamdag.testing import read_topic

TOTAL = 4000


def _graph(topic: str, out: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})
    smooth = ticks.ema("price", span=7, name="smooth")
    return sd.Graph("ema", outputs=[smooth.to_topic(out, name="out")])


def _run_with_a_kill(bootstrap: str, tmp_path: Path, victim: str, *,
                     corrupt_latest: bool = False) -> tuple[list[Any], Any]:
    """Stream 4000 events, kill -9 ``victim`` mid-stream; every output record, and the run."""
    topic, out = f"rec-in-{uuid.uuid4().hex[:8]}", f"rec-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    half = TOTAL // 2
    # A corruption test gives itself the backoff to corrupt the newest checkpoint in.
    settings = CheckpointSettings(url=tmp_path.as_uri(), interval_s=0.3,
                                  backoff_s=3.0 if corrupt_latest else 0.2)
    # Idle after 1 s, not 10: the stream's last events need not wait out the default.
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, idle_timeout_s=1.0)
    runner = RayRunner(checkpoints=settings, default_source=binding.source_for,
                       default_sink=binding.sink_for)
    running = runner.start(_graph(topic, out))
    try:
        asyncio.run(produce(bootstrap, topic, 0, half))
        wait_for(lambda: (running.checkpoints is not None
                          and running.checkpoints.completed >= 2
                          and running.stats()["out"].events_in >= half),
                 "two checkpoints and the first half through")
        flowing = produce_in_background(bootstrap, topic, half, TOTAL)
        wait_for(lambda: running.stats()["out"].events_in >= half + 400, "the second half to flow")
        kill_actor_process(running.actor(victim))
        if corrupt_latest:
            store = CheckpointStore(tmp_path.as_uri())
            newest = store.checkpoint_ids(running.plan.region)[-1]  # type: ignore[union-attr]
            snapshot = next((tmp_path / running.plan.region / f"{newest:012d}")  # type: ignore[union-attr]
                            .glob("*.snapshot"))
            snapshot.write_bytes(snapshot.read_bytes()[:-7])  # truncated
        flowing.join(timeout=60)
        records = asyncio.run(read_topic(bootstrap, out, TOTAL, timeout_s=60))
    finally:
        running.stop()
    return records, running


@pytest.mark.integration
@pytest.mark.parametrize("victim", ["smooth", "ticks", "out"])
def test_ray_a_killed_actor_is_recovered_with_exact_output(
    ray_session: None, bootstrap: str, tmp_path: Path, victim: str
) -> None:
    records, running = _run_with_a_kill(bootstrap, tmp_path, victim)

    assert running.recoveries == 1
    assert len(records) == TOTAL, differences(records, TOTAL)  # 0 lost, 0 duplicated
    # Per-key order and exact values.
    assert per_key(records) == expected(TOTAL), differences(records, TOTAL)
    stored = CheckpointStore(tmp_path.as_uri()).checkpoint_ids(running.plan.region)
    assert len(stored) == 2  # keep = 2


@pytest.mark.integration
def test_ray_a_corrupt_latest_checkpoint_falls_back_to_the_one_before_with_exact_output(
    ray_session: None, bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="streamdag.checkpoints"):
        records, running = _run_with_a_kill(bootstrap, tmp_path, "smooth", corrupt_latest=True)

    assert running.recoveries == 1
    fallbacks = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(fallbacks) == 1 and "truncated" in fallbacks[0]
    assert running.restored_from[0] is not None  # the one before, not a start over
    assert len(records) == TOTAL, differences(records, TOTAL)
    assert per_key(records) == expected(TOTAL), differences(records, TOTAL)


@pytest.mark.integration
def test_ray_recovery_that_gives_up_ends_the_supervision_with_the_cause(
    ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    """Past ``max_failures`` the supervisor stops: the graph has ended, nothing is recovering
    any more (a caller waiting for the recovery to end is not left waiting), and ``wait`` says
    why at once."""
    topic, out = f"rec-in-{uuid.uuid4().hex[:8]}", f"rec-out-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(bootstrap, {topic: 2, out: 2}))
    settings = CheckpointSettings(url=tmp_path.as_uri(), interval_s=0.3, backoff_s=0.2,
                                  max_failures=1)
    binding = KafkaBinding(bootstrap, fetch_max_wait_ms=10, idle_timeout_s=1.0)
    running = RayRunner(checkpoints=settings, default_source=binding.source_for,
                        default_sink=binding.sink_for).start(_graph(topic, out))
    try:
        kill_actor_process(running.actor("smooth"))
        wait_for(lambda: running.recoveries == 1 and not running.recovering,
                 "the first recovery")
        assert not running.ended
        kill_actor_process(running.actor("smooth"))
        wait_for(lambda: running.ended, "recovery to give up")
        assert not running.recovering
        with pytest.raises(GraphFailedError, match=r"2 failures within 300 s: more than "
                           r"checkpoint.max_failures = 1, so the graph is not restarted again"):
            running.wait(0)
    finally:
        running.stop()
