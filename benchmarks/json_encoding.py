"""A sink's JSON encoding: the compiled writer against the Python encoder it replaced.

Workload: the sink's records in the issue workload (a rolling mean per key: ``ts``, ``key``,
one float64 field; 100 keys), in batches of 87 records (a thin stream at 10k events/s) and of
100,000. The baseline, ``python_json_buffer``, is the sink's encoder before the compiled writer
(``connectors.json_writer``): each column's texts from one C-level ``map`` (``repr`` of the
floats), interleaved and joined; the tests keep it as the oracle the writer must equal byte for
byte. Both run alternately, ``--repeats`` times, after an untimed warm-up; the table shows CPU
microseconds per batch (``time.process_time``, best of the runs) and the ratio.
Run: ``python -m benchmarks.json_encoding [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.sink_cpu import workload
from connectors.record_encoding import encode_json_buffer
from streamdag.batch import Batch

__all__ = ["main", "python_json_buffer"]


def python_json_buffer(batch: Batch, time_label: str = "ts", key_label: str = "key",
                       key_first: bool = False) -> tuple[bytes, npt.NDArray[np.int64]]:
    """The records' JSON objects back to back and their offsets, written by Python's ``repr``
    and ``json.dumps``, a column at a time (the sink's encoder before the compiled writer).

    >>> python_json_buffer(Batch.from_columns(ts=[1], key=["a"], v=[0.5], ok=[True]))[0]
    b'{"ts":1,"key":"a","v":0.5,"ok":true}'
    """
    count = len(batch)
    if count == 0:
        return b"", np.zeros(1, dtype=np.int64)
    # Step 1: the labels before each value, and each value column's texts.
    stamp = (json.dumps(time_label), list(map(str, batch.ts.tolist())))
    key = (json.dumps(key_label), _quoted_keys(batch.key.tolist()))
    named: list[tuple[str, list[str]]] = [key, stamp] if key_first else [stamp, key]
    for name, column in batch.columns.items():
        named.append((json.dumps(name), _python_texts(column)))
    # Step 2: interleave labels and texts, record after record, and join them once.
    width = 2 * len(named) + 1
    pieces: list[str] = [""] * (count * width)
    for index, (label, texts) in enumerate(named):
        pieces[2 * index::width] = [("{" if index == 0 else ",") + label + ":"] * count
        pieces[2 * index + 1::width] = texts
    pieces[width - 1::width] = ["}"] * count
    text = "".join(pieces)
    # Step 3: each record's length (in bytes where a key is not ASCII).
    lengths = np.full(count, sum(len(label) + 2 for label, _ in named) + 1, dtype=np.int64)
    ascii_only = text.isascii()
    for _, texts in named:
        sizes = map(len, texts) if ascii_only else (len(t.encode()) for t in texts)
        lengths += np.fromiter(sizes, dtype=np.int64, count=count)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return text.encode("utf-8"), offsets


#: Each key's JSON text, quoted once (keys repeat batch after batch).
_QUOTED: dict[bytes, str] = {}


def _quoted_keys(keys: list[bytes]) -> list[str]:
    try:
        return list(map(_QUOTED.__getitem__, keys))
    except KeyError:
        _QUOTED.update({key: json.dumps(key.decode("utf-8"), ensure_ascii=False)
                        for key in set(keys)})
        return list(map(_QUOTED.__getitem__, keys))


def _python_texts(column: npt.NDArray[Any]) -> list[str]:
    kind = column.dtype.kind
    if kind == "f":
        texts = list(map(repr, column.tolist()))
        for index in np.flatnonzero(~np.isfinite(column)).tolist():
            texts[index] = "null"  # JSON has no NaN or infinity
        return texts
    if kind == "b":
        return ["true" if value else "false" for value in column.tolist()]
    return list(map(str, column.tolist()))


def _cost_us(encode: Callable[[Batch], Any], batches: Sequence[Batch]) -> float:
    started = time.process_time()
    for batch in batches:
        encode(batch)
    return (time.process_time() - started) * 1e6 / len(batches)


def main(argv: Sequence[str] | None = None) -> None:
    """Both encoders alternately per batch size; print CPU microseconds per batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    encoders: dict[str, Callable[[Batch], Any]] = {
        "python (repr, json.dumps)": python_json_buffer, "compiled writer": encode_json_buffer}
    print(f"sink JSON encoding (ts, key, one float64; 100 keys), CPU us per batch, best of "
          f"{args.repeats}")
    print("   records/batch   python (repr, json.dumps)   compiled writer   ratio python/compiled")
    for size, count in ((87, 2_000), (100_000, 3)):
        batches = [batch.read_only() for batch in workload(size * count, size)]
        for batch in batches[:2]:
            data, offsets = encode_json_buffer(batch)
            expected, expected_offsets = python_json_buffer(batch)
            assert data == expected and offsets.tolist() == expected_offsets.tolist()
        costs: dict[str, list[float]] = {name: [] for name in encoders}
        for _ in range(args.repeats):
            for name, encode in encoders.items():
                costs[name].append(_cost_us(encode, batches))
        python, compiled = min(costs["python (repr, json.dumps)"]), min(costs["compiled writer"])
        print(f"   {size:>13,}{python:>28,.1f}{compiled:>18,.1f}{python / compiled:>24.2f}")


if __name__ == "__main__":
    main()
