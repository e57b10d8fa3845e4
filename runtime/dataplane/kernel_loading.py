"""Loading cached kernels without the registries numba needs only to compile.

numba refreshes its target context before it loads a kernel from the cache
(``Cache.load_overload`` calls ``target_context.refresh()``): the runtime (NRT) is compiled, and
every lowering and typing registry is imported and installed, some 60 numba modules (the numpy
API's implementations, typed containers, random generators, jitclass ...), about 10 MiB of each
node process, which a load never uses: a cached kernel is machine code, linked against the
runtime only. ``lean_cached_loads`` makes a load initialize the runtime alone. A compile (a
kernel the cache does not hold) still refreshes everything first, as numba's compiler does
(``CompilerBase``), so a process that compiles gets the registries then.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["lean_cached_loads", "start_numba_runtime"]

_log = logging.getLogger(__name__)
#: What numba's ``Cache.load_overload`` must call for the lean load to stand in for it.
_EXPECTED_CALLS = {"refresh", "_load_overload", "_guard_against_spurious_io_errors"}


def lean_cached_loads() -> bool:
    """Make this process's loads of cached kernels initialize only numba's runtime, from now
    on; whether they do (False where numba's cache does not look as this expects: its loads
    then stay as they are).

    Idempotent; the node host calls it before a node loads its kernels (``warming``).
    """
    from numba.core import caching
    from numba.core.runtime import nrt

    current = caching.Cache.load_overload
    if getattr(current, "_streamdag_lean", False):
        return True
    if not (_EXPECTED_CALLS.issubset(current.__code__.co_names)
            and callable(getattr(nrt.rtsys, "initialize", None))):
        _log.debug("numba's Cache.load_overload is not the one expected; cached kernels load "
                   "with the full refresh")
        return False

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        # Step 1: the runtime the kernel's machine code calls, compiled once per process.
        nrt.rtsys.initialize(target_context)
        # Step 2: the kernel, as numba loads it (None: not cached, numba compiles it).
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)

    load_overload._streamdag_lean = True  # type: ignore[attr-defined]
    caching.Cache.load_overload = load_overload  # type: ignore[method-assign]  # numba's, patched
    return True


def start_numba_runtime() -> None:
    """Compile numba's runtime (NRT) now, as the first kernel load would (about 0.1 s).

    Its compile runs LLVM's code generator, which maps 30-90 MiB of LLVM's library for the
    moment it takes. Where that matters, the two callers choose differently:

    - a Ray worker's preload (``runtime.runners.node_preload``) compiles it while the pages
      importing numba mapped are still resident, then releases them all: it maps about 10 MiB
      more, and the preload runs on the way to Ray's start (compiling between two releases
      there made the standalone first output 1.52 and 1.71 s against 1.29 and 1.25 s,
      ``python -m benchmarks.startup --repeat 2``, though each worker's VmHWM fell 183 -> 154 MiB);
    - the local runner compiles it between two releases
      (``runtime.runners.resident_pages.start_numba_runtime_between_releases``): its one
      process's peak is its memory figure, and it was made here.
    """
    from numba.core.registry import cpu_target
    from numba.core.runtime import nrt

    nrt.rtsys.initialize(cpu_target.target_context)
