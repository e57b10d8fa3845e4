"""The chaos battery's short version: random kill -9 of random actors under a live stream, then
the oracle (the long one: ``python -m benchmarks.chaos --faults 200``)."""

from __future__ import annotations

import pytest

from benchmarks.chaos import run


@pytest.mark.integration
def test_three_random_faults_lose_duplicate_and_reorder_nothing(
    ray_session: None, bootstrap: str
) -> None:
    figures = run(bootstrap, faults=3, rate=1_000.0, seed=7)

    assert figures["faults"] >= 2 and figures["recoveries"] >= 1
    assert {name: figures[name] for name in ("lost", "duplicated", "reordered",
                                             "keys differing")} == {
        "lost": 0, "duplicated": 0, "reordered": 0, "keys differing": 0}
