"""Handing a process's free malloc heap back to the kernel while a graph runs.

Node actors run with glibc's trim threshold raised (``ray_runner.ensure_ray``): freeing the arrays
of one batch must not hand their pages back, or the next batch page-faults them in again
(measured: 13x slower numpy ops on 100k floats). The price is that the heap never shrinks:
a source that once held a few large fetch responses keeps their pages for good (measured on
the issue workload, 500k records: 56 MiB of a source actor's 164 MiB anonymous pages were free
heap; ``malloc_trim(0)`` handed 52 MiB of it back).

``HeapTrimmer`` trims (``malloc_trim(0)``: every whole free page of every arena is given back
with ``madvise``, the heap's layout is kept) only when the free heap is large
(``TRIM_FREE_ABOVE``) and at most every ``TRIM_INTERVAL_S``, so a batch's working set is given
back at most once in that interval. The library page releaser (``resident_pages``) runs it on
each of its looks: in a node actor's thread, and in the local runner's (``ReleasingThread``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MMAP_THRESHOLD",
    "TRIM_FREE_ABOVE",
    "TRIM_INTERVAL_S",
    "HeapStats",
    "HeapTrimmer",
    "ResidentPages",
    "heap_stats",
    "limit_heap_growth",
    "resident_anonymous_bytes",
    "resident_pages",
    "trim_heap",
]

#: Free heap bytes above which a trim is worth its page faults.
TRIM_FREE_ABOVE = 8 << 20
#: Fewest seconds between two trims of a process. With 8 MiB every 0.25 s (were 16 MiB every
#: second), the issue workload's actors peaked 7 MiB lower together (374-377 against 381-385
#: MiB RSS, ``python -m benchmarks.memory --runner ray``, 500k records): the refaults of a
#: trimmed page cost a few thousand minor faults a second at most.
TRIM_INTERVAL_S = 0.25


#: Allocations from this size up get pages of their own (``mmap``), handed back when freed:
#: fetch responses (up to 1 MiB per partition), their decoded buffers and the frames built
#: from them no longer leave free holes in the heap that only a trim gives back (measured on
#: the issue workload, 500k records: the local runner's anonymous pages at the end 139 -> 121
#: MiB; the Ray actors' peak RSS sum 460 -> 433 MiB). A batch's columns (20k records: 160 KB per
#: float64 column) stay under it, in the heap, so no batch page-faults its arrays in again.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@dataclass(frozen=True)
class HeapStats:
    """glibc's heap of this process, over all its arenas (``mallinfo2``), in bytes."""

    #: Bytes the arenas took from the kernel with ``brk``/``mmap`` (free pages included).
    arena: int
    #: Bytes in chunks in use.
    in_use: int
    #: Bytes in free chunks (resident or given back by a trim).
    free: int


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library with ``mallinfo2`` and ``malloc_trim`` typed, loaded once."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    return libc


def heap_stats() -> HeapStats | None:
    """This process's malloc heap now; None where the C library is not glibc 2.33 or newer."""
    libc = _libc()
    if libc is None:
        return None
    info = libc.mallinfo2()
    return HeapStats(arena=info.arena, in_use=info.uordblks, free=info.fordblks)


def limit_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve this process's allocations of ``threshold`` bytes or more with pages of their own
    (glibc's ``mallopt(M_MMAP_THRESHOLD)``), from now on; whether the C library took it.

    glibc's own threshold starts at 128 KiB and rises to the largest block freed so far (up to
    32 MiB): once a fetch response was freed, the next ones come from the heap and leave it
    fragmented. A Ray node actor gets the same setting from its environment
    (``MALLOC_MMAP_THRESHOLD_``, ``ray_runner.ensure_ray``).
    """
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def trim_heap() -> bool:
    """Give every whole free page of the malloc heap back to the kernel (``malloc_trim(0)``);
    whether the C library could (glibc), not whether it found a page to give."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class HeapTrimmer:
    """Trims this process's heap when it holds more than ``free_above`` free bytes and its
    anonymous pages grew by ``grown_above`` bytes since the last trim, at most once every
    ``interval_s`` (a look reads ``/proc/self/statm`` and calls ``mallinfo2``: a few
    microseconds).

    The growth matters because a trim leaves the free chunks free in ``mallinfo2`` while it
    takes their pages: until the heap grows again there is nothing to give back.
    """

    def __init__(self, free_above: int = TRIM_FREE_ABOVE, interval_s: float = TRIM_INTERVAL_S,
                 grown_above: int = TRIM_FREE_ABOVE // 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free_above = free_above
        self.grown_above = grown_above
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        #: This process's anonymous resident bytes right after the last trim.
        self._anon_after = 0
        #: Trims done so far.
        self.trims = 0

    def due(self) -> bool:
        """Whether the interval passed and the free heap and the anonymous pages are both past
        their thresholds."""
        if self._last is not None and self._clock() - self._last < self.interval_s:
            return False
        if resident_anonymous_bytes() < self._anon_after + self.grown_above:
            return False
        stats = heap_stats()
        return stats is not None and stats.free >= self.free_above

    def trim(self) -> None:
        """Trim now (``trim_heap``) and remember the anonymous pages left."""
        trim_heap()
        self._last, self._anon_after = self._clock(), resident_anonymous_bytes()
        self.trims += 1

    def trim_if_worth(self) -> bool:
        """``trim`` if ``due``; whether it trimmed."""
        if not self.due():
            return False
        self.trim()
        return True


def resident_anonymous_bytes() -> int:
    """This process's resident anonymous pages (``RssAnon``), in bytes (0 where unknown)."""
    pages = resident_pages()
    return 0 if pages is None else pages.anonymous


@dataclass(frozen=True)
class ResidentPages:
    """This process's resident set by kind, in bytes, from ``/proc/self/statm``."""

    #: Anonymous pages (``RssAnon``): heaps, stacks, arrays.
    anonymous: int
    #: Pages of mapped files and shared memory (``RssFile`` + ``RssShmem``): libraries' code,
    #: and what a Ray worker touched of its object store.
    file_and_shared: int


class _StatmReader:
    """Reads ``/proc/self/statm`` through a descriptor kept open (one ``pread`` of a few dozen
    bytes: about 2 us, against 30 us to open and parse ``/proc/self/status``, which a page
    releaser's look did ten times a second in every node actor), opened again in a forked
    child, whose ``/proc/self`` is another process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def read(self) -> ResidentPages | None:
        """The resident pages now; None where ``/proc`` cannot be read."""
        with self._lock:
            try:
                if self._fd is None or self._pid != os.getpid():
                    self._fd, self._pid = os.open("/proc/self/statm", os.O_RDONLY), os.getpid()
                fields = os.pread(self._fd, 256, 0).split()
            except OSError:
                return None
        # size resident shared text lib data dt, in pages; shared = RssFile + RssShmem.
        resident, shared = int(fields[1]) * self._page, int(fields[2]) * self._page
        return ResidentPages(anonymous=resident - shared, file_and_shared=shared)


_STATM = _StatmReader()


def resident_pages() -> ResidentPages | None:
    """This process's resident pages by kind now (None where ``/proc`` cannot be read).

    >>> pages = resident_pages()
    >>> pages is not None and pages.anonymous > 0 and pages.file_and_shared > 0
    True
    """
    return _STATM.read()
