"""A node process loads its cached kernels without numba's compile registries."""

from __future__ import annotations

import json
import subprocess
import sys

#: A module of numba's registries (the numpy API's linear algebra): imported by a refresh of
#: the target context, which a compile needs and a cached load does not.
_REGISTRY_MODULE = "numba.np.linalg"

_WARM_UP_ONLY = """
import json, sys
import streamdag as sd
from runtime.dataplane.worker import NodeWorker
ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
NodeWorker(ticks.rolling_mean("price", window=2, name="mean").config()).warm_up()
print(json.dumps({"registries": "REGISTRY" in sys.modules}))
""".replace("REGISTRY", _REGISTRY_MODULE)

_LOCAL_RUN = """
import json, sys
import streamdag as sd
from runtime.runners.local_runner import LocalRunner
from streamdag.testing import TestingSource
ticks = sd.source("ticks", topic="t", key="key", schema={"price": "float64"})
mean = ticks.rolling_mean("price", window=2, name="mean")
batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a", "b", "a"], price=[1.0, 5.0, 3.0])
result = LocalRunner().run(sd.Graph("g", outputs=[mean]),
                           sources={"ticks": lambda: TestingSource([batch])})
registries = "REGISTRY" in sys.modules
# A kernel compiled afterwards (not cached) gets the registries it needs, as numba compiles.
import numpy as np
from numba import njit
median = njit(lambda values: np.median(values))(np.array([3.0, 5.0, 1.0]))
print(json.dumps({"registries": registries, "records": result.records("mean"),
                  "compiled": float(median)}))
""".replace("REGISTRY", _REGISTRY_MODULE)


def _run(code: str) -> dict[str, object]:
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout
    figures: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return figures


def test_a_node_loads_cached_kernels_without_the_compile_registries() -> None:
    """A warm-up that loads the kernels as numba does refreshes the registries (the check can
    fail; it also leaves the kernels in the cache); a runner's node loads them lean, and
    computes the same; a kernel compiled later in that process still compiles."""
    assert _run(_WARM_UP_ONLY) == {"registries": True}
    assert _run(_LOCAL_RUN) == {"registries": False,
                                "records": [{"ts": 3, "key": "a", "value": 2.0}],
                                "compiled": 3.0}
