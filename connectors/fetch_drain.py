"""Takes whole fetch responses from aiokafka's fetcher and hands out their records as columns.

aiokafka keeps networking, leaders, errors, prefetching and positions; ``FetchDrain`` only
replaces ``consumer.getmany``, which makes one ``ConsumerRecord`` per record. For a partition
whose fetch result is ready, it takes the raw bytes of the response, decodes them in one
compiled pass (``decode_fetch``), moves aiokafka's position past the fetch as ``getmany``
would, and holds the records it could not hand out yet (at most one fetch per partition,
dropped by ``forget``). A fetch the compiled pass declines is read through aiokafka's own
per-record iteration, and a consumer without the private fetcher attributes this relies on
(another aiokafka version) is read with ``getmany``, after one warning.

The raw bytes: aiokafka wraps each response in a ``MemoryRecords`` that does not expose them,
so the drain gives its own consumer's fetcher a copy of ``_proc_fetch_request`` whose
``MemoryRecords`` keeps them (``_KeptBytes``); no other consumer is touched. Likewise its copy of
``_get_actions_per_node`` makes ``FastFetchRequest``s (``connectors.fetch_requests``): the same
requests, packed in one go, their answers read with a few unpacks per partition.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher

from connectors.fetch_requests import FastFetchRequest
from connectors.fetched_batches import FetchedRecords, decode_fetch

__all__ = ["FetchDrain"]

_log = logging.getLogger(__name__)
_FETCHER_ATTRIBUTES = ("_records", "_notify", "_create_fetch_waiter", "_proc_fetch_request",
                       "_get_actions_per_node", "_isolation_level", "_wait_consume_future",
                       "_closed")
_RESULT_ATTRIBUTES = ("check_assignment", "_update_position", "getall")


class _KeptBytes:
    """aiokafka's ``MemoryRecords`` over a fetch response, keeping the response's bytes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._records = aiokafka_fetcher.MemoryRecords(raw)

    def size_in_bytes(self) -> int:
        """The response's size."""
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        """Whether another whole batch follows."""
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        """The next batch, as aiokafka reads it."""
        return self._records.next_batch()


