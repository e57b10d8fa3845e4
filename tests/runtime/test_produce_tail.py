"""`streamdag produce` and `streamdag tail` against the real broker; finding Kafka by itself."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from connectors.broker import EmbeddedBroker
from runtime.cli.tail import format_record, parse_start
from runtime.deployment.discovery import RunningDeployment, bootstrap_servers
from streamdag.cli import main
from streamdag.config import ConfigError


def test_a_record_line_shows_key_event_time_and_fields() -> None:
    line = format_record(0, 3, b"MSFT", {"symbol": "MSFT", "ts": 1_767_346_200_500, "px": 2.5},
                         0, time_unit="ms")
    assert line == "p0@3  MSFT  2026-01-02T09:30:00.500000Z  symbol=MSFT px=2.5"
    # Without the time field, the Kafka timestamp, said to be the broker's.
    assert format_record(1, 0, None, "plain", 1_767_346_200_000) == (
        "p1@0  -  2026-01-02T09:30:00.000000Z (broker time)  value=plain")


def test_a_bad_start_names_the_forms_it_takes() -> None:
    with pytest.raises(ConfigError) as bad:
        parse_start("yesterday")
    assert str(bad.value) == (
        "--from 'yesterday': give earliest, latest, an ISO-8601 time such as "
        "2026-01-02T09:30:00Z, an epoch number (seconds, ms, µs or ns since 1970), or a time "
        "back from now such as 30s, 5m or 2h")
    assert parse_start("2026-01-02T10:30:00+01:00") == parse_start("1767346200000") == (
        1_767_346_200_000_000_000)
    assert parse_start("2h", now_ns=10_000_000_000_000) == 10_000_000_000_000 - 7_200 * 10**9


def test_kafka_is_found_from_the_setting_then_up_then_the_broker(tmp_path: Path) -> None:
    environ = {"STREAMDAG_STATE_DIR": str(tmp_path)}
    with pytest.raises(ConfigError) as none:
        bootstrap_servers(environ=environ)
    assert str(none.value) == (
        "no Kafka found: start the embedded broker with `streamdag broker start` (or a whole "
        "deployment with `streamdag up`) in this directory first, or set "
        f"STREAMDAG_KAFKA_BOOTSTRAP_SERVERS to your own Kafka (looked in {str(tmp_path)!r})")
    with EmbeddedBroker.start(tmp_path / "broker") as broker:
        assert bootstrap_servers(environ=environ) == broker.bootstrap_servers
        # A running `up` (this process stands in for it) wins over a lone broker...
        RunningDeployment("d", "kafka:9092", "127.0.0.1:1", "http://x", os.getpid()).save(tmp_path)
        assert bootstrap_servers(environ=environ) == "kafka:9092"
        # ... and the setting over both.
        assert bootstrap_servers(environ={**environ, "STREAMDAG_KAFKA_BOOTSTRAP_SERVERS": "k:1"}
                                 ) == "k:1"
    # An up.json whose process is gone is not a running deployment.
    RunningDeployment("d", "kafka:9092", "127.0.0.1:1", "http://x", 2**22 + 7).save(tmp_path)
    assert RunningDeployment.load(tmp_path) is None


@pytest.mark.integration
def test_produce_a_file_and_ticks_then_tail_them(
    bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"tail-{uuid.uuid4().hex[:8]}"
    kafka = ("--bootstrap-servers", bootstrap)
    rows = tmp_path / "prices.csv"
    rows.write_text("symbol,ts,price\nAAPL,1767346200000000000,101.5\n"
                    "AAPL,1767346201000000000,102\n")
    assert main(["produce", topic, "--file", str(rows), "--rate", "1000", *kafka]) == 0
    assert capsys.readouterr().out.startswith(f"produced 2 records to {topic} in ")
    assert main(["tail", topic, *kafka]) == 0
    lines = capsys.readouterr().out.splitlines()
    # One key, so one partition, in order.
    assert [line.split("  ", 1)[1] for line in lines] == [
        "AAPL  2026-01-02T09:30:00.000000Z  symbol=AAPL price=101.5",
        "AAPL  2026-01-02T09:30:01.000000Z  symbol=AAPL price=102"]

    ticks = f"ticks-{uuid.uuid4().hex[:8]}"
    assert main(["produce", ticks, "--rate", "400", "--duration", "1", "--symbols", "4",
                 *kafka]) == 0
    produced = int(capsys.readouterr().out.split()[1].replace(",", ""))
    assert produced > 0
    assert main(["tail", ticks, "--json", *kafka]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == produced
    # Symbols in round-robin.
    assert {r["key"] for r in records} == {f"SYM{i:03d}" for i in range(min(4, produced))}
    assert all(set(r["value"]) == {"symbol", "ts", "price", "size"} for r in records)
    assert main(["tail", ticks, "-n", "1", *kafka]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["tail", ticks, "--from", "latest", *kafka]) == 0
    assert capsys.readouterr().out == ""
    # --follow waits for records written after it started.
    followed: list[int] = []
    follower = threading.Thread(target=lambda: followed.append(
        main(["tail", topic, "--from", "latest", "--follow", "-n", "2", *kafka])))
    follower.start()
    deadline = time.monotonic() + 60
    while follower.is_alive() and time.monotonic() < deadline:
        # Written until the follower, which may still be connecting, has seen two.
        assert main(["produce", topic, "--file", str(rows), *kafka]) == 0
        follower.join(1.0)
    assert followed == [0]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1] for line in printed if re.match(r"p\d+@", line)][:2] == [
        "AAPL  2026-01-02T09:30:00.000000Z  symbol=AAPL price=101.5",
        "AAPL  2026-01-02T09:30:01.000000Z  symbol=AAPL price=102"]
    assert main(["tail", "no-such-topic", *kafka]) == 2
    assert capsys.readouterr().err.startswith(
        f"error: topic 'no-such-topic' does not exist on {bootstrap}; write to it with "
        "`streamdag produce no-such-topic` first")
