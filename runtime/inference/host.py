"""InferenceHost: the node host of an ``infer`` node, with interactive requests and a clean stop.

On Ray it is its own actor, with ``num_gpus`` where the cluster has GPUs, and interactive
requests run in their own concurrency group (their own event loop thread), so a request is
queued at once even while the node's drain loop waits for its stream's rows in the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from operators.inference import InferenceLogic
from operators.inference_errors import DeviceUnavailableError, ModelLoadError
from operators.inference_queue import InferenceFigures
from runtime.dataplane.host import NodeHost
from runtime.dataplane.stats import NodeStats
from streamdag.graph import Node
from streamdag.operator import NodeConfig

__all__ = [
    "INFERENCE_OPERATOR",
    "INTERACTIVE_GROUP",
    "InferenceHost",
    "actor_class_options",
    "host_class",
    "inference_actor_options",
]

INFERENCE_OPERATOR = "infer"
_INFERENCE_LOGGER = "operators.inference"
#: The Ray concurrency group interactive requests run in, and how many run at once.
INTERACTIVE_GROUP = "interactive"
INTERACTIVE_CONCURRENCY = 64


class InferenceHost(NodeHost):
    """A ``NodeHost`` whose logic is a model behind an inference engine.

    The model loads in the constructor; if it cannot, ``ready()`` raises the load error
    itself (an actor whose constructor raised would only report that it died), so the
    submission fails with the cause.
    """

    def __init__(self, config: NodeConfig, **arguments: Any) -> None:
        _log_inference_to_stderr()
        self.load_error: ModelLoadError | None = None
        try:
            super().__init__(config, **arguments)
        except ModelLoadError as exc:
            self.config = config
            self.load_error = exc

    async def ready(self) -> str:
        """Raise the model's load error, if any; otherwise ready as any node."""
        if self.load_error is not None:
            raise self.load_error
        return await super().ready()

    @property
    def inference(self) -> InferenceLogic:
        """The node's logic: the loaded model and its engine."""
        logic = self.worker.logic
        assert isinstance(logic, InferenceLogic)
        return logic

    async def infer(
        self, features: Mapping[str, Sequence[float]], timeout_s: float | None = None
    ) -> dict[str, list[float]]:
        """Run the model on one interactive request, ahead of streaming rows; output columns.

        ``features`` maps each feature name to its values (one per row). If the caller stops
        waiting (``timeout_s`` passed, or this call cancelled), the request is dropped before
        it reaches the model.
        """
        future = self.inference.infer(features, timeout_s=timeout_s)
        try:
            output = await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except (asyncio.CancelledError, TimeoutError):
            future.cancel()  # still queued: never computed for nobody
            raise
        array = np.asarray(output, dtype=np.float64)
        return {name: array[:, index].tolist()
                for index, name in enumerate(self.inference.outputs)}

    def inference_figures(self) -> InferenceFigures:
        """The engine's figures (batches, queue waits, device, load time) at this moment."""
        return self.inference.engine.snapshot()

    def stats(self) -> NodeStats:
        """The node's counters, with the inference engine's figures."""
        stats = super().stats()
        stats.inference = self.inference_figures()
        return stats

    async def stop(self) -> None:
        """Refuse new requests, fail waiting ones, stop the node, unload the model.

        Steps:
        1. The engine takes no more requests; those waiting fail with InferenceStoppedError
           (their callers get it, never a hang); the batch in the model finishes.
        2. The node stops as any does (its drain loop, connectors).
        3. The model is unloaded and its device memory freed; the health snapshot is logged.
        """
        if self.load_error is not None:
            return  # nothing was loaded, nothing started
        # Step 1: closed before the drain loop stops, so a stream's rows waiting fail too.
        engine = self.inference.engine
        if not engine.closed:
            await asyncio.to_thread(engine.close)
        # Step 2.
        await super().stop()
        # Step 3.
        self.inference.close()


def _log_inference_to_stderr() -> None:
    """Inside a Ray actor, let the model's load and the health snapshot at its stop (INFO)
    reach the actor's log. Elsewhere the application configures its own logging."""
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    logger = logging.getLogger(_INFERENCE_LOGGER)
    if logger.handlers or logger.level != logging.NOTSET or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def host_class(operator: str) -> type[NodeHost]:
    """The host class of a node of ``operator``: ``InferenceHost`` for ``infer`` nodes."""
    return InferenceHost if operator == INFERENCE_OPERATOR else NodeHost


def inference_actor_options(node: Node, cluster_gpus: float) -> dict[str, Any]:
    """Ray options of an ``infer`` node's actor: a GPU where the cluster has one.

    Raises DeviceUnavailableError for ``device="cuda"`` on a cluster without GPUs, so the
    submission fails at once rather than waiting for a GPU that never comes.

    >>> import streamdag as sd
    >>> ticks = sd.source("t", topic="t", schema={"x": "float64"})
    >>> node = ticks.infer(lambda rows: rows, features=["x"], device="cuda", name="m")
    >>> inference_actor_options(node, cluster_gpus=2.0)
    {'num_gpus': 1}
    >>> inference_actor_options(node, cluster_gpus=0.0)
    Traceback (most recent call last):
    ...
    operators.inference_errors.DeviceUnavailableError: node 'm' asks for device='cuda', ...
    """
    if node.operator != INFERENCE_OPERATOR:
        return {}
    device = node.params["device"]
    if device != "cpu" and cluster_gpus >= 1:
        return {"num_gpus": 1}
    if device == "cuda":
        raise DeviceUnavailableError(
            f"node {node.name!r} asks for device='cuda', but the Ray cluster has no GPU "
            f"(GPU resources: {cluster_gpus:g}); add a GPU node to the cluster, or build the "
            "node with device='auto' to run it on the CPU where there is none")
    return {}


def actor_class_options(operator: str) -> dict[str, Any]:
    """``ray.remote`` options of the actor class of ``operator``'s nodes.

    >>> actor_class_options("infer")
    {'concurrency_groups': {'interactive': 64}}
    """
    if operator != INFERENCE_OPERATOR:
        return {}
    return {"concurrency_groups": {INTERACTIVE_GROUP: INTERACTIVE_CONCURRENCY}}
