"""The driver's handle on a deployment: connect to (or start) its controller and talk to it.

``Deployment.connect`` gets the deployment's controller actor, or creates it: a detached named
Ray actor (``streamdag-controller-<name>`` in namespace ``streamdag``) that outlives the driver.
Every method is synchronous and waits for the controller's answer. Graphs built with the SDK
travel through the trusted path (the user's own driver, as with Ray Jobs), so user functions
may be part of them; spec files and dicts are data only.
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.deployment.controller import (
    Controller,
    ControllerOptions,
    controller_actor_name,
    deployment_state_dir,
)
from runtime.deployment.controller_calls import CONTROLLER_CALL_TIMEOUT_S, ControllerTimeoutError
from runtime.deployment.metrics import MetricsSnapshot
from runtime.deployment.node_registry import NODE_NAMESPACE
from streamdag.config import Settings
from streamdag.errors import SpecError
from streamdag.graph import Graph

__all__ = ["Deployment"]


class Deployment:
    """A connected deployment; build it with ``Deployment.connect``."""

    def __init__(self, controller: Any, settings: Settings,
                 call_timeout_s: float = CONTROLLER_CALL_TIMEOUT_S) -> None:
        self.controller = controller
        self.settings = settings
        #: How long each call waits for the controller's answer (ControllerTimeoutError after).
        self.call_timeout_s = call_timeout_s

    @classmethod
    def connect(
        cls,
        settings: Settings | None = None,
        bootstrap_servers: str | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        options: ControllerOptions | None = None,
    ) -> Deployment:
        """Get or create the controller of deployment ``settings.name`` and wait until it runs.

        Connects to Ray first (``settings.ray.address``, or a local Ray). When the controller
        already exists, it keeps the settings it was created with; the arguments here are
        then not used. Without ``settings``, joins the deployment ``streamdag up`` runs from
        this directory (its Ray, Kafka and name; ConfigError when none runs). Without
        ``bootstrap_servers``: ``settings.kafka.bootstrap_servers``, else the Kafka that
        ``streamdag up`` or ``streamdag broker start`` started (``discovery.bootstrap_servers``).
        """
        import ray

        from runtime.deployment import discovery
        from runtime.runners.ray_runner import ensure_ray

        if settings is None:
            # Step 1: the running `streamdag up`: its name, its Kafka and its Ray.
            running = discovery.find_deployment()
            settings = replace(discovery.settings_here(), name=running.name)
            bootstrap_servers = bootstrap_servers or running.bootstrap_servers
            if running.ray_auth_mode == "token" and "RAY_AUTH_MODE" not in os.environ:
                # Up's Ray wants this driver to present the token (~/.ray/auth_token) too: set
                # RAY_AUTH_MODE as Ray does, refreshing the configuration Ray read at import.
                from ray._private.authentication.authentication_token_setup import (
                    _enable_token_auth,
                )

                _enable_token_auth()
            ensure_ray(running.ray_address)
        else:
            ensure_ray(settings.ray.address or None, settings.ray.num_cpus)
        # Step 2: Kafka, as given, configured or found in the state directory.
        bootstrap_servers = (bootstrap_servers or settings.kafka.bootstrap_servers
                             or discovery.bootstrap_servers(settings.state_dir))
        # The controller may run in another working directory: give it an absolute path.
        root = Path(state_dir) if state_dir is not None else deployment_state_dir(settings)
        controller: Any = ray.remote(Controller).options(
            name=controller_actor_name(settings.name), namespace=NODE_NAMESPACE,
            lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1,
        ).remote(settings, bootstrap_servers=bootstrap_servers,
                 state_dir=str(root.resolve()), options=options)
        ray.get(controller.start.remote())
        return cls(controller, settings)

    def submit(self, graph: Graph | str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
        """Deploy a Graph, a graph spec file (TOML or JSON) or a spec dict; returns the submission.

        The returned dict has ``id``, ``graph``, ``state``, ``cause``, ``diff`` and ``nodes``;
        a submission that could not start has state ``failed`` and says why in ``cause``.
        """
        submission: dict[str, Any]
        if isinstance(graph, Graph):
            submission = self._call("submit_graph", graph)
        elif isinstance(graph, Mapping):
            submission = self._call("submit_spec", dict(graph))
        elif isinstance(graph, str | os.PathLike):
            from streamdag.spec import load_graph

            submission = self._call("submit_graph", load_graph(Path(graph)))
        else:
            raise SpecError(
                f"submit() takes a Graph, a spec file path or a spec dict; got "
                f"{type(graph).__name__}; build a graph with streamdag.Graph or a spec file"
            )
        return submission

    def remove(self, submission_id: str) -> dict[str, Any]:
        """Stop a submission; nodes no other graph uses are retired."""
        result: dict[str, Any] = self._call("remove", submission_id)
        return result

    def list(self) -> list[dict[str, Any]]:
        """Every submission, oldest first."""
        result: list[dict[str, Any]] = self._call("list_submissions")
        return result

    def status(self, submission_id: str) -> dict[str, Any]:
        """One submission with its nodes' sharing, liveness and figures."""
        result: dict[str, Any] = self._call("status", submission_id)
        return result

    def stop(self, submission_id: str) -> dict[str, Any]:
        """Take a final checkpoint, then stop the submission (see ``resume``)."""
        result: dict[str, Any] = self._call("stop", submission_id)
        return result

    def resume(self, submission_id: str) -> dict[str, Any]:
        """Submit a stopped submission's graph again, from its final checkpoint."""
        result: dict[str, Any] = self._call("resume", submission_id)
        return result

    def checkpoints(self, submission_id: str) -> builtins.list[dict[str, Any]]:
        """Per region of the submission: checkpoints completed and abandoned, the last one,
        recoveries (empty without ``checkpoint.enabled``)."""
        result: builtins.list[dict[str, Any]] = self._call("checkpoints", submission_id)
        return result

    def nodes(self) -> builtins.list[dict[str, Any]]:
        """Every node actor of the deployment."""
        result: builtins.list[dict[str, Any]] = self._call("nodes")
        return result

    def node(self, node_id: str) -> dict[str, Any]:
        """One node by id; a tag query says what it follows and skips (``tag_query``)."""
        result: dict[str, Any] = self._call("node", node_id)
        return result

    def metrics_snapshot(self) -> MetricsSnapshot:
        """The controller's figures now."""
        result: MetricsSnapshot = self._call("metrics_snapshot")
        return result

    def check_health(self) -> builtins.list[str]:
        """Probe every node actor now; returns the problems found."""
        result: builtins.list[str] = self._call("check_health")
        return result

    def shutdown(self) -> dict[str, Any]:
        """Stop every node actor and every running submission, then the controller itself."""
        import ray

        stopped: dict[str, Any] = self._call("shutdown")
        ray.kill(self.controller)
        # ray.kill only sends the kill: return once a call finds the controller gone, so that
        # nothing (a gateway's health check) still reaches it after shutdown.
        deadline = time.monotonic() + self.call_timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get(self.controller.__ray_ready__.remote(), timeout=1.0)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                break
            time.sleep(0.01)
        return stopped

    def infer(self, node: str, features: Mapping[str, Any],
              timeout_s: float = 10.0) -> dict[str, Any]:
        """Run inference node ``node`` on ``features`` (name -> values), ahead of its streams."""
        from runtime.inference.requests import read_request

        checked, timeout_s = read_request({"features": dict(features),
                                           "timeout_ms": timeout_s * 1000})
        return dict(self._call("infer", node, checked, timeout_s))

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self.controller, method).remote(*args),
                           timeout=self.call_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ControllerTimeoutError.after(method, self.call_timeout_s) from None
        except ray.exceptions.RayTaskError as exc:
            # Re-raise the controller's own error (UnknownSubmissionError, SpecError, ...).
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
