"""A Kafka request already encoded, in the shape aiokafka's connection sends a request.

aiokafka's ``AIOKafkaConnection.send`` asks a request for ``prepare(versions)``, and the
prepared struct for its header, its body and, once the answer is in, for the answer's header
and a ``RESPONSE_TYPE`` that decodes the rest. ``EncodedRequest`` is such a struct over bytes
written by our own encoders (``connectors.produce_requests``, ``connectors.fetch_requests``),
with the reader of their answers; only non-flexible versions (request header v1, response
header v0) are written this way.

>>> request = EncodedRequest(1, 11, b"BODY", lambda data, version: data.read())
>>> request.build_request_header(5, "me").encode().hex(), request.encode()
('0001000b0000000500026d65', b'BODY')
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["INT16", "INT32", "EncodedRequest", "shared_version"]

_HEADER = struct.Struct(">hhih")
#: The protocol's big-endian 16- and 32-bit integers (lengths and counts).
INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")


def shared_version(versions: dict[int, tuple[int, int]], api_key: int,
                   ours: range) -> int | None:
    """The highest version of ``api_key`` that both the broker (its ApiVersions answer,
    ``versions``) and we (``ours``) speak, as aiokafka picks it; None when there is none.

    >>> shared_version({0: (0, 11)}, 0, range(3, 8)), shared_version({0: (0, 2)}, 0, range(3, 8))
    (7, None)
    """
    low, high = versions.get(api_key, (0, -1))
    usable = [version for version in ours if low <= version <= high]
    return usable[-1] if usable else None


@dataclass(frozen=True)
class _Header:
    """A request's or an answer's header, as aiokafka reads it."""

    data: bytes = b""
    correlation_id: int = 0

    def encode(self) -> bytes:
        """The header's bytes."""
        return self.data


@dataclass(frozen=True)
class _AnswerReader:
    read: Callable[[io.BytesIO, int], Any]
    version: int

    def decode(self, data: io.BytesIO) -> Any:
        """The answer after its header."""
        return self.read(data, self.version)


class EncodedRequest:
    """One request of a fixed api key and version, its body already encoded."""

    def __init__(self, api_key: int, version: int, body: bytes,
                 read: Callable[[io.BytesIO, int], Any]) -> None:
        self.API_KEY = api_key
        self.API_VERSION = version
        self._body = body
        self._read = read

    def build_request_header(self, correlation_id: int, client_id: str) -> _Header:
        """The request header (v1: api key, version, correlation id, client id)."""
        client = client_id.encode()
        return _Header(_HEADER.pack(self.API_KEY, self.API_VERSION, correlation_id,
                                    len(client)) + client)

    def encode(self) -> bytes:
        """The request's body, as built."""
        return self._body

    def parse_response_header(self, data: io.BytesIO) -> _Header:
        """The answer's header (v0): its correlation id."""
        (correlation_id,) = INT32.unpack(data.read(4))
        return _Header(correlation_id=correlation_id)

    @property
    def RESPONSE_TYPE(self) -> _AnswerReader:  # aiokafka's name for it
        """What reads the answer."""
        return _AnswerReader(self._read, self.API_VERSION)

    def __repr__(self) -> str:
        return f"request {self.API_KEY} v{self.API_VERSION} ({len(self._body)} bytes)"