class FetchDrain:
    """Records of a consumer's assigned partitions, as columns per partition.

    ``compiled=False`` reads every fetch through aiokafka's per-record path (a reference for
    tests and benchmarks); ``fast_requests=False`` leaves aiokafka's own Fetch request objects
    (``connectors.fetch_requests`` packs them otherwise).
    """

    def __init__(self, consumer: AIOKafkaConsumer, *, compiled: bool = True,
                 fast_requests: bool = True) -> None:
        self._consumer = consumer
        self._fast_requests = fast_requests
        self._held: OrderedDict[TopicPartition, FetchedRecords] = OrderedDict()
        self._fetcher = self._take_over_fetcher(consumer) if compiled else None
        self._read_committed = self._fetcher is not None and (
            self._fetcher._isolation_level == aiokafka_fetcher.READ_COMMITTED)
        #: Records read through aiokafka's per-record path (all of them when not compiled).
        self.per_record_count = 0

    def holds(self, tp: TopicPartition) -> bool:
        """Whether records of ``tp`` were fetched and not handed out yet."""
        return tp in self._held

    def forget(self, tp: TopicPartition) -> None:
        """Drop what is held for ``tp`` (after a seek, or when it is finished)."""
        self._held.pop(tp, None)

    async def take(
        self, tps: Sequence[TopicPartition], max_records: int, timeout_s: float
    ) -> dict[TopicPartition, FetchedRecords]:
        """Up to ``max_records`` records of ``tps``, waiting up to ``timeout_s`` for a first."""
        if self._fetcher is None:
            return await self._take_per_record(tps, max_records, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        wanted = set(tps)
        while True:
            # Step 1: move every ready fetch of a wanted partition with nothing held here.
            self._drain_fetcher(wanted)
            # Step 2: hand out what is held, partitions in the order their fetches came.
            taken = self._hand_out(wanted, max_records)
            remaining = deadline - loop.time()
            if taken or remaining <= 0:
                return taken
            # Step 3: wait for the fetcher's next response, as getmany does.
            waiter = self._fetcher._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=remaining)
            for future in pending:
                future.cancel()
            if not done or self._fetcher._closed:
                return {}
            waiter.result()

    # -- internals -------------------------------------------------------------------------
    def _take_over_fetcher(self, consumer: AIOKafkaConsumer) -> Any:
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None or not _known_fetcher(fetcher):
            _log.warning("aiokafka's fetcher lacks the attributes the compiled fetch decoder "
                         "uses (another aiokafka version?); reading records one by one")
            return None
        _replace_global(fetcher, "_proc_fetch_request", "MemoryRecords", _KeptBytes)
        if self._fast_requests:
            _replace_global(fetcher, "_get_actions_per_node", "FetchRequest", FastFetchRequest)
        return fetcher

    def _drain_fetcher(self, wanted: set[TopicPartition]) -> None:
        fetcher = self._fetcher
        assert fetcher is not None
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            coordinator.check_errors()
        for tp in list(fetcher._records):
            if tp not in wanted or tp in self._held:
                continue
            result = fetcher._records[tp]
            if type(result) is not aiokafka_fetcher.FetchResult:  # a FetchError
                if self._held:
                    return  # raised on a later call, once what was fetched is handed out
                del fetcher._records[tp]
                fetcher._notify(fetcher._wait_consume_future)
                result.check_raise()
            fetched = self._decode_result(tp, result)
            del fetcher._records[tp]
            fetcher._notify(fetcher._wait_consume_future)
            if fetched is not None and len(fetched):
                self._held[tp] = fetched

    def _decode_result(self, tp: TopicPartition, result: Any) -> FetchedRecords | None:
        """The whole fetch ``result`` as columns; aiokafka's position moves past it."""
        partition_records = result._partition_records
        if partition_records is None or not result.check_assignment(tp):
            return None
        raw = getattr(getattr(partition_records, "_records", None), "raw", None)
        fetched = None
        if raw is not None and getattr(partition_records, "_records_iterator", None) is not None:
            fetched = decode_fetch(
                raw, fetch_offset=partition_records.next_fetch_offset,
                read_committed=self._read_committed,
            )
        if fetched is None:
            records = result.getall()
            fetched = FetchedRecords.from_consumer_records(
                records, partition_records.next_fetch_offset)
            self.per_record_count += len(records)
            return fetched
        partition_records.next_fetch_offset = fetched.next_offset
        result._update_position()
        result._partition_records = None
        # Its iterator (a generator over itself) ends the cycle only when iterated to the end,
        # as aiokafka does then: left, the response's bytes (up to fetch_max_bytes) would wait
        # for a full garbage collection, which a compiled source seldom triggers (measured:
        # 17-36 MiB of fetch responses in a source actor after a 500k-record read).
        partition_records._records_iterator = None
        return fetched

    def _hand_out(
        self, wanted: set[TopicPartition], max_records: int
    ) -> dict[TopicPartition, FetchedRecords]:
        taken: dict[TopicPartition, FetchedRecords] = {}
        for tp in list(self._held):
            if max_records <= 0:
                break
            if tp not in wanted:
                continue
            held = self._held[tp]
            count = min(len(held), max_records)
            taken[tp] = held.slice(0, count)
            max_records -= count
            if count == len(held):
                del self._held[tp]
            else:
                self._held[tp] = held.slice(count, len(held))
        return taken

    async def _take_per_record(
        self, tps: Sequence[TopicPartition], max_records: int, timeout_s: float
    ) -> dict[TopicPartition, FetchedRecords]:
        fetched = await self._consumer.getmany(*tps, timeout_ms=max(0, round(timeout_s * 1000)),
                                               max_records=max_records)
        self.per_record_count += sum(map(len, fetched.values()))
        return {
            tp: FetchedRecords.from_consumer_records(records, records[-1].offset + 1)
            for tp, records in fetched.items() if records
        }


def _replace_global(fetcher: Any, method: str, name: str, replacement: object) -> None:
    """Give ``fetcher`` its own copy of ``method`` that sees ``replacement`` as ``name``."""
    function = getattr(type(fetcher), method)
    scope = {**function.__globals__, name: replacement}
    copy = types.FunctionType(function.__code__, scope, function.__name__,
                              function.__defaults__, function.__closure__)
    setattr(fetcher, method, types.MethodType(copy, fetcher))


def _known_fetcher(fetcher: Any) -> bool:
    """Whether ``fetcher`` has everything of aiokafka 0.14's fetcher that the drain uses."""
    if fetcher is None or not all(hasattr(fetcher, name) for name in _FETCHER_ATTRIBUTES):
        return False
    result_type = getattr(aiokafka_fetcher, "FetchResult", None)
    return (all(hasattr(result_type, name) for name in _RESULT_ATTRIBUTES)
            and hasattr(aiokafka_fetcher, "MemoryRecords")
            and hasattr(aiokafka_fetcher, "READ_COMMITTED")
            and "MemoryRecords" in type(fetcher)._proc_fetch_request.__code__.co_names
            and "FetchRequest" in type(fetcher)._get_actions_per_node.__code__.co_names)
