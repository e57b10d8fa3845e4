"""Awaitable calls from the gateway to a controller: the plain ``Controller`` or its actor."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runtime.runners.ray_nodes import awaited
from streamdag.errors import StreamdagError

if TYPE_CHECKING:
    from runtime.deployment.metrics import MetricsSnapshot

__all__ = ["CONTROLLER_CALL_TIMEOUT_S", "ControllerCalls", "ControllerTimeoutError"]

#: How long a caller waits for the controller's answer to one call. A submission creates and
#: readies actors (each within the 60 s ready timeout), so it can take a while on a busy box;
#: past this the caller is told so instead of waiting forever on a controller that is stuck.
CONTROLLER_CALL_TIMEOUT_S = 300.0


class ControllerTimeoutError(StreamdagError):
    """The controller did not answer a call in time (it may still carry the call out)."""

    @classmethod
    def after(cls, method: str, timeout_s: float) -> ControllerTimeoutError:
        """The error for ``method`` unanswered after ``timeout_s`` seconds."""
        return cls(
            f"the deployment's controller did not answer {method!r} within {timeout_s:g} s; "
            "it may still be carrying it out: check `streamdag status` and the deployment log "
            "(<state dir>/<name>/deployment.log) before retrying")


class ControllerCalls:
    """Awaitable calls to a controller: the plain ``Controller`` or its Ray actor handle.

    A Ray method is called with ``.remote`` and its ref awaited; a plain method is called and
    awaited when it is a coroutine. A Ray task error is unwrapped to the StreamdagError the
    controller raised, so callers handle one set of exceptions.
    """

    def __init__(self, target: Any, timeout_s: float = CONTROLLER_CALL_TIMEOUT_S) -> None:
        self._target = target
        self.timeout_s = timeout_s

    async def call(self, method: str, *args: Any) -> Any:
        """The result of ``target.method(*args)``; ControllerTimeoutError after ``timeout_s``."""
        bound = getattr(self._target, method)
        remote = getattr(bound, "remote", None)
        try:
            result = remote(*args) if callable(remote) else bound(*args)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(awaited(result), self.timeout_s)
        except TimeoutError:
            raise ControllerTimeoutError.after(method, self.timeout_s) from None
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StreamdagError):
                raise cause from None
            raise
        return result

    async def submit_spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a validated spec; the submission with its id and diff."""
        return dict(await self.call("submit_spec", dict(spec)))

    async def remove(self, submission_id: str) -> dict[str, Any]:
        """Remove a submission."""
        return dict(await self.call("remove", submission_id))

    async def stop(self, submission_id: str) -> dict[str, Any]:
        """Stop a submission with a final checkpoint."""
        return dict(await self.call("stop", submission_id))

    async def resume(self, submission_id: str) -> dict[str, Any]:
        """Resume a stopped submission from its final checkpoint."""
        return dict(await self.call("resume", submission_id))

    async def checkpoints(self, submission_id: str) -> list[dict[str, Any]]:
        """The checkpoints and recoveries of a submission's regions."""
        return list(await self.call("checkpoints", submission_id))

    async def list_submissions(self) -> list[dict[str, Any]]:
        """Every submission."""
        return list(await self.call("list_submissions"))

    async def status(self, submission_id: str) -> dict[str, Any]:
        """One submission's state, cause, diff and nodes."""
        return dict(await self.call("status", submission_id))

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node of the deployment."""
        return list(await self.call("nodes"))

    async def node(self, node_id: str) -> dict[str, Any]:
        """One node of the deployment (a tag query with what it follows and skips)."""
        return dict(await self.call("node", node_id))

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """The controller's figures now, for the Prometheus collector."""
        snapshot: MetricsSnapshot = await self.call("metrics_snapshot")
        return snapshot
