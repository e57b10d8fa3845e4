"""Direct data connections between node actors: pushes over TCP, Ray for control only.

A push as a Ray actor call costs each side about 1 ms of CPU on this box (measured at 10k
events/s: ~2.5 ms per batch per actor, most of it Ray's submission, its hand-over to the
actor's event loop and its reply), whatever the batch holds. Over a connection of its own, a
push is one frame written and one small frame back, both on the event loops that produce and
consume it. The semantics of a channel do not change: a push's acknowledgement still comes once
the receiver processed it, so credits, ordering (``seq``), holds and rewinds work as before; a
receiver whose process died closes its connection, which fails every push in flight.

Frames, each after a 4-byte big-endian length:

- a push (sender to receiver): request id, incarnation, seq, ``sent_at``, the edge name, then
  the payloads pickled (protocol 5, numpy arrays out of band: ``pickled_payloads``), once per
  shipment whatever the number of subscribers;
- an answer (receiver to sender): request id, then nothing (processed) or the pickled exception
  that processing raised.

>>> from runtime.dataplane.messages import Watermark
>>> async def demo() -> list[str]:
...     seen: list[str] = []
...     async def push(envelope: Envelope) -> None:
...         seen.append(f"{envelope.edge} #{envelope.seq}: {envelope.payload}")
...     port = DataPort(push)
...     target = SocketTarget(*await port.open("127.0.0.1"))
...     await target.deliver(Envelope("a->b#0", 0, 7, Watermark(5)))
...     target.close()
...     await port.close()
...     return seen
>>> asyncio.run(demo())
['a->b#0 #7: Watermark(timestamp=5)']
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.dataplane.messages import Envelope, Payload
from runtime.dataplane.out_of_band import framed, unframed

__all__ = ["DataPort", "ReceiverGoneError", "SocketTarget", "node_address", "pickled_payloads",
           "unpickled_payloads"]

_LENGTH = struct.Struct("!I")
#: A push's fixed part: request id, incarnation, seq, sent_at, length of the edge name.
_PUSH = struct.Struct("!QQQdH")
#: An answer's fixed part: request id.
_ANSWER = struct.Struct("!Q")
#: Bytes a reader takes in before it stops reading until they are used (asyncio's default,
#: 64 KiB, pauses and resumes the socket many times for one large batch).
_READ_AHEAD = 4 * 2**20
#: Bytes a sender lets queue in its socket buffer before it waits for the receiver to read.
_HIGH_WATER = 8 * 2**20


class ReceiverGoneError(ConnectionError):
    """A push's receiver closed its data connection (its actor died or stopped)."""


def node_address() -> str:
    """The address other Ray nodes reach this process at (loopback outside Ray)."""
    import ray  # only a Ray actor asks, and it has imported Ray already

    if not ray.is_initialized():
        return "127.0.0.1"
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]  # untyped in Ray


def pickled_payloads(payloads: tuple[Payload, ...]) -> bytes:
    """The payloads of a push as they travel: numpy arrays out of band, after the pickle.

    The receiver's arrays are views of the frame it read (read-only, no copy), as Ray hands
    over arrays from its object store; the sender copies them once, into these bytes.

    >>> import numpy as np
    >>> (ts,) = unpickled_payloads(pickled_payloads((np.arange(3),)))
    >>> ts.tolist(), ts.flags.writeable
    ([0, 1, 2], False)
    """
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(payloads, protocol=5, buffer_callback=buffers.append)
    return b"".join(framed(data, [buffer.raw() for buffer in buffers]))


def unpickled_payloads(data: bytes | memoryview) -> tuple[Payload, ...]:
    """The payloads of ``pickled_payloads``, their arrays views of ``data``."""
    pickled, buffers = unframed(memoryview(data))
    payloads: tuple[Payload, ...] = pickle.loads(pickled, buffers=buffers)
    return payloads


