"""A node process hands its free malloc heap back to the kernel, when it is large, now and then."""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.runners.process_memory import (
    MMAP_THRESHOLD,
    HeapTrimmer,
    heap_stats,
    limit_heap_growth,
    resident_anonymous_bytes,
    resident_pages,
    trim_heap,
)
from runtime.runners.resident_pages import LibraryPageReleaser, ReleasingThread

_MIB = 2**20
_CHUNK = 32 * 1024  # under glibc's mmap threshold: served from the heap
_M_TRIM_THRESHOLD = -1


@pytest.fixture
def freed_heap() -> Iterator[int]:
    """64 MiB written to the heap and freed, pinned by one chunk allocated after it (so that
    ``free`` cannot trim the top): bytes freed. Released at the end."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(_CHUNK) for _ in range(64 * _MIB // _CHUNK)]
    for chunk in chunks:
        ctypes.memset(chunk, 1, _CHUNK)  # resident
    pin = libc.malloc(_CHUNK)
    for chunk in chunks:
        libc.free(chunk)
    yield len(chunks) * _CHUNK
    libc.free(pin)
    trim_heap()


def test_a_trim_gives_free_heap_pages_back(freed_heap: int) -> None:
    """The freed chunks stay resident until a trim; after it, most of them are gone."""
    stats = heap_stats()
    assert stats is not None and stats.free >= freed_heap
    before = resident_anonymous_bytes()
    assert trim_heap()
    assert before - resident_anonymous_bytes() > 48 * _MIB
    after = heap_stats()
    assert after is not None and after.free >= freed_heap  # still free chunks, without pages


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_trimmer_trims_once_the_free_heap_is_large_then_waits(freed_heap: int) -> None:
    """Trimmed when free heap and anonymous pages are past the thresholds; not again within
    the interval, nor later while nothing grew."""
    clock = _Clock()
    trimmer = HeapTrimmer(free_above=32 * _MIB, interval_s=1.0, grown_above=16 * _MIB,
                          clock=clock)
    before = resident_anonymous_bytes()
    assert trimmer.due()
    assert trimmer.trim_if_worth()
    assert before - resident_anonymous_bytes() > 48 * _MIB
    assert trimmer.trims == 1
    clock.now += 0.5
    assert not trimmer.due()  # within the interval
    clock.now += 10.0
    assert not trimmer.trim_if_worth()  # the free chunks hold no pages any more
    assert trimmer.trims == 1


def test_a_trimmer_leaves_a_small_free_heap_alone() -> None:
    """A free heap under the threshold is not worth a trim's page faults."""
    trimmer = HeapTrimmer(free_above=1 << 40, grown_above=0)
    assert not trimmer.trim_if_worth()
    assert trimmer.trims == 0


@pytest.mark.parametrize("in_thread", [False, True], ids=["look", "local runner thread"])
def test_the_library_page_releaser_trims_the_heap_on_its_looks(freed_heap: int,
                                                                in_thread: bool) -> None:
    """Each look of the releaser (a node actor's thread, the local runner's task) trims too."""
    releaser = LibraryPageReleaser(first_above=1 << 40)  # no library page release here
    releaser.heap = HeapTrimmer(free_above=32 * _MIB, grown_above=0)
    before = resident_anonymous_bytes()
    if in_thread:
        releasing = ReleasingThread(releaser, interval_s=0.01).start()
        deadline = time.monotonic() + 30
        while releaser.heap.trims == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        releasing.stop()
    else:
        releaser.look()
    assert releaser.heap.trims == 1
    assert before - resident_anonymous_bytes() > 48 * _MIB


def _resident_after_freeing_large_blocks(threshold: int) -> int:
    """Anonymous bytes still resident after 32 MiB of 2 MiB blocks were written and freed,
    each followed by a small block that stays (as fetch responses are, among what outlives
    them), with glibc's mmap threshold at ``threshold`` and its trim threshold raised as a Ray
    node actor's is (``ray_runner.ensure_ray``)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    assert libc.mallopt(_M_TRIM_THRESHOLD, 1_000_000_000)
    assert limit_heap_growth(threshold)
    before = resident_anonymous_bytes()
    large, small = [], []
    for _ in range(16):
        large.append(libc.malloc(2 * _MIB))
        ctypes.memset(large[-1], 1, 2 * _MIB)
        small.append(libc.malloc(_CHUNK))
    for block in large:
        libc.free(block)
    left = resident_anonymous_bytes() - before
    for block in small:
        libc.free(block)
    libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)  # glibc's default
    return left


def test_large_blocks_are_handed_back_when_freed() -> None:
    """Under ``limit_heap_growth``, a freed block of 1 MiB or more leaves nothing resident; with
    the threshold a Ray actor had (100 MB), the same blocks stayed as holes in the heap."""
    try:
        assert _resident_after_freeing_large_blocks(100_000_000) > 24 * _MIB  # can fail
        assert _resident_after_freeing_large_blocks(MMAP_THRESHOLD) < 8 * _MIB
    finally:
        trim_heap()
        limit_heap_growth()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+) kB$", status.read(), re.MULTILINE)
    assert match is not None
    return int(match[1])


def test_resident_pages_agree_with_the_kernels_status_and_follow_each_kind(
        tmp_path: Path) -> None:
    """The cheap look (``/proc/self/statm``) says what ``/proc/self/status`` says: anonymous
    pages are ``RssAnon``, file and shared pages ``RssFile`` + ``RssShmem``; each grows when
    that kind of page is touched, and not with the other."""
    pages = resident_pages()
    assert pages is not None
    shared = _status_kib("RssFile") + _status_kib("RssShmem")
    assert abs(pages.anonymous // 1024 - _status_kib("RssAnon")) < 2048
    assert abs(pages.file_and_shared // 1024 - shared) < 2048

    path = tmp_path / "pages"
    with open(path, "wb") as out:
        out.write(b"x" * (32 * _MIB))
    with open(path, "rb") as mapped_file, mmap.mmap(mapped_file.fileno(), 0,
                                                    access=mmap.ACCESS_READ) as mapped:
        before = resident_pages()
        assert sum(mapped[offset] for offset in range(0, len(mapped), 4096)) == 120 * 8192
        after = resident_pages()
        assert before is not None and after is not None
        assert after.file_and_shared - before.file_and_shared >= 30 * _MIB
        assert abs(after.anonymous - before.anonymous) < 4 * _MIB

    block = bytearray(32 * _MIB)  # written as it is zeroed: resident
    later = resident_pages()
    assert later is not None and later.anonymous - after.anonymous >= 30 * _MIB
    del block


def test_a_forked_child_reads_its_own_resident_pages() -> None:
    """The kept ``/proc/self/statm`` is the opener's: a forked child opens its own."""
    assert resident_pages() is not None  # opened here first
    block = bytearray(64 * _MIB)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        del block
        pages = resident_pages()
        os.write(write, str(-1 if pages is None else pages.anonymous).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as answer:
        child_anonymous = int(answer.read())
    mine = resident_pages()
    assert mine is not None and len(block) == 64 * _MIB
    # The child shares the block copy-on-write, yet its own anonymous count starts small: a
    # kept descriptor of the parent's /proc/<pid>/statm would give the parent's 64 MiB more.
    assert 0 <= child_anonymous < mine.anonymous - 32 * _MIB
