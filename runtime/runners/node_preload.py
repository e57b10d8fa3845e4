"""What the workers of a Ray that streamdag starts import before they take work.

Ray imports ``NODE_ACTOR_MODULES`` (this module) in each worker as it starts
(``preload_python_modules``), before the worker knows which node it will host, so importing
it prepares a node process:

1. the node host and what every node runs (numba, the operators, the data plane);
2. cached kernels set to load without numba's compile registries (``lean_cached_loads``);
3. numba's runtime compiled while the pages numba's import mapped are still resident
   (``start_numba_runtime``): a node's first kernel load no longer compiles it, with 90 MiB
   of LLVM's pages mapped at once, on the way to its first output (not between two releases,
   as the local runner does: see ``kernel_loading.start_numba_runtime``);
4. the library pages the import and the compile touched, released
   (``release_after_kernel_loads``): a pooled worker waits with about 100 MiB resident, not
   the 220 MiB its import left;
5. the 100,000 objects of these imports moved out of the collector's reach (``gc.freeze``):
   they live as long as the process, yet each full collection walked them all, about 50 ms
   of CPU in every actor's start. The collector is off while they are made (about 70 ms more
   of collections that find nothing).
"""

from __future__ import annotations

import gc

gc.disable()
# Step 1: the node host.
import runtime.dataplane.host  # noqa: E402, F401  (imported for its modules)
from runtime.dataplane.kernel_loading import (  # noqa: E402
    lean_cached_loads,
    start_numba_runtime,
)
from runtime.runners.resident_pages import release_after_kernel_loads  # noqa: E402

__all__: list[str] = []

# Step 2: lean loads of cached kernels.
lean_cached_loads()
# Step 3: numba's runtime.
start_numba_runtime()
# Step 4: the pages of the start.
release_after_kernel_loads()
# Step 5: the import's objects, out of the collector's walks.
gc.freeze()
gc.enable()
