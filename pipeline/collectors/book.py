"""L2 order book of one symbol on the ``order-book`` C library, keeping the venue's wire strings.

Levels are keyed by :class:`~decimal.Decimal` price in the library's sorted dicts; each value is the
``(price, size)`` pair exactly as the venue sent it, so the BBO, the published records and the
checksums all use wire strings. A size is zero when every digit is ``0`` (``"0"``,
``"0.00000000"``), which removes the level. The best price of each side is cached (the sorted view
of a deep book is rebuilt lazily after changes, which is costly on Coinbase's full-depth books).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from order_book import OrderBook

logger = logging.getLogger(__name__)

Level = tuple[str, str]
_STALE = Decimal("NaN")  # marker: the cached best level was removed; recompute on demand


def is_zero(size: str) -> bool:
    """True when a plain decimal string is zero (``"0"``, ``"0.000"``)."""
    return not size.strip("0.")


class L2Book:
    """Bids and asks of one symbol; ``depth`` > 0 truncates each side after every change."""

    __slots__ = ("_best", "_book", "_top", "depth")

    def __init__(self, depth: int = 0):
        self.depth = depth
        self._book = OrderBook()
        self._best: list[Decimal | None] = [None, None]  # best bid key, best ask key (or _STALE)
        self._top: list[tuple[int, list[Level], Decimal | None] | None] = [None, None]  # (n, levels, n-th key)

    def clear(self) -> None:
        self._book = OrderBook()
        self._best = [None, None]
        self._top = [None, None]

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Install a snapshot."""
        self.clear()
        self.apply(bids, asks)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set levels (a zero size removes the level), then truncate to ``depth``."""
        book = self._book
        self._set(0, book.bids, bids, operator.gt)
        self._set(1, book.asks, asks, operator.lt)
        if self.depth:
            # drop the worst levels past the depth (the library's truncate() leaves them reachable)
            for i, side in enumerate((book.bids, book.asks)):
                if len(side) > self.depth:
                    self._top[i] = None
                    while len(side) > self.depth:
                        del side[side.index(len(side) - 1)[0]]

    def _set(self, i: int, side: Any, levels: Iterable[Level], better: Callable[[Any, Any], bool]) -> None:
        best = self._best[i]
        top = self._top[i]
        for price, size in levels:
            key = Decimal(price)
            if top is not None and (top[2] is None or not better(top[2], key)):
                top = None  # the change is inside the cached top n
            if is_zero(size):
                if key in side:
                    del side[key]
                    if key == best:
                        best = _STALE
            else:
                side[key] = (price, size)
                if best is None or (best is not _STALE and better(key, best)):
                    best = key
        self._best[i] = best
        self._top[i] = top

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` bids (descending) and asks (ascending) as wire-string pairs (do not mutate:
        they are cached until a change reaches the top ``n``)."""
        return self._top_side(0, self._book.bids, n), self._top_side(1, self._book.asks, n)

    def _top_side(self, i: int, side: Any, n: int) -> list[Level]:
        cached = self._top[i]
        if cached is not None and cached[0] == n:
            return cached[1]
        count = len(side)
        levels = [side.index(j)[1] for j in range(min(n, count))]
        self._top[i] = (n, levels, side.index(n - 1)[0] if count >= n else None)
        return levels

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Every level, best first on each side."""
        return ([v for _, v in self._book.bids.to_list()], [v for _, v in self._book.asks.to_list()])

    def _best_keys(self) -> tuple[Decimal | None, Decimal | None]:
        best = self._best
        for i, side in enumerate((self._book.bids, self._book.asks)):
            if best[i] is _STALE or (best[i] is not None and not len(side)):
                best[i] = side.index(0)[0] if len(side) else None
        return best[0], best[1]

    def best(self) -> tuple[Level | None, Level | None]:
        """The best bid and ask as wire-string pairs (``None`` for an empty side)."""
        bid, ask = self._best_keys()
        return (
            self._book.bids[bid] if bid is not None else None,
            self._book.asks[ask] if ask is not None else None,
        )

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask (a desynced book)."""
        bid, ask = self._best_keys()
        return bid is not None and ask is not None and bid >= ask

    def sizes(self) -> tuple[int, int]:
        return len(self._book.bids), len(self._book.asks)

    def __len__(self) -> int:
        return len(self._book.bids) + len(self._book.asks)
