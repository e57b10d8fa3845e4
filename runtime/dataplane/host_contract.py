"""What a node host is given and what it answers: the data plane's settings and a node's report.

>>> RuntimeSettings().credits
4
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.dataplane.stats import NodeStats

__all__ = ["NodeReport", "RuntimeSettings"]


@dataclass(frozen=True)
class NodeReport:
    """A node's figures and state in one answer, so asking a node actor costs one call."""

    stats: NodeStats
    #: EndOfStream went through the node, or it stopped (``error`` then says why).
    finished: bool
    error: BaseException | None
    #: The edges it still sends on: an edge's unsubscribe, once started, is not among them.
    sending_on: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RuntimeSettings:
    """Data-plane knobs shared by every node of a run."""

    #: Unacknowledged pushes allowed per channel (W).
    credits: int = 4
    #: A source cuts a batch at this many records...
    max_batch_records: int = 100_000
    #: ...or after this long once it holds at least one record, but only while its reads
    #: bring at least ``linger_from_records`` records: a thin stream is sent on at once.
    linger_s: float = 0.005
    linger_from_records: int = 1_000
    #: On Ray, pushes travel over TCP connections between the actors, on ports the system
    #: picks (``runtime.dataplane.sockets``); False: as Ray actor calls, about 1 ms of CPU
    #: more per push on each side, for clusters whose machines reach each other on Ray's own
    #: ports only.
    data_connections: bool = True
