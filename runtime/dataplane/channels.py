"""Channels: one edge's ordered, sequence-numbered, credit-limited sending side."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from runtime.dataplane.messages import Envelope, Payload
from runtime.dataplane.payload_codec import encoded_payloads

__all__ = ["Channel", "LocalTarget", "RayTarget", "Shipment", "Target"]


class Target(Protocol):
    """The receiving end of a channel: something that accepts an envelope."""

    def deliver(self, envelope: Envelope) -> Awaitable[Any]:
        """Start delivering; the awaitable completes once the receiver has processed it."""
        ...


class LocalTarget:
    """A receiver in the same process: delivery is a coroutine call."""

    def __init__(self, push: Callable[[Envelope], Awaitable[None]]) -> None:
        self._push = push

    def deliver(self, envelope: Envelope) -> Awaitable[None]:
        """Hand the envelope to the receiver's ``push``."""
        return self._push(envelope)


class Shipment:
    """What one step of a node sends on all its channels, serialized at most once.

    With several actor subscribers, the payloads are put in Ray's object store once and every
    push carries the reference (``RayTarget.deliver_shared``), instead of each call pickling
    and copying them again; over data connections (``SocketTarget.deliver_shared``) they are
    encoded once and the same bytes go to every subscriber. In-process receivers get the
    objects themselves.
    """

    def __init__(self, payloads: Sequence[Payload], *, share: bool = False) -> None:
        #: The payloads, in order.
        self.payloads = tuple(payloads)
        #: Whether pushes to actors carry one stored copy (worth it from two subscribers on).
        self.share = share
        self._ref: Any = None
        self._encoded: bytes | None = None

    def object_ref(self) -> Any:
        """The payloads in Ray's object store, put there on the first call only."""
        if self._ref is None:
            import ray

            self._ref = ray.put(self.payloads)
        return self._ref

    def encoded(self) -> bytes:
        """The payloads encoded for a data connection (``payload_codec``), on the first call
        only."""
        if self._encoded is None:
            self._encoded = encoded_payloads(self.payloads)
        return self._encoded


class RayTarget:
    """A receiver that is a Ray actor: delivery is an actor call, its ObjectRef the ack."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def deliver(self, envelope: Envelope) -> Awaitable[Any]:
        """Call the actor's ``push``; the returned ObjectRef is awaitable."""
        ref: Awaitable[Any] = self.actor.push.remote(envelope)
        return ref

    def deliver_shared(self, envelope: Envelope, shipment: Shipment) -> Awaitable[Any]:
        """Call the actor's ``push_stored`` with the shipment's one stored copy of the payloads.

        Ray resolves the reference (a top-level argument) before the call runs.
        """
        ref: Awaitable[Any] = self.actor.push_stored.remote(
            envelope.edge, envelope.incarnation, envelope.seq, envelope.sent_at,
            shipment.object_ref())
        return ref


class Channel:
    """Sending side of one edge: numbers pushes and keeps at most ``credits`` unacknowledged.

    A sender without credit waits for the oldest push to be acknowledged; that wait is the
    backpressure that travels upstream, down to a source that then stops fetching.
    """

    def __init__(
        self,
        edge: str,
        target: Target,
        *,
        credits: int,
        incarnation: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if credits < 1:
            raise ValueError(f"a channel needs at least 1 credit, got {credits}")
        self.edge = edge
        self.target = target
        self.credits = credits
        self.incarnation = incarnation
        self.next_seq = 0
        self.backpressure_wait_seconds = 0.0
        self._clock = clock
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        #: What the first failed push raised; a failed channel sends nothing more.
        self.failure: Exception | None = None
        self._deliver_shared: Callable[[Envelope, Shipment], Awaitable[Any]] | None = getattr(
            target, "deliver_shared", None)

    @property
    def in_flight(self) -> int:
        """Pushes sent and not yet acknowledged."""
        return len(self._in_flight)

    async def send(self, payload: Payload | Shipment) -> asyncio.Future[Any]:
        """Push ``payload`` (or all of a shipment's) as the next envelope, once there is credit.

        Returns the push's acknowledgement: a future that completes once the receiver has
        processed the envelope, or fails with what delivering it raised. Waiting for credit
        raises what the oldest push raised: a channel whose receiver failed sends nothing more.
        """
        # Step 1: acknowledged pushes leave the window without a wait; then, without credit,
        # the oldest is waited for (the backpressure).
        while self._in_flight and self._in_flight[0].done():
            self._take_oldest()
        while len(self._in_flight) >= self.credits:
            started = self._clock()
            await self._settle_oldest()
            self.backpressure_wait_seconds += self._clock() - started
        if self.failure is not None:
            raise self.failure
        # Step 2: the next envelope, delivered (the payloads shared once for all subscribers
        # where the target can).
        shipment = payload if isinstance(payload, Shipment) else Shipment((payload,))
        first, *trailing = shipment.payloads
        envelope = Envelope(self.edge, self.incarnation, self.next_seq, first, time.time(),
                            tuple(trailing))
        self.next_seq += 1
        ack: asyncio.Future[Any]
        if shipment.share and self._deliver_shared is not None:
            ack = asyncio.ensure_future(self._deliver_shared(envelope, shipment))
        else:
            ack = asyncio.ensure_future(self.target.deliver(envelope))
        self._in_flight.append(ack)
        return ack

    async def drain(self) -> None:
        """Wait until every push is acknowledged (raises what a receiver raised)."""
        while self._in_flight:
            await self._settle_oldest()
        if self.failure is not None:
            raise self.failure

    async def _settle_oldest(self) -> None:
        oldest = self._in_flight[0]
        if not oldest.done():
            await asyncio.wait([oldest])
        self._take_oldest()

    def _take_oldest(self) -> None:
        """Take the oldest push, acknowledged or failed, off the window; raise if it failed."""
        oldest = self._in_flight.popleft()
        if self.failure is None:
            if oldest.cancelled():
                self.failure = RuntimeError(f"a push on edge {self.edge} was cancelled")
            else:
                self.failure = _as_exception(oldest.exception())
        if self.failure is not None:
            raise self.failure

    def pending(self) -> list[asyncio.Future[Any]]:
        """The acknowledgements of pushes sent and not yet taken off the channel."""
        return list(self._in_flight)


def _as_exception(error: BaseException | None) -> Exception | None:
    if error is None or isinstance(error, Exception):
        return error
    return RuntimeError(f"the receiver raised {type(error).__name__}: {error}")
