"""An independent, straightforward computation of bars from a list of accepted trades (for tests).

No shared code with ``pipeline.aggregation``: exact ``Fraction`` arithmetic, grouping by window and
sorting by ``(ts_event, arrival)``.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from pipeline.contracts import Trade

SIZES = {"1s": 1_000_000, "1m": 60_000_000}


def expected_bars(trades: list[tuple[int, Trade]], interval: str) -> dict[tuple[str, str, int], dict[str, object]]:
    """``(exchange, symbol, window_start) -> fields`` from ``(arrival, trade)`` pairs of accepted trades."""
    size = SIZES[interval]
    groups: dict[tuple[str, str, int], list[tuple[int, Trade]]] = defaultdict(list)
    for arrival, trade in trades:
        groups[(trade.exchange, trade.symbol, trade.ts_event // size * size)].append((arrival, trade))
    out = {}
    for key, members in groups.items():
        ordered = sorted(members, key=lambda m: (m[1].ts_event, m[0]))
        first, last = ordered[0][1], ordered[-1][1]
        volume = sum((Fraction(t.size) for _, t in members), Fraction(0))
        quote = sum((Fraction(t.price) * Fraction(t.size) for _, t in members), Fraction(0))
        vwap = quote / volume
        scaled = vwap * 10**12
        floor = scaled.numerator // scaled.denominator
        rest = scaled - floor
        rounded = floor + (1 if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1) else 0)
        out[key] = {
            "window_end": key[2] + size,
            "open": first.price,
            "close": last.price,
            "high": max((t.price for _, t in members), key=Fraction),
            "low": min((t.price for _, t in members), key=Fraction),
            "volume": volume,
            "quote_volume": quote,
            "vwap": Decimal(rounded).scaleb(-12).quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN),
            "trade_count": len(members),
            "buy_volume": sum((Fraction(t.size) for _, t in members if t.side == "buy"), Fraction(0)),
            "sell_volume": sum((Fraction(t.size) for _, t in members if t.side == "sell"), Fraction(0)),
            "first_trade_id": first.trade_id,
            "last_trade_id": last.trade_id,
        }
    return out


def bar_fields(bar) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """A bar's fields in the form :func:`expected_bars` uses (exact fractions for sums)."""
    return {
        "window_end": bar.window_end,
        "open": bar.open,
        "close": bar.close,
        "high": bar.high,
        "low": bar.low,
        "volume": Fraction(bar.volume),
        "quote_volume": Fraction(bar.quote_volume),
        "vwap": Decimal(bar.vwap),
        "trade_count": bar.trade_count,
        "buy_volume": Fraction(bar.buy_volume),
        "sell_volume": Fraction(bar.sell_volume),
        "first_trade_id": bar.first_trade_id,
        "last_trade_id": bar.last_trade_id,
    }
