"""`streamdag up`, then submit / ls / status / top / rm against it over HTTP, then Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import stat
import threading
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import ray
from actor_kills import wait_for
from tomli_w import dumps as toml_dumps

from connectors.broker import EmbeddedBroker
from connectors.topics import ensure_topics
from runtime.cli import checkpoints as checkpoints_command
from runtime.cli import ls as ls_command
from runtime.cli import resume as resume_command
from runtime.cli import rm as rm_command
from runtime.cli import status as status_command
from runtime.cli import stop as stop_command
from runtime.cli import submit as submit_command
from runtime.cli import top as top_command
from runtime.cli import up as up_command
from runtime.cli.top import DeploymentView, NodeView, render_top
from runtime.dataplane.stats import LatencyHistogram, NodeStats
from runtime.deployment.client import (
    GatewayAddress,
    GatewayClient,
    GatewayUnreachableError,
    RequestRefusedError,
    add_connection_flags,
    client_from_args,
)
from runtime.deployment.discovery import RunningDeployment, bootstrap_servers, find_deployment
from runtime.deployment.handle import Deployment
from runtime.deployment.node_registry import NODE_NAMESPACE
from streamdag.config import (
    CheckpointSettings,
    ConfigError,
    GatewaySettings,
    KafkaSettings,
    Settings,
)


def command(module: ModuleType, *argv: str) -> int:
    """Run one subcommand module the way ``streamdag.cli`` does."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    result: int = module.run(parser.parse_args(list(argv)))
    return result


def connection_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_flags(parser)
    return parser.parse_args(list(argv))


