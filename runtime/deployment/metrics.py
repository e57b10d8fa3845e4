"""Prometheus metrics of a deployment: one collector over the controller's metrics snapshot.

Nothing is created at import time. Whoever serves ``/metrics`` makes a ``CollectorRegistry``,
hands it to ``StreamdagCollector``, feeds the collector each fresh ``MetricsSnapshot`` with
``update`` and renders the registry (``prometheus_client.generate_latest``). Every metric name
starts with ``streamdag_``; per-node series carry the labels ``node``, ``node_id`` and
``operator``.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> registry = CollectorRegistry()
>>> collector = StreamdagCollector(registry)
>>> generate_latest(registry)
b''
>>> from prometheus_client import Gauge  # the registry knows every name the collector owns
>>> try:
...     Gauge("streamdag_actors_running", "A second owner of the name.", registry=registry)
... except ValueError as clash:
...     print(clash)
Duplicated timeseries in CollectorRegistry: {'streamdag_actors_running'}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from runtime.dataplane.stats import LATENCY_BUCKETS, LatencyHistogram, NodeStats
from runtime.inference.metrics import inference_families

__all__ = [
    "NODE_FIGURE_FIELDS",
    "NODE_HISTOGRAM_FIELDS",
    "NODE_LABELS",
    "BacktestCacheCollector",
    "MetricsSnapshot",
    "NodeMetrics",
    "RegionMetrics",
    "StreamdagCollector",
    "cumulative_buckets",
]

# Bucket bounds are written as prometheus_client writes its own ("0.001", "1.0", "+Inf").
_bound_text: Callable[[float], str] = floatToGoString

#: Labels of every per-node series.
NODE_LABELS: tuple[str, ...] = ("node", "node_id", "operator")


@dataclass(frozen=True)
class NodeMetrics:
    """One node actor as the metrics endpoint sees it."""

    node_id: str
    name: str
    operator: str
    role: str
    graphs: tuple[str, ...]
    region: str
    actor_name: str
    alive: bool
    stats: NodeStats


@dataclass(frozen=True)
class RegionMetrics:
    """One region's checkpoints and recoveries (deployments with ``checkpoint.enabled``)."""

    region: str
    completed: int
    #: Checkpoints that failed or timed out and were given up.
    abandoned: int
    last_size_bytes: int
    #: Wall-clock time the last one completed; 0: never.
    last_completed_at: float
    duration: LatencyHistogram
    recoveries: int


@dataclass(frozen=True)
class MetricsSnapshot:
    """The controller's figures at one moment, for the Prometheus collector."""

    nodes: tuple[NodeMetrics, ...]
    #: Every state's submission count, zeros included.
    submissions_by_state: Mapping[str, int]
    #: Seconds taken by each submission's plan-and-diff.
    diff_duration: LatencyHistogram
    nodes_new_total: int
    nodes_reused_total: int
    #: Reused / total nodes of the last submission's diff.
    reuse_ratio: float
    actor_crashes_total: int
    actors_running: int
    taken_at: float = field(default_factory=time.time)
    regions: tuple[RegionMetrics, ...] = ()
    #: Seconds each region recovery took to restore its actors (after the backoff).
    restore_duration: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: The warm pool: idle and starting pool actors, and how many were bound to nodes.
    warm_pool_idle: int = 0
    warm_pool_starting: int = 0
    warm_pool_bound_total: int = 0


_EMPTY = MetricsSnapshot((), {}, LatencyHistogram(), 0, 0, 0.0, 0, 0)


def cumulative_buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """Prometheus ``(le, cumulative count)`` pairs of ``histogram``, ending with ``+Inf``.

    >>> h = LatencyHistogram()
    >>> for seconds in (0.0002, 0.0002, 0.3, 20.0):
    ...     h.observe(seconds)
    >>> [pair for pair in cumulative_buckets(h) if pair[0] in ("0.0001", "0.00025", "0.5", "+Inf")]
    [('0.0001', 0.0), ('0.00025', 2.0), ('0.5', 3.0), ('+Inf', 4.0)]
    """
    pairs: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, histogram.counts, strict=False):
        seen += count
        pairs.append((_bound_text(bound), float(seen)))
    pairs.append(("+Inf", float(histogram.observations)))
    return pairs


