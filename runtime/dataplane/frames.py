"""Length-prefixed frames cut out of a byte stream as it arrives, without a task to read them.

A data connection (``runtime.dataplane.sockets``) sends frames, each a 4-byte big-endian length
and then that many bytes. ``FrameCutter`` is fed what the socket delivered (an asyncio
protocol's ``data_received``) and hands each whole frame to a callback at once, in order:

- a frame that arrived whole is a read-only view of the bytes received (no copy);
- a frame split over several receives is filled into one buffer of its size as its parts come
  (one copy), then handed over read-only.

Either way a frame is read-only, so arrays unpickled from it are read-only views, as Ray hands
them over.

>>> frames = []
>>> cutter = FrameCutter(lambda frame: frames.append(bytes(frame)))
>>> cutter.feed(b"\\x00\\x00\\x00\\x02hi\\x00\\x00")    # one whole frame, then half a length
>>> cutter.feed(b"\\x00\\x05wor")
>>> cutter.feed(b"ld\\x00\\x00\\x00\\x00")             # the rest, then an empty frame
>>> frames
[b'hi', b'world', b'']
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["LENGTH", "FrameCutter"]

#: The length before each frame.
LENGTH = struct.Struct("!I")


class FrameCutter:
    """Cuts the frames out of a stream fed piece by piece; ``on_frame`` gets each, in order."""

    def __init__(self, on_frame: Callable[[memoryview], None]) -> None:
        self._on_frame = on_frame
        #: The first bytes of a length that has not arrived whole.
        self._head = b""
        #: A frame arriving in parts, and how much of it has arrived.
        self._frame: bytearray | None = None
        self._filled = 0

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream; hand over every frame they complete."""
        view = memoryview(data)
        at, end = 0, len(data)
        while at < end:
            if self._frame is not None:
                # Step 1: a frame arriving in parts takes what it still lacks.
                take = min(len(self._frame) - self._filled, end - at)
                self._frame[self._filled:self._filled + take] = view[at:at + take]
                self._filled += take
                at += take
                if self._filled == len(self._frame):
                    frame, self._frame = self._frame, None
                    self._on_frame(memoryview(frame).toreadonly())
                continue
            # Step 2: the next frame's length, whole or pieced together.
            if self._head or end - at < LENGTH.size:
                missing = LENGTH.size - len(self._head)
                self._head += bytes(view[at:at + missing])
                at += min(missing, end - at)
                if len(self._head) < LENGTH.size:
                    return
                (length,) = LENGTH.unpack(self._head)
                self._head = b""
            else:
                (length,) = LENGTH.unpack_from(view, at)
                at += LENGTH.size
            # Step 3: a frame that is all here is handed over as it is; else it is filled in.
            if end - at >= length:
                self._on_frame(view[at:at + length])
                at += length
            else:
                self._frame, self._filled = bytearray(length), 0
