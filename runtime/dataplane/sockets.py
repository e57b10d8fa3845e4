"""Direct data connections between node actors: pushes over TCP, Ray for control only.

A push as a Ray actor call costs each side about 1 ms of CPU on this box (measured at 10k
events/s: ~2.5 ms per batch per actor, most of it Ray's submission, its hand-over to the
actor's event loop and its reply), whatever the batch holds. Over a connection of its own, a
push is one frame written (one system call) and one small frame back, both on the event loops
that produce and consume it; both ends are asyncio protocols that cut frames out of what
arrives (``runtime.dataplane.frames``) and hand them on at once, with no reading task and no
task per push (a host's ``push_nowait`` answers with a future). What a receiver takes in is
bounded by the senders' credits, not by a read-ahead limit. The semantics of a channel do not
change: a push's acknowledgement still comes once the receiver processed it, so credits,
ordering (``seq``), holds and rewinds work as before; a receiver whose process died closes its
connection, which fails every push in flight.

Frames, each after a 4-byte big-endian length:

- a push (sender to receiver): request id, incarnation, seq, ``sent_at``, the edge name, then
  the payloads packed (``runtime.dataplane.payload_codec``: batches and control messages with
  ``struct``, arrays raw; pickle for anything else), once per shipment whatever the number of
  subscribers;
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
import functools
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from runtime.dataplane.frames import LENGTH, FrameCutter
from runtime.dataplane.messages import Envelope
from runtime.dataplane.payload_codec import decoded_payloads, encoded_payloads

__all__ = ["DataPort", "ReceiverGoneError", "SocketTarget", "node_address"]

#: A push's fixed part: request id, incarnation, seq, sent_at, length of the edge name.
_PUSH = struct.Struct("!QQQdH")
#: ...and with the frame's length before it, packed in one call.
_LENGTH_AND_PUSH = struct.Struct(LENGTH.format + _PUSH.format.lstrip("!"))
#: An answer's fixed part: request id.
_ANSWER = struct.Struct("!Q")
#: An answer's frame length and request id, packed in one call.
_EMPTY_ANSWER = struct.Struct(LENGTH.format + _ANSWER.format.lstrip("!"))
#: Pushes whose payloads are smaller than this are written joined to their header, in one
#: system call; larger ones are written as they are, not copied again.
_JOINED_BELOW = 256 * 2**10
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


class DataPort:
    """The receiving end in a node's process: a TCP server whose push frames go to ``push``.

    ``push`` returns an awaitable that completes once the envelope is processed (a future, as
    ``NodeHost.push_nowait`` returns, costs no task); its outcome goes back as the answer.
    Frames are cut out as they arrive (``FrameCutter``), no reading task: pushes are handed
    to ``push`` in the order they were sent.
    """

    def __init__(self, push: Callable[[Envelope], Awaitable[None]]) -> None:
        self._push = push
        self._server: asyncio.AbstractServer | None = None
        #: Every open connection.
        self._connections: set[_PushConnection] = set()
        self.address: tuple[str, int] | None = None

    async def open(self, host: str) -> tuple[str, int]:
        """Listen on ``host`` (a free port); returns the address senders connect to."""
        if self.address is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _PushConnection(self), host, 0)
            port = self._server.sockets[0].getsockname()[1]
            self.address = (host, int(port))
        return self.address

    async def close(self) -> None:
        """Stop listening and close every connection (their senders' pushes fail)."""
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        if connections:  # each has let go of what it was processing
            await asyncio.wait([connection.closed for connection in connections])
        self._server, self.address = None, None


class _PushConnection(asyncio.Protocol):
    """One sender's connection to a ``DataPort``: push frames in, answers out."""

    def __init__(self, port: DataPort) -> None:
        self._port = port
        self._transport: asyncio.Transport | None = None
        self._frames = FrameCutter(self._on_frame)
        #: Pushes handed over and not processed yet (cancelled if the sender goes away).
        self._processing: set[asyncio.Future[None]] = set()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A sender connected."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._port._connections.add(self)

    def data_received(self, data: bytes) -> None:
        """Hand over every push these bytes complete."""
        self._frames.feed(data)

    def abort(self) -> None:
        """Close at once, unanswered (the port closes)."""
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """The sender went away (or the port closed): nothing more to answer."""
        self._port._connections.discard(self)
        for processing in list(self._processing):
            processing.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    def _on_frame(self, frame: memoryview) -> None:
        # Step 1: the push, as it was sent; one that does not unpickle fails alone.
        (request,) = _ANSWER.unpack_from(frame)  # a push starts with its request id
        try:
            outcome = self._port._push(_unpack_push(frame))
        except Exception as exc:  # goes back to the sender, whose channel fails with it
            self._answer(request, exc)
            return
        # Step 2: its answer goes back once it is processed.
        processing = (outcome if isinstance(outcome, asyncio.Future)
                      else asyncio.ensure_future(outcome))
        self._processing.add(processing)
        processing.add_done_callback(functools.partial(self._processed, request))

    def _processed(self, request: int, processing: asyncio.Future[None]) -> None:
        self._processing.discard(processing)
        if processing.cancelled():
            return  # the connection is gone
        error = processing.exception()
        self._answer(request, error if error is None or isinstance(error, Exception)
                     else RuntimeError(f"{type(error).__name__}: {error}"))

    def _answer(self, request: int, error: Exception | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if error is None:
            transport.write(_EMPTY_ANSWER.pack(_ANSWER.size, request))
            return
        body = _pickled_error(error)
        transport.write(_EMPTY_ANSWER.pack(_ANSWER.size + len(body), request) + body)


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

    def deliver(self, envelope: Envelope) -> asyncio.Future[None]:
        """Send ``envelope``; the future completes once the receiver processed it."""
        return self._send(envelope, encoded_payloads(envelope.payloads))

    def deliver_shared(self, envelope: Envelope, shipment: Any) -> asyncio.Future[None]:
        """``deliver``, with the payloads encoded once for every subscriber of the shipment."""
        return self._send(envelope, shipment.encoded())

    def close(self) -> None:
        """Close this process's connection (pushes still in flight fail)."""
        self._closed = True
        if self._link is not None:
            self._link.close()

    def _send(self, envelope: Envelope, payloads: bytes) -> asyncio.Future[None]:
        if self._link is not None:
            # Written now, so frames leave in call order. A broken link fails the push: it is
            # never reopened, as the port may belong to another process by then.
            return self._link.send(envelope, payloads)
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._failed is not None:
            answer.set_exception(self._failed)
            return answer
        # Queued until the connection is open, then written in call order before any later
        # push: nothing can overtake them.
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
        where = f"{self.host}:{self.port}"
        try:
            _, link = await asyncio.get_running_loop().create_connection(
                lambda: _Link(where), self.host, self.port)
        except OSError as exc:
            raise ReceiverGoneError(
                f"cannot connect to the node actor at {where}: its actor died or stopped; "
                f"{type(exc).__name__}") from exc
        return link


def _chain(source: asyncio.Future[None], answer: asyncio.Future[None]) -> None:
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

    source.add_done_callback(copy)


class _Link(asyncio.Protocol):
    """One open data connection: request ids, the answers awaited, answers cut as they come."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._next_request = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._frames = FrameCutter(self._on_answer)
        #: Whether the socket's send buffer is over ``_HIGH_WATER``, and who waits for it.
        self._paused = False
        self._drained: list[asyncio.Future[None]] = []
        self.broken: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Connected: pause past ``_HIGH_WATER`` bytes unsent."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)

    def send(self, envelope: Envelope, payloads: bytes) -> asyncio.Future[None]:
        """Write the push now; the future completes with the receiver's answer."""
        answer: asyncio.Future[None] = self._loop.create_future()
        if self.broken is not None:
            answer.set_exception(self.broken)
            return answer
        assert self._transport is not None
        request, self._next_request = self._next_request, self._next_request + 1
        edge = envelope.edge.encode()
        head = _LENGTH_AND_PUSH.pack(_PUSH.size + len(edge) + len(payloads), request,
                                     envelope.incarnation, envelope.seq, envelope.sent_at,
                                     len(edge))
        self._waiting[request] = answer
        if len(payloads) < _JOINED_BELOW:  # one write, one system call
            self._transport.write(b"".join((head, edge, payloads)))
        else:  # large: not copied again
            self._transport.write(head + edge)
            self._transport.write(payloads)
        if self._paused:
            # The receiver reads slower than this sends (credits bound it anyway): the
            # answer of this push waits for the buffer to drain as well.
            return asyncio.ensure_future(self._drained_then(answer))
        return answer

    async def _drained_then(self, answer: asyncio.Future[None]) -> None:
        if self._paused:
            drained: asyncio.Future[None] = self._loop.create_future()
            self._drained.append(drained)
            await drained
        await answer

    def pause_writing(self) -> None:
        """More than ``_HIGH_WATER`` bytes wait to be sent."""
        self._paused = True

    def resume_writing(self) -> None:
        """The send buffer drained."""
        self._paused = False
        self._wake_drained()

    def _wake_drained(self) -> None:
        drained, self._drained = self._drained, []
        for waiter in drained:
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Complete the pushes these answers are for."""
        try:
            self._frames.feed(data)
        except Exception as exc:  # a frame that makes no sense: the connection is unusable
            self._fail(ReceiverGoneError(
                f"the data connection to {self._where} sent an answer that makes no sense; "
                f"{type(exc).__name__}: {exc}"))
            assert self._transport is not None
            self._transport.abort()

    def _on_answer(self, frame: memoryview) -> None:
        (request,) = _ANSWER.unpack_from(frame)
        answer = self._waiting.pop(request, None)
        if answer is None or answer.done():
            return
        if len(frame) > _ANSWER.size:
            answer.set_exception(_unpickled_error(bytes(frame[_ANSWER.size:])))
        else:
            answer.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The receiver closed the connection (its actor died or stopped), or this side did."""
        self._fail(ReceiverGoneError(
            f"the node actor at {self._where} closed its data connection: its actor died or "
            f"stopped; {type(exc).__name__ if exc is not None else 'end of stream'}"))

    def close(self) -> None:
        """Close the connection; what waits for an answer fails."""
        self._fail(ReceiverGoneError(f"the data connection to {self._where} was closed"))
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: Exception) -> None:
        if self.broken is None:
            self.broken = error
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            if not answer.done():
                answer.set_exception(error)
        self._wake_drained()


def _unpack_push(frame: memoryview) -> Envelope:
    _, incarnation, seq, sent_at, edge_length = _PUSH.unpack_from(frame)
    start = _PUSH.size + edge_length
    edge = bytes(frame[_PUSH.size:start]).decode()
    first, *trailing = decoded_payloads(frame[start:])
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