# -- finding the gateway ----------------------------------------------------------------------
def test_the_saved_address_is_private_and_used_by_default(tmp_path: Path) -> None:
    path = GatewayAddress("http://127.0.0.1:9999", "t0k").save(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert GatewayAddress.load(tmp_path) == GatewayAddress("http://127.0.0.1:9999", "t0k")
    client = client_from_args(connection_args("--state-dir", str(tmp_path)), environ={})
    assert (client.url, client.token) == ("http://127.0.0.1:9999", "t0k")


def test_flags_and_the_token_variable_win_over_the_saved_address(tmp_path: Path) -> None:
    GatewayAddress("http://127.0.0.1:9999", "saved").save(tmp_path)
    args = connection_args("--state-dir", str(tmp_path), "--token", "flag")
    assert client_from_args(args, environ={}).token == "flag"
    args = connection_args("--state-dir", str(tmp_path))
    assert client_from_args(args, environ={"STREAMDAG_GATEWAY_TOKEN": "env"}).token == "env"


def test_the_saved_token_is_never_sent_to_another_url(tmp_path: Path) -> None:
    GatewayAddress("http://127.0.0.1:9999", "saved").save(tmp_path)
    args = connection_args("--state-dir", str(tmp_path), "--url", "http://elsewhere:1")
    with pytest.raises(ConfigError) as refused:
        client_from_args(args, environ={})
    assert str(refused.value) == (
        f"no token for the gateway at http://elsewhere:1: pass --token, set "
        f"STREAMDAG_GATEWAY_TOKEN, or start the gateway with `streamdag up` (it writes "
        f"{tmp_path}/gateway.json)")


def test_an_absent_gateway_is_reported_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(GatewayUnreachableError) as unreachable:
        command(ls_command, "--url", "http://127.0.0.1:1", "--token", "t",
                "--state-dir", str(tmp_path))
    assert str(unreachable.value) == (
        "no gateway answers at http://127.0.0.1:1 ([Errno 111] Connection refused); start "
        "one with `streamdag up`, or point --url at a running one")


def test_the_gateway_token_is_kept_owner_only_until_rotated(tmp_path: Path) -> None:
    token = up_command.gateway_token(str(tmp_path))
    assert stat.S_IMODE((tmp_path / up_command.TOKEN_FILE).stat().st_mode) == 0o600
    assert up_command.gateway_token(str(tmp_path)) == token
    rotated = up_command.gateway_token(str(tmp_path), rotate=True)
    assert rotated != token and len(rotated) == len(token)
    assert up_command.gateway_token(str(tmp_path)) == rotated


def test_up_help_lists_only_the_settings_up_uses() -> None:
    from streamdag.cli import build_parser

    parser = build_parser()
    [up_parser] = [action.choices["up"] for action in parser._subparsers._group_actions]  # type: ignore[union-attr]
    text = up_parser.format_help()
    for flag in ("--rotate-token", "--gateway-port", "--kafka-bootstrap-servers",
                 "--ray-address", "--checkpoint-enabled", "--state-dir"):
        assert flag in text, flag
    assert "--demo-" not in text


# -- top's screen -----------------------------------------------------------------------------
def histogram(*seconds: float) -> LatencyHistogram:
    observed = LatencyHistogram()
    for value in seconds:
        observed.observe(value)
    return observed


def test_top_shows_rates_and_p99s_over_the_last_refresh_only() -> None:
    before = DeploymentView(
        nodes={
            "a": NodeView("ticks", "a", "kafka_source", graphs=2, stats=NodeStats(
                "a", "ticks", events_out=1000, lag={0: 5}, process_latency=histogram(0.2))),
            "b": NodeView("out", "b", "kafka_sink", graphs=1, stats=NodeStats(
                "b", "out", events_in=900, events_out=900, process_latency=histogram(0.2),
                end_to_end_latency=histogram(0.2))),
        },
        actors_running=2, reuse_ratio=0.5, submissions={"executing": 2, "failed": 0})
    after = DeploymentView(
        nodes={
            "a": NodeView("ticks", "a", "kafka_source", graphs=2, stats=NodeStats(
                "a", "ticks", events_out=3000, lag={0: 5, 1: 2},
                process_latency=histogram(0.2, 0.0002))),
            "b": NodeView("out", "b", "kafka_sink", graphs=1, stats=NodeStats(
                "b", "out", events_in=2900, events_out=2900, queue_depth=3,
                process_latency=histogram(0.2, 0.004),
                end_to_end_latency=histogram(0.2, 0.03))),
        },
        actors_running=2, actor_crashes=1, reuse_ratio=0.5,
        submissions={"executing": 1, "failed": 1})
    assert render_top(after, before, 2.0, "http://127.0.0.1:8686") == (
        "streamdag top  http://127.0.0.1:8686  actors running: 2  crashes: 1  reuse ratio: 0.50\n"
        "submissions: executing=1 failed=1\n"
        "\n"
        "node   id  operator      graphs  events in   in/s  events out  out/s  p99 batch ms  "
        "p99 e2e ms  queue  lag\n"
        "out    b   kafka_sink         1      2,900  1,000       2,900  1,000          5.00  "
        "     50.00      3    -\n"
        "ticks  a   kafka_source       2          0      0       3,000  1,000          0.25  "
        "         -      0    7")
    assert render_top(DeploymentView(), None, 1.0, "http://x") == (
        "streamdag top  http://x  actors running: 0  crashes: 0  reuse ratio: 0.00\n"
        "submissions: none\n"
        "\n"
        "no nodes running; submit a graph spec with `streamdag submit FILE`")


# -- up, and every command against it ---------------------------------------------------------
def spec(name: str, ticks: str, out: str, *, mean: bool) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"name": "ticks", "type": "kafka_source",
         "params": {"topic": ticks, "key": "symbol", "schema": {"price": "float64"}}}]
    if mean:
        nodes.append({"name": "sma2", "type": "rolling_mean", "inputs": ["ticks"],
                      "params": {"field": "price", "window": 2}})
    nodes.append({"name": "out", "type": "kafka_sink", "inputs": [nodes[-1]["name"]],
                  "params": {"topic": out}})
    return {"name": name, "nodes": nodes}


