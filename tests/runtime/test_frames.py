"""FrameCutter: frames cut out of a stream however it was split, and big pushes whole."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.dataplane.frames import LENGTH, FrameCutter
from runtime.dataplane.messages import Envelope
from runtime.dataplane.sockets import DataPort, SocketTarget
from streamdag.batch import Batch


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.binary(max_size=40), max_size=8),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_frames_come_out_whole_in_order_and_read_only_however_the_stream_is_split(
        frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(LENGTH.pack(len(frame)) + frame for frame in frames)
    got: list[tuple[bytes, bool]] = []
    cutter = FrameCutter(lambda frame: got.append((bytes(frame), frame.readonly)))
    bounds = sorted({0, len(stream), *(cut for cut in cuts if cut < len(stream))})
    for start, end in itertools.pairwise(bounds):
        cutter.feed(stream[start:end])
    assert got == [(frame, True) for frame in frames]


def test_a_push_larger_than_a_socket_read_arrives_whole_and_read_only() -> None:
    size = 300_000  # about 7 MB pickled: many reads, and written without being joined
    sent = Batch(np.arange(size, dtype=np.int64), np.array([b"k%d" % (i % 97)
                                                            for i in range(size)]),
                 {"price": np.linspace(0.0, 1.0, size)})

    async def scenario() -> list[Batch]:
        got: list[Batch] = []

        async def push(envelope: Envelope) -> None:
            assert isinstance(envelope.payload, Batch)
            got.append(envelope.payload)

        port = DataPort(push)
        target = SocketTarget(*await port.open("127.0.0.1"))
        await asyncio.gather(*(target.deliver(Envelope("e", 0, seq, sent)) for seq in range(2)))
        target.close()
        await port.close()
        return got

    got = asyncio.run(scenario())
    assert len(got) == 2
    for batch in got:
        assert np.array_equal(batch.ts, sent.ts) and np.array_equal(batch.key, sent.key)
        assert np.array_equal(batch.columns["price"], sent.columns["price"])
        assert not batch.ts.flags.writeable and not batch.columns["price"].flags.writeable
