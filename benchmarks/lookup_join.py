"""Event-time lookup join through the node worker: events/s against a plain-Python dict join.

The workload: N left events and N/10 table records over 1,000 keys in random key order, event
times increasing, each input delivered in 10k-event batches with a watermark after each, the two
inputs interleaved by time, through ``NodeWorker`` (per-edge order, event-time alignment, the shared
as-of kernel of ``operators.latest_rows``, output batches). A second run delivers the table
first and marks it idle (``WatermarkStatus``), as a compacted topic read to its end: the left
stream is then released by its own watermark alone. The baseline, in the same run: the same
join as a plain-Python loop over both inputs in time order with a dict of rows per key.

Run: ``python -m benchmarks.lookup_join [--events N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import streamdag as sd
from runtime.dataplane.messages import IDLE, EndOfStream, Envelope, Payload, Watermark
from runtime.dataplane.worker import NodeWorker
from streamdag.batch import Batch

__all__ = ["main"]

KEYS = 1_000
BATCH = 10_000


def _inputs(events: int) -> tuple[Batch, Batch]:
    rng = np.random.default_rng(7)
    names = np.array([f"k{i:04d}".encode() for i in range(KEYS)])
    left = Batch(np.arange(events, dtype=np.int64) * 10, names[rng.integers(0, KEYS, events)],
                 {"size": rng.random(events)})
    rows = events // 10
    table = Batch(np.arange(rows, dtype=np.int64) * 100 + 5, names[rng.integers(0, KEYS, rows)],
                  {"max": rng.random(rows)})
    return left, table


def _pushes(edge: str, batch: Batch) -> list[Envelope]:
    pushes = []
    for seq, start in enumerate(range(0, len(batch), BATCH)):
        part = batch.slice(start, start + BATCH)
        pushes.append(Envelope(edge, 0, seq, part, trailing=(Watermark(int(part.ts[-1]) + 1),)))
    return pushes


def _first_time(envelope: Envelope) -> int:
    assert isinstance(envelope.payload, Batch)
    return int(envelope.payload.ts[0])


def _worker() -> NodeWorker:
    trades = sd.source("trades", topic="t", key="k", schema={"size": "float64"})
    limits = sd.source("limits", topic="l", key="k", schema={"max": "float64"})
    worker = NodeWorker(trades.lookup_join(limits, prefix="limit_", name="j").config())
    worker.connect("trades", 0)
    worker.connect("limits", 1)
    return worker


def _through_worker(left: Batch, table: Batch, *, idle_table: bool) -> tuple[float, int]:
    worker = _worker()
    trades, limits = _pushes("trades", left), _pushes("limits", table)
    if idle_table:  # the whole table, then it is idle; then the left stream
        limits.append(Envelope("limits", 0, len(limits), IDLE))
        order = [*limits, *trades]
    else:  # both inputs by the time of their batches' first events, as live reads would come
        order = sorted([*trades, *limits], key=_first_time)
    order += [Envelope("trades", 0, len(trades), EndOfStream()),
              Envelope("limits", 0, len(limits), EndOfStream())]
    started = time.perf_counter()
    out: list[Payload] = []
    for envelope in order:
        out.extend(worker.accept(envelope))
    seconds = time.perf_counter() - started
    return seconds, sum(len(p) for p in out if isinstance(p, Batch))


def _plain_python(left: Batch, table: Batch) -> tuple[float, int]:
    lt, lk = left.ts.tolist(), left.key.tolist()
    tt, tk, tv = table.ts.tolist(), table.key.tolist(), table.columns["max"].tolist()
    started = time.perf_counter()
    rows: dict[bytes, float] = {}
    joined: list[float] = []
    j = 0
    for t, key in zip(lt, lk, strict=True):
        while j < len(tt) and tt[j] <= t:
            rows[tk[j]] = tv[j]
            j += 1
        joined.append(rows.get(key, float("nan")))
    return time.perf_counter() - started, len(joined)


def main(argv: list[str] | None = None) -> None:
    """Print events/s of each way, and the ratio to the plain-Python join."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    left, table = _inputs(args.events)
    small_left, small_table = _inputs(BATCH * 2)
    _through_worker(small_left, small_table, idle_table=False)  # compile, off the clock
    base_s, base_n = _plain_python(left, table)
    events = len(left) + len(table)
    print(f"{'path':<48}{'events/s':>14}{'vs python':>11}")
    print(f"{'plain-Python dict join (baseline)':<48}{events / base_s:>14,.0f}{1.0:>10.1f}x")
    for name, idle in (("worker, inputs interleaved", False), ("worker, table idle", True)):
        seconds, out = _through_worker(left, table, idle_table=idle)
        assert out == base_n == len(left), (out, base_n)
        print(f"{name:<48}{events / seconds:>14,.0f}{base_s / seconds:>10.1f}x")


if __name__ == "__main__":
    main()