@pytest.mark.integration
def test_up_serves_every_command_until_ctrl_c_then_stops_what_it_started(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(name=f"cli{uuid.uuid4().hex[:8]}", state_dir=str(tmp_path),
                        kafka=KafkaSettings(partitions=1), gateway=GatewaySettings(port=0),
                        checkpoint=CheckpointSettings(enabled=True, interval_s=0.3))
    out = io.StringIO()
    started: list[up_command.UpInfo] = []
    failures: list[BaseException] = []
    workers: list[threading.Thread] = []

    def use_then_interrupt(info: up_command.UpInfo) -> None:
        try:
            use_every_command(info, out, tmp_path, capsys)
        except BaseException as exc:  # re-raised by the test once up has stopped
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    def on_ready(info: up_command.UpInfo) -> None:
        started.append(info)
        # up serves from this (the main) thread; the commands run beside it, as in a shell.
        workers.append(threading.Thread(target=use_then_interrupt, args=(info,)))
        workers[0].start()

    assert up_command.serve(settings, out=out, on_ready=on_ready) == 0
    workers[0].join(60)
    if failures:
        raise failures[0]
    # Ctrl-C stopped what up started: gateway, controller, broker; Ray was not its own.
    [info] = started
    assert out.getvalue().endswith("\nstopping...\nstopped\n")
    assert GatewayAddress.load(tmp_path) is None
    assert RunningDeployment.load(tmp_path) is None
    # The token stays for the next `up`.
    assert up_command.gateway_token(str(tmp_path)) == info.token
    with pytest.raises(ValueError):
        ray.get_actor(info.controller_name, namespace=NODE_NAMESPACE)
    assert not EmbeddedBroker.status_of(tmp_path / "broker").running
    assert ray.is_initialized()


def use_every_command(
    info: up_command.UpInfo, up_output: io.StringIO, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = ("--state-dir", str(tmp_path))
    # Step 1: up said, and wrote, where it listens; its broker is the one it started.
    assert GatewayAddress.load(tmp_path) == GatewayAddress(info.url, info.token)
    assert ray.get_actor(info.controller_name, namespace=NODE_NAMESPACE) is not None
    assert EmbeddedBroker.status_of(tmp_path / "broker").running
    assert up_output.getvalue().splitlines()[:8] == [
        f"kafka:    {info.bootstrap_servers} (embedded broker, log "
        f"{tmp_path / 'broker' / 'broker.log'})",
        *up_command.EMBEDDED_BROKER_NOTE.splitlines(),
        f"controller: {info.controller_name} (started)",
        f"gateway:  {info.url}",
        f"token:    {info.token}",
        f"(both written to {tmp_path / 'gateway.json'}; `streamdag submit FILE` finds them "
        "there)",
    ]
    # Scripts find the deployment, its Kafka and its Ray from the state directory.
    found = find_deployment(tmp_path)
    assert (found.bootstrap_servers, found.url) == (info.bootstrap_servers, info.url)
    assert f"streamdag-controller-{found.name}" == info.controller_name
    os.environ["STREAMDAG_STATE_DIR"] = str(tmp_path)
    try:
        assert bootstrap_servers() == info.bootstrap_servers
        assert Deployment.connect().list() == []
    finally:
        del os.environ["STREAMDAG_STATE_DIR"]
    ticks = f"cli-ticks-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(info.bootstrap_servers, {ticks: 1}))
    copy_file, mean_file = tmp_path / "copy.toml", tmp_path / "mean.json"
    copy_file.write_text(toml_dumps(spec("copy", ticks, f"{ticks}.copy", mean=False)))
    mean_file.write_text(json.dumps(spec("mean", ticks, f"{ticks}.mean", mean=True)))

    # Step 2: submit a TOML file, then a JSON one sharing its source.
    capsys.readouterr()
    assert command(submit_command, str(copy_file), *state) == 0
    first = capsys.readouterr().out.split()[1]
    assert command(submit_command, str(mean_file), *state) == 0
    printed = capsys.readouterr().out
    second = printed.split()[1]
    assert printed == (
        f"submission {second} (graph mean): executing\n"
        "  3 nodes: 2 new, 1 reused (reuse ratio 0.33)\n"
        "  new:    out, sma2\n"
        "  reused: ticks\n")

    # Step 3: ls and status.
    assert command(ls_command, *state) == 0
    assert capsys.readouterr().out == (
        "id             graph  state      nodes  new  reused  cause\n"
        f"{first}  copy   executing      2    2       0\n"
        f"{second}  mean   executing      3    2       1\n")
    assert command(status_command, second, *state) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        f"submission {second} (graph mean): executing",
        "  3 nodes: 2 new, 1 reused (reuse ratio 0.33)",
        "  new:    out, sma2",
        "  reused: ticks",
        "  history: submitted -> processing -> mapped -> executing",
    ]
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["node", "operator"])
    # The warm pool's figures move as it refills: the line is there, its counts vary.
    assert [line.split(":")[0] for line in lines[5:header]] == ["  warm pool"]
    rows = [line.split()[:7] for line in lines[header + 1:]]
    assert rows == [["ticks", "kafka_source", "source", "yes", "2", "0", "0"],
                    ["sma2", "rolling_mean", "operator", "yes", "1", "0", "0"],
                    ["out", "kafka_sink", "sink", "yes", "1", "0", "0"]]

    # Step 4: one refresh of top.
    assert command(top_command, "--iterations", "1", "--no-clear", *state) == 0
    screen = capsys.readouterr().out.splitlines()
    assert screen[:2] == [
        f"streamdag top  {info.url}  actors running: 4  crashes: 0  reuse ratio: 0.33",
        "submissions: executing=2",
    ]
    assert [[line.split()[i] for i in (0, 2, 3)] for line in screen[4:]] == [
        ["out", "kafka_sink", "1"], ["out", "kafka_sink", "1"],
        ["sma2", "rolling_mean", "1"], ["ticks", "kafka_source", "2"]]

    # Step 5: checkpoints of a submission's region; stop is refused while a graph shares it.
    client = GatewayClient(info.url, info.token)
    wait_for(lambda: client.checkpoints(first)[0]["completed"] >= 1, "a checkpoint")
    assert command(checkpoints_command, first, *state) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["region", "nodes", "completed", "abandoned", "last", "age",
                                "(s)", "bytes", "recoveries"]
    assert table[1].split()[1] == "4" and table[1].split()[-1] == "0"
    with pytest.raises(RequestRefusedError) as shared:
        command(stop_command, first, *state)
    assert shared.value.status == 409
    assert f"shares nodes with running submission(s) ['{second}']" in str(shared.value)

    # Step 6: rm one; stop the other with a final checkpoint, and resume it from there.
    assert command(rm_command, second, *state) == 0
    assert capsys.readouterr().out == f"removed {second} (graph mean): stopped (removed)\n"
    assert command(stop_command, first, *state) == 0
    stopped = capsys.readouterr().out
    assert stopped.startswith(f"stopped {first} (graph copy): stopped (stopped at checkpoint(s) "
                              f"['{info.controller_name.removeprefix('streamdag-controller-')}.")
    assert stopped.endswith(f"]; `streamdag resume {first}` goes on)\n")
    assert command(resume_command, first, *state) == 0
    resumed = capsys.readouterr().out.split()
    assert resumed[:5] == ["resumed", resumed[1], "(graph", "copy):", "executing"]
    assert command(rm_command, resumed[1], *state) == 0
    capsys.readouterr()
    with pytest.raises(RequestRefusedError) as refused:
        command(status_command, "nope-1", *state)
    assert refused.value.status == 404
    assert [p["type"] for p in refused.value.problems] == ["UnknownSubmissionError"]
    assert str(refused.value).startswith(
        "the gateway refused the request (404): UnknownSubmissionError: deployment ")



