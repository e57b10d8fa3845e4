"""KafkaBinding: what the sources of a run are built with."""

from __future__ import annotations

import pytest

import streamdag as sd
from runtime.runners.kafka_binding import KafkaBinding
from streamdag.config import ConfigError, KafkaSettings

TICKS = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})


def test_a_bounded_read_has_no_idle_partitions_and_a_live_one_keeps_the_default() -> None:
    # A partition the broker is slow to serve must not go idle in a bounded replay: its
    # records would fall behind the watermark the others moved, and be dropped as late.
    bounded = KafkaBinding("127.0.0.1:9092", end=100).source_for(TICKS).config
    live = KafkaBinding("127.0.0.1:9092").source_for(TICKS).config
    assert (bounded.idle_timeout_s, live.idle_timeout_s) == (None, 10.0)


def test_the_idle_timeout_setting_reaches_live_sources_and_zero_turns_it_off() -> None:
    assert KafkaBinding("h:1", idle_timeout_s=2.5).source_for(TICKS).config.idle_timeout_s == 2.5
    assert KafkaBinding("h:1", idle_timeout_s=0).source_for(TICKS).config.idle_timeout_s is None
    with pytest.raises(ConfigError, match=r"kafka\.idle_timeout_s must be 0"):
        KafkaSettings(idle_timeout_s=-1)


def test_bound_sources_fetch_at_most_the_bindings_bytes() -> None:
    """A bound source fetches 256 KiB per partition and 1 MiB per request unless told more
    (aiokafka's own 1 MiB per partition held 17 MiB more in a catching-up source actor)."""
    config = KafkaBinding("h:1").source_for(TICKS).config
    assert (config.max_partition_fetch_bytes, config.fetch_max_bytes) == (256 << 10, 1 << 20)
    config = KafkaBinding("h:1", max_partition_fetch_bytes=1 << 20,
                          fetch_max_bytes=16 << 20).source_for(TICKS).config
    assert (config.max_partition_fetch_bytes, config.fetch_max_bytes) == (1 << 20, 16 << 20)
