"""The local runner compiles numba's runtime between two releases of LLVM's pages, so the
pages the imports mapped and the ones the code generator maps are never resident together."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import streamdag as sd
from runtime.runners import resident_pages
from runtime.runners.local_runner import LocalRunner
from runtime.runners.resident_pages import (
    LibraryPageReleaser,
    start_numba_runtime_between_releases,
)
from streamdag.testing import TestingSource


class _NotingReleaser(LibraryPageReleaser):
    """A releaser that notes each release in ``log`` and releases nothing."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def release(self, libraries: Sequence[str] | None = resident_pages.RELEASED_LIBRARIES) -> int:
        self.log.append(f"release {libraries}")
        return 3


def test_the_runtime_compiles_between_two_releases() -> None:
    """Release every library's pages, compile, release LLVM's, in that order; the bytes of
    both releases are summed."""
    log: list[str] = []
    released = start_numba_runtime_between_releases(_NotingReleaser(log),
                                                    lambda: log.append("runtime"))
    assert log == ["release None", "runtime", "release ('libllvmlite',)"]
    assert released == 6


def test_the_local_runner_releases_around_the_runtime_before_any_kernel_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run starts with release, runtime, release; its output is unchanged."""
    log: list[str] = []

    def release(self: LibraryPageReleaser,
                libraries: Sequence[str] | None = resident_pages.RELEASED_LIBRARIES) -> int:
        log.append("release")
        return 0

    monkeypatch.setattr(LibraryPageReleaser, "release", release)
    monkeypatch.setattr(resident_pages, "start_numba_runtime", lambda: log.append("runtime"))
    ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
    graph = sd.Graph("g", outputs=[ticks.rolling_mean("price", window=2, name="mean")])
    batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a", "a", "b"], price=[1.0, 3.0, 5.0])
    result = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource([batch])})
    assert result.records("mean") == [{"ts": 2, "key": "a", "value": 2.0}]
    assert log[:3] == ["release", "runtime", "release"]
