"""Per-node counters and latency histograms, cheap enough to update once per batch."""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LATENCY_BUCKETS", "LatencyHistogram", "NodeStats", "add_source_figures",
           "observe_event_age", "observe_event_ages", "resident_bytes_of"]

#: Upper bounds (seconds) of the latency histogram buckets, as Prometheus would have them.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)


#: How many of the latest observations a histogram keeps as they were, for exact quantiles.
RECENT_SAMPLES = 1024
_BUCKET_BOUNDS = np.asarray(LATENCY_BUCKETS)
#: Of every event's age (``observe_event_ages``), one in this many is kept as it was.
_EACH_KEPT_EVERY = 64


@dataclass
class LatencyHistogram:
    """Cumulative-ready bucket counts of observed durations, plus their sum and count.

    The latest ``RECENT_SAMPLES`` observations are kept too (``recent``, oldest first), so the
    quantiles of a short window (``since``) are exact rather than bucket bounds; a histogram fed
    many at a time (``observe_many``) may keep every n-th only, so the kept ones span longer.
    """

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        # Not a dataclass field: it travels with copies and pickles (the demo's snapshots), but
        # stays out of asdict(), so status documents and the gateway's JSON keep their size.
        self.recent: list[float] = []
        #: Observations ever put in ``recent`` (``since`` takes a window's share by it), and
        #: how many of the next ones ``observe_many`` passes over before it keeps one.
        self.kept = 0
        self._until_kept = 0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.observations += 1
        self._keep([seconds])

    def observe_many(self, seconds: np.ndarray, keep_every: int = 1) -> None:
        """Record many durations at once (one numpy pass); keep every ``keep_every``-th as is.

        >>> h = LatencyHistogram()
        >>> h.observe_many(np.array([0.001, 0.003, 0.003]))
        >>> h.observations, h.counts[3:6], h.recent
        (3, [1, 0, 2], [0.001, 0.003, 0.003])
        >>> h.observe_many(np.array([0.1, 0.2, 0.3]), keep_every=2)
        >>> h.observe_many(np.array([0.4, 0.5]), keep_every=2)
        >>> h.observations, h.recent[3:]   # the 1st, 3rd and 5th of the five
        (8, [0.1, 0.3, 0.5])
        """
        if not len(seconds):
            return
        # The ufuncs' and methods' own entry points: numpy's Python wrappers cost more than
        # the work on a batch of a few hundred.
        added = np.bincount(_BUCKET_BOUNDS.searchsorted(seconds, "left"),
                            minlength=len(self.counts)).tolist()
        self.counts = [count + more for count, more in zip(self.counts, added, strict=True)]
        self.total += float(np.add.reduce(seconds))
        self.observations += len(seconds)
        kept = seconds[self._until_kept::keep_every]
        self._until_kept = (self._until_kept - len(seconds)) % keep_every
        self._keep(kept[-RECENT_SAMPLES:].tolist())

    def _keep(self, values: list[float]) -> None:
        self.kept += len(values)
        self.recent.extend(values)
        if len(self.recent) >= 2 * RECENT_SAMPLES:
            # Trimmed in halves, so an observation costs O(1) on average.
            del self.recent[:-RECENT_SAMPLES]

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The observations made after ``earlier`` (a previous copy of this histogram)."""
        new = self.observations - earlier.observations
        window = LatencyHistogram(
            [now - then for now, then in zip(self.counts, earlier.counts, strict=True)],
            self.total - earlier.total,
            new,
        )
        kept = self.kept - earlier.kept
        window.recent = self.recent[-kept:] if kept > 0 else []
        window.kept = len(window.recent)
        return window

    def sample_quantile(self, q: float) -> float:
        """Quantile ``q`` of the observations themselves, when all of them were kept.

        Otherwise (more than the kept samples) the quantile of the latest ones; 0 when empty.

        >>> h = LatencyHistogram()
        >>> for s in (0.001, 0.002, 0.2):
        ...     h.observe(s)
        >>> round(h.sample_quantile(0.5), 6), round(h.sample_quantile(1.0), 6)
        (0.002, 0.2)
        """
        kept = self.recent[-self.observations:] if self.observations > 0 else []
        if not kept:
            return 0.0
        return float(np.quantile(np.asarray(kept, dtype=np.float64), q))

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (0 when empty).

        >>> h = LatencyHistogram()
        >>> for s in (0.001, 0.002, 0.2):
        ...     h.observe(s)
        >>> h.quantile(0.5), h.quantile(0.99)
        (0.0025, 0.25)
        """
        if not self.observations:
            return 0.0
        rank = q * self.observations
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return LATENCY_BUCKETS[index] if index < len(LATENCY_BUCKETS) else float("inf")
        return float("inf")


