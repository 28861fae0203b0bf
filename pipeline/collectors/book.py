"""L2 order book of one symbol on the ``order-book`` C library, keeping the venue's wire strings.

Each value in the library's sorted dicts is the ``(price, size)`` pair exactly as the venue sent it,
so the BBO, the published records and the checksums all use wire strings; the keys only order and
identify price levels. A size is zero when every digit is ``0`` (``"0"``, ``"0.00000000"``), which
removes the level. The best price of each side and the top ``n`` levels are cached (the sorted view
of a deep book is rebuilt lazily after changes, which is costly on Coinbase's full-depth books).

Keys are ``float`` while every price the book has seen is at most 15 characters long, and
:class:`~decimal.Decimal` otherwise. That is exact, not an approximation: a decimal of at most 15
significant digits (15 characters hold no more) survives the round trip through the nearest double
(``DBL_DIG`` = 15), so two different prices never share a float key, and correctly rounded
conversion is monotonic, so float keys sort exactly like the decimals. ``float(str)`` and float
comparisons cost a fraction of their ``Decimal`` counterparts, and ``list.sort`` has a fast path
for float keys. The first longer price converts the whole book to ``Decimal`` keys (from the stored
wire strings) until the next :meth:`L2Book.clear`.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from order_book import OrderBook

logger = logging.getLogger(__name__)

Level = tuple[str, str]
Key = float | Decimal
FLOAT_EXACT_CHARS = 15  # a plain decimal of at most this many characters has a unique, ordered float
_STALE = Decimal("NaN")  # marker: the cached best level was removed; recompute on demand


def is_zero(size: str) -> bool:
    """True when a plain decimal string is zero (``"0"``, ``"0.000"``)."""
    return not size.strip("0.")


class L2Book:
    """Bids and asks of one symbol; ``depth`` > 0 truncates each side after every change."""

    __slots__ = ("_best", "_book", "_exact", "_top", "depth")

    def __init__(self, depth: int = 0):
        self.depth = depth
        self._book = OrderBook()
        self._exact = False  # True: Decimal keys (a price longer than FLOAT_EXACT_CHARS was seen)
        self._best: list[Key | None] = [None, None]  # best bid key, best ask key (or _STALE)
        self._top: list[tuple[int, list[Level], Key | None] | None] = [None, None]  # (n, levels, n-th key)

    def clear(self) -> None:
        self._book = OrderBook()
        self._exact = False
        self._best = [None, None]
        self._top = [None, None]

    def replace(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Install a snapshot."""
        self.clear()
        self.apply(bids, asks)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set levels (a zero size removes the level), then truncate to ``depth``."""
        self._set(0, bids, max, operator.gt)
        self._set(1, asks, min, operator.lt)
        if self.depth:
            # drop the worst levels past the depth (the library's truncate() leaves them reachable)
            book = self._book
            for i, side in enumerate((book.bids, book.asks)):
                if len(side) > self.depth:
                    self._top[i] = None
                    while len(side) > self.depth:
                        del side[side.index(len(side) - 1)[0]]

    def _keys(self, levels: Sequence[Level]) -> list[Any]:
        """The sort keys of the levels' prices (switching the book to ``Decimal`` keys if needed)."""
        prices = [level[0] for level in levels]
        if not self._exact:
            if max(map(len, prices)) <= FLOAT_EXACT_CHARS:
                return list(map(float, prices))
            self._to_exact()
        return list(map(Decimal, prices))

    def _to_exact(self) -> None:
        """Re-key both sides by ``Decimal`` (in place: callers hold the side objects)."""
        self._exact = True
        for side in (self._book.bids, self._book.asks):
            items = side.to_list()
            for key, _ in items:
                del side[key]
            for _, level in items:
                side[Decimal(level[0])] = level
        self._best = [None if key is None else _STALE for key in self._best]
        self._top = [None, None]

    def _set(
        self,
        i: int,
        levels: Iterable[Level],
        extreme: Callable[[list[Any]], Any],
        better: Callable[[Any, Any], bool],
    ) -> None:
        if not levels:
            return
        if not isinstance(levels, list) or set(map(type, levels)) != {tuple}:
            levels = [(price, size) for price, size in levels]  # stored values are (price, size) tuples
            if not levels:
                return
        keys = self._keys(levels)
        side = self._book.bids if i == 0 else self._book.asks
        for key, level in zip(keys, levels, strict=True):
            if level[1].strip("0."):
                side[key] = level
            elif key in side:
                del side[key]
        edge = extreme(keys)  # the best price the change set touched
        top = self._top[i]
        if top is not None and (top[2] is None or not better(top[2], edge)):
            self._top[i] = None  # the change reaches into the cached top n
        best = self._best[i]
        if best is _STALE:
            return
        if best is not None and best not in side:
            self._best[i] = _STALE  # the best level was removed
        elif best is None or better(edge, best):
            # the touched edge is the new best if it was set, else (a removal past the best) recompute
            self._best[i] = edge if edge in side else _STALE

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Best ``n`` bids (descending) and asks (ascending) as wire-string pairs (do not mutate:
        they are cached until a change reaches the top ``n``)."""
        return self._top_side(0, self._book.bids, n), self._top_side(1, self._book.asks, n)

    def _top_side(self, i: int, side: Any, n: int) -> list[Level]:
        cached = self._top[i]
        if cached is not None and cached[0] == n:
            return cached[1]
        keys = side.keys()[:n]  # the library's cached sorted keys (re-sorted only after a change)
        levels = list(map(side.__getitem__, keys))
        self._top[i] = (n, levels, keys[n - 1] if len(keys) == n else None)
        return levels

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Every level, best first on each side."""
        bids, asks = self._book.bids, self._book.asks
        return list(map(bids.__getitem__, bids.keys())), list(map(asks.__getitem__, asks.keys()))

    def _best_keys(self) -> tuple[Key | None, Key | None]:
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
