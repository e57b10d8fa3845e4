"""Releasing the library pages a process mapped while it started and does not run any more.

A process that compiles or loads kernels maps about 100 MiB of llvmlite's 170 MiB library: the
kernel maps a file's pages a whole folio (or ``fault_around_bytes``) at a time, and LLVM's
hundreds of static constructors and a compile touch its code all over. A node that has loaded
its kernels never calls LLVM again, yet those pages stay in its resident set, once per process.

``release_library_pages`` asks the kernel to drop this process's mappings of the clean pages of
LLVM's library (``RELEASED_LIBRARIES``): its read-only, private file mappings, code and
constants, whose content is the file's (``madvise(MADV_DONTNEED)``). Other libraries are
released once, when a node's warm-up ended (``release_after_kernel_loads``); the periodic looks
leave them alone: their pages left by then are the process's hot code, which would only be
mapped again at once.
Nothing is lost: the pages stay in the page cache, shared and reclaimable, and a page used
again is mapped back by a minor fault. Mappings holding a page of their own (relocations
applied, copy-on-write) are never touched, nor writable ones. Each Ray node actor releases in
a thread of its own, ``FIRST_RELEASE_AFTER_S`` after the runner started it (its first batches
do not wait for a walk); the local runner before and after it compiles numba's runtime
(``start_numba_runtime_between_releases``), then from a thread of its run (``ReleasingThread``),
and once more when every node is ready, before the sources start reading.
Both look again every ``RELEASE_INTERVAL_S`` while the graph runs: a kernel a node loads only
on its first batch (a specialization its warm-up did not load) maps LLVM's pages again, for
one interval. Each look also trims the process's free malloc heap when it is large
(``process_memory.HeapTrimmer``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from runtime.dataplane.kernel_loading import start_numba_runtime
from runtime.runners.process_memory import HeapTrimmer, resident_pages

__all__ = [
    "FIRST_RELEASE_AFTER_S",
    "RELEASED_LIBRARIES",
    "LibraryMapping",
    "LibraryPageReleaser",
    "ReleasingThread",
    "library_mappings",
    "release_after_kernel_loads",
    "release_in_actor",
    "release_library_pages",
    "release_library_pages_in_thread",
    "start_numba_runtime_between_releases",
]

_log = logging.getLogger(__name__)
_MADV_DONTNEED = 4
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")
_SIZE = re.compile(r"^(\w+):\s+(\d+) kB$")
#: The libraries whose pages are released: LLVM's (llvmlite's), which a node stops calling once
#: its kernels are loaded.
RELEASED_LIBRARIES = ("libllvmlite",)
#: A mapping with any of these holds pages of its own, which dropping would lose.
_OWN_PAGES = ("Anonymous", "Private_Dirty", "Shared_Dirty", "Locked")
#: Growth of a process's resident file pages since the last release that is worth a walk over
#: its mappings (10-20 ms): a kernel loaded from the cache maps 10-100 MiB of LLVM.
_WORTH_RELEASING = 8 << 20
#: Resident file pages above which a process surely maps LLVM's (its 90-100 MiB on top of the
#: 20-50 MiB of hot code of Python, numpy and Ray).
_FIRST_RELEASE_ABOVE = 64 << 20
#: Seconds after a node actor's start before its first release, in its thread (0: at once; its
#: first batches run meanwhile, only the walk's GIL share is theirs to wait for).
FIRST_RELEASE_AFTER_S = 0.0
#: Seconds between two looks at a process's resident file pages (a few microseconds each).
RELEASE_INTERVAL_S = 0.1
_THREAD_NAME = "streamdag-library-pages"


@dataclass(frozen=True)
class LibraryMapping:
    """A read-only, private file mapping whose resident pages are all the file's (clean)."""

    start: int
    end: int
    path: str
    #: Resident bytes.
    rss: int


