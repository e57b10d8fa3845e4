"""NodeActors: an unsubscribe is waited for however slow the producer is to take it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from runtime.dataplane.host import RuntimeSettings
from runtime.deployment.node_actors import NodeActors


def _producer(taken: list[str], release: asyncio.Event) -> SimpleNamespace:
    async def unsubscribe(edge: str) -> None:
        await release.wait()  # a producer busy with a long batch takes the call late
        taken.append(edge)

    async def report() -> SimpleNamespace:
        await release.wait()  # ...and answers no probe meanwhile
        return SimpleNamespace(error=None, finished=False, stats=None)

    return SimpleNamespace(unsubscribe=SimpleNamespace(remote=unsubscribe),
                           report=SimpleNamespace(remote=report))


async def test_an_unsubscribe_slower_than_the_call_timeout_is_not_given_up_on() -> None:
    actors = NodeActors("t", RuntimeSettings(), call_timeout_s=0.05)
    taken: list[str] = []
    release = asyncio.Event()
    actors.handles["producer"] = _producer(taken, release)

    detached = actors.unsubscribe("producer", "edge-1")
    done, _ = await asyncio.wait([detached], timeout=0.5)  # ten call timeouts
    still_waiting = not done
    release.set()
    await asyncio.wait_for(detached, timeout=5.0)

    assert still_waiting
    assert taken == ["edge-1"]


async def test_unsubscribing_a_producer_that_is_gone_ends_at_once() -> None:
    actors = NodeActors("t", RuntimeSettings(), call_timeout_s=10.0)
    await asyncio.wait_for(actors.unsubscribe("gone", "edge-1"), timeout=1.0)
