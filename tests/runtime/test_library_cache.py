"""make venv drops the page cache of the libraries it installed (runtime/runners/library_cache)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from runtime.runners.library_cache import drop_library_cache, installed_libraries


def _cached_bytes(path: Path) -> int:
    """Bytes of ``path`` in the page cache, as util-linux's fincore counts them."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def test_the_libraries_of_a_folder_leave_the_page_cache(tmp_path: Path) -> None:
    site = tmp_path / "lib" / "python3.11" / "site-packages" / "llvmlite" / "binding"
    site.mkdir(parents=True)
    big = site / "libllvmlite.so"
    versioned = site / "libz.so.1.2"
    small = site / "small.so"
    other = site / "data.bin"
    for path, size in ((big, 3 << 20), (versioned, 2 << 20), (small, 4096), (other, 2 << 20)):
        path.write_bytes(b"\x7f" * size)
    (site / "link.so").symlink_to(big)
    assert _cached_bytes(big) == 3 << 20  # just written: all in the page cache

    dropped = drop_library_cache(tmp_path)

    libraries = sorted(p.name for p in installed_libraries(tmp_path))
    assert libraries == ["libllvmlite.so", "libz.so.1.2"]
    assert dropped == (3 << 20) + (2 << 20)
    assert _cached_bytes(big) == 0
    assert _cached_bytes(versioned) == 0
    assert _cached_bytes(small) == 4096  # below the threshold: left alone
    assert _cached_bytes(other) == 2 << 20  # not a library
