"""Decoding fetches into Batches: the compiled scanners against the per-record path.

Workload: fetches of 10,000 tick records ``{"ts", "key", "price", "size"}`` (100 keys), JSON and
msgpack. Prices have 2 decimals (market data) or full ``repr`` precision (17 digits: the JSON
scanner hands their text to numpy's exact parser). The per-record path is what the decoder falls
back to for records the scanner refuses: ``json.loads`` / ``msgpack.unpackb`` plus schema checks,
one record at a time.

The second table is the source reader's whole decode of a fetch response (record batches of
1,000 records with keys, as the sink writes them, 10,000 records a fetch) into a Batch:
aiokafka's per-record ``ConsumerRecord`` path then the compiled scanners (the reader before),
against the compiled record-batch decoder reading the values in place (the reader now).

With ``--broker``, a third table: the whole ``KafkaSourceReader`` over the embedded broker
(the end-to-end workload's 4-partition topic), both ways alternately, in records per CPU second
of this process (wall time on a shared box measures the neighbours).
With ``--thin``, a thin stream instead: the reader over the embedded broker while a producer
process writes 10,000 ticks a second to 4 partitions, with Fetch requests packed by
``connectors.fetch_requests`` against aiokafka's own request objects, alternately; CPU ms of
this process per read and per Fetch request sent (``fetch_max_wait_ms=5``, as the end-to-end
latency run).
Run: ``python -m benchmarks.kafka_decode [--records N] [--broker] [--thin]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import msgpack
import numpy as np
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from benchmarks.kafka_baselines import produce_input
from connectors.broker import EmbeddedBroker
from connectors.codecs import RecordDecoder
from connectors.fetched_batches import decode_fetch
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader, Timestamp
from connectors.topics import ensure_topics
from streamdag.schema import Schema

__all__ = ["main", "make_fetches", "make_values", "measure", "measure_fetches", "measure_reader"]

_SCHEMA = Schema.of(price="float64", size="int64")
_FETCH = 10_000


def make_values(count: int, codec: str, full_precision: bool) -> list[bytes]:
    """``count`` encoded tick records."""
    rng = np.random.default_rng(1)
    prices = rng.normal(100.0, 5.0, count)
    if not full_precision:
        prices = np.round(prices, 2)
    encode: Callable[[object], bytes] = (
        (lambda d: json.dumps(d).encode()) if codec == "json" else msgpack.packb
    )
    return [
        encode({"ts": 1_700_000_000_000_000_000 + n, "key": f"SYM{n % 100}", "price": p,
                "size": n % 500})
        for n, p in enumerate(prices.tolist())
    ]


def measure(values: list[bytes], codec: str, fast_path: bool, repeats: int = 3) -> float:
    """Best records/s over ``repeats`` passes of decoding ``values`` in fetches of 10,000."""
    decoder = RecordDecoder(_SCHEMA, key_field="key", time_field="ts", codec=codec,  # type: ignore[arg-type]
                            fast_path=fast_path)
    stamps = np.zeros(_FETCH, dtype=np.int64)
    fetches = [values[i:i + _FETCH] for i in range(0, len(values), _FETCH)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for fetch in fetches:
            decoded = decoder.decode(fetch, stamps[: len(fetch)])
            assert not decoded.rejections
        best = min(best, time.perf_counter() - started)
    return len(values) / best


def make_fetches(values: list[bytes], per_batch: int = 1_000) -> list[bytes]:
    """Fetch responses of ``_FETCH`` records each, in record batches of ``per_batch``."""
    fetches = []
    for first in range(0, len(values), _FETCH):
        raw = b""
        for start in range(first, min(first + _FETCH, len(values)), per_batch):
            builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, batch_size=1 << 24)
            for n in range(start, min(start + per_batch, first + _FETCH, len(values))):
                builder.append(n - start, 1_700_000_000_000 + n, f"SYM{n % 100}".encode(),
                               values[n], [])
            batch = bytearray(builder.build())
            batch[0:8] = start.to_bytes(8, "big")  # the batch's base offset
            raw += bytes(batch)
        fetches.append(raw)
    return fetches


def measure_fetches(fetches: list[bytes], codec: str, compiled: bool, repeats: int = 3) -> float:
    """Best records/s over ``repeats`` passes of decoding fetch responses into Batches."""
    decoder = RecordDecoder(_SCHEMA, key_field="key", time_field="ts", codec=codec)  # type: ignore[arg-type]
    tp = TopicPartition("ticks", 0)
    best = float("inf")
    total = 0
    for _ in range(repeats):
        total = 0
        started = time.perf_counter()
        for number, raw in enumerate(fetches):
            if compiled:
                fetched = decode_fetch(raw, fetch_offset=number * _FETCH, read_committed=False)
                assert fetched is not None
                starts = fetched.value_start
                decoded = decoder.decode_spans(fetched.buffer, starts,
                                               starts + fetched.value_length,
                                               fetched.timestamps)
            else:  # what the reader did before: aiokafka's records, then their values joined
                records = list(PartitionRecords(tp, MemoryRecords(raw), [], number * _FETCH,
                                                None, None, True, READ_UNCOMMITTED))
                stamps = np.fromiter((r.timestamp for r in records), dtype=np.int64,
                                     count=len(records))
                np.fromiter((r.offset for r in records), dtype=np.int64, count=len(records))
                decoded = decoder.decode([r.value for r in records], stamps)
            assert not decoded.rejections
            total += len(decoded.ts)
        best = min(best, time.perf_counter() - started)
    return total / best


async def measure_reader(bootstrap: str, topic: str, records: int, compiled: bool) -> float:
    """Records per CPU second of a ``KafkaSourceReader`` reading ``topic`` to its end."""
    config = KafkaSourceConfig(bootstrap, topic, Schema.of(price="float64"),
                               end=Timestamp(time.time_ns()), fetch_max_wait_ms=10,
                               max_batch_records=20_000)
    reader = KafkaSourceReader(config, compiled_fetch=compiled)
    await reader.open()
    try:
        total = 0
        cpu = time.process_time()
        while True:
            chunk = await reader.read(20_000, linger_s=0.005)
            total += len(chunk.batch)
            if chunk.finished:
                break
        cpu = time.process_time() - cpu
    finally:
        await reader.close()
    assert total == records and reader.dead_lettered == 0
    return total / cpu


def _reader_table(records: int) -> None:
    with EmbeddedBroker.start(tempfile.mkdtemp()) as broker:
        bootstrap = str(broker.bootstrap_servers)
        topic = f"bench.decode.{time.strftime('%H%M%S')}"
        asyncio.run(produce_input(bootstrap, topic, records))
        print(f"\nKafkaSourceReader over the embedded broker, {records:,} JSON records, "
              "4 partitions (records per CPU second)")
        print(f"{'round':<6} {'compiled batches':>17} {'aiokafka records':>17} {'ratio':>6}")
        for number in range(3):
            new = asyncio.run(measure_reader(bootstrap, topic, records, compiled=True))
            old = asyncio.run(measure_reader(bootstrap, topic, records, compiled=False))
            print(f"{number:<6} {new:>17,.0f} {old:>17,.0f} {new / old:>5.1f}x", flush=True)


_TICKS = """
import asyncio, sys
from runtime.demo.job import TickProducer
async def main():
    producer = TickProducer(sys.argv[1], sys.argv[2], float(sys.argv[3]), symbols=100)
    task = asyncio.create_task(producer.run())
    await producer.connected.wait()
    print("ready", flush=True)
    await task
