"""How long the broker may hold a source's next fetch: short while a thin stream flows.

``fetch_max_wait_ms`` is how long a broker may wait for data before it answers a fetch. Kafka
answers as soon as there is data, so the wait only matters when there is none; the embedded
broker, Tansu, waits much of it out even when data is there (BROKER.md, point 2), so on a thin
stream every record arriving there waits part of a fetch wait before the source sees it. And an
event-time node downstream holds what one partition delivered until every other partition's
next records have come in, so a record whose partition's batch landed a moment before another
partition's waits for one more fetch: the wait counts twice.

So ``FetchWait`` shortens the wait while a thin stream flows (a read brought a few records, but
not a thick read's worth, which batches by itself), and goes back to the configured wait as soon
as a read comes back empty (a quiet stream fetches no more often than before) or thick (a
backlog or a fast stream, where longer fetches carry more per request).
"""

from __future__ import annotations

__all__ = ["FetchWait"]


class FetchWait:
    """The broker wait (ms) of a source's next fetch, from how many records its last read brought.

    A read of at least ``flowing_records`` and fewer than ``thick_records`` records makes the next
    fetches wait ``thin_ms`` (at most ``configured_ms``); any other read, an empty one too, puts
    the configured wait back.

    >>> wait = FetchWait(configured_ms=10, thin_ms=1, flowing_records=16, thick_records=1_000)
    >>> wait.ms
    10
    >>> wait.observe(120); wait.ms     # a thin stream flows: short fetch waits
    1
    >>> wait.observe(0); wait.ms       # nothing came for a whole read: the configured wait
    10
    >>> wait.observe(5_000); wait.ms   # thick reads batch by themselves
    10
    """

    def __init__(self, *, configured_ms: int, thin_ms: int, flowing_records: int = 16,
                 thick_records: int = 1_000) -> None:
        self.configured_ms = configured_ms
        self.thin_ms = min(thin_ms, configured_ms)
        self._flowing_records = flowing_records
        self._thick_records = thick_records
        self._thin = False

    @property
    def ms(self) -> int:
        """The wait the next fetch asks the broker for."""
        return self.thin_ms if self._thin else self.configured_ms

    def observe(self, records: int) -> None:
        """The last read returned ``records`` records."""
        self._thin = self._flowing_records <= records < self._thick_records
