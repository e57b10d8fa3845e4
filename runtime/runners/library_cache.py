"""Drop a fresh install's libraries from the page cache, so processes map them page by page.

Linux 6.16 and later cache a file just written on ext4 (and xfs) in large folios, up to 2 MiB,
and a process that touches one page of a mapped library maps the whole folio. Right after
``pip install`` a process that imports numba then maps 1-2 MiB of llvmlite's library per page
it touches, about 60 MiB more RSS for the same code (the local runner's peak: 175 MiB instead
of 116; each node actor likewise), until the kernel evicts those folios. Read back from disk on
demand, the same library comes in folios of 64 KiB or less. ``make venv`` therefore drops the
cache of the libraries it installed (written out first, then ``posix_fadvise(DONTNEED)``); the
kernel skips pages a running process maps, so this is safe at any time, and costs one read from
disk of what the next processes touch.

Run: ``python -m runtime.runners.library_cache .venv``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["drop_library_cache", "installed_libraries", "main"]

#: Libraries smaller than this are left alone: their folios are small anyway.
MIN_LIBRARY_BYTES = 1 << 20


def installed_libraries(root: Path, min_bytes: int = MIN_LIBRARY_BYTES) -> Iterator[Path]:
    """The shared libraries (``*.so``, ``*.so.*``) of at least ``min_bytes`` under ``root``."""
    for path in root.rglob("*.so*"):
        if not (path.name.endswith(".so") or ".so." in path.name) or not path.is_file():
            continue
        if path.is_symlink() or path.stat().st_size < min_bytes:
            continue
        yield path


def drop_library_cache(root: Path, min_bytes: int = MIN_LIBRARY_BYTES) -> int:
    """Ask the kernel to drop the cached pages of ``root``'s libraries; returns their bytes.

    >>> drop_library_cache(Path("/nonexistent"))
    0
    """
    dropped = 0
    for path in installed_libraries(root, min_bytes):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(descriptor)  # pages just written are dirty, and dirty pages stay
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        dropped += path.stat().st_size
    return dropped


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m runtime.runners.library_cache DIR...``: drop each DIR's libraries' cache."""
    folders = list(sys.argv[1:] if argv is None else argv) or [sys.prefix]
    total = sum(drop_library_cache(Path(folder)) for folder in folders)
    print(f"library_cache: dropped the page cache of {total / 2**20:.0f} MiB of libraries "
          f"under {', '.join(folders)} (read back page by page on first use)")


if __name__ == "__main__":
    main()
