"""A pickle with its large buffers beside it, uncopied: the framing of pushes and snapshots.

Pickle protocol 5 hands large buffers (numpy arrays) to a callback instead of copying them
into the pickle. ``framed`` lays the pickle and those buffers out one after another, after a
header that says how long each is, so they can be written (to a socket, to a file) without
being joined first; ``unframed`` finds them again as views of what was read:

1. a count ``n`` (unsigned 32-bit, little-endian);
2. ``n`` lengths (unsigned 64-bit, little-endian): the pickle's, then each buffer's;
3. the pickle, then the buffers, in order.

>>> import pickle
>>> import numpy as np
>>> buffers = []
>>> data = pickle.dumps(np.arange(3), protocol=5, buffer_callback=buffers.append)
>>> pickled, views = unframed(memoryview(b"".join(framed(data, [b.raw() for b in buffers]))))
>>> pickle.loads(pickled, buffers=views).tolist()
[0, 1, 2]
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["framed", "unframed"]


def framed(data: bytes, buffers: Sequence[memoryview]) -> list[bytes | memoryview]:
    """The header, the pickle ``data`` and its ``buffers``: parts to write one after another."""
    lengths = [len(data), *(buffer.nbytes for buffer in buffers)]
    return [struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths), data, *buffers]


def unframed(view: memoryview) -> tuple[memoryview, list[memoryview]]:
    """The pickle and its buffers in ``view`` (laid out by ``framed``), as views of it."""
    (count,) = struct.unpack_from("<I", view)
    lengths = struct.unpack_from(f"<{count}Q", view, 4)
    at = 4 + 8 * count
    parts = []
    for length in lengths:
        parts.append(view[at:at + length])
        at += length
    return parts[0], parts[1:]
