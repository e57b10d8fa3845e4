"""Channel: an acknowledged push leaves the credit window at once, a failed one fails the next."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.dataplane.channels import Channel
from runtime.dataplane.messages import Envelope, Watermark


class _Answered:
    """A target whose pushes are answered at once (done futures), or fail with ``error``."""

    def __init__(self, error: Exception | None = None) -> None:
        self.seqs: list[int] = []
        self.error = error

    def deliver(self, envelope: Envelope) -> asyncio.Future[Any]:
        self.seqs.append(envelope.seq)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.error is None:
            answer.set_result(None)
        else:
            answer.set_exception(self.error)
        return answer


def _runs_without_suspending(step: Any) -> bool:
    """Whether coroutine ``step`` finishes without giving the event loop a turn."""
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()
    return False


def test_an_acknowledged_push_frees_its_credit_without_a_turn_of_the_loop() -> None:
    async def scenario() -> tuple[list[bool], list[int], int, float]:
        target = _Answered()
        channel = Channel("a->b#0", target, credits=1)
        finished = [_runs_without_suspending(channel.send(Watermark(t))) for t in range(5)]
        return finished, target.seqs, channel.in_flight, channel.backpressure_wait_seconds

    finished, seqs, in_flight, waited = asyncio.run(scenario())
    assert finished == [True] * 5
    assert (seqs, in_flight, waited) == ([0, 1, 2, 3, 4], 1, 0.0)


def test_a_failed_push_fails_the_next_send_and_nothing_more_is_sent() -> None:
    async def scenario() -> tuple[list[int], str]:
        target = _Answered(RuntimeError("receiver broke"))
        channel = Channel("a->b#0", target, credits=4)
        await channel.send(Watermark(1))
        await asyncio.sleep(0)
        try:
            await channel.send(Watermark(2))
        except RuntimeError as error:
            return target.seqs, str(error)
        return target.seqs, "sent"

    assert asyncio.run(scenario()) == ([0], "receiver broke")