class StreamdagCollector(Collector):
    """Yields every streamdag metric family from the latest snapshot given to ``update``.

    It registers itself with the injected ``registry``; before the first ``update`` it yields
    nothing, so a scrape never shows made-up zeros.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._snapshot: MetricsSnapshot | None = None
        registry.register(self)

    def update(self, snapshot: MetricsSnapshot) -> None:
        """Use ``snapshot`` from now on (the controller's ``metrics_snapshot()``)."""
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        """Every family, without figures: the registry refuses a second owner of any name."""
        return [*_node_families(_EMPTY.nodes), *_deployment_families(_EMPTY),
                *inference_families(NODE_LABELS, ())]

    def collect(self) -> Iterator[Metric]:
        """Every metric family of the latest snapshot."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        yield from _node_families(snapshot.nodes)
        yield from _deployment_families(snapshot)
        yield from inference_families(NODE_LABELS, [
            (_node_labels(node), node.stats.inference) for node in snapshot.nodes
            if node.stats.inference is not None])


_Family = type[CounterMetricFamily] | type[GaugeMetricFamily]
#: Per-node families read straight off one NodeStats field: (kind, name, help, field).
_NODE_FIGURES: tuple[tuple[_Family, str, str, str], ...] = (
    (CounterMetricFamily, "streamdag_node_events_in", "Events a node received.", "events_in"),
    (CounterMetricFamily, "streamdag_node_events_out", "Events a node emitted.", "events_out"),
    (CounterMetricFamily, "streamdag_node_batches_in", "Batches a node received.", "batches_in"),
    (CounterMetricFamily, "streamdag_node_batches_out", "Batches a node emitted.",
     "batches_out"),
    (CounterMetricFamily, "streamdag_node_duplicates_dropped",
     "Pushes dropped because their sequence number was already seen.", "duplicates_dropped"),
    (CounterMetricFamily, "streamdag_node_stale_dropped",
     "Pushes dropped because they came from an older incarnation.", "stale_dropped"),
    (CounterMetricFamily, "streamdag_node_late_events",
     "Events that arrived after the watermark had passed them.", "late_events"),
    (CounterMetricFamily, "streamdag_node_late_dropped",
     "Late events a node dropped (its operator has no late policy of its own).", "late_dropped"),
    (CounterMetricFamily, "streamdag_node_checkpoints", "Checkpoints a node took part in.",
     "checkpoints"),
    (CounterMetricFamily, "streamdag_node_backpressure_wait_seconds",
     "Seconds a node waited for downstream credit before it could push.",
     "backpressure_wait_seconds"),
    (GaugeMetricFamily, "streamdag_node_queue_depth", "Pushes waiting in a node's input queue.",
     "queue_depth"),
    (GaugeMetricFamily, "streamdag_node_queue_depth_max",
     "Deepest a node's input queue has been.", "max_queue_depth"),
    (GaugeMetricFamily, "streamdag_node_held_events",
     "Events a node holds until the watermark passes them (event-time order).", "held_events"),
    (GaugeMetricFamily, "streamdag_node_cache_resident_bytes",
     "Bytes a node's operator state holds (ring buffers, key tables).", "cache_bytes"),
    (GaugeMetricFamily, "streamdag_node_process_resident_bytes",
     "Resident memory of the process hosting a node.", "rss_bytes"),
    (GaugeMetricFamily, "streamdag_node_warm_up_seconds",
     "Seconds a node spent compiling and loading its kernels before it was ready.",
     "warm_up_seconds"),
)


#: The NodeStats field behind each per-node family that is one figure (read back by ``top``).
NODE_FIGURE_FIELDS: dict[str, str] = {name: figure for _, name, _, figure in _NODE_FIGURES}
#: Latency families: (name, help, NodeStats field, the roles that have it; None: every node).
_NODE_HISTOGRAMS: tuple[tuple[str, str, str, tuple[str, ...] | None], ...] = (
    ("streamdag_node_batch_latency_seconds", "Seconds a node took to process one batch.",
     "process_latency", None),
    ("streamdag_node_hop_latency_seconds",
     "Seconds from a push being sent upstream to a node receiving it.", "hop_latency", None),
    ("streamdag_sink_end_to_end_latency_seconds",
     "Seconds from an event's time to a sink having published it (live streams).",
     "end_to_end_latency", ("sink",)),
    ("streamdag_sink_publish_latency_seconds",
     "Seconds a sink took to write and publish one batch.", "publish_latency", ("sink",)),
)
#: The NodeStats histogram behind each latency family (read back by ``top``).
NODE_HISTOGRAM_FIELDS: dict[str, str] = {name: figure for name, _, figure, _ in _NODE_HISTOGRAMS}


def _node_labels(node: NodeMetrics) -> list[str]:
    return [node.name, node.node_id, node.operator]


def _node_families(nodes: Sequence[NodeMetrics]) -> Iterator[Metric]:
    labels = list(NODE_LABELS)
    for kind, name, documentation, figure in _NODE_FIGURES:
        family = kind(name, documentation, labels=labels)
        for node in nodes:
            family.add_metric(_node_labels(node), float(getattr(node.stats, figure)))
        yield family

    graphs = GaugeMetricFamily(
        "streamdag_node_graphs",
        "Submitted graphs sharing a node (above 1: the node runs once for several graphs).",
        labels=labels)
    watermark = GaugeMetricFamily(
        "streamdag_node_watermark_timestamp_seconds",
        "Event-time watermark of a node, as Unix seconds.", labels=labels)
    for node in nodes:
        graphs.add_metric(_node_labels(node), float(len(node.graphs)))
        if node.stats.watermark is not None:
            watermark.add_metric(_node_labels(node), node.stats.watermark / 1e9)
    yield from (graphs, watermark)

    for name, documentation, figure, roles in _NODE_HISTOGRAMS:
        yield _histogram_family(name, documentation, labels, [
            (_node_labels(n), getattr(n.stats, figure)) for n in nodes
            if roles is None or n.role in roles])

    sources = [node for node in nodes if node.role == "source"]
    lag = GaugeMetricFamily("streamdag_source_consumer_lag",
                            "Records in a Kafka partition a source has not read yet.",
                            labels=[*labels, "partition"])
    dead = CounterMetricFamily("streamdag_source_dead_lettered",
                               "Poison records a source sent to the dead-letter topic.",
                               labels=labels)
    for node in sources:
        for partition, behind in sorted(node.stats.lag.items()):
            lag.add_metric([*_node_labels(node), str(partition)], float(behind))
        dead.add_metric(_node_labels(node), float(node.stats.dead_lettered))
    yield from (lag, dead)


def _histogram_family(
    name: str,
    documentation: str,
    labels: Sequence[str],
    series: Sequence[tuple[list[str], LatencyHistogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, histogram in series:
        family.add_metric(values, cumulative_buckets(histogram), histogram.total)
    return family


def _deployment_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    yield _histogram_family(
        "streamdag_diff_duration_seconds",
        "Seconds the controller took to diff a submitted graph against the deployment.",
        [], [([], snapshot.diff_duration)])
    yield CounterMetricFamily("streamdag_nodes_new",
                              "Nodes submissions created (new actors).",
                              value=float(snapshot.nodes_new_total))
    yield CounterMetricFamily("streamdag_nodes_reused",
                              "Nodes submissions found already running and shared.",
                              value=float(snapshot.nodes_reused_total))
    yield GaugeMetricFamily("streamdag_dedup_reuse_ratio",
                            "Share of the last submission's nodes that were already running.",
                            value=snapshot.reuse_ratio)
    yield GaugeMetricFamily("streamdag_actors_running", "Node actors running.",
                            value=float(snapshot.actors_running))
    yield CounterMetricFamily("streamdag_actor_crashes",
                              "Node actors found dead by the controller's health check.",
                              value=float(snapshot.actor_crashes_total))
    pool = GaugeMetricFamily("streamdag_warm_pool_actors",
                             "Warm pool actors, idle (ready to bind) or starting.",
                             labels=["state"])
    pool.add_metric(["idle"], float(snapshot.warm_pool_idle))
    pool.add_metric(["starting"], float(snapshot.warm_pool_starting))
    yield pool
    yield CounterMetricFamily("streamdag_warm_pool_bound",
                              "New nodes bound to a warm pool actor instead of a new process.",
                              value=float(snapshot.warm_pool_bound_total))
    yield from _region_families(snapshot)
    submissions = GaugeMetricFamily("streamdag_submissions", "Submissions in each state.",
                                    labels=["state"])
    for state, count in sorted(snapshot.submissions_by_state.items()):
        submissions.add_metric([str(state)], float(count))
    yield submissions


def _region_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    regions = snapshot.regions
    yield _histogram_family(
        "streamdag_checkpoint_duration_seconds",
        "Seconds from a checkpoint's barriers to its manifest and commit.", ["region"],
        [([r.region], r.duration) for r in regions])
    figures: tuple[tuple[_Family, str, str, Callable[[RegionMetrics], float]], ...] = (
        (CounterMetricFamily, "streamdag_checkpoints_completed", "Checkpoints completed.",
         lambda r: r.completed),
        (CounterMetricFamily, "streamdag_checkpoints_abandoned",
         "Checkpoints that failed or timed out and were given up.", lambda r: r.abandoned),
        (GaugeMetricFamily, "streamdag_checkpoint_size_bytes",
         "Bytes of the snapshots of a region's last complete checkpoint.",
         lambda r: r.last_size_bytes),
        (CounterMetricFamily, "streamdag_recoveries",
         "Times a region was restored from its checkpoints after a failure.",
         lambda r: r.recoveries),
    )
    for kind, name, documentation, read in figures:
        family = kind(name, documentation, labels=["region"])
        for region in regions:
            family.add_metric([region.region], float(read(region)))
        yield family
    age = GaugeMetricFamily("streamdag_checkpoint_age_seconds",
                            "Seconds since a region's last checkpoint completed.",
                            labels=["region"])
    for region in regions:
        if region.last_completed_at:
            age.add_metric([region.region], max(0.0, snapshot.taken_at - region.last_completed_at))
    yield age
    yield _histogram_family(
        "streamdag_restore_duration_seconds",
        "Seconds a region recovery took to restore its actors, after its backoff.", [],
        [([], snapshot.restore_duration)])


class BacktestCacheCollector(Collector):
    """Yields the backtest cache's figures per tier (``memory``, ``disk``) from ``read()``.

    ``read`` returns ``{tier: CacheStats}`` (``runtime.backtest.cache.ResultCache.figures``);
    it is called at every scrape.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from runtime.backtest.cache import CacheStats
    >>> registry = CollectorRegistry()
    >>> _ = BacktestCacheCollector(registry, lambda: {"disk": CacheStats(hits=3, misses=1)})
    >>> for line in generate_latest(registry).decode().splitlines():
    ...     if line.startswith("streamdag_backtest_cache_hit"):
    ...         print(line)
    streamdag_backtest_cache_hits_total{tier="disk"} 3.0
    streamdag_backtest_cache_hit_ratio{tier="disk"} 0.75
    """

    def __init__(self, registry: CollectorRegistry,
                 read: Callable[[], Mapping[str, Any]]) -> None:
        self._read = read
        registry.register(self)

    def describe(self) -> list[Metric]:
        """Every family, without figures."""
        return list(_cache_families({}))

    def collect(self) -> Iterator[Metric]:
        """The families of the cache's current figures."""
        yield from _cache_families(self._read())


_CACHE_FIGURES: tuple[tuple[_Family, str, str, str], ...] = (
    (CounterMetricFamily, "streamdag_backtest_cache_hits",
     "Backtest cache lookups answered (decoded input ranges and node outputs).", "hits"),
    (CounterMetricFamily, "streamdag_backtest_cache_misses",
     "Backtest cache lookups that found nothing.", "misses"),
    (CounterMetricFamily, "streamdag_backtest_cache_evictions",
     "Backtest cache entries dropped (LRU byte budget, TTL, or a clear).", "evictions"),
    (GaugeMetricFamily, "streamdag_backtest_cache_entries", "Backtest cache entries held.",
     "entries"),
    (GaugeMetricFamily, "streamdag_backtest_cache_bytes", "Bytes the backtest cache holds.",
     "bytes"),
)


def _cache_families(tiers: Mapping[str, Any]) -> Iterator[Metric]:
    for kind, name, documentation, figure in _CACHE_FIGURES:
        family = kind(name, documentation, labels=["tier"])
        for tier, stats in sorted(tiers.items()):
            family.add_metric([tier], float(getattr(stats, figure)))
        yield family
    ratio = GaugeMetricFamily("streamdag_backtest_cache_hit_ratio",
                              "Share of backtest cache lookups answered.", labels=["tier"])
    for tier, stats in sorted(tiers.items()):
        ratio.add_metric([tier], float(stats.hit_rate))
    yield ratio
