"""Record batches built in numba are byte for byte what aiokafka's own builder writes."""

from __future__ import annotations

import numpy as np
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.record_batches import RecordColumns

_NAME = "streamdag.id"


def _reference(keys: list[bytes], values: list[bytes], stamps: list[int],
               ids: list[bytes | None], position: int, limit: int) -> tuple[bytes, int]:
    builder = BatchBuilder(limit, 0)
    end = position
    while end < len(values):
        headers = [(_NAME, ids[end])] if ids[end] is not None else []
        if builder.append(timestamp=stamps[end], key=keys[end], value=values[end],
                          headers=headers) is None:
            break
        end += 1
    return bytes(builder._build()), end


@settings(max_examples=25, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.binary(min_size=1, max_size=12).filter(lambda k: not k.endswith(b"\0")),
                  st.binary(max_size=400), st.integers(0, 2**41),
                  st.one_of(st.none(), st.binary(min_size=1, max_size=30))),
        min_size=1, max_size=60),
    limit=st.integers(256, 4096),
    take_every=st.integers(1, 3),
)
def test_batches_equal_aiokafkas_for_any_records_headers_and_split(
    records: list[tuple[bytes, bytes, int, bytes | None]], limit: int, take_every: int
) -> None:
    keys, values, stamps, ids = (list(column) for column in zip(*records, strict=True))
    first = RecordColumns.from_values(
        np.array(keys[: len(keys) // 2], dtype="S12"), values[: len(keys) // 2],
        np.array(stamps[: len(keys) // 2]), max_batch_bytes=limit)
    second = RecordColumns.from_values(
        np.array(keys[len(keys) // 2:], dtype="S12"), values[len(keys) // 2:],
        np.array(stamps[len(keys) // 2:]), header_name=_NAME.encode(),
        header_values=[i if i is not None else b"" for i in ids[len(keys) // 2:]],
        max_batch_bytes=limit)
    columns = first.extend(second)
    # The first half carries no header; the second half one each, as written.
    ids = [None] * (len(keys) // 2) + [i if i is not None else b"" for i in ids[len(keys) // 2:]]
    rows = np.arange(0, len(keys), take_every)
    columns = columns.take(rows)
    keys, values, stamps, ids = ([column[r] for r in rows.tolist()]
                                 for column in (keys, values, stamps, ids))
    position = 0
    while position < len(values):
        expected, end = _reference(keys, values, stamps, ids, position, limit)
        batch, built_end = columns.batch_from(position)
        assert (built_end, bytes(batch._build())) == (end, expected)
        position = end
    rest = columns.drop_first(len(values) // 2)
    assert [rest.values_at(i) for i in range(len(rest))] == values[len(values) // 2:]
