"""Where a node's memory goes before any data: its process's RSS, import by import.

Each step runs in one fresh interpreter, in order, and is measured there (RSS, its anonymous
part, and llvmlite's file pages): Python, ``import ray``, numpy, numba, the node actor's modules
(``NODE_ACTOR_MODULES``), the issue workload's three nodes' kernels loaded (the rolling mean's
and the Kafka connectors' warm-ups, as a node does while it gets ready, and a two-record
``LocalRunner`` run, its release of library pages held back), and the library pages released as
a node's warm-up releases them (``runtime.runners.resident_pages.release_after_kernel_loads``).
The same floor is then read in a Ray actor as a streamdag-started Ray gives it (its worker
preloaded the node modules), with the kernels loaded and the pages released. Run:
``python -m benchmarks.memory_floor``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["STEPS", "main", "measure_here"]

_MIB = 2**20
_WARM_KERNELS = """
import runtime.runners.resident_pages as resident_pages
_release = resident_pages.release_library_pages
resident_pages.release_library_pages = lambda *_: 0  # measured apart, in the next step
import streamdag as sd
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from streamdag.testing import TestingSource
ticks = sd.source("ticks", topic="t", key="key", time="ts", schema={"price": "float64"})
out = ticks.rolling_mean("price", window=20, name="mean").to_topic("t.out", name="out")
binding = KafkaBinding("127.0.0.1:9", end=1, replay_prefix="")
binding.source_for(ticks).warm_up()
binding.sink_for(out).warm_up()
batch = sd.Batch.from_columns(ts=[1, 2], key=["a", "a"], price=[1.0, 3.0])
mean = ticks.rolling_mean("price", window=2, name="m")
LocalRunner().run(sd.Graph("g", outputs=[mean]),
                  sources={"ticks": lambda: TestingSource([batch])})
resident_pages.release_library_pages = _release
"""
#: ``(step, code)``: what each step runs on top of the steps before it.
STEPS: tuple[tuple[str, str], ...] = (
    ("python", ""),
    ("+ import ray", "import ray"),
    ("+ numpy", "import numpy"),
    ("+ numba", "import numba"),
    ("+ node actor modules", "import runtime.dataplane.host, runtime.runners.kafka_binding"),
    ("+ three nodes' kernels", _WARM_KERNELS),
    ("+ library pages released", "from runtime.runners.resident_pages import "
                                  "release_after_kernel_loads; release_after_kernel_loads()"),
)


def measure_here() -> dict[str, float]:
    """This process's RSS, anonymous RSS and llvmlite's resident file pages, MiB (stdlib only,
    so that measuring imports nothing a step would otherwise be charged with)."""
    import re

    with open("/proc/self/smaps") as smaps:
        blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps.read())
    figures = {"rss": 0.0, "anon": 0.0, "llvmlite": 0.0}
    for block in blocks:
        header = block.split("\n", 1)[0].split(None, 5)
        path = header[5].strip() if len(header) > 5 else ""
        rss = sum(int(kb) for kb in re.findall(r"^Rss:\s+(\d+) kB$", block, re.MULTILINE))
        figures["rss"] += rss / 1024
        if not path or (path.startswith("[") and not path.startswith("[anon_shmem")):
            figures["anon"] += rss / 1024
        elif "libllvmlite" in path:
            figures["llvmlite"] += rss / 1024
    return figures


def _steps_in_child() -> list[dict[str, Any]]:
    source = inspect.getsource(measure_here)
    code = (f"import json\n{source}\nrows = []\n"
            f"namespace = {{}}\nfor name, step in {list(STEPS)!r}:\n    exec(step, namespace)\n"
            "    rows.append({'step': name, **measure_here()})\nprint(json.dumps(rows))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the measuring interpreter failed:\n{result.stderr}")
    rows: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return rows


def _steps_in_actor() -> list[dict[str, Any]]:
    import ray

    from runtime.runners.ray_runner import ensure_ray

    ensure_ray(num_cpus=2)

    @ray.remote(num_cpus=0)
    class _Probe:
        def __init__(self) -> None:
            self.namespace: dict[str, Any] = {}

        def step(self, name: str, code: str) -> dict[str, Any]:
            exec(code, self.namespace)
            return {"step": name, **measure_here()}

    probe = _Probe.remote()  # type: ignore[attr-defined]
    try:
        return [ray.get(probe.step.remote(name, code)) for name, code in (
            ("Ray worker as started (node modules preloaded)", ""), STEPS[-2], STEPS[-1])]
    finally:
        ray.shutdown()


def _print(title: str, rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"{'step':<48} {'RSS':>7} {'anon':>7} {'llvmlite':>9} {'RSS +':>7}   (MiB)")
    before = 0.0
    for row in rows:
        print(f"{row['step']:<48} {row['rss']:>7.1f} {row['anon']:>7.1f} "
              f"{row['llvmlite']:>9.1f} {row['rss'] - before:>+7.1f}")
        before = row["rss"]


def main(argv: Sequence[str] | None = None) -> None:
    """Print a node's memory floor, step by step, in a fresh interpreter and in a Ray actor."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(f"memory floor of a node, before any data; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    _print("a fresh interpreter, step by step", _steps_in_child())
    _print("a node actor's Ray worker", _steps_in_actor())


if __name__ == "__main__":
    main(sys.argv[1:])
