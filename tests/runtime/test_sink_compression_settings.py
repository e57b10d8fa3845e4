"""Sink compression reaches the sinks a user runs: the ``kafka.compression`` setting and the
binding's ``compression_type`` (a graph run with it: test_kafka_sink_compression.py)."""

from __future__ import annotations

import pytest

import streamdag as sd
from connectors.errors import ConnectorConfigError
from runtime.runners.kafka_binding import KafkaBinding
from streamdag.config import ConfigError, KafkaSettings, load_settings

TICKS = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
OUT = TICKS.to_topic("out", name="out")


def test_the_setting_takes_a_codec_and_refuses_an_unknown_one_naming_the_choices() -> None:
    assert load_settings(overrides=["kafka.compression=gzip"]).kafka.compression == "gzip"
    assert load_settings("configs/local.toml").kafka.compression == ""
    assert load_settings("configs/cluster.toml").kafka.compression == "gzip"
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"STREAMDAG_KAFKA_COMPRESSION": "brotli"})
    assert str(refused.value) == (
        "STREAMDAG_KAFKA_COMPRESSION: kafka.compression: compression_type 'brotli' is unknown; "
        "expected one of '', 'gzip', 'snappy', 'lz4', 'zstd'")


def test_the_setting_refuses_a_codec_whose_library_is_missing(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aiokafka.codec.has_zstd", lambda: False)
    with pytest.raises(ConfigError) as refused:
        KafkaSettings(compression="zstd")
    assert str(refused.value) == (
        "kafka.compression: compression_type 'zstd' needs the cramjam library, which is not "
        "installed; pip install 'aiokafka[zstd]' (or choose another compression_type)")


def test_the_binding_gives_its_compression_to_every_sink_and_refuses_an_unknown_one() -> None:
    assert KafkaBinding("h:1", compression_type="gzip").sink_for(OUT).config.compression_type \
        == "gzip"
    assert KafkaBinding("h:1").sink_for(OUT).config.compression_type is None
    with pytest.raises(ConnectorConfigError) as refused:
        KafkaBinding("h:1", compression_type="GZIP")
    assert str(refused.value) == (
        "KafkaBinding: compression_type 'GZIP' is unknown; expected one of None, 'gzip', "
        "'snappy', 'lz4', 'zstd'")
