"""Awaitable calls from the gateway to a controller: the plain ``Controller`` or its actor."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamdag.errors import StreamdagError

if TYPE_CHECKING:
    from runtime.deployment.metrics import MetricsSnapshot

__all__ = ["ControllerCalls"]


class ControllerCalls:
    """Awaitable calls to a controller: the plain ``Controller`` or its Ray actor handle.

    A Ray method is called with ``.remote`` and its ref awaited; a plain method is called and
    awaited when it is a coroutine. A Ray task error is unwrapped to the StreamdagError the
    controller raised, so callers handle one set of exceptions.
    """

    def __init__(self, target: Any) -> None:
        self._target = target

    async def call(self, method: str, *args: Any) -> Any:
        """The result of ``target.method(*args)``."""
        bound = getattr(self._target, method)
        remote = getattr(bound, "remote", None)
        try:
            result = remote(*args) if callable(remote) else bound(*args)
            if inspect.isawaitable(result):
                result = await result
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