@dataclass
class NodeStats:
    """What one node has done: the figures the console, metrics and tests read."""

    node_id: str
    name: str
    events_in: int = 0
    events_out: int = 0
    batches_in: int = 0
    batches_out: int = 0
    duplicates_dropped: int = 0
    #: Subscribers dropped because delivering to them failed (a dead consumer actor).
    subscribers_lost: int = 0
    stale_dropped: int = 0
    #: Events that arrived below the watermark the node had already released its input up to.
    late_events: int = 0
    #: Of those, the ones dropped (the operator has no late policy of its own).
    late_dropped: int = 0
    #: Events held back until the watermarks pass them, to be processed in event-time order.
    held_events: int = 0
    backpressure_wait_seconds: float = 0.0
    queue_depth: int = 0
    max_queue_depth: int = 0
    watermark: int | None = None
    checkpoints: int = 0
    #: Barriers of checkpoints given up on (older than the one aligned, or than the last cut).
    barriers_dropped: int = 0
    #: Alignments abandoned because a newer barrier overtook them.
    alignments_abandoned: int = 0
    #: Resident memory of the process hosting the node, when the host reports it.
    rss_bytes: int = 0
    #: Wall-clock times (time.time()) of the first and the latest batch this node emitted.
    first_output_at: float = 0.0
    last_output_at: float = 0.0
    #: Source nodes: consumer lag per partition, and records sent to the dead-letter topic.
    lag: dict[int, int] = field(default_factory=dict)
    dead_lettered: int = 0
    #: Seconds spent compiling/loading the operator's kernels before the node reported ready.
    warm_up_seconds: float = 0.0
    #: Bytes held by the operator's state (ring buffers, key tables, per-key arrays).
    cache_bytes: int = 0
    #: Sources: wall clock when a read returned minus its newest event time (live streams).
    read_age: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Nodes that put their inputs in event-time order: wall clock when the watermark released
    #: events minus the newest released event time (live streams).
    release_age: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: The same two, for every event rather than the newest: sources, each record's age when its
    #: read returned; event-time nodes, each event's age when the watermark released it.
    record_read_age: LatencyHistogram = field(default_factory=LatencyHistogram)
    record_release_age: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Sinks: wall clock once a batch is published minus its newest event time.
    end_to_end_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Sinks: seconds to write and publish (flush) each batch.
    publish_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    process_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    hop_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    #: Inference nodes: their engine's figures (operators.inference_queue.InferenceFigures).
    inference: Any = None

    @property
    def read_ages(self) -> tuple[LatencyHistogram, LatencyHistogram]:
        """Sources: ``read_age`` and ``record_read_age``, as ``observe_event_ages`` takes them."""
        return self.read_age, self.record_read_age


#: Event times further than this from the wall clock are not a live stream's: not observed.
_DAY_NS = 86_400 * 10**9


def observe_event_age(histogram: LatencyHistogram, newest_event_ns: int,
                      now_ns: int | None = None) -> None:
    """Record how old an event was (now minus its time), when its time is a live wall clock.

    >>> ages = LatencyHistogram()
    >>> observe_event_age(ages, 3_000_000, now_ns=5_000_000)
    >>> observe_event_age(ages, 7)  # a replay's event time, not the wall clock: left out
    >>> ages.recent
    [0.002]
    """
    age_ns = (time.time_ns() if now_ns is None else now_ns) - newest_event_ns
    if 0 <= age_ns < _DAY_NS:
        histogram.observe(age_ns / 1e9)


def observe_event_ages(newest: LatencyHistogram, each: LatencyHistogram,
                       event_ns: np.ndarray, now_ns: int | None = None) -> None:
    """Record how old the newest event of ``event_ns`` was in ``newest``, and each in ``each``.

    Only events whose times are a live wall clock count (see ``observe_event_age``). ``each``
    keeps every ``_EACH_KEPT_EVERY``-th age as is: at 10k events/s its kept ages span seconds.

    >>> newest, each = LatencyHistogram(), LatencyHistogram()
    >>> observe_event_ages(newest, each, np.array([1_000_000, 4_000_000, 6_000_000]),
    ...                    now_ns=5_000_000)  # the last one is from the future: left out
    >>> newest.recent, each.recent, each.observations   # the first of 64 is kept
    ([0.001], [0.004], 2)
    """
    if not len(event_ns):
        return
    ages_ns = (time.time_ns() if now_ns is None else now_ns) - event_ns
    youngest, oldest = int(np.minimum.reduce(ages_ns)), int(np.maximum.reduce(ages_ns))
    if youngest < 0 or oldest >= _DAY_NS:  # some are not a live stream's
        ages_ns = ages_ns[(ages_ns >= 0) & (ages_ns < _DAY_NS)]
        if not len(ages_ns):
            return
        youngest = int(ages_ns.min())
    newest.observe(youngest / 1e9)
    each.observe_many(ages_ns / 1e9, _EACH_KEPT_EVERY)


def resident_bytes_of(state: Any, depth: int = 3) -> int:
    """Bytes of the numpy arrays an operator's state holds (or its own ``resident_bytes()``)."""
    seen: set[int] = set()

    def walk(value: Any, level: int) -> int:
        if id(value) in seen:
            return 0
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        measure = getattr(value, "resident_bytes", None)
        if callable(measure) and not isinstance(value, type):
            return int(measure())
        if level <= 0:
            return 0
        if isinstance(value, dict):
            return sum(walk(v, level - 1) for v in value.values())
        if isinstance(value, list | tuple):
            return sum(walk(v, level - 1) for v in value)
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict):
            return sum(walk(v, level - 1) for v in attributes.values())
        return 0

    return walk(state, depth)


def add_source_figures(stats: NodeStats, source: object) -> None:
    """Put what a source reader knows of itself (lag per partition, dead letters) in ``stats``."""
    lag = getattr(source, "lag", None)
    if callable(lag):
        stats.lag = dict(lag())
    dead_lettered = getattr(source, "dead_lettered", None)
    if isinstance(dead_lettered, int):
        stats.dead_lettered = dead_lettered