def library_mappings(
    smaps: str, libraries: Sequence[str] | None = None
) -> Iterator[LibraryMapping]:
    """The mappings of ``smaps`` (the text of ``/proc/<pid>/smaps``) safe to release.

    Kept: private (``p``), not writable, backed by a regular file (not ``/dev``, not deleted)
    whose name holds one of ``libraries`` (None: any file), resident, and holding no anonymous,
    dirty or locked page.

    >>> text = ("7f00000-7f02000 r-xp 0 08:01 9 /v/libllvmlite.so\\nRss: 8 kB\\nAnonymous: 0 kB\\n"
    ...         "7f02000-7f03000 r--p 0 08:01 9 /v/libllvmlite.so\\nRss: 4 kB\\nAnonymous: 4 kB\\n"
    ...         "7f03000-7f04000 rw-p 0 08:01 9 /v/libllvmlite.so\\nRss: 4 kB\\n"
    ...         "7f05000-7f06000 rw-p 0 00:00 0 \\nRss: 4 kB\\n")
    >>> [(hex(m.start), m.rss) for m in library_mappings(text)]
    [('0x7f00000', 8192)]
    """
    header: re.Match[str] | None = None
    sizes: dict[str, int] = {}
    for line in [*smaps.splitlines(), "0-0 ---p 0 0 0"]:
        size = _SIZE.match(line)
        if size:
            sizes[size[1]] = int(size[2]) * 1024
            continue
        next_header = _HEADER.match(line)
        if next_header is None:
            continue  # VmFlags, THPeligible, ProtectionKey ...
        if header is not None:
            perms, path = header[3], header[4].strip()
            if (perms[1] != "w" and perms[3] == "p" and path.startswith("/")
                    and not path.startswith("/dev/") and not path.endswith("(deleted)")
                    and (libraries is None or any(
                        name in path.rsplit("/", 1)[-1] for name in libraries))
                    and sizes.get("Rss", 0) > 0
                    and not any(sizes.get(name, 0) for name in _OWN_PAGES)):
                yield LibraryMapping(int(header[1], 16), int(header[2], 16), path, sizes["Rss"])
        header, sizes = next_header, {}


def _own_resident_file_bytes() -> int:
    """This process's resident pages of mapped files (and shared memory), in bytes; a few
    microseconds (``process_memory.resident_pages``)."""
    pages = resident_pages()
    return 0 if pages is None else pages.file_and_shared


def release_library_pages(libraries: Sequence[str] | None = RELEASED_LIBRARIES) -> int:
    """Drop this process's resident pages of ``libraries``' read-only mappings (None: of every
    file's, ``library_mappings``); bytes released.

    Linux only (elsewhere, and where ``/proc/self/smaps`` cannot be read, it releases nothing
    and returns 0). A mapping the kernel refuses is skipped.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        with open("/proc/self/smaps") as smaps:
            text = smaps.read()
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    released = 0
    for mapping in library_mappings(text, libraries):
        if madvise(mapping.start, mapping.end - mapping.start, _MADV_DONTNEED) == 0:
            released += mapping.rss
        else:
            _log.debug("madvise refused %s: errno %d", mapping.path, ctypes.get_errno())
    return released


class LibraryPageReleaser:
    """Releases library pages when worth it: a first time once the process maps many of them,
    then again whenever they grew since the last release (a kernel was loaded).

    Looking (``/proc/self/status``) costs a fraction of a millisecond, the release 10-20 ms: a
    process whose resident file pages stay under ``first_above`` (its libraries' hot code, no
    LLVM) is never walked.
    """

    def __init__(self, worth_releasing: int = _WORTH_RELEASING,
                 first_above: int = _FIRST_RELEASE_ABOVE) -> None:
        self.worth_releasing = worth_releasing
        self.first_above = first_above
        #: This process's resident file pages after the last release (None: none yet).
        self.floor: int | None = None
        #: Bytes released so far.
        self.released = 0
        #: Trims this process's free heap on the same looks (``process_memory``).
        self.heap = HeapTrimmer()
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether the resident file pages reached the next threshold (a cheap look)."""
        threshold = (self.first_above if self.floor is None
                     else self.floor + self.worth_releasing)
        return _own_resident_file_bytes() >= threshold

    @classmethod
    def settled(cls) -> LibraryPageReleaser:
        """A releaser for a process that released its pages already (a node actor once
        ready): it releases at its first look whatever was mapped since (a connector's
        kernels, loaded after the warm-up's release), then whenever the pages grew by
        ``worth_releasing`` (a kernel load of 8 MiB of LLVM or more), however few the process
        maps in all."""
        return cls(first_above=0)

    def release(self, libraries: Sequence[str] | None = RELEASED_LIBRARIES) -> int:
        """Release ``libraries``' pages now (``release_library_pages``) and remember the
        resident file pages left; bytes released.

        Pages mapped while the walk ran (a kernel loading in another thread) are no floor: the
        next look then finds it due again.
        """
        before = _own_resident_file_bytes()
        released = release_library_pages(libraries)
        after = _own_resident_file_bytes()
        left = max(0, before - released)
        self.floor = left if after >= left + self.worth_releasing else after
        self.released += released
        return released

    def release_if_grown(self) -> int:
        """Release if the resident file pages reached the next threshold; bytes released (a
        second thread waits for a release under way, then looks again)."""
        with self._lock:
            return self.release() if self.due() else 0

    async def release_if_grown_in_thread(self) -> int:
        """``release_if_grown`` with the walk in a worker thread (it would hold an event loop
        10-20 ms)."""
        return await asyncio.to_thread(self.release_if_grown) if self.due() else 0

    def look(self) -> None:
        """Release library pages if they grew, and trim the heap if that is worth it
        (``process_memory.HeapTrimmer``)."""
        self.release_if_grown()
        with self._lock:
            self.heap.trim_if_worth()


