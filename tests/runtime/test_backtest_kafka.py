"""Live equals backtest over Kafka: the momentum graph runs live (unordered reads of the topic,
its sink publishing to a real topic), then `streamdag backtest` replays a middle part of the
same recorded range from the topic, warm-up and all: equal digests, a verification that passes,
one that reports the first difference, byte-identical reruns, and a cache that serves the rerun.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_source import KafkaSourceConfig
from connectors.source_bounds import Timestamp
from connectors.topics import ensure_topics
from runtime.backtest import BacktestResult, backtest, digest
from runtime.backtest.dryrun import dry_run
from runtime.backtest.inputs import read_all
from runtime.demo import EXAMPLE_GRAPHS_DIR
from runtime.demo.synthetic import RandomWalk
from runtime.runners.kafka_binding import KafkaBinding, KafkaSourceFactory
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.cli import main
from streamdag.errors import GraphError
from streamdag.graph import Node
from streamdag.spec import loads
from streamdag.testing import ListSink

TICKS, PARTITIONS, SYMBOLS = 3_000, 3, 6
#: Ticks are 1 ms apart from the epoch: the range is ticks 1000 to 2499.
START_S, END_S = 1, 2.5
_numbers = itertools.count()


async def _record(bootstrap: str, topic: str) -> None:
    walk = RandomWalk(symbols=SYMBOLS, seed=21).next_batch(TICKS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    try:
        rows = zip(walk.ts.tolist(), walk.key.tolist(), walk.columns["price"].tolist(),
                   walk.columns["size"].tolist(), strict=True)
        for index, (ts, key, price, size) in enumerate(rows):
            value = json.dumps({"symbol": key.decode(), "ts": ts, "price": price, "size": size})
            await producer.send(topic, value.encode(), key=key,
                                partition=(index % SYMBOLS) % PARTITIONS)
        await producer.flush()
    finally:
        await producer.stop()


def _live_source(bootstrap: str):  # type: ignore[no-untyped-def]
    """The live path: partitions read as fetches return them (no time ordering)."""

    def source_for(node: Node) -> KafkaSourceFactory:
        config = KafkaSourceConfig.from_endpoint_params(
            node.params, bootstrap, end=Timestamp(time.time_ns()), fetch_max_wait_ms=10,
            max_partition_fetch_bytes=8 * 1024)
        return KafkaSourceFactory(config, time_ordered=False)

    return source_for


@pytest.mark.integration
def test_live_equals_backtest_over_kafka(bootstrap: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    number = next(_numbers)
    ticks, signals = f"bt-ticks-{number}", f"bt-signals-{number}"
    asyncio.run(ensure_topics(bootstrap, {ticks: PARTITIONS, signals: PARTITIONS}))
    asyncio.run(_record(bootstrap, ticks))
    text = (EXAMPLE_GRAPHS_DIR / "momentum.toml").read_text()
    spec = tmp_path / "momentum.toml"
    spec.write_text(text.replace('"market.ticks"', f'"{ticks}"')
                    .replace('"signals.momentum"', f'"{signals}"'))
    graph = loads(spec.read_text(), "toml")

    # Step 1: live, publishing to the signals topic.
    LocalRunner(None, _live_source(bootstrap), KafkaBinding(bootstrap).sink_for).run(
        graph, timeout_s=60)
    config = KafkaSourceConfig(bootstrap, signals, graph.node("to_signals").output_schema,
                               key_field="key", time_field="ts", end=Timestamp(time.time_ns()))
    live = Batch.concat(asyncio.run(read_all(config)))
    inside = live.take(((live.ts >= START_S * 10**9) & (live.ts < END_S * 10**9)).nonzero()[0])
    assert len(inside) > 100

    # Step 2: the backtest of the middle of the range has the live digest.
    result = backtest(graph, "1", "2.5", bootstrap_servers=bootstrap)
    assert isinstance(result, BacktestResult)
    assert 0 < result.figures["warm_up_events"] < 1_000
    assert result.digests() == {"to_signals": digest(inside)}

    # Step 3: the command line verifies it, and names the first difference of a variant.
    state = ["--kafka-bootstrap-servers", bootstrap, "--state-dir", str(tmp_path / "state")]
    common = [str(spec), "--from", "1", "--to", "2.5", *state]
    assert main(["backtest", *common, "--verify-against", signals,
                 "--out-dir", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert f"sha256 {digest(inside)}" in first and "verified" in first
    assert main(["backtest", *common, "--out-dir", str(tmp_path / "b")]) == 0
    assert "0 node(s) computed, 5 from the cache" in capsys.readouterr().out
    assert main(["backtest", *common, "--out", f"bt{number}."]) == 0
    assert f"wrote to_signals to topic 'bt{number}.{signals}'" in capsys.readouterr().out
    config_out = KafkaSourceConfig(bootstrap, f"bt{number}.{signals}", config.schema,
                                   key_field="key", time_field="ts",
                                   end=Timestamp(time.time_ns()))
    assert digest(Batch.concat(asyncio.run(read_all(config_out)))) == digest(inside)
    for name in ("to_signals.jsonl", "digests.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert main(["backtest", *common, "--scenario", "sma20.window=21",
                 "--verify-against", signals]) == 1
    assert "to_signals differs from topic" in capsys.readouterr().out
    assert main(["cache", "stats", "--json", *state]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["hits"] >= 6 and stats["entries"] >= 6
    assert main(["cache", "clear", *state]) == 0
    assert f"cleared {stats['entries']} entries" in capsys.readouterr().out
    assert main(["cache", "warm", *common, "--sweep", "sma50.window=40,50"]) == 0
    assert "warmed: 8 node(s) computed, 0 already cached" in capsys.readouterr().out
    assert main(["backtest", *common]) == 0
    assert "0 node(s) computed, 5 from the cache" in capsys.readouterr().out

    # Step 4: a bounded replay never appends to the live topic unless told to.
    recorded = KafkaBinding(bootstrap, start="earliest", end=Timestamp(time.time_ns()))
    with pytest.raises(GraphError, match="would append a bounded replay's output to the live"):
        LocalRunner(None, *recorded.defaults()).run(graph)
    replay = LocalRunner(None, *recorded.defaults()).run(graph, sinks={"to_signals": ListSink})
    assert len(replay.records("to_signals")) == len(live)

    # Step 5: a dry run reads live input and writes its sink to a file, not to Kafka.
    assert dry_run(graph, bootstrap, 4.0, tmp_path / "dry", start="earliest") is None
    lines = (tmp_path / "dry" / "to_signals.jsonl").read_text().splitlines()
    published = {json.dumps(record, sort_keys=True) for record in live.to_records()}
    assert lines and {json.dumps(json.loads(line), sort_keys=True) for line in lines} <= published
    assert len(Batch.concat(asyncio.run(read_all(config)))) == len(live)  # nothing added
    assert main(["backtest", str(spec), "--dryrun", "--duration", "1", *state]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "dryrun": "momentum", "stopped": "1 s are up"}
