"""Compiled kernels go to one known directory, and a new process loads them from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamdag.kernel_cache import _install_stamp, kernel_cache_dir, sources_stamp

# Compiles (or loads) one small kernel and says where numba looked and what it found.
_PROBE = """
import json
import numpy as np
from operators.key_slots import _hash_rows
import numba.core.config as config
out = np.zeros(2, dtype=np.uint64)
_hash_rows(np.frombuffer(b"ab" * 2, dtype=np.uint8).reshape(2, 2), out)
print(json.dumps({"cache_dir": config.CACHE_DIR, "hits": sum(_hash_rows.stats.cache_hits.values()),
                  "misses": sum(_hash_rows.stats.cache_misses.values())}))
"""


def _probe(environment: dict[str, str]) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _PROBE], env=environment, check=True,
                          capture_output=True, text=True, timeout=120)
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_kernels_compile_once_into_the_streamdag_cache_and_load_from_it_after(
    tmp_path: Path,
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    environment["STREAMDAG_KERNEL_CACHE"] = str(tmp_path / "kernels")
    first = _probe(environment)
    stamped = str(tmp_path / "kernels" / _install_stamp())
    assert first == {"cache_dir": stamped, "hits": 0, "misses": 1}
    assert list((tmp_path / "kernels").rglob("key_slots._hash_rows-*.nbi"))
    second = _probe(environment)  # a new process (a Ray worker, the next run): loaded
    assert second == {"cache_dir": stamped, "hits": 1, "misses": 0}


def test_numba_cache_dir_set_by_the_user_wins(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("STREAMDAG_KERNEL_CACHE", str(tmp_path / "ours"))
    assert kernel_cache_dir() == tmp_path / "mine"


def test_without_settings_the_cache_is_under_the_users_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("STREAMDAG_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel_cache_dir() == tmp_path / "streamdag" / "kernels" / _install_stamp()


def test_a_changed_source_file_starts_a_new_kernel_cache(tmp_path: Path) -> None:
    # numba checks a cached kernel against its own file only; a helper it inlines from another
    # module may change, so any change to the sources must move the cache.
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    helper = tmp_path / "pkg" / "sub" / "helper.py"
    helper.write_text("import numba\nX = 1\n")
    (tmp_path / "pkg" / "kernel.py").write_text("import numba\nY = 2\n")
    (tmp_path / "pkg" / "plain.py").write_text("Z = 3\n")
    before = sources_stamp([tmp_path / "pkg"])
    (tmp_path / "pkg" / "plain.py").write_text("Z = 4\n")  # no numba there: same kernels
    assert sources_stamp([tmp_path / "pkg"]) == before
    # Naming numba without importing it (a comment, a docstring) holds no kernel either.
    (tmp_path / "pkg" / "plain.py").write_text('"""Warms numba kernels up."""  # numba\nZ = 5\n')
    assert sources_stamp([tmp_path / "pkg"]) == before
    (tmp_path / "pkg" / "plain.py").write_text("def f():\n    from numba import njit\nZ = 5\n")
    assert sources_stamp([tmp_path / "pkg"]) != before
    (tmp_path / "pkg" / "plain.py").write_text("Z = 3\n")
    helper.write_text("import numba\nX = 10\n")
    assert sources_stamp([tmp_path / "pkg"]) != before


# Warms a rolling mean node up as its host does; says whether its kernel was compiled or loaded.
_WARM_NODE = """
import json
import streamdag as sd
from operators.rolling import _count_sums_kernel
from runtime.dataplane.worker import NodeWorker
from streamdag.kernel_cache import compiling
ticks = sd.source("ticks", topic="t", key="k", schema={"price": "float64"})
config = ticks.rolling_mean("price", window=4).config()
with compiling(f"operator-{config.operator}"):
    NodeWorker(config).warm_up()
stats = _count_sums_kernel.stats
print(json.dumps([sum(stats.cache_misses.values()), sum(stats.cache_hits.values())]))
"""


def test_processes_warming_the_same_operator_at_once_compile_it_once(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    environment["STREAMDAG_KERNEL_CACHE"] = str(tmp_path / "kernels")
    processes = [subprocess.Popen([sys.executable, "-c", _WARM_NODE], env=environment,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
    answers = sorted(json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1])
                     for p in processes)
    assert answers == [[0, 1], [1, 0]]  # one compiled it, the other waited and loaded it
    assert list((tmp_path / "kernels" / _install_stamp() / "compiled").glob(
        "operator-rolling_mean-*"))
    later = subprocess.run([sys.executable, "-c", _WARM_NODE], env=environment, check=True,
                           capture_output=True, text=True, timeout=180)
    assert json.loads(later.stdout.strip().splitlines()[-1]) == [0, 1]
