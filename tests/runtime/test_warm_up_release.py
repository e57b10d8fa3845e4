"""A node's warm-up drops the LLVM pages its kernel loads mapped before the node is ready."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
from numba import njit

import streamdag as sd
from benchmarks.memory import read_breakdown
from runtime.dataplane.startup_phases import StartupPhases
from runtime.dataplane.warming import warm_up_while_opening
from runtime.dataplane.worker import NodeWorker

_MIB = 2**20


def _llvmlite_resident() -> int:
    return read_breakdown(os.getpid())["file: llvmlite"].rss


class _CompilingFactory:
    """A connector factory whose warm-up compiles a fresh kernel, as a cold node's does: LLVM's
    code pages all over its library get mapped. Notes llvmlite's resident bytes right after."""

    def __init__(self) -> None:
        self.resident_after_compiling = 0

    def warm_up(self) -> None:
        @njit
        def total(values: Any) -> float:
            result = 0.0
            for value in values:
                result += value
            return float(result)

        assert total(np.arange(4.0)) == 6.0
        self.resident_after_compiling = _llvmlite_resident()


def test_the_pages_a_warm_up_mapped_are_released_before_it_returns() -> None:
    """Once ``warm_up_while_opening`` returned (the node reports ready next), LLVM's pages its
    kernels mapped are gone, with no page thread running: both runners' nodes start without
    them, and the local runner drops them after each node rather than after all of them."""
    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    worker = NodeWorker(ticks.rolling_mean("price", window=2, name="mean").config())
    factory = _CompilingFactory()
    opened: list[bool] = []

    async def open_connectors() -> None:
        opened.append(True)

    asyncio.run(warm_up_while_opening(worker, [factory], open_connectors, StartupPhases()))
    assert opened == [True]
    assert factory.resident_after_compiling > 40 * _MIB  # the check can fail
    assert _llvmlite_resident() < 16 * _MIB
