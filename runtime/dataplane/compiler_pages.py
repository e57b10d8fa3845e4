"""Unmapping the kernel compiler's code once a node's kernels are loaded.

numba's compiler, LLVM, is one 170 MB shared library (``libllvmlite.so``); loading it and
compiling or loading kernels leaves about 85 MB of its code resident in every process that
uses numba, though a node needs none of it once its kernels are in (they run as machine code
of their own, outside the library). Those pages are clean copies of the file: dropping them
from the process loses nothing, and a later compile faults them back in from the page cache.

``release_compiler_code`` drops them, after a node's warm-up: about 85 MB less resident memory
per node process (measured with ``python -m benchmarks.startup``). Only mappings that were
never written are touched (not writable, no private copy of any page), so the library's
relocated data stays as it is. Linux only; elsewhere, and wherever ``madvise`` refuses, it
does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import re
import sys

__all__ = ["compiler_code_resident", "release_compiler_code"]

#: The shared library whose code is released.
COMPILER_LIBRARY = "libllvmlite"
_MADV_DONTNEED = 4
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ")
_log = logging.getLogger(__name__)


def _compiler_mappings() -> list[tuple[int, int, str, dict[str, int]]]:
    """``(start, end, permissions, smaps fields in kB)`` of every mapping of the compiler."""
    mappings: list[tuple[int, int, str, dict[str, int]]] = []
    current: dict[str, int] | None = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            header = _HEADER.match(line)
            if header is not None:
                current = None
                if line.rstrip().endswith(".so") and COMPILER_LIBRARY in line:
                    current = {}
                    mappings.append((int(header[1], 16), int(header[2], 16), header[3], current))
            elif current is not None and line.endswith("kB\n"):
                name, value = line.split(":", 1)
                current[name] = int(value.split()[0])
    return mappings


def compiler_code_resident() -> int:
    """Bytes of the compiler's never-written mappings resident in this process (0 if none)."""
    if not sys.platform.startswith("linux"):
        return 0
    return sum(fields.get("Rss", 0) * 1024 for _, _, permissions, fields in _compiler_mappings()
               if "w" not in permissions and fields.get("Anonymous", 0) == 0)


def release_compiler_code() -> int:
    """Drop the compiler's resident, never-written pages from this process; bytes released.

    >>> release_compiler_code() >= 0
    True
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        madvise.restype = ctypes.c_int
        released = 0
        for start, end, permissions, fields in _compiler_mappings():
            # A writable mapping, or one with a private copy of a page (relocations applied,
            # then made read-only), holds data the file does not: it stays.
            if "w" in permissions or fields.get("Anonymous", 0) != 0:
                continue
            if madvise(start, end - start, _MADV_DONTNEED) == 0:
                released += fields.get("Rss", 0) * 1024
        return released
    except OSError:  # no /proc, or no madvise: keep the pages
        _log.debug("could not release the compiler's code pages", exc_info=True)
        return 0
