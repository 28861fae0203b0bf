"""L2 order book of one symbol on the ``order-book`` C library, keeping the venue's wire strings.

Levels are keyed by :class:`~decimal.Decimal` price in the library's sorted dicts; each value is the
``(price, size)`` pair exactly as the venue sent it, so the BBO, the published records and the
checksums all use wire strings. A size is zero when every digit is ``0`` (``"0"``,
``"0.00000000"``), which removes the level. The best price of each side is cached (the sorted view
of a deep book is rebuilt lazily after changes, which is costly on Coinbase's full-depth books).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal

from order_book import OrderBook

logger = logging.getLogger(__name__)

Level = tuple[str, str]
_STALE = Decimal("NaN")  # marker: the cached best level was removed; recompute on demand


def is_zero(size: str) -> bool:
    """True when a plain decimal string is zero (``"0"``, ``"0.000"``)."""
    return not size.strip("0.")


class L2Book:
    """Bids and asks of one symbol; ``depth`` > 0 truncates each side after every change."""

    __slots__ = ("_best_ask", "_best_bid", "_book", "depth")

    def __init__(self, depth: int = 0):
        self.depth = depth
        self._book = self._new()
        self._best_bid: Decimal | None = None
        self._best_ask: Decimal | None = None

    @staticmethod
    def _new() -> OrderBook:
        return OrderBook()

    def clear(self) -> None:
        self._book = self._new()
        self._best_bid = self._best_ask = None

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Install a snapshot."""
        self.clear()
        self.apply(bids, asks)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set levels (a zero size removes the level), then truncate to ``depth``."""
        book = self._book
        side = book.bids
        best = self._best_bid
        for price, size in bids:
            key = Decimal(price)
            if is_zero(size):
                if key in side:
                    del side[key]
                    if key == best:
                        best = _STALE
            else:
                side[key] = (price, size)
                if best is None or (best is not _STALE and key > best):
                    best = key
        self._best_bid = best
        side = book.asks
        best = self._best_ask
        for price, size in asks:
            key = Decimal(price)
            if is_zero(size):
                if key in side:
                    del side[key]
                    if key == best:
                        best = _STALE
            else:
                side[key] = (price, size)
                if best is None or (best is not _STALE and key < best):
                    best = key
        self._best_ask = best
        if self.depth:
            # drop the worst levels past the depth (the library's truncate() leaves them reachable)
            for levels in (book.bids, book.asks):
                while len(levels) > self.depth:
                    del levels[levels.index(len(levels) - 1)[0]]

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` bids (descending) and asks (ascending) as wire-string pairs."""
        bids, asks = self._book.bids, self._book.asks
        return (
            [bids.index(i)[1] for i in range(min(n, len(bids)))],
            [asks.index(i)[1] for i in range(min(n, len(asks)))],
        )

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Every level, best first on each side."""
        return ([v for _, v in self._book.bids.to_list()], [v for _, v in self._book.asks.to_list()])

    def _best_keys(self) -> tuple[Decimal | None, Decimal | None]:
        bids, asks = self._book.bids, self._book.asks
        if self._best_bid is _STALE or (self._best_bid is not None and not len(bids)):
            self._best_bid = bids.index(0)[0] if len(bids) else None
        if self._best_ask is _STALE or (self._best_ask is not None and not len(asks)):
            self._best_ask = asks.index(0)[0] if len(asks) else None
        return self._best_bid, self._best_ask

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
