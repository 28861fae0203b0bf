"""Compact partial summaries the bar agent ships to the health/reference agent (an internal topic).

Each worker sees only its partitions of ``md.trades.v1`` / ``md.bbo.v1``; feed health per venue and
the cross-venue reference need every partition. So once a second each worker sends, keyed by
``exchange:stream`` or by asset, a :class:`FeedPartial` per (venue, stream, second) and a
:class:`MidPartial` per symbol with the last mid it saw, and a :class:`BacklogPartial` per symbol of a partition
whose BBOs it knows of but has not read yet while its newest applied BBO is older than the idle timeout (so
the reference waits for them instead of calling the venue stale). They are msgpack, internal, not a contract.
"""

from __future__ import annotations

import msgspec


class FeedPartial(msgspec.Struct, tag="feed", array_like=True):
    exchange: str
    stream: str
    bucket: int  # second (µs) of ts_recv the counts belong to
    messages: int
    lags: list[int]  # ts_recv - ts_event samples (capped)
    last_recv: int


class MidPartial(msgspec.Struct, tag="mid", array_like=True):
    exchange: str
    symbol: str
    mid: str
    ts_event: int
    ts_recv: int


class BacklogPartial(msgspec.Struct, tag="backlog", array_like=True):
    exchange: str
    symbol: str
    unread: int  # BBOs of the symbol's partition the worker knows of and has not applied


Summary = FeedPartial | MidPartial | BacklogPartial

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Summary)


def encode_summary(summary: Summary) -> bytes:
    return _encoder.encode(summary)


def decode_summary(data: bytes) -> Summary:
    return _decoder.decode(data)
