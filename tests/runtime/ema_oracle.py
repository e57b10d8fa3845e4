"""The oracle of the recovery tests: a sequence-numbered keyed stream, and the per-key EMA a run
without faults outputs (an event lost or applied twice changes every later value of its key)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

import streamdag as sd
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.testing import TestingSource

KEYS = ("A", "B", "C", "D", "E")


def tick(i: int) -> dict[str, Any]:
    """Event i: key KEYS[i % 5], time i (its sequence number within the key is i // 5)."""
    return {"symbol": KEYS[i % len(KEYS)], "ts": i, "price": float((i * 7919) % 1000) / 10}


async def produce(bootstrap: str, topic: str, first: int, last: int,
                  pace_s: float = 0.0) -> None:
    """Events ``first``..``last - 1``; with ``pace_s``, 50 at a time, one step per ``pace_s``."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(first, last):
            event = tick(i)
            await producer.send(topic, json.dumps(event).encode(), key=event["symbol"].encode())
            if pace_s and i % 50 == 49:
                await producer.flush()
                await asyncio.sleep(pace_s)  # a live stream: the fault comes while it flows
        await producer.flush()
    finally:
        await producer.stop()


def produce_in_background(bootstrap: str, topic: str, first: int, last: int) -> threading.Thread:
    """``produce`` as a live stream (50 events every 50 ms) on a thread of its own."""
    thread = threading.Thread(target=lambda: asyncio.run(
        produce(bootstrap, topic, first, last, pace_s=0.05)), daemon=True)
    thread.start()
    return thread


def expected(total: int, span: int = 7) -> dict[str, list[tuple[int, float]]]:
    """The EMA outputs per key of a run without faults over events 0..total-1, in order."""
    batch = Batch.from_columns(ts=[tick(i)["ts"] for i in range(total)],
                               key=[tick(i)["symbol"] for i in range(total)],
                               price=[tick(i)["price"] for i in range(total)])
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    graph = sd.Graph("ema", outputs=[ticks.ema("price", span=span, name="smooth")])
    result = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource([batch])})
    outputs: dict[str, list[tuple[int, float]]] = {key: [] for key in KEYS}
    for record in result.records("smooth"):
        outputs[str(record["key"])].append((int(record["ts"]), float(record["value"])))
    return outputs


def per_key(records: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """Output records (aiokafka ConsumerRecords) per key, in partition order."""
    found: dict[str, list[tuple[int, float]]] = {key: [] for key in KEYS}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        value = json.loads(record.value)
        found[value["key"]].append((int(value["ts"]), float(value["value"])))
    return found


def differences(records: list[Any], total: int, span: int = 7) -> str:
    """What ``records`` lack, repeat or get wrong against ``expected(total, span)``, per key:
    the failure message of an oracle check (empty when they match)."""
    want, found = expected(total, span), per_key(records)
    lines = []
    for key in KEYS:
        if found[key] == want[key]:
            continue
        seen = Counter(ts for ts, _ in found[key])
        lost = sorted({ts for ts, _ in want[key]} - seen.keys())
        repeated = sorted(ts for ts, count in seen.items() if count > 1)
        first = next((f"first difference at output {i}: {got} != {right}" for i, (got, right)
                      in enumerate(zip(found[key], want[key], strict=False)) if got != right),
                     "")
        lines.append(f"key {key}: {len(found[key])} of {len(want[key])}; lost {_ranges(lost)}; "
                     f"repeated {_ranges(repeated)}; {first}")
    return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    """``[1, 6, 11, 30]`` (one key's times, 5 apart) as ``1..11 (3), 30``."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value - runs[-1][-1] == len(KEYS):
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(f"{run[0]}..{run[-1]} ({len(run)})" if len(run) > 1 else str(run[0])
                     for run in runs) or "none"