def test_checkpoints_lists_the_store_and_verify_finds_a_corrupt_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.checkpoints.store import CheckpointStore, Manifest
    from streamdag.cli import main

    store = CheckpointStore(tmp_path.as_uri())
    for cid in (1, 2):
        ref = store.write_snapshot("ema-1", cid, "n1", b"x" * (10 * cid))
        store.write_manifest(Manifest("ema-1", cid, {"n1": ref}, created_at=86_400.0 * cid))
    (tmp_path / "ema-1" / f"{2:012d}" / "n1.snapshot").write_bytes(b"x" * 5)

    listed = main(["checkpoints", "--checkpoint-url", tmp_path.as_uri()])
    table = capsys.readouterr().out
    verified = main(["checkpoints", "--checkpoint-url", tmp_path.as_uri(), "--verify"])
    checked = capsys.readouterr().out

    assert listed == 0
    assert table.splitlines() == [
        "region  checkpoint  created (UTC)        nodes  bytes  state",
        "ema-1            1  1970-01-02 00:00:00      1     10  complete",
        "ema-1            2  1970-01-03 00:00:00      1     20  complete",
    ]
    assert verified == 1
    assert checked.splitlines()[2].endswith(
        "corrupt: the snapshot of node n1 has 5 bytes, the manifest says 20 (truncated)")
