"""How long a source node's next read lingers: batching on a thick stream, none on a thin one.

A read that lingers waits for records that have not reached the broker yet. On a thin stream
that is latency added to every record and nothing gained: the next fetch answer comes after
the broker's fetch wait anyway, so the read would emit the same records, later. On a thick
stream lingering gathers more records per push, so every hop downstream costs less per event.
A backlog batches by itself: a read takes what is buffered, up to its record limit, at once.
So a source lingers only while its reads come back large (see ``ReadPacing``).
"""

from __future__ import annotations

__all__ = ["ReadPacing"]


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
