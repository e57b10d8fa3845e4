"""StreamdagCollector over a hand-built MetricsSnapshot: exact series, names, labels, buckets."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.cli.top import read_metrics
from runtime.dataplane.stats import LATENCY_BUCKETS, LatencyHistogram, NodeStats
from runtime.deployment.metrics import (
    MetricsSnapshot,
    NodeMetrics,
    RegionMetrics,
    StreamdagCollector,
    cumulative_buckets,
)

DASHBOARD = Path(__file__).parents[2] / "configs" / "grafana" / "streamdag.json"


def histogram(*seconds: float) -> LatencyHistogram:
    observed = LatencyHistogram()
    for value in seconds:
        observed.observe(value)
    return observed


def node(name: str, operator: str, role: str, graphs: tuple[str, ...], stats: NodeStats
         ) -> NodeMetrics:
    return NodeMetrics(stats.node_id, name, operator, role, graphs, "region-1",
                       f"actor-{name}", True, stats)


def full_snapshot() -> MetricsSnapshot:
    """A source, an operator and a sink, with every figure set to a distinct value."""
    source = NodeStats(
        "aa" * 32, "ticks", events_in=0, events_out=1500, batches_out=3,
        backpressure_wait_seconds=0.25, rss_bytes=300_000_000, cache_bytes=0,
        lag={1: 40, 0: 7}, dead_lettered=2, warm_up_seconds=0.5, watermark=2_000_000_000,
        process_latency=histogram(0.0002, 0.004),
    )
    operator = NodeStats(
        "bb" * 32, "sma20", events_in=1500, events_out=1481, batches_in=3, batches_out=3,
        duplicates_dropped=1, stale_dropped=4, late_events=9, late_dropped=8, held_events=11,
        queue_depth=2, max_queue_depth=5,
        checkpoints=6, cache_bytes=48_000, rss_bytes=310_000_000,
        process_latency=histogram(0.0002, 0.0002, 0.3), hop_latency=histogram(0.001),
    )
    sink = NodeStats(
        "cc" * 32, "to_signals", events_in=1481, events_out=1481,
        end_to_end_latency=histogram(0.02, 0.03, 20.0), hop_latency=histogram(0.002),
    )
    return MetricsSnapshot(
        nodes=(
            node("ticks", "kafka_source", "source", ("g1", "g2"), source),
            node("sma20", "rolling_mean", "operator", ("g1", "g2"), operator),
            node("to_signals", "kafka_sink", "sink", ("g2",), sink),
        ),
        submissions_by_state={"submitted": 0, "executing": 2, "failed": 1, "stopped": 0},
        diff_duration=histogram(0.0004, 0.0006),
        nodes_new_total=4, nodes_reused_total=2, reuse_ratio=2 / 3,
        actor_crashes_total=1, actors_running=3, taken_at=100.0,
    )


def scrape(snapshot: MetricsSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one render of ``snapshot``: (name, sorted labels) -> value."""
    registry = CollectorRegistry()
    StreamdagCollector(registry).update(snapshot)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels_of(name: str, node_id: str, operator: str) -> tuple[tuple[str, str], ...]:
    return (("node", name), ("node_id", node_id), ("operator", operator))


TICKS = labels_of("ticks", "aa" * 32, "kafka_source")
SMA = labels_of("sma20", "bb" * 32, "rolling_mean")
SINK = labels_of("to_signals", "cc" * 32, "kafka_sink")


def test_nothing_is_rendered_before_the_first_snapshot() -> None:
    registry = CollectorRegistry()
    StreamdagCollector(registry)
    assert generate_latest(registry) == b""


