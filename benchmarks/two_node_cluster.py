"""A two-node Ray cluster on this machine, a sharded node with one shard on each machine.

``ray.cluster_utils.Cluster`` starts a head and a second node, each with its own custom
resource (``machine_a``, ``machine_b``); the runner connects through ``RAY_ADDRESS`` as it
would to any existing cluster, and ``shard_options`` asks shard ``s`` for the resource of
machine ``s % 2``. The run checks that both machines hosted a shard and that the output per
key equals the local runner's. It needs its own Ray, so run it in a process of its own:

    python -m benchmarks.two_node_cluster [--events N] [--parallelism N] [--heavy]

It prints one line per shard (its machine) and one line of figures, and exits 1 when the
placement or the output is wrong (tests/runtime/test_two_node_cluster.py runs it). With
``--heavy`` the graph is ``benchmarks.scaling``'s CPU-heavy one, for its rate.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import streamdag as sd
from runtime.demo.synthetic import RandomWalk
from runtime.planning.wiring import RunResult
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.testing import ListSink, TestingSource

__all__ = ["MACHINES", "main", "on_machine", "start_cluster"]

#: The custom resource each machine of the cluster has (and only it).
MACHINES = ("machine_a", "machine_b")


def on_machine(name: str, shard: int, shards: int) -> Mapping[str, Any]:
    """Actor options placing shard ``shard`` on machine ``shard % 2`` (``RayRunner``'s
    ``shard_options``)."""
    return {"resources": {MACHINES[shard % len(MACHINES)]: 1}}


def start_cluster(cpus_per_machine: int = 1) -> Any:
    """A head and one more node, each with its own custom resource; returns the Cluster."""
    from ray.cluster_utils import Cluster

    # Workers of both nodes import this repository's modules (the graph's functions).
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    common = {"num_cpus": cpus_per_machine, "object_store_memory": 150 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={
        **common, "resources": {MACHINES[0]: 1000}, "include_dashboard": False})
    cluster.add_node(**common, resources={MACHINES[1]: 1000})
    cluster.wait_for_nodes()
    return cluster


def graph(parallelism: int) -> sd.Graph:
    """Ticks -> per-key rolling mean, then its EMA (both sharded, forward between) -> sink."""
    ticks = sd.source("ticks", topic="ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    mean = ticks.rolling_mean("price", window=20, name="sma20", parallelism=parallelism)
    smooth = mean.ema(span=5, name="smooth", parallelism=parallelism)
    return sd.Graph("two-machines", outputs=[smooth.to_topic("smooth", name="out")])


def _per_key(result: RunResult) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for record in result.records("out"):
        found.setdefault(str(record["key"]), []).append(record)
    return found


def _machine_of(actor: Any) -> str:
    import ray

    node_id: str = ray.get(actor.__ray_call__.remote(
        lambda _host: ray.get_runtime_context().get_node_id()), timeout=30)
    return node_id


def main(argv: Sequence[str] | None = None) -> None:
    """Start the cluster, run the graph with shards on both machines, check, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--heavy", action="store_true",
                        help="benchmarks.scaling's CPU-heavy graph instead")
    args = parser.parse_args(argv)
    build, sharded = graph, ("sma20", "smooth")
    if args.heavy:
        from benchmarks.scaling import heavy_graph

        build, sharded = heavy_graph, ("heavy",)
    walk = RandomWalk(symbols=20, seed=3)
    batches: list[Batch] = [walk.next_batch(2_000) for _ in range(max(1, args.events // 2_000))]
    source = functools.partial(TestingSource, batches)
    expected = _per_key(LocalRunner().run(build(1), sources={"ticks": source},
                                          sinks={"out": ListSink}))
    import ray

    ray.shutdown()  # under `python -m benchmarks`, an earlier module's Ray may still be up
    started = time.perf_counter()
    cluster = start_cluster()
    try:
        from runtime.runners.ray_runner import RayRunner

        os.environ["RAY_ADDRESS"] = cluster.address  # as a user points at their cluster
        up = time.perf_counter()
        running = RayRunner(shard_options=on_machine).start(
            build(args.parallelism), sources={"ticks": source}, sinks={"out": ListSink})
        deployed = time.perf_counter()
        try:
            result = running.wait(120)
            machines = {f"{name}[{shard}]": _machine_of(running.actor(name, shard))
                        for name in sharded for shard in range(args.parallelism)}
        finally:
            running.stop()
        done = time.perf_counter()
        names = {node["NodeID"]: MACHINES[i] for i, node in enumerate(
            sorted(ray.nodes(), key=lambda n: not n["Resources"].get(MACHINES[0])))}
        for shard, node_id in machines.items():
            print(f"{shard:<12} on {names.get(node_id, node_id)}")
        events = sum(len(b) for b in batches)
        steady = result.stats["out"].last_output_at - result.stats["ticks"].first_output_at
        print(f"cluster up {up - started:.1f} s; actors up {deployed - up:.1f} s; run "
              f"{done - deployed:.1f} s for {events:,} events over "
              f"{len(set(machines.values()))} machines; {events / steady:,.0f} events/s "
              "from the first event read to the last written")
    finally:
        ray.shutdown()
        cluster.shutdown()
    problems = []
    if len(set(machines.values())) < 2:
        problems.append(f"shards ran on {len(set(machines.values()))} machine(s), not 2")
    if _per_key(result) != expected:
        problems.append("the output per key differs from the local runner's")
    if problems:
        print("FAILED: " + "; ".join(problems))
        sys.exit(1)
    print("OK: shards on both machines; output per key equals the local runner's")


if __name__ == "__main__":
    main()
