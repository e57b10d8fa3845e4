"""Warm-up loads every kernel variant the hot path runs: no first batch loads or compiles one.

numba keeps one variant of a kernel per argument types (a read-only array is another type than
a writable one); a variant the warm-up missed loads on the first batch, or compiles there for
seconds on a cold cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# In a fresh process (variants loaded by other tests would hide a missed one): the issue
# workload's graph (benchmarks.startup) with LocalRunner; every kernel's signatures when the
# sources start (each node warmed up, nothing read) and after the run.
_PROBE = """
import asyncio, gc, json, sys, time
from numba.core.dispatcher import Dispatcher
from benchmarks.kafka_baselines import produce_input
from benchmarks.startup import replay_graph
from connectors.source_bounds import Timestamp
from runtime.dataplane.host import RuntimeSettings
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalNodes, LocalRunner

bootstrap, topic, records = sys.argv[1], sys.argv[2], int(sys.argv[3])

def signatures():
    return {f"{d.py_func.__module__}.{d.py_func.__qualname__}": sorted(map(str, d.signatures))
            for d in gc.get_objects() if isinstance(d, Dispatcher)}

warmed = {}
start_sources = LocalNodes.start_sources
async def recording(self, keys):
    warmed.update(signatures())
    await start_sources(self, keys)
LocalNodes.start_sources = recording

asyncio.run(produce_input(bootstrap, topic, records))
binding = KafkaBinding(bootstrap, start="earliest", replay_prefix="", end=Timestamp(time.time_ns()))
settings = RuntimeSettings(credits=4, max_batch_records=20_000, linger_s=0.005)
result = LocalRunner(settings, *binding.defaults()).run(replay_graph(topic, topic + ".out"),
                                                         timeout_s=120)
added = {name: sorted(set(now) - set(warmed.get(name, ())))
         for name, now in signatures().items()}
print(json.dumps({"outputs": result.stats["out"].events_in,
                  "warmed": sorted(name for name, found in warmed.items() if found),
                  "added": {name: new for name, new in added.items() if new}}))
"""


def test_the_first_batches_load_no_kernel_variant_the_warm_up_did_not(bootstrap: str) -> None:
    records = 4_000
    topic = f"warm.variants.{time.time_ns()}"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, bootstrap, topic, str(records)], check=True,
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["outputs"] == records - 100 * 19  # a rolling mean of 20 over 100 keys
    assert found["added"] == {}
    # The fetch decoder's, the scanner's, the operator's, the sink's.
    assert {"connectors.fetched_batches._decode", "connectors.json_scanner.scan_json_records",
            "operators.key_slots._reinsert", "operators.rolling._count_sums_kernel",
            "connectors.record_batches._gather", "connectors.partitioning._partitions",
            "connectors.json_writer._write_records"} <= set(found["warmed"])


# In a fresh process: a source's warm-up reads a fetch of its own codec (no broker needed).
_SOURCE_PROBE = """
import json, sys
import streamdag as sd
from connectors import fetched_batches, json_scanner, msgpack_scanner, scanning
from runtime.runners.kafka_binding import KafkaBinding
ticks = sd.source("ticks", topic="t", key="symbol", time="at", codec=sys.argv[1],
                  schema={"price": "float64", "size": "int64", "open": "bool"})
KafkaBinding("127.0.0.1:1").source_for(ticks).warm_up()  # nothing connects
kernels = {"fetch": fetched_batches._decode, "json": json_scanner.scan_json_records,
           "msgpack": msgpack_scanner.scan_msgpack_records, "key gather": scanning._gather}
print(json.dumps(sorted(name for name, kernel in kernels.items() if kernel.signatures)))
"""


def test_a_source_warms_up_the_fetch_decoder_and_the_scanner_of_its_codec() -> None:
    for codec in ("json", "msgpack"):
        done = subprocess.run([sys.executable, "-c", _SOURCE_PROBE, codec], check=True,
                              capture_output=True, text=True, timeout=120)
        # The key gather runs only on a record the scanner accepts: the warm-up record is one.
        assert json.loads(done.stdout.strip().splitlines()[-1]) == sorted(
            ["fetch", codec, "key gather"])
