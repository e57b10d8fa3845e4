"""Cheap hops: one push per step (control messages ride with the batch), stored once for all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import streamdag as sd
from runtime.dataplane.channels import Channel, LocalTarget, Shipment
from runtime.dataplane.host import NodeHeldError, NodeHost
from runtime.dataplane.messages import Barrier, EndOfStream, Envelope, Payload, Watermark
from runtime.dataplane.worker import NodeWorker
from streamdag.batch import Batch
from streamdag.testing import ListSink, TestingSource


def _ticks() -> sd.Node:
    return sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})


def _batch(*times: int) -> Batch:
    return Batch.from_columns(ts=list(times), key=["a"] * len(times),
                              price=[float(t) for t in times])


def _kinds(envelope: Envelope) -> list[str]:
    return [type(payload).__name__ for payload in envelope.payloads]


def test_a_sources_batch_its_watermark_and_the_end_travel_in_one_push_each_step() -> None:
    ticks = _ticks()
    doubled = ticks.map("price * 2", name="doubled")

    async def scenario() -> tuple[list[Envelope], list[dict[str, object]]]:
        sent: list[Envelope] = []
        consumer = NodeHost(doubled.config(), capture=True)
        source = NodeHost(ticks.config(), source=lambda: TestingSource(
            [_batch(1, 2), _batch(3)]))
        await consumer.ready()
        await source.ready()
        consumer.connect_input("s->d", 0)

        async def record(envelope: Envelope) -> None:
            sent.append(envelope)
            await consumer.push(envelope)

        source.subscribe("s->d", LocalTarget(record))
        await source.start_source()
        await asyncio.wait_for(consumer.wait_finished(), 30)
        records = [r for b in consumer.results() for r in b.to_records()]
        for host in (source, consumer):
            await host.stop()
        return sent, records

    sent, records = asyncio.run(scenario())
    assert [(e.seq, _kinds(e)) for e in sent] == [
        (0, ["Batch", "Watermark"]), (1, ["Batch", "Watermark"]), (2, ["EndOfStream"])]
    assert [e.trailing for e in sent[:2]] == [(Watermark(2),), (Watermark(3),)]
    assert [(r["ts"], r["value"]) for r in records] == [(1, 2.0), (2, 4.0), (3, 6.0)]


def test_a_push_carrying_several_payloads_is_taken_in_order_once_and_after_its_gap() -> None:
    worker = NodeWorker(_ticks().map("price + 0", name="same").config())
    worker.connect("e", 0)
    late = Envelope("e", 0, 1, _batch(3), trailing=(Watermark(3), Barrier(1), EndOfStream()))
    assert worker.accept(late) == []  # seq 0 is missing: held, not processed
    outputs = worker.accept(Envelope("e", 0, 0, _batch(1, 2), trailing=(Watermark(2),)))
    kinds = [type(p).__name__ for p in outputs]
    assert kinds == ["Batch", "Watermark", "Batch", "Watermark", "Barrier", "EndOfStream"]
    batches = [p for p in outputs if isinstance(p, Batch)]
    assert [b.ts.tolist() for b in batches] == [[1, 2], [3]]
    assert [p for p in outputs if not isinstance(p, Batch)] == [
        Watermark(2), Watermark(3), Barrier(1), EndOfStream()]
    assert worker.accept(late) == []  # a duplicate push is dropped whole
    assert worker.stats.duplicates_dropped == 1
    assert sorted(worker.snapshots) == [1]


class _StoringTarget:
    """An actor-like target: takes a shipment's stored reference when it is shared."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def deliver(self, envelope: Envelope) -> None:
        self.calls.append(("copy", envelope.payloads))

    async def deliver_shared(self, envelope: Envelope, shipment: Shipment) -> None:
        self.calls.append(("stored", (envelope.seq, shipment.object_ref())))


