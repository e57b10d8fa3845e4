"""Where compiled kernels are cached: one known directory per user, chosen before numba loads.

numba's ``cache=True`` writes next to the source (``__pycache__``) when it can and otherwise
falls back by itself, so where a kernel was compiled, and whether another process (a Ray
worker, a second install of the same files, a read-only site-packages) finds it again,
depended on the install. streamdag points numba at one directory instead:

1. ``NUMBA_CACHE_DIR`` when the user set it (numba's own switch, respected as is);
2. else ``STREAMDAG_KERNEL_CACHE``;
3. else ``$XDG_CACHE_HOME/streamdag/kernels`` (``~/.cache/streamdag/kernels``).

Under the last two, kernels go to a subdirectory named by a stamp of streamdag's modules that
import numba (their paths and text): numba checks a cached kernel against its own source file
only, so a kernel that inlines a helper from another module would load stale machine code after an
upgrade or an edit changed that helper. A new stamp starts a new cache. The choice goes into
``NUMBA_CACHE_DIR`` of this process, so Ray workers started from it inherit it, and every
process importing ``streamdag`` makes the same choice.

A cold cache is what made a first run after an install take minutes: every node actor compiled
its kernels at once, each its own copy (measured on this 2-core machine under load: 33 s for
the workload's three operators in one process, 73 s each for three processes compiling the
same ones side by side). ``compiling(kind)`` lets the first process compile a kind of kernels
while the others wait for it and then load them; once compiled, nobody waits.

>>> import os
>>> os.environ["NUMBA_CACHE_DIR"] == str(kernel_cache_dir())
True
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["KERNEL_PACKAGES", "compiling", "configure_kernel_cache", "kernel_cache_dir",
           "sources_stamp"]


def kernel_cache_dir() -> Path:
    """The directory compiled kernels are cached in (see the module's order of choices)."""
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    if chosen:
        return Path(chosen).expanduser()
    chosen = os.environ.get("STREAMDAG_KERNEL_CACHE")
    if chosen:
        return Path(chosen).expanduser() / _install_stamp()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (a bare container user)
            base = str(Path(tempfile.gettempdir()) / f"streamdag-{os.getuid()}")
    return Path(base).expanduser() / "streamdag" / "kernels" / _install_stamp()


def configure_kernel_cache() -> Path:
    """Point numba's kernel cache at ``kernel_cache_dir()``; returns it.

    Must run before the first ``@njit(cache=True)`` is decorated (importing ``streamdag``
    does it). If numba is already loaded, its configuration is updated too.
    """
    directory = kernel_cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = str(directory)
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.CACHE_DIR = str(directory)  # type: ignore[attr-defined]
    return directory


@contextlib.contextmanager
def compiling(kind: str) -> Iterator[None]:
    """Compile (or load) ``kind``'s kernels in the body, one process of this machine at a time
    until they have been compiled once for this install; after that, without waiting.

    >>> with compiling("doctest-kind"):
    ...     pass
    """
    directory = kernel_cache_dir() / "compiled"
    marker = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', kind)}-{_install_stamp()}"
    if marker.exists():
        yield
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(marker.with_suffix(".lock"), "a")  # noqa: SIM115 (closed below)
    except OSError:  # a read-only cache: numba will not cache either; compile, don't wait
        yield
        return
    with lock:
        # Step 1: wait for whoever compiles this kind now; they leave it in the cache.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # Step 2: compile, or load what they compiled.
            yield
            # Step 3: say it is compiled, so later processes need not wait.
            marker.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: A line that imports numba: what marks a module that holds kernels or helpers they inline.
_IMPORTS_NUMBA = re.compile(rb"^[ \t]*(?:from|import)[ \t]+numba\b", re.MULTILINE)

#: The packages whose modules hold kernels, or helpers kernels inline.
KERNEL_PACKAGES = ("operators", "connectors", "streamdag", "runtime")


def sources_stamp(folders: Iterable[Path]) -> str:
    """A digest of every ``.py`` under ``folders`` that imports numba (its path and its text):
    changes when a kernel, or a helper a kernel may inline, changes, and only then.

    A module that only names numba (a comment, a docstring, a lazy warm-up call) is not
    stamped: editing it must not throw away every compiled kernel.

    >>> len(sources_stamp([Path(__file__).parent]))
    16
    """
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            text = path.read_bytes()
            if _IMPORTS_NUMBA.search(text):
                digest.update(f"{path}:{len(text)}:".encode())
                digest.update(text)
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _install_stamp() -> str:
    """``sources_stamp`` of this install's kernel packages (found without importing them)."""
    folders = []
    for package in KERNEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            folders.append(Path(spec.origin).parent)
    return sources_stamp(folders)


configure_kernel_cache()  # on import: before anything decorates a kernel
