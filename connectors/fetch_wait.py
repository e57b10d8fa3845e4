"""How a source reads a thin stream: short broker waits, and a read that gathers one round.

``fetch_max_wait_ms`` is how long a broker may wait for data before it answers a fetch. Kafka
answers as soon as there is data, so the wait only matters when there is none; the embedded
broker, Tansu, waits much of it out even when data is there (BROKER.md, point 2), so on a thin
stream every record arriving there waits part of a fetch wait before the source sees it. And an
event-time node downstream holds what one partition delivered until every other partition's
next records have come in, so a record whose partition's batch landed a moment before another
partition's waits for one more fetch: the wait counts twice. So ``FetchWait`` shortens the wait
while a thin stream flows (a read brought a few records, but not a thick read's worth, which
batches by itself), and goes back to the configured wait as soon as a read comes back empty (a
quiet stream fetches no more often than before) or thick.

Shorter fetches split what a producer sent at once: its partitions' batches land a produce
round trip apart, and a read that returned the first partitions alone would make one more push
downstream that no event-time node can release anything from (the other partitions hold its
watermark). So while a thin stream flows, a read goes on fetching, up to ``round_wait_s``, until
every partition the last read brought has brought records again: one push per round, the
watermark advanced as far as that round allows. What a read returns never changes the output,
only how it is batched.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

__all__ = ["FetchWait"]


class FetchWait:
    """The broker wait (ms) of a source's next fetches, and how long a thin read gathers a round.

    A read of at least ``flowing_records`` and fewer than ``thick_records`` records makes the next
    fetches wait ``thin_ms`` (at most ``configured_ms``) and the next read wait up to
    ``round_s`` for records of every partition that read brought; any other read, an empty one
    too, puts the configured wait back and gathers nothing.

    >>> wait = FetchWait(configured_ms=10, thin_ms=1, round_s=0.003)
    >>> wait.ms, wait.round_wait_s
    (10, 0.0)
    >>> wait.observe(120, partitions=[0, 2]); wait.ms, wait.round_wait_s
    (1, 0.003)
    >>> wait.round_complete([0]), wait.round_complete([2, 0, 1])
    (False, True)
    >>> wait.observe(0, partitions=[]); wait.ms, wait.round_complete([])  # quiet for a read
    (10, True)
    >>> wait.observe(5_000, partitions=[0, 1]); wait.ms  # thick reads batch by themselves
    10
    """

    def __init__(self, *, configured_ms: int, thin_ms: int, round_s: float = 0.003,
                 flowing_records: int = 16, thick_records: int = 1_000) -> None:
        self.configured_ms = configured_ms
        self.thin_ms = min(thin_ms, configured_ms)
        self._round_s = round_s
        self._flowing_records = flowing_records
        self._thick_records = thick_records
        self._thin = False
        self._round: frozenset[int] = frozenset()

    @property
    def ms(self) -> int:
        """The wait the next fetches ask the broker for."""
        return self.thin_ms if self._thin else self.configured_ms

    @property
    def round_wait_s(self) -> float:
        """How long the next read may go on fetching for the rest of a round (0: not at all)."""
        return self._round_s if self._thin and self.thin_ms < self.configured_ms else 0.0

    def round_complete(self, partitions: Collection[int]) -> bool:
        """Whether ``partitions`` include every partition of the last read (when thin)."""
        return self.round_wait_s == 0.0 or self._round <= set(partitions)

    def observe(self, records: int, partitions: Iterable[int]) -> None:
        """The last read returned ``records`` records, of ``partitions``."""
        self._thin = self._flowing_records <= records < self._thick_records
        self._round = frozenset(partitions) if self._thin else frozenset()