def test_a_step_is_stored_once_for_every_actor_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray

    stored: list[tuple[Payload, ...]] = []

    def put(value: tuple[Payload, ...]) -> str:
        stored.append(value)
        return f"ref{len(stored)}"

    monkeypatch.setattr(ray, "put", put)
    payloads = (_batch(1), Watermark(1))

    async def scenario() -> tuple[list[_StoringTarget], list[tuple[Payload, ...]]]:
        targets = [_StoringTarget(), _StoringTarget()]
        in_process: list[tuple[Payload, ...]] = []

        async def take(envelope: Envelope) -> None:
            in_process.append(envelope.payloads)

        channels = [Channel(f"e{i}", t, credits=2) for i, t in enumerate(targets)]
        channels.append(Channel("local", LocalTarget(take), credits=2))
        for shared in (Shipment(payloads, share=True), Shipment(payloads, share=False)):
            for channel in channels:
                await channel.send(shared)
        for channel in channels:
            await channel.drain()
        return targets, in_process

    targets, in_process = asyncio.run(scenario())
    assert stored == [payloads]  # put once for both actors, for the shared shipment only
    for target in targets:
        assert target.calls == [("stored", (0, "ref1")), ("copy", payloads)]
    assert in_process == [payloads, payloads]


class _GatedSink(ListSink):
    """A sink whose flushes wait for ``gate``; or fail, when ``fails`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.flushed_batches: list[int] = []
        self.fails = False

    async def flush(self) -> None:
        await self.gate.wait()
        if self.fails:
            raise ConnectionError("the broker is gone")
        self.flushed_batches.append(len(self.batches))


def _sink_host(sink: _GatedSink) -> NodeHost:
    out = _ticks().to_topic("out-topic", name="out")
    host = NodeHost(out.config(), sink=lambda: sink)
    host.connect_input("in", 0)
    return host


def test_a_sink_takes_pushes_while_a_flush_is_out_and_acks_each_once_it_is_published() -> None:
    async def scenario() -> tuple[list[int], list[list[int]], list[bool]]:
        sink = _GatedSink()
        host = _sink_host(sink)
        await host.ready()
        deadline = asyncio.get_running_loop().time() + 10

        async def until(condition: Callable[[], bool]) -> None:
            while not condition():
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)

        first = asyncio.ensure_future(host.push(Envelope("in", 0, 0, _batch(1))))
        await until(lambda: len(sink.batches) == 1)  # written, its flush waits at the gate
        later = [asyncio.ensure_future(host.push(Envelope("in", 0, seq, _batch(seq + 1))))
                 for seq in (1, 2)]
        # The drain loop takes both though the first flush is still out.
        await until(lambda: host.worker.stats.events_in == 3)
        acked_early = [push.done() for push in (first, *later)]
        sink.gate.set()
        await asyncio.gather(first, *later)
        written = [b.ts.tolist() for b in sink.batches]
        await host.stop()
        return sink.flushed_batches, written, acked_early

    flushed, written, acked_early = asyncio.run(scenario())
    assert acked_early == [False, False, False]
    assert written == [[1], [2], [3]]
    assert flushed == [1, 3]  # the two pushes that came meanwhile went out in one flush


def test_a_failed_flush_fails_its_pushes_and_the_sink_holds() -> None:
    async def scenario() -> tuple[list[str], str]:
        sink = _GatedSink()
        sink.fails = True
        host = _sink_host(sink)
        await host.ready()
        pushes = [asyncio.ensure_future(host.push(Envelope("in", 0, seq, _batch(seq + 1))))
                  for seq in (0, 1)]
        sink.gate.set()
        outcomes = await asyncio.gather(*pushes, return_exceptions=True)
        with pytest.raises(NodeHeldError) as refused:
            await host.push(Envelope("in", 0, 2, _batch(3)))
        await host.stop()
        return [type(o).__name__ for o in outcomes], str(refused.value)

    outcomes, refusal = asyncio.run(scenario())
    assert outcomes[0] == "ConnectionError"
    assert outcomes[1] in ("ConnectionError", "NodeHeldError")
    assert refusal == ("node 'out' refused a push: it holds its input (ConnectionError: the "
                       "broker is gone)")
