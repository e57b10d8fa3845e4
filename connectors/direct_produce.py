"""A sink's pending producer batches sent as one Produce request per leader, per round.

The sink's records are producer batches built already (``connectors.record_batches``), so
aiokafka's accumulator, sender task, request objects and delivery futures only add Python per
batch. ``DirectProduce`` takes the next batch of every pending partition, writes one Produce
request per leader (``connectors.produce_requests``), sends it with aiokafka's own client (its
connections, correlation ids, timeouts, the versions it negotiated) and reads the answer. One
batch per partition is in flight, so per-partition order holds.

Only a clean answer is taken here. A partition whose answer carries an error code (the broker
did not append the batch: ``NOT_LEADER_OR_FOLLOWER``, a full queue, a too-large batch...) is
left pending for aiokafka's own path (``connectors.producing.publish_partition``), which retries
it with the sink's policy and refreshes metadata; the metadata refresh is asked for here too.
A request that failed in transit (timeout, broken connection) may have landed: records with ids
then raise ``ProduceError`` at once, as a timed-out send of them does on aiokafka's path (the
epoch publisher reads back what got out); records without ids go aiokafka's way, as a retry.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaError, for_code
from aiokafka.structs import TopicPartition

from connectors.errors import ProduceError
from connectors.produce_requests import ProduceAnswer, ProduceCall
from connectors.producing import DeliveryStats
from connectors.record_batches import BuiltBatches, RecordColumns

__all__ = ["DirectProduce", "direct_produce_for"]

Pending = dict[int, list[RecordColumns | BuiltBatches]]


def direct_produce_for(producer: Any, topic: str, timeout_ms: int) -> DirectProduce | None:
    """A ``DirectProduce`` over ``producer`` when it is aiokafka's, with ``acks='all'`` and no
    idempotent or transactional state (what the Kafka sink makes); None otherwise."""
    sender = getattr(producer, "_sender", None)
    if (getattr(producer, "client", None) is None or sender is None
            or getattr(producer, "_txn_manager", True) is not None
            or getattr(sender, "_acks", None) != -1):
        return None
    return DirectProduce(producer.client, topic, timeout_ms)


class DirectProduce:
    """Sends a sink's pending batches to their leaders, one Produce request per leader."""

    def __init__(self, client: Any, topic: str, timeout_ms: int) -> None:
        self._client = client
        self._topic = topic
        self._timeout_ms = timeout_ms
        #: Requests sent, and partitions handed to aiokafka's path after an error answer.
        self.requests = 0
        self.handed_over = 0

    async def publish(self, pending: Pending, stats: DeliveryStats) -> set[int]:
        """Send ``pending``'s batches, dropping each one once acknowledged; return the
        partitions left for aiokafka's path. Raises ProduceError (what was not acknowledged
        stays pending) for records with ids whose request failed in transit."""
        left: set[int] = set()
        while True:
            # Step 1: the next batch of each partition still sent here, by leader.
            rounds: dict[int, dict[int, tuple[Any, int]]] = {}
            for partition, parts in pending.items():
                while parts and not len(parts[0]):
                    parts.pop(0)
                if partition in left or not parts:
                    continue
                leader = self._client.cluster.leader_for_partition(
                    TopicPartition(self._topic, partition))
                if leader is None or leader < 0:
                    left.add(partition)
                    continue
                builder, end = parts[0].batch_from(0)
                rounds.setdefault(leader, {})[partition] = (builder, end)
            if not rounds:
                return left
            # Step 2: one request per leader, all at once; then each partition's outcome.
            outcomes = await self._send_all(rounds)
            failures: list[ProduceError] = []
            for batches, outcome in zip(rounds.values(), outcomes, strict=True):
                for partition, (builder, end) in batches.items():
                    error = self._settle(pending, partition, end, builder, outcome, stats)
                    if isinstance(error, ProduceError):
                        failures.append(error)
                    elif error is not None:
                        left.add(partition)
            if failures:
                raise failures[0]

    async def _send_all(self, rounds: dict[int, dict[int, tuple[Any, int]]]
                        ) -> list[ProduceAnswer | BaseException]:
        """Each leader's answer, or what its send raised (one leader: no task to make)."""
        if len(rounds) > 1:
            return await asyncio.gather(*(self._send(leader, batches)
                                          for leader, batches in rounds.items()),
                                        return_exceptions=True)
        ((leader, batches),) = rounds.items()
        try:
            return [await self._send(leader, batches)]
        except Exception as error:  # as gather(return_exceptions=True) hands it over
            return [error]

    async def _send(self, leader: int, batches: dict[int, tuple[Any, int]]) -> ProduceAnswer:
        call = ProduceCall(self._topic, {p: builder.data for p, (builder, _) in batches.items()},
                           acks=-1, timeout_ms=self._timeout_ms)
        self.requests += 1
        answer: ProduceAnswer = await self._client.send(leader, call)
        return answer

    def _settle(self, pending: Pending, partition: int, end: int, builder: Any,
                outcome: ProduceAnswer | BaseException, stats: DeliveryStats
                ) -> BaseException | None:
        """Apply ``outcome`` to ``partition``'s pending batch; the error that stops it here."""
        parts = pending[partition]
        if isinstance(outcome, BaseException):
            # Step 3': lost in transit: it may have landed.
            if not isinstance(outcome, KafkaError | asyncio.TimeoutError | OSError):
                raise outcome
            if parts[0].has_ids:
                stats.failures += 1
                return ProduceError(self._topic, partition, 1, len(parts[0]), outcome)
            return outcome
        code, _ = outcome.partitions.get(partition, (-1, -1))
        if code != 0:
            # Step 3'': the broker did not append it; aiokafka's path retries it.
            error: BaseException = for_code(code)()
            if getattr(error, "invalid_metadata", False) or code == -1:
                self._client.force_metadata_update()
            self.handed_over += 1
            return error
        # Step 3: acknowledged.
        stats.records += builder.record_count()
        stats.batches += 1
        if end < len(parts[0]):
            parts[0] = parts[0].drop_first(end)
        else:
            parts.pop(0)
        return None
