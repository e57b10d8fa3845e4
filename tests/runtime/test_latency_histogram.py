"""LatencyHistogram fed many at a time: buckets as one by one, a window's kept ages exact."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from runtime.dataplane.stats import LatencyHistogram

durations = st.lists(st.floats(min_value=0.0, max_value=20.0), max_size=40)


@given(st.lists(durations, max_size=6), st.integers(min_value=1, max_value=5))
def test_many_at_a_time_counts_as_one_by_one_and_keeps_every_nth(
        batches: list[list[float]], every: int) -> None:
    many, one_by_one = LatencyHistogram(), LatencyHistogram()
    for batch in batches:
        many.observe_many(np.array(batch, dtype=np.float64), keep_every=every)
        for seconds in batch:
            one_by_one.observe(seconds)
    assert many.counts == one_by_one.counts
    assert many.observations == one_by_one.observations
    assert np.isclose(many.total, one_by_one.total)
    assert many.recent == [seconds for batch in batches for seconds in batch][::every]


def test_a_window_has_only_the_ages_kept_since() -> None:
    histogram = LatencyHistogram()
    histogram.observe_many(np.arange(10) / 1000, keep_every=4)  # keeps 0, 4, 8
    before = copy.deepcopy(histogram)
    histogram.observe_many(np.arange(10, 20) / 1000, keep_every=4)  # keeps 12, 16
    window = histogram.since(before)
    assert window.observations == 10 and window.recent == [0.012, 0.016]
    assert window.sample_quantile(0.5) == 0.014
