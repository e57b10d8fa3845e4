"""benchmarks.memory reads the kernel's accounting right: RSS, PSS, USS by kind and library."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

import benchmarks.memory
from benchmarks.memory import (
    Footprint,
    MemoryProbe,
    breakdown_lines,
    parse_rollup,
    parse_smaps,
    ray_processes,
    read_breakdown,
    read_footprint,
    summary_lines,
)

_SMAPS = """\
55d0-55d1 r-xp 00000000 08:01 12 /usr/bin/python3.11
Rss:                 100 kB
Pss:                  50 kB
Shared_Clean:        100 kB
55d2-55d3 rw-p 00000000 00:00 0                          [heap]
Rss:                 300 kB
Pss:                 300 kB
Private_Dirty:       300 kB
VmFlags: rd wr mr mw me ac
7f00-7f01 rw-p 00000000 00:00 0
Rss:                  20 kB
Pss:                  20 kB
Private_Dirty:        16 kB
Private_Clean:         4 kB
7f02-7f03 rw-s 00000000 00:1a 77                         /dev/shm/plasmaAbC (deleted)
Rss:                  64 kB
Pss:                  32 kB
Shared_Dirty:         64 kB
7f03-7f04 rw-s 00000000 00:01 78                         /memfd:buffers (deleted)
Rss:                   8 kB
Pss:                   8 kB
Private_Dirty:         8 kB
7f04-7f05 r-xp 00000000 08:01 13 /v/lib/python3.11/site-packages/llvmlite/binding/libllvmlite.so
Rss:                 400 kB
Pss:                 100 kB
Private_Clean:         8 kB
7f06-7f07 r--p 00001000 08:01 13 /v/lib/python3.11/site-packages/llvmlite/binding/libllvmlite.so
Rss:                   4 kB
Pss:                   4 kB
Private_Dirty:         4 kB
"""


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(benchmarks.memory).failed == 0


def test_mappings_are_summed_by_kind_and_library() -> None:
    kinds = parse_smaps(_SMAPS)
    assert kinds == {
        "file: python3.11": Footprint(rss=100 * 1024, pss=50 * 1024),
        "anon": Footprint(rss=320 * 1024, pss=320 * 1024, uss=320 * 1024),
        "shmem: plasmaAbC": Footprint(rss=64 * 1024, pss=32 * 1024),
        "shmem: memfd:buffers": Footprint(rss=8 * 1024, pss=8 * 1024, uss=8 * 1024),
        "file: llvmlite": Footprint(rss=404 * 1024, pss=104 * 1024, uss=12 * 1024),
    }


def test_the_rollup_gives_rss_pss_uss_and_pss_by_kind() -> None:
    text = ("55d0-7ffc ---p 00000000 00:00 0 [rollup]\nRss: 2000 kB\nPss: 900 kB\n"
            "Pss_Anon: 500 kB\nPss_File: 300 kB\nPss_Shmem: 100 kB\nShared_Clean: 1300 kB\n"
            "Private_Clean: 100 kB\nPrivate_Dirty: 600 kB\n")
    assert parse_rollup(text) == Footprint(rss=2000 * 1024, pss=900 * 1024, uss=700 * 1024,
                                           pss_anon=500 * 1024, pss_file=300 * 1024,
                                           pss_shmem=100 * 1024)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[str]]:
    """An interpreter that has started and sleeps: its pages stay as they are."""
    child = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); "
                              "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    yield child
    child.kill()
    child.wait()


def test_a_quiet_process_breakdown_adds_up_to_its_rollup(sleeper: subprocess.Popen[str]) -> None:
    # A sleeping interpreter's pages do not change between the two reads.
    rollup = read_footprint(sleeper.pid)
    total = sum(read_breakdown(sleeper.pid).values(), Footprint())
    assert rollup is not None
    assert (total.rss, total.uss) == (rollup.rss, rollup.uss)
    assert rollup.rss >= rollup.pss >= rollup.uss > 0
    assert abs(total.pss - rollup.pss) <= 64 * 1024  # per-mapping PSS is rounded to a kB


def test_the_probe_keeps_peak_sums_and_a_breakdown_at_the_peak(
        sleeper: subprocess.Popen[str]) -> None:
    probe = MemoryProbe({"sleeper": sleeper.pid, "gone": 2**22 + 7}, breakdown=True)
    probe.sample()
    probe.sample()
    now = read_footprint(sleeper.pid)
    assert now is not None
    assert list(probe.peak) == ["sleeper"]  # a pid that does not exist is skipped
    assert probe.peak_rss_sum == probe.peak["sleeper"].rss == now.rss
    assert probe.peak_pss_sum == probe.at_peak["sleeper"].pss > 0
    assert probe.cpu_seconds["sleeper"] >= 0.0
    assert sum(probe.breakdown_at_peak["sleeper"].values(), Footprint()).rss == now.rss
    assert "peak PSS sum" in summary_lines(probe)[-2]
    assert probe.high_water["sleeper"] >= now.rss > 0  # the kernel's peak, from its status
    assert summary_lines(probe)[-1].startswith(
        f"RSS high-water marks summed {probe.high_water['sleeper'] / 2**20:.0f} MiB")
    assert breakdown_lines(probe)[1].startswith("sleeper")


def test_the_drivers_other_processes_are_named_by_their_script_and_exclusions_hold(
        sleeper: subprocess.Popen[str]) -> None:
    name = "import time; print('ready', flush=True); time.sleep(60)"
    assert ray_processes([])[name].rss == (read_footprint(sleeper.pid) or Footprint()).rss > 0
    assert name not in ray_processes([sleeper.pid])


def test_the_floor_steps_measure_this_process_by_kind() -> None:
    """benchmarks.memory_floor's stdlib-only reading agrees with the smaps breakdown."""
    from benchmarks.memory_floor import STEPS, measure_here

    figures = measure_here()
    kinds = read_breakdown(os.getpid())
    assert abs(figures["rss"] - sum(f.rss for f in kinds.values()) / 2**20) < 8
    assert 0 < figures["anon"] < figures["rss"]
    assert figures["llvmlite"] <= figures["rss"] - figures["anon"]
    assert [name for name, _ in STEPS][-1] == "+ library pages released"
