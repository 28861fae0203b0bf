"""L2 order book of one symbol: a dict of levels and a ``sortedcontainers.SortedList`` of keys per side.

Each value in a side's dict is the ``(price, size)`` pair exactly as the venue sent it, so the BBO,
the published records and the checksums all use wire strings; the keys only order and identify
price levels. A size is zero when every digit is ``0`` (``"0"``, ``"0.00000000"``), which removes
the level. Both sides keep their keys ascending: the best bid is the last key, the best ask the
first. The top ``n`` levels of each side are cached until a change reaches them (the best level is
read from that cache when there is one; the venues' checksum memos rely on the cached lists staying
the same objects while the top is unchanged).

Why a sorted list of keys and not a lazily re-sorted C dict (the ``order-book`` library, used
before): the sorted list keeps its order on each insert and delete (a bisect into sublists of
~1,000 keys), so reading the top levels, the best price or the worst level to truncate costs a few
index steps after any change, where the lazily re-sorted dict re-sorted every key of the side on
the first read after an insert (a 1,000-level Kraken book read its top 10 and truncated after each
1-2-level update). A change set large against its side (more than 1/``BULK_SHARE`` of the side's
levels: snapshots, OKX's 30-level updates of a short side) goes into the dict first and the side's
keys are sorted once. ``docs/collectors.md`` ("Order book") has the measurements per venue shape.

Keys are ``float`` while every price the book has seen is at most 15 characters long, and
:class:`~decimal.Decimal` otherwise. That is exact, not an approximation: a decimal of at most 15
significant digits (15 characters hold no more) survives the round trip through the nearest double
(``DBL_DIG`` = 15), so two different prices never share a float key, and correctly rounded
conversion is monotonic, so float keys sort exactly like the decimals. ``float(str)`` and float
comparisons cost a fraction of their ``Decimal`` counterparts. The first longer price converts the
whole book to ``Decimal`` keys (from the stored wire strings) until the next :meth:`L2Book.clear`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from sortedcontainers import SortedList

logger = logging.getLogger(__name__)

Level = tuple[str, str]
Key = float | Decimal
FLOAT_EXACT_CHARS = 15  # a plain decimal of at most this many characters has a unique, ordered float
BULK_SHARE = 16  # a change set of more than 1/16 of the side's levels re-sorts the side's keys at once


def is_zero(size: str) -> bool:
    """True when a plain decimal string is zero (``"0"``, ``"0.000"``)."""
    return not size.strip("0.")


class L2Book:
    """Bids and asks of one symbol; ``depth`` > 0 truncates each side after every change."""

    __slots__ = ("_exact", "_keys_of", "_levels_of", "_top", "depth")

    def __init__(self, depth: int = 0):
        self.depth = depth
        self._levels_of: tuple[dict[Key, Level], dict[Key, Level]] = ({}, {})  # bids, asks: key -> (price, size)
        self._keys_of: tuple[SortedList, SortedList] = (SortedList(), SortedList())  # ascending: best bid last
        self._exact = False  # True: Decimal keys (a price longer than FLOAT_EXACT_CHARS was seen)
        self._top: list[tuple[int, list[Level], Key | None] | None] = [None, None]  # (n, levels, n-th key)

    def clear(self) -> None:
        self._levels_of = ({}, {})
        self._keys_of = (SortedList(), SortedList())
        self._exact = False
        self._top = [None, None]

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Install a snapshot."""
        self.clear()
        self.apply(bids, asks)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set levels (a zero size removes the level), then truncate to ``depth``."""
        if bids:
            self._set(0, bids)
        if asks:
            self._set(1, asks)
        depth = self.depth
        if depth:
            for i, worst in ((0, 0), (1, -1)):  # drop the worst levels past the depth: lowest bids, highest asks
                keys = self._keys_of[i]
                if len(keys) > depth:
                    top = self._top[i]
                    if top is not None and top[0] > depth:  # only a cached top of more levels holds them
                        self._top[i] = None
                    levels = self._levels_of[i]
                    while len(keys) > depth:
                        del levels[keys.pop(worst)]

    def _keys(self, levels: Sequence[Level]) -> list[Any]:
        """The sort keys of the levels' prices (switching the book to ``Decimal`` keys if needed)."""
        prices = [level[0] for level in levels]
        if not self._exact:
            if max(map(len, prices)) <= FLOAT_EXACT_CHARS:
                return list(map(float, prices))
            self._to_exact()
        return list(map(Decimal, prices))

    def _to_exact(self) -> None:
        """Re-key both sides by ``Decimal`` (from the stored wire strings)."""
        self._exact = True
        bids: dict[Key, Level] = {Decimal(level[0]): level for level in self._levels_of[0].values()}
        asks: dict[Key, Level] = {Decimal(level[0]): level for level in self._levels_of[1].values()}
        self._levels_of = (bids, asks)
        self._keys_of = (SortedList(bids), SortedList(asks))
        self._top = [None, None]

    def _set(self, i: int, levels: Iterable[Level]) -> None:
        if type(levels) is list and len(levels) == 1 and type(levels[0]) is tuple and not self._exact:
            level = levels[0]  # one level (most Kraken updates): no lists of keys
            price = level[0]
            if len(price) <= FLOAT_EXACT_CHARS:
                self._set_one(i, float(price), level)
                return
        if not isinstance(levels, list) or set(map(type, levels)) != {tuple}:
            levels = [(price, size) for price, size in levels]  # stored values are (price, size) tuples
            if not levels:
                return
        keys = self._keys(levels)
        side, ordered = self._levels_of[i], self._keys_of[i]
        if len(levels) * BULK_SHARE < len(side):
            for key, level in zip(keys, levels, strict=True):
                if level[1].strip("0."):
                    if key not in side:
                        ordered.add(key)
                    side[key] = level
                elif key in side:
                    del side[key]
                    ordered.remove(key)
        else:  # large against the side (a snapshot): change the dict, then sort its keys once
            for key, level in zip(keys, levels, strict=True):
                if level[1].strip("0."):
                    side[key] = level
                else:
                    side.pop(key, None)
            ordered.clear()
            ordered.update(side)
        top = self._top[i]
        if top is not None:
            nth = top[2]
            # the change reaches into the cached top n unless every touched price is worse than the n-th
            if nth is None or (max(keys) >= nth if i == 0 else min(keys) <= nth):
                self._top[i] = None

    def _set_one(self, i: int, key: Key, level: Level) -> None:
        """:meth:`_set` of one level with its key."""
        side = self._levels_of[i]
        if level[1].strip("0."):
            if key not in side:
                self._keys_of[i].add(key)
            side[key] = level
        elif key in side:
            del side[key]
            self._keys_of[i].remove(key)
        top = self._top[i]
        if top is not None:
            nth = top[2]
            if nth is None or (key >= nth if i == 0 else key <= nth):
                self._top[i] = None

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` bids (descending) and asks (ascending) as wire-string pairs (do not mutate:
        they are cached until a change reaches the top ``n``)."""
        bids, asks = self._top
        return (
            bids[1] if bids is not None and bids[0] == n else self._top_side(0, n),
            asks[1] if asks is not None and asks[0] == n else self._top_side(1, n),
        )

    def _top_side(self, i: int, n: int) -> list[Level]:
        if i == 0:
            keys = self._keys_of[0][-n:]
            keys.reverse()
        else:
            keys = self._keys_of[1][:n]
        levels = list(map(self._levels_of[i].__getitem__, keys))
        self._top[i] = (n, levels, keys[n - 1] if len(keys) == n else None)
        return levels

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Every level, best first on each side."""
        (bids, asks), (bid_keys, ask_keys) = self._levels_of, self._keys_of
        return list(map(bids.__getitem__, reversed(bid_keys))), list(map(asks.__getitem__, ask_keys))

    def best(self) -> tuple[Level | None, Level | None]:
        """The best bid and ask as wire-string pairs (``None`` for an empty side)."""
        top_bids, top_asks = self._top  # a cached top starts with the best level (checksummed books have one)
        if top_bids is not None:
            bid = top_bids[1][0] if top_bids[1] else None
        else:
            bid = self._levels_of[0][self._keys_of[0][-1]] if self._levels_of[0] else None
        if top_asks is not None:
            return bid, top_asks[1][0] if top_asks[1] else None
        return bid, self._levels_of[1][self._keys_of[1][0]] if self._levels_of[1] else None

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask (a desynced book)."""
        bid_keys, ask_keys = self._keys_of
        return bool(bid_keys) and bool(ask_keys) and bid_keys[-1] >= ask_keys[0]

    def sizes(self) -> tuple[int, int]:
        return len(self._levels_of[0]), len(self._levels_of[1])

    def __len__(self) -> int:
        return len(self._levels_of[0]) + len(self._levels_of[1])
