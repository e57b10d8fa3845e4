"""A node's warm-up drops the LLVM pages its kernel loads mapped before the node is ready."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
from pathlib import Path

import streamdag as sd
from benchmarks.memory import read_breakdown
from runtime.dataplane.startup_phases import StartupPhases
from runtime.dataplane.warming import warm_up_while_opening
from runtime.dataplane.worker import NodeWorker
from tests.runtime.test_resident_pages import _map_llvm

_MIB = 2**20


def _llvmlite_resident() -> int:
    return read_breakdown(os.getpid())["file: llvmlite"].rss


class _CompilingFactory:
    """A connector factory whose warm-up compiles a fresh kernel, as a cold node's does: LLVM's
    code pages all over its library get mapped. Notes llvmlite's resident bytes right after."""

    def __init__(self) -> None:
        self.resident_after_compiling = 0

    def warm_up(self) -> None:
        _map_llvm()
        self.resident_after_compiling = _llvmlite_resident()


def _resident_of(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path``."""
    with open("/proc/self/smaps") as smaps:
        blocks = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps.read())
    return sum(int(size) * 1024 for block in blocks
               if block.split("\n", 1)[0].endswith(f" {path}")
               for size in re.findall(r"^Rss:\s+(\d+) kB$", block, re.MULTILINE))


def _map_read_only(path: Path, size: int) -> int:
    """Map ``path`` read-only and private, as a library's code is, and read its pages; the
    address (left mapped: the process ends with the test run)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    with open(path, "rb") as file:
        address = libc.mmap(None, size, 1, 2, file.fileno(), 0)  # PROT_READ, MAP_PRIVATE
    assert address not in (None, ctypes.c_void_p(-1).value)
    assert ctypes.string_at(address, size) == b"x" * size
    return int(address)


def test_the_pages_a_warm_up_mapped_are_released_before_it_returns(tmp_path: Path) -> None:
    """Once ``warm_up_while_opening`` returned (the node reports ready next), LLVM's pages its
    kernels mapped are gone, with no page thread running: both runners' nodes start without
    them, and the local runner drops them after each node rather than after all of them. So
    are the pages of a library nothing ran since."""
    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    worker = NodeWorker(ticks.rolling_mean("price", window=2, name="mean").config())
    factory = _CompilingFactory()
    opened: list[bool] = []
    # A library the node touched while it started and does not run since (Ray's, OpenSSL...).
    cold = tmp_path / "libcold.so"
    with open(cold, "wb") as file:
        file.write(b"x" * (64 << 10))
        os.fsync(file.fileno())  # written back: its pages are clean, as an installed library's
    _map_read_only(cold, 64 << 10)
    assert _resident_of(cold) == 64 << 10

    async def open_connectors() -> None:
        opened.append(True)

    asyncio.run(warm_up_while_opening(worker, [factory], open_connectors, StartupPhases()))
    assert opened == [True]
    assert factory.resident_after_compiling > 40 * _MIB  # the check can fail
    assert _llvmlite_resident() < 16 * _MIB
    assert _resident_of(cold) == 0


def test_kernels_a_connector_loads_while_opening_are_released_before_it_returns() -> None:
    """A connector that loads kernels as it opens (a Kafka sink warms its encoders up there,
    on the event loop) maps LLVM's pages after the warm-up thread released them: they are
    released too before ``warm_up_while_opening`` returns."""
    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    worker = NodeWorker(ticks.rolling_mean("price", window=2, name="mean").config())
    resident_after_opening: list[int] = []
    phases = StartupPhases()

    async def open_connectors() -> None:
        # Opening ends after the warm-up thread's release, as a sink's slower open does.
        deadline = asyncio.get_running_loop().time() + 60
        while not phases.warmed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert phases.warmed
        _map_llvm()
        resident_after_opening.append(_llvmlite_resident())

    asyncio.run(warm_up_while_opening(worker, [], open_connectors, phases))
    assert resident_after_opening[0] > 16 * _MIB  # the check can fail
    assert _llvmlite_resident() < 16 * _MIB