class DataPort:
    """The receiving end in a node's process: a TCP server whose push frames go to ``push``.

    ``push`` returns once the envelope is processed; its outcome goes back as the answer.
    """

    def __init__(self, push: Callable[[Envelope], Awaitable[None]]) -> None:
        self._push = push
        self._server: asyncio.Server | None = None
        #: Every open connection's writer, by the task serving it.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.address: tuple[str, int] | None = None

    async def open(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (a free port); returns the address senders connect to."""
        if self.address is None:
            self._server = await asyncio.start_server(self._serve, host, 0, limit=_READ_AHEAD)
            port = self._server.sockets[0].getsockname()[1]
            self.address = (host, int(port))
        return self.address

    async def close(self) -> None:
        """Stop listening and close every connection (their senders' pushes fail)."""
        if self._server is not None:
            self._server.close()
        # Closed under their readers, which then end (cancelling them instead makes asyncio's
        # server log each cancellation as an error).
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections))
        self._server, self.address = None, None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        answers: set[asyncio.Task[None]] = set()
        try:
            while True:
                # Step 1: the next push frame, as it was sent (pushes start in that order).
                try:
                    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                    frame = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the sender went away: nothing to answer
                # Step 2: it is processed; its answer goes back once it is.
                answer = asyncio.ensure_future(self._answer(frame, writer))
                answers.add(answer)
                answer.add_done_callback(answers.discard)
        finally:
            for answer in list(answers):
                answer.cancel()
            writer.close()
            self._connections.pop(task, None)

    async def _answer(self, frame: bytes, writer: asyncio.StreamWriter) -> None:
        (request,) = _ANSWER.unpack_from(frame)  # a push starts with its request id
        try:
            await self._push(_unpack_push(frame))
            body = b""
        except Exception as exc:  # goes back to the sender, whose channel fails with it
            body = _pickled_error(exc)
        if not writer.is_closing():
            writer.write(_LENGTH.pack(_ANSWER.size + len(body)) + _ANSWER.pack(request) + body)


class SocketTarget:
    """A channel's receiver in another process, reached over a data connection of its own.

    It travels (pickles) as its address; each process that delivers through it opens its own
    connection on first use.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._link: _Link | None = None
        self._connecting: asyncio.Future[None] | None = None
        #: Pushes asked for while the connection opens, in call order, with their answers.
        self._queued: list[tuple[Envelope, bytes, asyncio.Future[None]]] = []
        self._closed = False
        #: Why the connection could not be opened: every push fails with it.
        self._failed: ReceiverGoneError | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (SocketTarget, (self.host, self.port))

    def __repr__(self) -> str:
        return f"SocketTarget({self.host!r}, {self.port})"

    def deliver(self, envelope: Envelope) -> Awaitable[None]:
        """Send ``envelope``; the awaitable completes once the receiver processed it."""
        return self._send(envelope, pickled_payloads(envelope.payloads))

    def deliver_shared(self, envelope: Envelope, shipment: Any) -> Awaitable[None]:
        """``deliver``, with the payloads pickled once for every subscriber of the shipment."""
        return self._send(envelope, shipment.pickled())

    def close(self) -> None:
        """Close this process's connection (pushes still in flight fail)."""
        self._closed = True
        if self._link is not None:
            self._link.close()

    def _send(self, envelope: Envelope, payloads: bytes) -> Awaitable[None]:
        if self._failed is not None:
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(self._failed)
            return failed
        if self._link is not None:
            # Written now, so frames leave in call order. A broken link fails the push: it is
            # never reopened, as the port may belong to another process by then.
            return self._link.send(envelope, payloads)
        # Queued until the connection is open, then written in call order before any later
        # push: nothing can overtake them.
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((envelope, payloads, answer))
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect_and_send_queued())
        return answer

    async def _connect_and_send_queued(self) -> None:
        # Step 1: connect; a failure fails every push asked for so far, and every later one.
        try:
            link = await self._connect()
        except ReceiverGoneError as exc:
            self._failed = exc
            queued, self._queued = self._queued, []
            for _, _, answer in queued:
                if not answer.done():
                    answer.set_exception(exc)
            return
        if self._closed:
            link.close()
        # Step 2: the queued pushes go out in call order, then later ones straight away.
        queued, self._queued = self._queued, []
        self._link = link
        for envelope, payloads, answer in queued:
            _chain(link.send(envelope, payloads), answer)

    async def _connect(self) -> _Link:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port,
                                                           limit=_READ_AHEAD)
        except OSError as exc:
            raise ReceiverGoneError(
                f"cannot connect to the node actor at {self.host}:{self.port}: its actor died "
                f"or stopped; {type(exc).__name__}") from exc
        return _Link(reader, writer, f"{self.host}:{self.port}")


