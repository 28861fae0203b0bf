"""Order-book checksums of the venues that publish one (CRC32 over wire strings, ``zlib.crc32``).

* OKX: the top 25 levels interleaved ``bid:size:ask:size`` (a missing side is skipped), joined by
  ``:``, as a signed 32-bit integer.
* Kraken (v1 and v2): for the top 10 asks ascending then the top 10 bids descending, price and size
  with ``.`` removed and leading zeros stripped, concatenated; unsigned 32-bit (the formatted
  level is cached: most levels of the top 10 are unchanged between updates; :func:`kraken_side` lets a
  caller keep the side an update did not change).
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from itertools import chain

Level = tuple[str, str]


def okx_checksum(bids: list[Level], asks: list[Level]) -> int:
    """OKX v5 ``books`` checksum of the top 25 levels (signed int32)."""
    bids, asks = bids[:25], asks[:25]
    common = min(len(bids), len(asks))
    interleaved = chain(chain.from_iterable(zip(bids, asks, strict=False)), bids[common:] or asks[common:])
    crc = zlib.crc32(":".join(map(":".join, interleaved)).encode())
    return crc - (1 << 32) if crc >= (1 << 31) else crc


@lru_cache(maxsize=1 << 16)
def _kraken_part(level: Level) -> str:
    price, size = level
    return price.replace(".", "").lstrip("0") + size.replace(".", "").lstrip("0")


def kraken_checksum(bids: list[Level], asks: list[Level]) -> int:
    """Kraken v1/v2 ``book`` checksum of the top 10 levels (unsigned int32)."""
    return zlib.crc32("".join(map(_kraken_part, chain(asks[:10], bids[:10]))).encode())


def kraken_side(levels: list[Level]) -> bytes:
    """One side's part of :func:`kraken_checksum`: ``kraken_checksum(bids, asks) ==
    zlib.crc32(kraken_side(bids), zlib.crc32(kraken_side(asks)))`` (CRC32 continues over a split input),
    so a book whose update changed one side's top re-formats that side only."""
    return "".join(map(_kraken_part, levels[:10])).encode()
