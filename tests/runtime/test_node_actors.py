"""NodeActors: an unsubscribe is waited for however slow the producer is to take it, and
until the producer no longer sends on the edge."""

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
        return SimpleNamespace(error=None, finished=False, stats=None, sending_on=frozenset())

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


def _answering_producer(sending: set[str], started: asyncio.Event,
                        acknowledged: asyncio.Event, taken: list[str]) -> SimpleNamespace:
    """A producer that answers every probe at once; its unsubscribe starts once ``started``
    is set (a call Ray started late), stops sending on the edge, then waits for its consumer
    to acknowledge."""
    async def unsubscribe(edge: str) -> None:
        await started.wait()
        sending.discard(edge)  # NodeHost.unsubscribe's first step
        await acknowledged.wait()
        taken.append(edge)

    async def report() -> SimpleNamespace:
        return SimpleNamespace(error=None, finished=False, stats=None,
                               sending_on=frozenset(sending))

    return SimpleNamespace(unsubscribe=SimpleNamespace(remote=unsubscribe),
                           report=SimpleNamespace(remote=report))


async def test_a_producer_that_answers_but_has_not_started_the_unsubscribe_is_waited_for() -> None:
    actors = NodeActors("t", RuntimeSettings(), call_timeout_s=0.05)
    sending, taken = {"edge-1", "edge-2"}, []
    started, acknowledged = asyncio.Event(), asyncio.Event()
    actors.handles["producer"] = _answering_producer(sending, started, acknowledged, taken)

    detached = actors.unsubscribe("producer", "edge-1")
    done, _ = await asyncio.wait([detached], timeout=0.5)  # ten probes, each answered
    waited_while_sending = not done
    started.set()
    acknowledged.set()
    await asyncio.wait_for(detached, timeout=5.0)

    assert waited_while_sending
    assert taken == ["edge-1"]
    assert sending == {"edge-2"}


async def test_a_producer_that_no_longer_sends_on_the_edge_lets_its_consumer_go() -> None:
    actors = NodeActors("t", RuntimeSettings(), call_timeout_s=0.05)
    sending, taken = {"edge-1", "edge-2"}, []
    started, acknowledged = asyncio.Event(), asyncio.Event()
    started.set()  # started at once, but its consumer never acknowledges
    actors.handles["producer"] = _answering_producer(sending, started, acknowledged, taken)

    await asyncio.wait_for(actors.unsubscribe("producer", "edge-1"), timeout=5.0)

    assert sending == {"edge-2"}
    assert taken == []  # the call itself still waits on the consumer


def _tag_query_edge(data_connections: bool) -> tuple[NodeActors, list[object]]:
    """NodeActors with a tag query following ``strategy`` over edge ``e``; what the producer
    was told to send to is collected in the returned list."""
    import dataclasses

    settings = dataclasses.replace(RuntimeSettings(), data_connections=data_connections)
    actors = NodeActors("t", settings, call_timeout_s=1.0)
    targets: list[object] = []

    async def follow(edge: str, origin: str) -> int:
        return 3

    async def open_data_port() -> tuple[str, int]:
        return ("127.0.0.1", 40123)

    async def subscribe(edge: str, target: object, incarnation: int) -> None:
        targets.append((edge, target, incarnation))

    actors.handles["query"] = SimpleNamespace(follow=SimpleNamespace(remote=follow),
                                              open_data_port=SimpleNamespace(remote=open_data_port))
    actors.handles["strategy"] = SimpleNamespace(subscribe=SimpleNamespace(remote=subscribe))
    actors.origins["e"] = "strategy"
    return actors, targets


async def test_a_tag_query_edge_travels_over_a_data_connection() -> None:
    from runtime.dataplane.sockets import SocketTarget

    actors, targets = _tag_query_edge(data_connections=True)
    await actors.subscribe("e", "strategy", "query", 0)

    [(edge, target, incarnation)] = targets
    assert (edge, incarnation) == ("e", 3)
    assert isinstance(target, SocketTarget)
    assert (target.host, target.port) == ("127.0.0.1", 40123)


async def test_a_tag_query_edge_uses_actor_calls_with_data_connections_off() -> None:
    from runtime.dataplane.channels import RayTarget

    actors, targets = _tag_query_edge(data_connections=False)
    await actors.subscribe("e", "strategy", "query", 0)

    [(edge, target, incarnation)] = targets
    assert (edge, incarnation) == ("e", 3)
    assert isinstance(target, RayTarget)
    assert target.actor is actors.handles["query"]
