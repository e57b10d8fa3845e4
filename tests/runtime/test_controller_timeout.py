"""A driver's Deployment handle gives up on a controller that does not answer, and says so."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray

from runtime.deployment.controller_calls import ControllerTimeoutError
from runtime.deployment.handle import Deployment
from streamdag.config import Settings


@ray.remote(num_cpus=0)
class _StuckController:
    """Answers ``list_submissions``; ``status`` never returns (a controller stuck in a call)."""

    async def list_submissions(self) -> list[dict[str, Any]]:
        return []

    async def status(self, submission_id: str) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("never answers")


def test_a_call_the_controller_never_answers_raises_after_the_deadline(
    ray_session: None,
) -> None:
    controller: Any = _StuckController.remote()  # type: ignore[attr-defined]
    try:
        assert ray.get(controller.list_submissions.remote(), timeout=120) == []  # it has started
        deployment = Deployment(controller, Settings(), call_timeout_s=0.5)
        assert deployment.list() == []
        with pytest.raises(ControllerTimeoutError) as raised:
            deployment.status("g-1")
        assert str(raised.value).startswith(
            "the deployment's controller did not answer 'status' within 0.5 s; it may still be "
            "carrying it out")
        assert deployment.list() == []  # the controller goes on answering other calls
    finally:
        ray.kill(controller)
