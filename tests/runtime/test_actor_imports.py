"""A node actor's modules leave out what only the driver, the CLI or a deployment uses."""

from __future__ import annotations

import json
import subprocess
import sys

from runtime.runners.ray_runner import NODE_ACTOR_MODULES

#: Packages a node actor never calls: each costs every actor its import's memory (networkx
#: alone is about 10 MiB), so the actor's modules must not import them, even indirectly.
_NOT_IN_AN_ACTOR = ("networkx", "aiohttp", "prometheus_client", "ray", "runtime.deployment",
                    "runtime.cli", "runtime.backtest", "runtime.planning", "benchmarks")


def test_a_node_actors_modules_do_not_import_the_drivers() -> None:
    """Importing ``NODE_ACTOR_MODULES`` in a fresh interpreter loads none of those packages."""
    code = ("import json, sys; " + "; ".join(f"import {m}" for m in NODE_ACTOR_MODULES)
            + f"; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted({name.split('.')[0] for name in _NOT_IN_AN_ACTOR})!r})))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout
    loaded = json.loads(output.strip().splitlines()[-1])
    assert [name for name in loaded if any(
        name == banned or name.startswith(f"{banned}.") for banned in _NOT_IN_AN_ACTOR)] == []
    # The check can fail: the actor's own packages are seen, so would a banned one be.
    assert "runtime.dataplane.host" in loaded