def test_per_node_counters_and_gauges() -> None:
    samples = scrape(full_snapshot())
    assert samples[("streamdag_node_events_in_total", SMA)] == 1500
    assert samples[("streamdag_node_events_out_total", SMA)] == 1481
    assert samples[("streamdag_node_events_out_total", TICKS)] == 1500
    assert samples[("streamdag_node_batches_out_total", TICKS)] == 3
    assert samples[("streamdag_node_duplicates_dropped_total", SMA)] == 1
    assert samples[("streamdag_node_stale_dropped_total", SMA)] == 4
    assert samples[("streamdag_node_late_events_total", SMA)] == 9
    assert samples[("streamdag_node_late_dropped_total", SMA)] == 8
    assert samples[("streamdag_node_late_events_total", TICKS)] == 0
    assert samples[("streamdag_node_held_events", SMA)] == 11
    assert samples[("streamdag_node_checkpoints_total", SMA)] == 6
    assert samples[("streamdag_node_backpressure_wait_seconds_total", TICKS)] == 0.25
    assert samples[("streamdag_node_queue_depth", SMA)] == 2
    assert samples[("streamdag_node_queue_depth_max", SMA)] == 5
    assert samples[("streamdag_node_cache_resident_bytes", SMA)] == 48_000
    assert samples[("streamdag_node_process_resident_bytes", SMA)] == 310_000_000
    assert samples[("streamdag_node_warm_up_seconds", TICKS)] == 0.5
    assert samples[("streamdag_node_graphs", SMA)] == 2
    assert samples[("streamdag_node_graphs", SINK)] == 1
    # Only nodes with a watermark have the series.
    watermarks = {k: v for k, v in samples.items()
                  if k[0] == "streamdag_node_watermark_timestamp_seconds"}
    assert watermarks == {("streamdag_node_watermark_timestamp_seconds", TICKS): 2.0}


def test_source_lag_per_partition_and_dead_letters() -> None:
    samples = scrape(full_snapshot())
    lag = {dict(k[1])["partition"]: v for k, v in samples.items()
           if k[0] == "streamdag_source_consumer_lag"}
    assert lag == {"0": 7, "1": 40}
    dead = {k: v for k, v in samples.items() if k[0] == "streamdag_source_dead_lettered_total"}
    assert dead == {("streamdag_source_dead_lettered_total", TICKS): 2}


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    samples = scrape(full_snapshot())

    def buckets(name: str, labels: tuple[tuple[str, str], ...]) -> dict[str, float]:
        return {dict(k[1])["le"]: v for k, v in samples.items()
                if k[0] == f"{name}_bucket" and tuple(p for p in k[1] if p[0] != "le") == labels}

    batch = buckets("streamdag_node_batch_latency_seconds", SMA)
    assert len(batch) == len(LATENCY_BUCKETS) + 1
    assert (batch["0.0001"], batch["0.00025"], batch["0.25"], batch["0.5"], batch["+Inf"]) == (
        0, 2, 2, 3, 3)
    assert samples[("streamdag_node_batch_latency_seconds_count", SMA)] == 3
    assert abs(samples[("streamdag_node_batch_latency_seconds_sum", SMA)] - 0.3004) < 1e-12
    end_to_end = buckets("streamdag_sink_end_to_end_latency_seconds", SINK)
    assert (end_to_end["0.025"], end_to_end["0.05"], end_to_end["10.0"], end_to_end["+Inf"]) == (
        1, 2, 2, 3)
    # End-to-end latency is a sink figure: no other node has the series.
    e2e_nodes = {dict(k[1])["node"] for k in samples
                 if k[0] == "streamdag_sink_end_to_end_latency_seconds_count"}
    assert e2e_nodes == {"to_signals"}
    assert samples[("streamdag_node_hop_latency_seconds_count", SINK)] == 1
    diff = buckets("streamdag_diff_duration_seconds", ())
    assert (diff["0.00025"], diff["0.0005"], diff["0.001"], diff["+Inf"]) == (0, 1, 2, 2)