class ReleasingThread:
    """Looks (``releaser.look``) at once, then every ``interval_s``, from a thread of its own,
    from ``start`` to ``stop`` (the local runner's run).

    A thread, not a task: a kernel loading on the event loop holds it for as long as it runs,
    while the import of numba and the loads map LLVM's pages (90-100 MiB), which would stay
    until the loop is free again.
    """

    def __init__(self, releaser: LibraryPageReleaser,
                 interval_s: float = RELEASE_INTERVAL_S) -> None:
        self.releaser = releaser
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_release_every,
                                        args=(releaser, interval_s, 0.0, self._stop),
                                        name=f"{_THREAD_NAME}-run", daemon=True)

    def start(self) -> ReleasingThread:
        """Start looking; this."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop looking, once a look under way ended (a walk: 10-20 ms)."""
        self._stop.set()
        self._thread.join()


def release_after_kernel_loads() -> int:
    """Release the clean pages of every library this process maps, now; bytes released.

    A node's warm-up does it (``LibraryPageReleaser.release(None)``) from its thread once its
    kernels are loaded, before the node reports ready: the 50-100 MiB of LLVM's pages the
    loads mapped go before any batch runs, whoever looks next (a Ray actor's page thread starts
    only once the graph runs), and in a process hosting several nodes (the local runner) after
    each node's kernels rather than once all of them are loaded. The other libraries' pages
    go too, once per node: about 60 MiB of them are resident in a node actor by then (Ray's
    ``_raylet.so``, numpy and its BLAS, OpenSSL, ...), most of them touched only while the
    process started; the ones the node runs come back by a minor fault at their first use
    (measured in a node actor: 54 MiB released, 27 back after a warm-up and a run;
    ``python -m benchmarks.memory_floor``).
    """
    return release_library_pages(None)


def start_numba_runtime_between_releases(
    releaser: LibraryPageReleaser, start_runtime: Callable[[], None] | None = None
) -> int:
    """Compile numba's runtime (``start_runtime``, None: ``kernel_loading.start_numba_runtime``)
    with library pages released just before and LLVM's just after; bytes released.

    The process's peak is made here otherwise: compiling the runtime maps 30-50 MiB of LLVM's
    code generator, on top of the 40-120 MiB (the page cache's folio size decides) that
    importing numba mapped and nothing runs again, and of the 15-20 MiB of other libraries'
    pages (numpy, OpenSSL, ...) that only the imports touched (measured in the local runner on
    the issue workload, ``python -m benchmarks.memory --runner local``: the peak at this step
    126 -> 116 MiB, before it 143-145 MiB).

    Steps:
    1. release every library's clean pages the imports mapped (``release_after_kernel_loads``);
    2. compile the runtime, which maps the code generator's pages again;
    3. release LLVM's pages, before any node loads its kernels.
    """
    # Step 1: the imports' pages.
    released = releaser.release(None)
    # Step 2: the runtime, over the few pages it needs.
    (start_runtime or start_numba_runtime)()
    # Step 3: the code generator's pages.
    return released + releaser.release()


def release_library_pages_in_thread(interval_s: float = RELEASE_INTERVAL_S,
                                    first_after_s: float = FIRST_RELEASE_AFTER_S,
                                    releaser: LibraryPageReleaser | None = None) -> bool:
    """Release library pages ``first_after_s`` from now, then whenever they grew, looking every
    ``interval_s``, in a daemon thread for the rest of the process (a node actor's), with
    ``releaser`` (None: a new one); True when this call started that thread (once per process).

    The caller does not wait: a walk over the mappings holds the GIL for 15-20 ms, which a
    node's first batch must not wait for.
    """
    if any(thread.name == _THREAD_NAME for thread in threading.enumerate()):
        return False
    threading.Thread(target=_release_every,
                     args=(releaser or LibraryPageReleaser(), interval_s, first_after_s,
                           threading.Event()),
                     name=_THREAD_NAME, daemon=True).start()
    return True


def release_in_actor(host: object) -> bool:
    """``release_library_pages_in_thread`` as a Ray ``__ray_call__`` on a node actor runs it,
    once the actor is ready: its warm-up released the library pages its start mapped, so what
    is resident now is the floor (``LibraryPageReleaser.settled``), and a kernel the node loads
    later (a specialization its warm-up did not load, 20-30 MiB of LLVM) is released at the
    next look, not only once the process maps the 64 MiB a first release waits for."""
    return release_library_pages_in_thread(releaser=LibraryPageReleaser.settled())


def _release_every(releaser: LibraryPageReleaser, interval_s: float, first_after_s: float,
                   stop: threading.Event) -> None:
    if stop.wait(first_after_s):
        return
    while True:
        releaser.look()
        if stop.wait(interval_s):
            return
