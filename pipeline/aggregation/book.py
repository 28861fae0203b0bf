"""Book metrics of one window from ``md.bbo.v1``, as an ``initialize / add / merge / result`` object.

Per window: the mean and max quoted spread in bps over the BBO updates (simple mean per update),
the mid-price change from the first to the last mid of the window in bps, and the time (µs) the
book was crossed (bid > ask). Quotes are ordered by ``(ts_event, seq)`` when the window closes;
whether the book was crossed at the window's start is carried over from the previous window of
the symbol. A window without BBOs has no book metrics (the bar's book fields stay ``None``).
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

Quote = tuple[int, int, str, str]  # ts_event, seq, bid price, ask price


class BookState(msgspec.Struct, array_like=True):
    count: int
    spread_sum_bps: float
    spread_max_bps: float
    first_mid: Decimal
    last_mid: Decimal
    crossed_us: int


def spread_bps(bid: Decimal, ask: Decimal) -> tuple[float, Decimal]:
    """Quoted spread in bps of the mid, and the mid."""
    mid = (bid + ask) / 2
    return float(ask - bid) / float(mid) * 1e4, mid


class BookAggregation:
    """Folds the quotes of a closed window into :class:`BookState`; merges windows into longer ones."""

    @staticmethod
    def initialize() -> list[Quote]:
        return []

    @staticmethod
    def add(quotes: list[Quote], ts: int, seq: int, bid: str, ask: str) -> None:
        quotes.append((ts, seq, bid, ask))

    @staticmethod
    def fold(quotes: list[Quote], start: int, end: int, crossed_at_start: bool) -> tuple[BookState | None, bool]:
        """The window's metrics and whether the book is crossed at its end."""
        if not quotes:
            return None, crossed_at_start
        ordered = sorted(quotes)
        crossed_us = 0
        crossed = crossed_at_start
        since = start
        total = 0.0
        high = 0.0
        first_mid = last_mid = Decimal(0)
        for index, (ts, _seq, bid_text, ask_text) in enumerate(ordered):
            bid, ask = Decimal(bid_text), Decimal(ask_text)
            if crossed:
                crossed_us += ts - since
            since = ts
            crossed = bid > ask
            spread, mid = spread_bps(bid, ask)
            total += spread
            high = spread if index == 0 else max(high, spread)
            if index == 0:
                first_mid = mid
            last_mid = mid
        if crossed:
            crossed_us += end - since
        state = BookState(len(ordered), total, high, first_mid, last_mid, crossed_us)
        return state, crossed

    @staticmethod
    def merge(into: BookState | None, later: BookState) -> BookState:
        """Fold a later window's metrics into an earlier one's (windows merge in time order)."""
        if into is None:
            return msgspec.structs.replace(later)
        into.count += later.count
        into.spread_sum_bps += later.spread_sum_bps
        into.spread_max_bps = max(into.spread_max_bps, later.spread_max_bps)
        into.last_mid = later.last_mid
        into.crossed_us += later.crossed_us
        return into

    @staticmethod
    def result(state: BookState | None) -> dict[str, object]:
        """The ``Bar`` book fields."""
        if state is None:
            return {}
        return {
            "spread_mean_bps": state.spread_sum_bps / state.count,
            "spread_max_bps": state.spread_max_bps,
            "mid_change_bps": float(state.last_mid - state.first_mid) / float(state.first_mid) * 1e4,
            "crossed_us": state.crossed_us,
        }
