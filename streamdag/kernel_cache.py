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

>>> import os
>>> os.environ["NUMBA_CACHE_DIR"] == str(kernel_cache_dir())
True
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["configure_kernel_cache", "kernel_cache_dir"]


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


configure_kernel_cache()  # on import: before anything decorates a kernel
