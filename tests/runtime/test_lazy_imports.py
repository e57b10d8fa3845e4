"""What a node actor and the local runner import leaves out the packages only a planner or a
checkpoint store needs: each costs every process that imports it (networkx about 11 MiB)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Loaded only by a function that needs it: networkx by planning (``runtime.planning.planner``,
#: ``streamdag.structure``, the registry's regions), fsspec by opening a checkpoint store or a
#: backtest cache's disk tier.
_LAZY = ("networkx", "fsspec")


def _loaded_after(statements: str) -> list[str]:
    """The ``_LAZY`` packages' modules in ``sys.modules`` after ``statements``, run in a fresh
    interpreter."""
    code = (f"import json, sys\n{statements}\nprint(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {list(_LAZY)!r})))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout
    loaded: list[str] = json.loads(output.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("statements", [
    # What a node actor imports: the Ray backend, its host and the Kafka binding.
    "import runtime.runners.ray_nodes, runtime.dataplane.host, runtime.runners.kafka_binding",
    # The checkpoint store and the backtest cache, as a node actor unpickles a store.
    "import runtime.checkpoints.store, runtime.backtest.cache",
    # The deployment's registry (its regions plan over networkx), and its warm pool, whose
    # idle actors become a deployment's node actors.
    "import runtime.deployment.node_registry",
    "import runtime.deployment.warm_pool",
    # The local runner and the SDK, before a graph is run.
    "import streamdag, runtime.runners.local_runner",
])
def test_importing_what_a_node_runs_loads_no_planner_or_store_library(statements: str) -> None:
    """None of networkx's or fsspec's modules is imported by these modules."""
    assert _loaded_after(statements) == []


def test_planning_and_opening_a_store_import_them_where_needed() -> None:
    """The check can fail: planning a graph imports networkx, opening a store fsspec."""
    loaded = _loaded_after(
        "import streamdag as sd\n"
        "from runtime.planning.planner import plan_graph\n"
        "from runtime.checkpoints.store import CheckpointStore\n"
        "ticks = sd.source('ticks', topic='t', key='k', schema={'price': 'float64'})\n"
        "plan_graph(sd.Graph('g', outputs=[ticks.rolling_mean('price', window=2)]))\n"
        "CheckpointStore('memory://lazy-imports')")
    assert "networkx" in loaded
    assert "fsspec" in loaded
