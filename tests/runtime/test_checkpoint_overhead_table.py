"""The checkpoint overhead benchmark's table: ratios per pair of neighbouring runs."""

from __future__ import annotations

from benchmarks.checkpoints import ReplayRun, overhead_table


def _run(rate: float, ticks: float, broker: float, batches: int = 10) -> ReplayRun:
    return ReplayRun(rate, rate * 1.1, {"ticks": ticks, "broker": broker}, batches)


def test_each_pair_is_an_off_run_and_its_on_neighbour_and_the_figures_are_their_medians() -> None:
    off = [_run(100.0, 1.0, 2.0), _run(50.0, 2.0, 2.0, 12), _run(200.0, 1.0, 1.0)]
    on = [_run(90.0, 1.5, 2.0, 14), _run(55.0, 2.0, 2.0), _run(190.0, 1.0, 1.5, 20)]

    lines = overhead_table(1_000_000, off, on)

    assert lines == [
        "pair  off events/s   on events/s   ratio   steady ratio   CPU ratio",
        "   1           100            90   0.900          0.900       1.167",
        "   2            50            55   1.100          1.100       1.000",
        "   3           200           190   0.950          0.950       1.250",
        "median of pairs (spread): ratio 0.950 (0.900-1.100), steady 0.950 (0.900-1.100)",
        "                          CPU ratio 1.167 (1.000-1.250)",
        "CPU s per million records (median of runs):",
        "process       off        on    on/off",
        "ticks       1.000     1.500     1.500",
        "broker      2.000     2.000     1.000",
        "total       3.000     3.500     1.167",
        "source batches per run (median): off 10, on 14",
    ]


def test_a_process_missing_from_a_run_is_left_out_of_every_figure() -> None:
    off = [ReplayRun(100.0, 100.0, {"ticks": 1.0, "broker": 1.0})]
    on = [ReplayRun(100.0, 100.0, {"ticks": 2.0})]

    lines = overhead_table(1_000_000, off, on)

    assert lines[1] == "   1           100           100   1.000          1.000       2.000"
    assert [line.split()[0] for line in lines[-2:]] == ["ticks", "total"]
