"""JSON encoding and validating decoding of topic values (msgspec: fast, constraint-checking)."""

from __future__ import annotations

from functools import cache
from typing import TypeVar

import msgspec

from pipeline.contracts.records import Record

R = TypeVar("R", bound=Record)

DecodeError = msgspec.DecodeError  # raised for bad JSON and for schema violations (ValidationError)

_encoder = msgspec.json.Encoder()


def encode(record: Record) -> bytes:
    """Encode a record as the JSON bytes that go on the topic."""
    return _encoder.encode(record)


@cache
def decoder_for(record_type: type[R]) -> msgspec.json.Decoder[R]:
    """A reusable decoder that validates every field constraint of ``record_type``."""
    return msgspec.json.Decoder(record_type)


def decode(record_type: type[R], data: bytes | str) -> R:
    """Decode and validate one topic value; raises :data:`DecodeError` with the failing path."""
    decoder: msgspec.json.Decoder[R] = decoder_for(record_type)  # @cache erases the type parameter
    return decoder.decode(data)