def _chain(source: Awaitable[None], answer: asyncio.Future[None]) -> None:
    """Complete ``answer`` as ``source`` completes."""
    def copy(done: asyncio.Future[None]) -> None:
        if answer.done():
            return
        if done.cancelled():
            answer.cancel()
        elif done.exception() is not None:
            answer.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            answer.set_result(None)

    asyncio.ensure_future(source).add_done_callback(copy)


class _Link:
    """One open data connection: request ids, the answers awaited, a task reading them."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 where: str) -> None:
        self._writer = writer
        self._where = where
        self._next_request = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self.broken: Exception | None = None
        self._reading = asyncio.ensure_future(self._read_answers(reader))

    def send(self, envelope: Envelope, payloads: bytes) -> asyncio.Future[None]:
        """Write the push now; the future completes with the receiver's answer."""
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken is not None:
            answer.set_exception(self.broken)
            return answer
        request, self._next_request = self._next_request, self._next_request + 1
        edge = envelope.edge.encode()
        head = _PUSH.pack(request, envelope.incarnation, envelope.seq, envelope.sent_at,
                          len(edge))
        self._waiting[request] = answer
        self._writer.write(_LENGTH.pack(len(head) + len(edge) + len(payloads)) + head + edge)
        self._writer.write(payloads)
        transport = self._writer.transport
        if transport.get_write_buffer_size() > _HIGH_WATER:
            # The receiver reads slower than this sends (credits bound it anyway): the
            # answer of this push waits for the buffer to drain as well.
            return asyncio.ensure_future(self._drained_then(answer))
        return answer

    async def _drained_then(self, answer: asyncio.Future[None]) -> None:
        await self._writer.drain()
        await answer

    def close(self) -> None:
        """Close the connection; what waits for an answer fails."""
        self._fail(ReceiverGoneError(f"the data connection to {self._where} was closed"))
        self._writer.close()
        self._reading.cancel()

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                frame = await reader.readexactly(length)
                (request,) = _ANSWER.unpack_from(frame)
                answer = self._waiting.pop(request, None)
                if answer is None or answer.done():
                    continue
                if len(frame) > _ANSWER.size:
                    answer.set_exception(_unpickled_error(frame[_ANSWER.size:]))
                else:
                    answer.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # end of stream, reset, or a frame that makes no sense
            self._fail(ReceiverGoneError(
                f"the node actor at {self._where} closed its data connection: its actor died "
                f"or stopped; {type(exc).__name__}"))

    def _fail(self, error: Exception) -> None:
        if self.broken is None:
            self.broken = error
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(error)


def _unpack_push(frame: bytes) -> Envelope:
    _, incarnation, seq, sent_at, edge_length = _PUSH.unpack_from(frame)
    start = _PUSH.size + edge_length
    edge = frame[_PUSH.size:start].decode()
    first, *trailing = unpickled_payloads(memoryview(frame)[start:])
    return Envelope(edge, incarnation, seq, first, sent_at, tuple(trailing))


def _unpickled_error(data: bytes) -> Exception:
    try:
        error = pickle.loads(data)
    except Exception as exc:  # e.g. an exception class whose constructor pickle cannot call
        return RuntimeError(f"the receiver failed, and its error did not unpickle: {exc}")
    return error if isinstance(error, Exception) else RuntimeError(repr(error))


def _pickled_error(error: Exception) -> bytes:
    try:
        return pickle.dumps(error, protocol=5)
    except Exception:  # an exception that does not pickle still says what it was
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"), protocol=5)
