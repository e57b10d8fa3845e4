"""Pushes over data connections (``runtime.dataplane.sockets``): what a Ray hop now travels on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

import streamdag as sd
from runtime.dataplane.channels import Channel, Shipment
from runtime.dataplane.host import NodeHeldError, NodeHost
from runtime.dataplane.messages import EndOfStream, Envelope, Watermark
from runtime.dataplane.sockets import DataPort, ReceiverGoneError, SocketTarget
from streamdag.batch import Batch
from streamdag.testing import TestingSource


def _ticks() -> sd.Node:
    return sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})


def _batch(*times: int) -> Batch:
    return Batch.from_columns(ts=list(times), key=["a"] * len(times),
                              price=[float(t) for t in times])


def test_a_source_feeds_a_node_over_a_data_connection_exactly() -> None:
    ticks = _ticks()
    doubled = ticks.map("price * 2", name="doubled")

    async def scenario() -> tuple[list[tuple[int, float]], int]:
        consumer = NodeHost(doubled.config(), capture=True)
        source = NodeHost(ticks.config(), source=lambda: TestingSource(
            [_batch(1, 2), _batch(3), _batch(4, 5, 6)]))
        await consumer.ready()
        await source.ready()
        consumer.connect_input("s->d", 0)
        address = await consumer.open_data_port("127.0.0.1")
        source.subscribe("s->d", SocketTarget(*address))
        await source.start_source()
        await asyncio.wait_for(consumer.wait_finished(), 30)
        await asyncio.wait_for(source.wait_finished(), 30)
        records = [(r["ts"], r["value"]) for b in consumer.results() for r in b.to_records()]
        events_out = source.stats().events_out  # counted once the consumer acknowledged
        for host in (source, consumer):
            await host.stop()
        return records, events_out

    records, events_out = asyncio.run(scenario())
    assert records == [(1, 2.0), (2, 4.0), (3, 6.0), (4, 8.0), (5, 10.0), (6, 12.0)]
    assert events_out == 6


def test_pushes_in_flight_arrive_whole_and_in_order_and_each_answer_is_its_own() -> None:
    async def scenario() -> tuple[list[tuple[int, list[int], tuple[object, ...]]], int]:
        seen: list[tuple[int, list[int], tuple[object, ...]]] = []
        release = asyncio.Event()

        async def push(envelope: Envelope) -> None:
            assert isinstance(envelope.payload, Batch)
            seen.append((envelope.seq, envelope.payload.ts.tolist(), envelope.trailing))
            await release.wait()  # every push stays in flight until all were sent

        port = DataPort(push)
        channel = Channel("a->b#0", SocketTarget(*await port.open("127.0.0.1")), credits=8)
        acks = [await channel.send(Shipment((_batch(2 * i, 2 * i + 1), Watermark(2 * i + 1))))
                for i in range(8)]
        while len(seen) < 8:
            await asyncio.sleep(0.001)
        in_flight = channel.in_flight
        release.set()
        await asyncio.gather(*acks)
        await channel.drain()
        await port.close()
        return seen, in_flight

    seen, in_flight = asyncio.run(scenario())
    assert in_flight == 8
    assert seen == [(i, [2 * i, 2 * i + 1], (Watermark(2 * i + 1),)) for i in range(8)]


def test_pushes_asked_for_while_connecting_leave_before_any_later_one() -> None:
    async def scenario() -> list[int]:
        seen: list[int] = []

        async def push(envelope: Envelope) -> None:
            seen.append(envelope.seq)

        port = DataPort(push)
        target = SocketTarget(*await port.open("127.0.0.1"))
        early = [target.deliver(Envelope("e", 0, seq, Watermark(seq))) for seq in range(4)]

        async def as_soon_as_connected() -> None:  # a push the moment the link exists
            while getattr(target, "_link", None) is None:
                await asyncio.sleep(0)
            await target.deliver(Envelope("e", 0, 4, Watermark(4)))

        await asyncio.gather(as_soon_as_connected(), *early)
        target.close()
        await port.close()
        return seen

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_pushes_to_a_port_nobody_listens_on_all_fail_with_the_same_cause() -> None:
    async def scenario() -> list[str]:
        port = DataPort(lambda envelope: asyncio.sleep(0))
        address = await port.open("127.0.0.1")
        await port.close()  # nobody listens there any more
        target = SocketTarget(*address)
        first = [asyncio.ensure_future(target.deliver(Envelope("e", 0, seq, Watermark(seq))))
                 for seq in range(2)]
        await asyncio.wait(first)
        later = asyncio.ensure_future(target.deliver(Envelope("e", 0, 2, Watermark(2))))
        await asyncio.wait([later])
        return [type(push.exception()).__name__ for push in [*first, later]]

    assert asyncio.run(scenario()) == ["ReceiverGoneError"] * 3


def test_a_receiver_that_holds_fails_the_senders_channel_with_its_own_error() -> None:
    async def scenario() -> BaseException | None:
        consumer = NodeHost(_ticks().map("price * 2", name="doubled").config())
        await consumer.ready()
        consumer.connect_input("s->d", 0)
        channel = Channel("s->d", SocketTarget(*await consumer.open_data_port("127.0.0.1")),
                          credits=2)
        await consumer.hold("the region failed")
        ack = await channel.send(_batch(1))
        await asyncio.wait([ack])
        await consumer.stop()
        return ack.exception()

    error = asyncio.run(scenario())
    assert isinstance(error, NodeHeldError)
    assert str(error) == ("node 'doubled' refused a push: it holds its input (NodeHeldError: "
                          "node 'doubled' holds its input: the region failed)")


def test_a_receiver_gone_fails_the_push_in_flight_and_every_later_one() -> None:
    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        never = asyncio.Event()

        async def push(envelope: Envelope) -> None:
            await never.wait()

        port = DataPort(push)
        target = SocketTarget(*await port.open("127.0.0.1"))
        in_flight = asyncio.ensure_future(target.deliver(Envelope("e", 0, 0, _batch(1))))
        await asyncio.sleep(0.05)
        await port.close()  # as the receiver's process exiting closes its connections
        await asyncio.wait([in_flight])
        later = asyncio.ensure_future(target.deliver(Envelope("e", 0, 1, EndOfStream())))
        await asyncio.wait([later])
        return in_flight.exception(), later.exception()

    in_flight, later = asyncio.run(scenario())
    assert isinstance(in_flight, ReceiverGoneError)
    assert str(in_flight).startswith("the node actor at 127.0.0.1:")
    assert str(in_flight).endswith(
        " closed its data connection: its actor died or stopped; end of stream")
    assert later is in_flight  # never reconnected: the port may be another process's by then


def _explode() -> None:
    raise ValueError("this payload cannot be rebuilt here")


class _Unrebuildable:
    def __reduce__(self) -> tuple[object, ...]:
        return (_explode, ())


def test_a_push_that_does_not_unpickle_fails_alone_and_the_connection_goes_on() -> None:
    async def scenario() -> tuple[BaseException | None, list[int]]:
        seqs: list[int] = []

        async def push(envelope: Envelope) -> None:
            seqs.append(envelope.seq)

        port = DataPort(push)
        target = SocketTarget(*await port.open("127.0.0.1"))
        bomb: Any = _Unrebuildable()
        bad = asyncio.ensure_future(target.deliver(Envelope("e", 0, 0, bomb)))
        await asyncio.wait([bad])
        await target.deliver(Envelope("e", 0, 1, Watermark(3)))
        await port.close()
        return bad.exception(), seqs

    error, seqs = asyncio.run(scenario())
    assert isinstance(error, ValueError) and str(error) == "this payload cannot be rebuilt here"
    assert seqs == [1]


def test_a_receiver_never_reached_fails_the_push() -> None:
    async def scenario() -> BaseException | None:
        port = DataPort(lambda envelope: asyncio.sleep(0))
        host, number = await port.open("127.0.0.1")
        await port.close()  # nothing listens there any more
        push = asyncio.ensure_future(SocketTarget(host, number).deliver(
            Envelope("e", 0, 0, Watermark(1))))
        await asyncio.wait([push])
        return push.exception()

    error = asyncio.run(scenario())
    assert isinstance(error, ReceiverGoneError)
    assert str(error).endswith(": its actor died or stopped; ConnectionRefusedError")


def test_a_shipment_is_encoded_once_for_every_data_connection() -> None:
    async def scenario() -> tuple[list[np.ndarray], list[np.ndarray]]:
        got: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        ports = []
        for bucket in got:
            async def push(envelope: Envelope, bucket: list[np.ndarray] = bucket) -> None:
                assert isinstance(envelope.payload, Batch)
                bucket.append(envelope.payload.ts)

            ports.append(DataPort(push))
        targets = [SocketTarget(*await port.open("127.0.0.1")) for port in ports]
        shipment = Shipment((_batch(7, 8, 9),), share=True)
        first = shipment.encoded()
        for index, target in enumerate(targets):
            await target.deliver_shared(Envelope("e", 0, index, _batch(0)), shipment)
        assert shipment.encoded() is first
        for port in ports:
            await port.close()
        return got

    got = asyncio.run(scenario())
    # The shipment's payloads, not the envelope's own: they were encoded once, for both.
    assert [ts.tolist() for bucket in got for ts in bucket] == [[7, 8, 9], [7, 8, 9]]


def test_a_batch_arrives_equal_and_read_only_as_ray_hands_arrays_over() -> None:
    sent = Batch.from_columns(ts=[5, 6, 7], key=["a", "bb", "a"], price=[1.5, -2.0, 3.25])

    async def scenario() -> Batch:
        got: list[Batch] = []

        async def push(envelope: Envelope) -> None:
            assert isinstance(envelope.payload, Batch)
            got.append(envelope.payload)

        port = DataPort(push)
        await SocketTarget(*await port.open("127.0.0.1")).deliver(Envelope("e", 0, 0, sent))
        await port.close()
        return got[0]

    got = asyncio.run(scenario())
    assert got.to_records() == sent.to_records()
    # The kernels were warmed up for read-only arrays (``NodeWorker.warm_up``): no second
    # variant to load on the first batch.
    assert [a.flags.writeable for a in (got.ts, got.key, got.columns["price"])] == [False] * 3


def test_a_socket_target_travels_as_its_address_alone() -> None:
    import pickle

    target = SocketTarget("127.0.0.1", 4242)
    copy = pickle.loads(pickle.dumps(target))
    assert (copy.host, copy.port) == ("127.0.0.1", 4242)
    assert repr(copy) == "SocketTarget('127.0.0.1', 4242)"


def test_a_data_port_keeps_its_address_until_closed() -> None:
    async def scenario() -> tuple[bool, object]:
        port = DataPort(lambda envelope: asyncio.sleep(0))
        first = await port.open("127.0.0.1")
        again = await port.open("127.0.0.1")
        await port.close()
        return first == again, port.address

    same, after = asyncio.run(scenario())
    assert (same, after) == (True, None)


class _FakeActor:
    """Stands for a Ray actor handle: ``handle.method.remote(*args)`` logs and answers."""

    def __init__(self, log: list[tuple[str, tuple[object, ...]]], answers: dict[str, object]):
        self._log = log
        self._answers = answers

    def __getattr__(self, method: str) -> object:
        log, answers = self._log, self._answers

        class _Method:
            @staticmethod
            def remote(*args: object) -> asyncio.Future[object]:
                log.append((method, args))
                answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                answer.set_result(answers.get(method))
                return answer

        return _Method()


def test_ray_nodes_wire_an_edge_over_a_data_connection_unless_told_not_to() -> None:
    from runtime.dataplane.channels import RayTarget
    from runtime.dataplane.host import RuntimeSettings
    from runtime.runners.ray_nodes import RayNodes

    def wire(settings: RuntimeSettings) -> tuple[list[str], object]:
        log: list[tuple[str, tuple[object, ...]]] = []
        nodes = RayNodes(settings)
        nodes.handles = {"up": _FakeActor(log, {}),
                         "down": _FakeActor(log, {"open_data_port": ("10.0.0.7", 4321)})}
        asyncio.run(nodes.subscribe("up->down#0", "up", "down", 0))
        return [method for method, _ in log], log[-1][1][1]

    calls, target = wire(RuntimeSettings())
    assert calls == ["connect_input", "open_data_port", "subscribe"]
    assert isinstance(target, SocketTarget) and (target.host, target.port) == ("10.0.0.7", 4321)
    calls, target = wire(RuntimeSettings(data_connections=False))
    assert calls == ["connect_input", "subscribe"]
    assert isinstance(target, RayTarget)


def test_a_deployment_takes_data_connections_from_its_settings(tmp_path: Path) -> None:
    from runtime.deployment.controller import Controller
    from streamdag.config import load_settings

    file = tmp_path / "s.toml"
    file.write_text(f'name = "dc"\nstate_dir = "{tmp_path}"\n[runtime]\ndata_connections = false\n')
    off = Controller(load_settings(file, environ={}), bootstrap_servers="127.0.0.1:1",
                     state_dir=str(tmp_path / "off"))
    on = Controller(load_settings(None, environ={"STREAMDAG_STATE_DIR": str(tmp_path)}),
                    bootstrap_servers="127.0.0.1:1", state_dir=str(tmp_path / "on"))
    assert (off._actors.settings.data_connections, on._actors.settings.data_connections) == (
        False, True)
