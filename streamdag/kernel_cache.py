"""Where compiled kernels are cached: one known directory per user, chosen before numba loads.

numba's ``cache=True`` writes next to the source (``__pycache__``) when it can and otherwise
falls back by itself, so where a kernel was compiled, and whether another process (a Ray
worker, a second install of the same files, a read-only site-packages) finds it again,
depended on the install. streamdag points numba at one directory instead:

1. ``NUMBA_CACHE_DIR`` when the user set it (numba's own switch, respected as is);
2. else ``STREAMDAG_KERNEL_CACHE``;
3. else ``$XDG_CACHE_HOME/streamdag/kernels`` (``~/.cache/streamdag/kernels``).

The choice goes into ``NUMBA_CACHE_DIR`` of this process, so Ray workers started from it
inherit it, and every process importing ``streamdag`` makes the same choice.

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
from collections.abc import Iterator
from pathlib import Path

__all__ = ["compiling", "configure_kernel_cache", "kernel_cache_dir"]


def kernel_cache_dir() -> Path:
    """The directory compiled kernels are cached in (see the module's order of choices)."""
    for variable in ("NUMBA_CACHE_DIR", "STREAMDAG_KERNEL_CACHE"):
        chosen = os.environ.get(variable)
        if chosen:
            return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (a bare container user)
            base = str(Path(tempfile.gettempdir()) / f"streamdag-{os.getuid()}")
    return Path(base).expanduser() / "streamdag" / "kernels"


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


@functools.lru_cache(maxsize=1)
def _install_stamp() -> str:
    """A digest of the kernel sources' paths, sizes and times: changes when they change."""
    digest = hashlib.sha256()
    for package in ("operators", "connectors"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        for path in sorted(Path(spec.origin).parent.glob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


configure_kernel_cache()  # on import: before anything decorates a kernel
