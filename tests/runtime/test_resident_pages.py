"""Both runners drop the library pages (LLVM's) a node's start touched before any source reads."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
import pytest
from numba import njit

import streamdag as sd
from benchmarks.memory import read_breakdown
from runtime.runners.local_runner import LocalRunner
from runtime.runners.resident_pages import (
    LibraryPageReleaser,
    library_mappings,
    release_library_pages,
)
from streamdag.connector import SourceChunk
from streamdag.testing import TestingSource

_MIB = 2**20
_SMAPS = """\
7f00000-7f02000 r-xp 00000000 08:01 9 /v/site-packages/llvmlite/binding/libllvmlite.so
Rss:                   8 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
VmFlags: rd ex mr mw me
7f02000-7f03000 r--p 00000000 08:01 9 /v/site-packages/llvmlite/binding/libllvmlite.so
Rss:                   4 kB
Anonymous:             4 kB
7f03000-7f04000 r--p 00000000 08:01 10 /v/lib/libdirty.so
Rss:                   4 kB
Private_Dirty:         4 kB
7f04000-7f05000 r--s 00000000 00:01 11 /v/shared.bin
Rss:                   4 kB
7f05000-7f06000 r--p 00000000 00:01 12 /dev/zero
Rss:                   4 kB
7f06000-7f07000 r--p 00000000 00:01 13 /v/gone.so (deleted)
Rss:                   4 kB
7f07000-7f08000 r--p 00000000 00:01 14 /v/cold.so
Rss:                   0 kB
7f08000-7f09000 r--p 00000000 00:00 0 [vvar]
Rss:                   4 kB
7f09000-7f0a000 r--p 00000000 08:01 15 /v/lib/libpython3.11.so
Rss:                   4 kB
Locked:                4 kB
7f0a000-7f0c000 r--p 00001000 08:01 16 /v/lib/libclean.so
Rss:                   8 kB
"""


def _llvmlite_resident() -> int:
    return read_breakdown(os.getpid())["file: llvmlite"].rss


def _llvmlite_resident_here(_: Any) -> int:
    """llvmlite's resident bytes in the process this runs in (a node actor), stdlib only."""
    import re

    with open("/proc/self/smaps") as smaps:
        blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps.read())
    return sum(int(size) * 1024 for block in blocks if "libllvmlite" in block.split("\n", 1)[0]
               for size in re.findall(r"^Rss:\s+(\d+) kB$", block, re.MULTILINE))


def _map_llvm() -> None:
    """Compile a fresh kernel: LLVM's code pages all over its library get mapped."""

    @njit
    def total(values: Any) -> float:
        result = 0.0
        for value in values:
            result += value
        return float(result)

    assert total(np.arange(4.0)) == 6.0


def test_only_clean_read_only_private_file_mappings_are_released() -> None:
    """Relocated (anonymous), dirty, shared, device, deleted, empty and locked maps are kept;
    only the named libraries' when named."""
    assert [(m.start, m.end, m.path, m.rss) for m in library_mappings(_SMAPS)] == [
        (0x7F00000, 0x7F02000, "/v/site-packages/llvmlite/binding/libllvmlite.so", 8192),
        (0x7F0A000, 0x7F0C000, "/v/lib/libclean.so", 8192),
    ]
    assert [m.path for m in library_mappings(_SMAPS, ("libllvmlite",))] == [
        "/v/site-packages/llvmlite/binding/libllvmlite.so"]


def test_released_pages_come_back_from_the_file_when_used() -> None:
    """LLVM's pages leave the resident set, and compiling again (using them) still works."""
    _map_llvm()
    assert _llvmlite_resident() > 40 * _MIB
    assert release_library_pages() > 40 * _MIB
    assert _llvmlite_resident() < 8 * _MIB
    _map_llvm()  # LLVM runs from its pages again, read back from the page cache
    assert _llvmlite_resident() > 40 * _MIB


def test_a_releaser_releases_again_only_once_the_pages_grew() -> None:
    """After its first release, a releaser walks the mappings again only after a kernel load."""
    releaser = LibraryPageReleaser(worth_releasing=16 * _MIB, first_above=0)
    _map_llvm()
    assert releaser.release_if_grown() > 40 * _MIB
    assert releaser.release_if_grown() == 0
    _map_llvm()
    assert releaser.release_if_grown() > 40 * _MIB
    assert _llvmlite_resident() < 8 * _MIB


class _MeasuringSource(TestingSource):
    """A testing source that notes llvmlite's resident bytes when it is first read."""

    resident_at_first_read: list[int] = []

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        if not self.resident_at_first_read:
            self.resident_at_first_read.append(_llvmlite_resident())
        return await super().read(max_records, linger_s)


def test_the_local_runner_releases_before_the_sources_read() -> None:
    """LLVM's pages, mapped before the run, are released by the time a source first reads."""
    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=2, name="mean")
    graph = sd.Graph("g", outputs=[mean])
    batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a", "a", "b"], price=[1.0, 3.0, 5.0])
    _MeasuringSource.resident_at_first_read.clear()
    _map_llvm()
    assert _llvmlite_resident() > 40 * _MIB
    result = LocalRunner().run(graph, sources={"ticks": lambda: _MeasuringSource([batch])})
    assert result.records("mean") == [{"ts": 2, "key": "a", "value": 2.0}]
    assert _MeasuringSource.resident_at_first_read[0] < 16 * _MIB


@pytest.mark.usefixtures("ray_session")
def test_ray_actors_run_with_llvm_pages_released() -> None:
    """Every node actor drops LLVM's pages shortly after the runner started it (in the
    background: its first batches do not wait for it)."""
    import ray

    from runtime.runners.ray_runner import RayRunner

    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    mean = ticks.rolling_mean("price", window=2, name="mean")
    graph = sd.Graph("g", outputs=[mean])
    batch = sd.Batch.from_columns(ts=[1, 2], key=["a", "a"], price=[1.0, 3.0])
    running = RayRunner().start(graph, sources={"ticks": lambda: TestingSource([batch])})
    resident: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            resident = ray.get([running.actor(name).__ray_call__.remote(_llvmlite_resident_here)
                                for name in ("ticks", "mean")])
            if all(each < 16 * _MIB for each in resident):
                break
        result = running.wait(60)
    finally:
        running.stop()
    assert result.records("mean") == [{"ts": 2, "key": "a", "value": 2.0}]
    assert all(each < 16 * _MIB for each in resident), resident


def test_release_is_harmless_inside_an_event_loop() -> None:
    """Releasing from a coroutine (the local runner's task) leaves the loop working."""

    async def release_then_compute() -> float:
        release_library_pages()
        await asyncio.sleep(0)
        return float(np.sum(np.arange(10.0)))

    assert asyncio.run(release_then_compute()) == 45.0
