"""A host's ledger of steps sent and not yet acknowledged by every subscriber.

A step is what one drain-loop turn or one source read sent. It settles once every subscriber
acknowledged it; steps settle oldest first, and one that failed keeps itself and every later
step undelivered, so a source rewinds to the position after the last step that settled.

>>> ledger = DeliveryLedger()
>>> first, second = ledger.open(3, {0: 10}), ledger.open(2, {0: 12})
>>> first.pending, ledger.undelivered_events
(1, 5)
>>> second.pending -= 1; ledger.settle(); ledger.position  # the older one still waits
{}
>>> first.pending -= 1; ledger.settle(); ledger.position, ledger.undelivered_events
({0: 12}, 0)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Delivery", "DeliveryLedger"]


@dataclass
class Delivery:
    """What one step (a push processed, a chunk read) sent: settled once every ack is in."""

    events: int
    #: Sources: the reader's position after the chunk this step sent.
    position: dict[int, int] | None
    #: Acks still awaited, plus one for the step itself until it has sent everything.
    pending: int = 1
    failed: bool = False


class DeliveryLedger:
    """Steps whose output some subscriber has not acknowledged yet, oldest first."""

    def __init__(self) -> None:
        self._steps: deque[Delivery] = deque()
        #: Events of the steps not settled yet (not counted as emitted).
        self.undelivered_events = 0
        #: Sources: per partition, the offset after the last record every subscriber took.
        self.position: dict[int, int] = {}

    def open(self, events: int, position: dict[int, int] | None) -> Delivery:
        """A new step that sent ``events`` events and left a source at ``position``."""
        delivery = Delivery(events, position)
        self._steps.append(delivery)
        self.undelivered_events += events
        return delivery

    def settle(self) -> None:
        """Take off every step, oldest first, whose acks are all in (up to one that failed)."""
        while self._steps and not self._steps[0].pending:
            if self._steps[0].failed:
                return
            delivery = self._steps.popleft()
            self.undelivered_events -= delivery.events
            if delivery.position is not None:
                self.position = delivery.position