asyncio.run(main())
"""


async def measure_thin(bootstrap: str, topic: str, seconds: float,
                       fast_requests: bool) -> tuple[float, float, int]:
    """CPU ms per non-empty read and per Fetch request of a reader of a live ``topic``."""
    config = KafkaSourceConfig(bootstrap, topic, Schema.of(price="float64"), key_field="symbol",
                               start="latest", fetch_max_wait_ms=5, max_batch_records=20_000)
    reader = KafkaSourceReader(config, fast_requests=fast_requests)
    await reader.open()
    try:
        consumer = reader._consumer
        assert consumer is not None
        sent = [0]
        send = consumer._client.send

        async def counted(*args: object, **kwargs: object) -> object:
            sent[0] += 1
            return await send(*args, **kwargs)

        consumer._client.send = counted
        loop = asyncio.get_running_loop()
        settle = loop.time() + 1.0
        while loop.time() < settle:
            await reader.read(20_000, linger_s=0.0)
        reads, records, sent[0] = 0, 0, 0
        cpu, stop = time.process_time(), loop.time() + seconds
        while loop.time() < stop:
            chunk = await reader.read(20_000, linger_s=0.0)
            reads += bool(len(chunk.batch))
            records += len(chunk.batch)
        cpu = time.process_time() - cpu
    finally:
        await reader.close()
    return cpu * 1e3 / max(1, reads), cpu * 1e3 / max(1, sent[0]), records


def _thin_table(rounds: int, seconds: float) -> None:
    with EmbeddedBroker.start(tempfile.mkdtemp()) as broker:
        bootstrap = str(broker.bootstrap_servers)
        topic = f"bench.thin.{time.strftime('%H%M%S')}"
        asyncio.run(ensure_topics(bootstrap, {topic: 4}))
        producer = subprocess.Popen([sys.executable, "-c", _TICKS, bootstrap, topic, "10000"],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert producer.stdout is not None
            if producer.stdout.readline().strip() != "ready":
                raise RuntimeError("the tick producer did not start")
            costs: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
            for _ in range(rounds):
                for fast in (True, False):
                    costs[fast].append(asyncio.run(measure_thin(bootstrap, topic, seconds,
                                                                fast)))
        finally:
            producer.terminate()
            producer.wait(30)
    print(f"\nKafkaSourceReader on a thin stream (10,000 ticks/s, 4 partitions, fetch wait 5 ms),"
          f" {rounds} runs of {seconds:.0f} s each, CPU of this process")
    print(f"{'Fetch requests':<22} {'ms per read (median)':>21} {'ms per request':>15} "
          f"{'records':>9}")
    for fast, label in ((True, "packed here"), (False, "aiokafka's objects")):
        per_read = float(np.median([c[0] for c in costs[fast]]))
        per_request = float(np.median([c[1] for c in costs[fast]]))
        print(f"{label:<22} {per_read:>21.3f} {per_request:>15.3f} "
              f"{sum(c[2] for c in costs[fast]):>9,}")
    ratio = np.median([c[0] for c in costs[True]]) / np.median([c[0] for c in costs[False]])
    print(f"ratio packed / aiokafka per read: {ratio:.3f}")


def _compile_seconds() -> float:
    started = time.perf_counter()
    for codec in ("json", "msgpack"):
        values = make_values(10, codec, full_precision=True)
        RecordDecoder(_SCHEMA, key_field="key", time_field="ts", codec=codec).decode(
            values, np.zeros(10, dtype=np.int64)
        )
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    """Print records/s of both paths for each codec and price precision, with the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--broker", action="store_true",
                        help="also time the source reader over the embedded broker")
    parser.add_argument("--thin", action="store_true",
                        help="only time the reader on a thin live stream, both Fetch requests")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (--thin)")
    args = parser.parse_args(argv)
    if args.thin:
        _thin_table(args.rounds, 8.0)
        return
    count = args.records
    print(f"first decode (numba compile or cache load): {_compile_seconds():.2f} s")
    print(f"{'codec':<8} {'prices':<10} {'compiled rec/s':>15} {'per-record rec/s':>17} "
          f"{'ratio':>6}")
    for codec in ("json", "msgpack"):
        for full_precision in (False, True):
            values = make_values(count, codec, full_precision)
            compiled = measure(values, codec, fast_path=True)
            per_record = measure(values, codec, fast_path=False, repeats=1)
            label = "17 digits" if full_precision else "2 decimals"
            print(f"{codec:<8} {label:<10} {compiled:>15,.0f} {per_record:>17,.0f} "
                  f"{compiled / per_record:>5.1f}x", flush=True)
    print(f"\nwhole fetch responses to a Batch ({_FETCH:,} records a fetch, batches of 1,000)")
    print(f"{'codec':<8} {'compiled batches rec/s':>23} {'aiokafka records rec/s':>23} "
          f"{'ratio':>6}")
    for codec in ("json", "msgpack"):
        fetches = make_fetches(make_values(count, codec, full_precision=False))
        measure_fetches(fetches[:1], codec, compiled=True, repeats=1)  # compile or load first
        new = measure_fetches(fetches, codec, compiled=True)
        old = measure_fetches(fetches, codec, compiled=False)
        print(f"{codec:<8} {new:>23,.0f} {old:>23,.0f} {new / old:>5.1f}x", flush=True)
    if args.broker:
        _reader_table(count)


if __name__ == "__main__":
    main()