def test_deployment_figures() -> None:
    samples = scrape(full_snapshot())
    assert samples[("streamdag_actors_running", ())] == 3
    assert samples[("streamdag_actor_crashes_total", ())] == 1
    assert samples[("streamdag_nodes_new_total", ())] == 4
    assert samples[("streamdag_nodes_reused_total", ())] == 2
    assert samples[("streamdag_dedup_reuse_ratio", ())] == 2 / 3
    by_state = {dict(k[1])["state"]: v for k, v in samples.items()
                if k[0] == "streamdag_submissions"}
    assert by_state == {"submitted": 0, "executing": 2, "failed": 1, "stopped": 0}


def test_region_checkpoint_and_recovery_figures() -> None:
    region = RegionMetrics("region-1", completed=12, abandoned=2, last_size_bytes=9900,
                           last_completed_at=97.5, duration=histogram(0.05, 0.2),
                           recoveries=1)
    idle = RegionMetrics("region-2", 0, 0, 0, 0.0, LatencyHistogram(), 0)
    samples = scrape(dataclasses.replace(full_snapshot(), regions=(region, idle),
                                         restore_duration=histogram(3.2)))
    one, two = (("region", "region-1"),), (("region", "region-2"),)
    assert samples[("streamdag_checkpoints_completed_total", one)] == 12
    assert samples[("streamdag_checkpoints_abandoned_total", one)] == 2
    assert samples[("streamdag_checkpoint_size_bytes", one)] == 9900
    assert samples[("streamdag_checkpoint_age_seconds", one)] == 2.5  # taken at 100.0
    assert ("streamdag_checkpoint_age_seconds", two) not in samples  # none completed yet
    assert samples[("streamdag_recoveries_total", one)] == 1
    assert samples[("streamdag_checkpoint_duration_seconds_count", one)] == 2
    assert samples[("streamdag_checkpoint_duration_seconds_sum", one)] == 0.25
    assert samples[("streamdag_restore_duration_seconds_count", ())] == 1


def test_every_name_starts_with_streamdag() -> None:
    assert all(name.startswith("streamdag_") for name, _ in scrape(full_snapshot()))


def test_cumulative_buckets_count_overflow_only_in_inf() -> None:
    pairs = cumulative_buckets(histogram(11.0, 0.00005))
    assert pairs[0] == ("0.0001", 1.0)
    assert pairs[-2] == ("10.0", 1.0)
    assert pairs[-1] == ("+Inf", 2.0)


def test_top_reads_back_what_the_collector_wrote() -> None:
    snapshot = full_snapshot()
    registry = CollectorRegistry()
    StreamdagCollector(registry).update(snapshot)
    view = read_metrics(generate_latest(registry).decode())
    assert (view.actors_running, view.actor_crashes, view.reuse_ratio) == (3, 1, 2 / 3)
    assert view.submissions == {"submitted": 0, "executing": 2, "failed": 1, "stopped": 0}
    sma = view.nodes["bb" * 32]
    assert (sma.name, sma.operator, sma.stats.events_in, sma.stats.events_out,
            sma.stats.queue_depth) == ("sma20", "rolling_mean", 1500, 1481, 2)
    assert sma.stats.process_latency == snapshot.nodes[1].stats.process_latency
    assert view.nodes["aa" * 32].stats.lag == {0: 7, 1: 40}
    sink = view.nodes["cc" * 32].stats
    assert sink.end_to_end_latency == snapshot.nodes[2].stats.end_to_end_latency
    assert view.nodes["aa" * 32].stats.end_to_end_latency.observations == 0


def test_dashboard_queries_use_only_exported_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {name for name, _ in scrape(full_snapshot())}
    expressions = [target["expr"] for panel in dashboard["panels"]
                   for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"streamdag_[a-z0-9_]+", expr)}
    assert used, "the dashboard queries no streamdag metric"
    assert sorted(used - exported) == []
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "latency p99", "lag", "backpressure", "reuse ratio", "actors",
                  "submissions by state"):
        assert topic in titles, topic
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
