"""Settings: file, then STREAMDAG_* variables, then flags; clear errors for bad input."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from streamdag.config import (
    ConfigError,
    LimitSettings,
    add_setting_flags,
    load_settings,
    settings_from_args,
)

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load() -> None:
    local = load_settings(ROOT / "configs" / "local.toml", environ={})
    cluster = load_settings(ROOT / "configs" / "cluster.toml", environ={})
    assert local.kafka.bootstrap_servers == "" and local.ray.address == ""
    assert local.demo.graphs == ("momentum", "mean_reversion")
    assert cluster.ray.address == "ray://ray-head.internal:10001"
    assert cluster.kafka.partitions == 12
    assert local.limits == LimitSettings() == LimitSettings(
        max_nodes_per_graph=64, max_actors=64, memory_budget_bytes=8 << 30, expected_keys=10_000)
    assert cluster.limits == LimitSettings(
        max_nodes_per_graph=256, max_actors=512, memory_budget_bytes=64 << 30,
        expected_keys=100_000)


def test_limits_come_from_file_variables_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text("[limits]\nmax_actors = 10\nexpected_keys = 500\n")
    settings = load_settings(file, environ={"STREAMDAG_LIMITS_MEMORY_BUDGET_BYTES": "1048576"},
                             overrides=["limits.max_nodes_per_graph=5"])
    assert settings.limits == LimitSettings(max_nodes_per_graph=5, max_actors=10,
                                            memory_budget_bytes=1 << 20, expected_keys=500)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_limit_below_one_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ={"STREAMDAG_LIMITS_MAX_ACTORS": value})
    assert str(caught.value) == (
        f"STREAMDAG_LIMITS_MAX_ACTORS: limits.max_actors must be at least 1, got {value}")


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text('[kafka]\nbootstrap_servers = "file:9092"\npartitions = 3\n')
    env = {"STREAMDAG_KAFKA_BOOTSTRAP_SERVERS": "env:9092",
           "STREAMDAG_DEMO_GRAPHS": "a.toml,b.toml", "STREAMDAG_NAME": "prod"}
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    args = parser.parse_args(["--config", str(file), "--kafka-bootstrap-servers", "flag:9092",
                              "--set", "runtime.credits=9"])
    from_env = load_settings(file, environ=env)
    assert from_env.kafka.bootstrap_servers == "env:9092"
    assert from_env.kafka.partitions == 3
    assert from_env.demo.graphs == ("a.toml", "b.toml")
    assert from_env.name == "prod"
    from_flags = load_settings(args.config, environ=env, overrides=args.set, flags=args)
    assert from_flags.kafka.bootstrap_servers == "flag:9092"
    assert from_flags.runtime.credits == 9


def test_settings_from_args_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMDAG_RUNTIME_LINGER_MS", "2.5")
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    assert settings_from_args(parser.parse_args([])).runtime.linger_ms == 2.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environ": {"STREAMDAG_RUNTIME_CREDITS": "many"}},
         "STREAMDAG_RUNTIME_CREDITS: got 'many'; expected int"),
        ({"environ": {}, "overrides": ["kafka.brokers=x"]},
         "--set kafka.brokers=x: unknown setting 'kafka.brokers'; known settings: name, "),
        ({"environ": {}, "overrides": ["demo.rate"]},
         "--set 'demo.rate': expected section.key=value"),
    ],
)
def test_bad_settings_are_refused_with_what_was_wrong(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, **kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(broken, environ={})
    typed = tmp_path / "typed.toml"
    typed.write_text("[kafka]\npartitions = 'four'\n")
    with pytest.raises(ConfigError, match=r"\[kafka\]: got 'four'; expected int"):
        load_settings(typed, environ={})


def test_demo_help_documents_its_options() -> None:
    done = subprocess.run([sys.executable, "-m", "streamdag.cli", "demo", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--rate", "--duration", "--symbols", "--graph", "--kafka-bootstrap-servers",
                   "--set SECTION.KEY=VALUE", "--config"):
        assert option in done.stdout, option
