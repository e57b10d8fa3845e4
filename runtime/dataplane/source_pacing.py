"""How long a source node's next read lingers, and how old the events it read were.

A read that lingers waits for records that have not reached the broker yet. On a thin stream
that is latency added to every record and nothing gained: the next fetch answer comes after
the broker's fetch wait anyway, so the read would emit the same records, later. On a thick
stream lingering gathers more records per push, so every hop downstream costs less per event.
A backlog batches by itself: a read takes what is buffered, up to its record limit, at once.
So a source lingers only while its reads come back large (see ``ReadPacing``).
"""

from __future__ import annotations

import time

from runtime.dataplane.stats import NodeStats
from streamdag.batch import Batch

__all__ = ["ReadPacing", "observe_read_age"]

#: Event times further than this from the wall clock are not a live stream's: not observed.
_DAY_NS = 86_400 * 10**9


class ReadPacing:
    """The linger of a source's next read: none while reads are thin, ``linger_s`` when thick.

    A read of at least ``thick_records`` records makes the next read linger; a smaller one
    (an empty one too) makes it return as soon as it has records.

    >>> pacing = ReadPacing(linger_s=0.005, thick_records=1_000)
    >>> pacing.linger_s
    0.0
    >>> pacing.observe(2_500)
    >>> pacing.linger_s
    0.005
    >>> pacing.observe(40)
    >>> pacing.linger_s
    0.0
    """

    def __init__(self, *, linger_s: float, thick_records: int) -> None:
        self._linger_s = linger_s
        self._thick_records = thick_records
        self._thick = False

    @property
    def linger_s(self) -> float:
        """Seconds the next read may wait for more once it has a record."""
        return self._linger_s if self._thick else 0.0

    def observe(self, records: int) -> None:
        """The last read returned ``records`` records."""
        self._thick = records >= self._thick_records


def observe_read_age(stats: NodeStats, batch: Batch, now_ns: int | None = None) -> None:
    """Record how old the newest event of a source's read was when the read returned.

    Only live streams, whose event times are wall-clock nanoseconds, are observed.

    >>> stats = NodeStats("n", "n")
    >>> observe_read_age(stats, Batch.from_columns(ts=[1_000, 3_000_000], key=["a", "b"],
    ...                                            v=[1.0, 2.0]), now_ns=5_000_000)
    >>> stats.read_age.recent
    [0.002]
    >>> observe_read_age(stats, Batch.from_columns(ts=[7], key=["a"], v=[1.0]))  # not live
    >>> stats.read_age.observations
    1
    """
    if not len(batch):
        return
    age_ns = (time.time_ns() if now_ns is None else now_ns) - int(batch.ts.max())
    if 0 <= age_ns < _DAY_NS:
        stats.read_age.observe(age_ns / 1e9)
