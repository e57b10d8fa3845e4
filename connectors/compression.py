"""Compression of the record batches a Kafka sink builds: Kafka's codecs, checked when configured.

The sink writes its producer batches itself (``connectors.record_batches``), so aiokafka's
``compression_type`` never touches them: ``compress_records`` compresses a batch's records
section with aiokafka's own codec functions (``aiokafka.codec``, as its
``DefaultRecordBatchBuilder`` does; gzip at level 6, Kafka's and librdkafka's default, where
aiokafka's 9 took 6x the CPU for a 4% smaller batch of JSON records), and
``compression_attribute`` gives the batch header's compression bits. ``compression_problem``
says what is wrong with a setting (an unknown codec, or one whose library is not installed) so
that a config can refuse it when it is made.

>>> compression_problem("gzip") is None, compression_attribute("gzip")
(True, 1)
>>> print(compression_problem("brotli"))
compression_type 'brotli' is unknown; expected one of None, 'gzip', 'snappy', 'lz4', 'zstd'
>>> import gzip
>>> gzip.decompress(compress_records(b"records " * 4, "gzip"))
b'records records records records '
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiokafka import codec

__all__ = [
    "COMPRESSION_TYPES",
    "compress_records",
    "compression_attribute",
    "compression_problem",
]


@dataclass(frozen=True)
class _Codec:
    """One of Kafka's compression codecs, as aiokafka provides it."""

    #: The codec's value in a record batch's attributes (bits 0-2).
    attribute: int
    #: The ``aiokafka.codec`` functions: ``has_<name>`` (is the library there), ``<name>_encode``.
    name: str
    #: The library the codec needs, and how to get it when it is missing.
    library: str
    remedy: str
    #: Keyword arguments of the encode function (the codec's level).
    options: Mapping[str, int] = field(default_factory=dict)

    def available(self) -> bool:
        """Whether the codec's library is installed (looked up now: tests may replace it)."""
        has: Callable[[], bool] = getattr(codec, f"has_{self.name}")
        return bool(has())

    def encode(self, data: bytes) -> bytes:
        """``data`` compressed, as aiokafka's batch builder compresses a batch's records."""
        encode: Callable[..., bytes] = getattr(codec, f"{self.name}_encode")
        return bytes(encode(data, **self.options))


_CODECS = {
    "gzip": _Codec(1, "gzip", "zlib", "use a Python built with zlib", {"compresslevel": 6}),
    "snappy": _Codec(2, "snappy", "cramjam", "pip install 'aiokafka[snappy]'"),
    "lz4": _Codec(3, "lz4", "cramjam", "pip install 'aiokafka[lz4]'"),
    "zstd": _Codec(4, "zstd", "cramjam", "pip install 'aiokafka[zstd]'"),
}
#: The compression types a Kafka sink takes besides None (no compression).
COMPRESSION_TYPES = tuple(_CODECS)


def compression_problem(compression_type: str | None, *, none: str = "None") -> str | None:
    """What makes ``compression_type`` unusable here (unknown, or its library missing); None
    when it can be used. ``none`` is how "no compression" is spelled where it was given."""
    if compression_type is None:
        return None
    found = _CODECS.get(compression_type) if isinstance(compression_type, str) else None
    if found is None:
        choices = ", ".join([none, *map(repr, COMPRESSION_TYPES)])
        return f"compression_type {compression_type!r} is unknown; expected one of {choices}"
    if not found.available():
        return (f"compression_type {compression_type!r} needs the {found.library} library, "
                f"which is not installed; {found.remedy} (or choose another compression_type)")
    return None


def compression_attribute(compression_type: str | None) -> int:
    """The compression bits of a record batch's attributes for ``compression_type``."""
    return 0 if compression_type is None else _CODECS[compression_type].attribute


def compress_records(data: bytes, compression_type: str) -> bytes:
    """A record batch's records section ``data`` compressed with ``compression_type``."""
    return _CODECS[compression_type].encode(data)
