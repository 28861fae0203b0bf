"""An independent computation of the bars the worker must give, from the input topic as the broker holds it.

Shares no code with :mod:`pipeline.aggregation`: trades in arrival order per partition (batch offset,
then position in the batch), acceptance by the documented rules (late: the 1 s window's end + grace at or
below the highest accepted event time - lateness; duplicate: a trade id already accepted in the partition),
then plain grouping by window with exact ``Fraction`` sums, ordered by ``(ts_event, arrival)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from pipeline.contracts import Bar, Trade, TradeBatch, decode

SIZES = {"1s": 1_000_000, "1m": 60_000_000}
Key = tuple[str, str, str, int]  # interval, exchange, symbol, window start
Arrival = tuple[int, int, int]  # partition, batch offset, index in the batch


def trades_of(records: Iterable[tuple[int, int, bytes]]) -> dict[int, list[tuple[Arrival, Trade]]]:
    """``(partition, offset, value)`` records of ``md.trade_batches.v1`` -> partition -> trades in arrival order."""
    out: dict[int, list[tuple[Arrival, Trade]]] = defaultdict(list)
    for partition, offset, value in records:
        batch = decode(TradeBatch, value)
        for index, trade in enumerate(batch.unbatched()):
            out[partition].append(((partition, offset, index), trade))
    return {p: sorted(items, key=lambda item: item[0]) for p, items in out.items()}


def accepted(
    log: dict[int, list[tuple[Arrival, Trade]]], lateness_us: int, grace_us: int
) -> list[tuple[Arrival, Trade]]:
    """The trades a worker counts: neither late nor duplicate, decided per partition in arrival order."""
    out = []
    for items in log.values():
        high: int | None = None
        seen: set[tuple[str, str, str]] = set()
        for arrival, t in items:
            end = t.ts_event // 1_000_000 * 1_000_000 + 1_000_000
            if high is not None and end + grace_us <= high - lateness_us:
                continue
            ident = (t.exchange, t.symbol, t.trade_id)
            if ident in seen or Fraction(t.price) <= 0 or Fraction(t.size) <= 0:
                continue
            seen.add(ident)
            high = t.ts_event if high is None else max(high, t.ts_event)
            out.append((arrival, t))
    return out


def _vwap(quote: Fraction, volume: Fraction) -> Decimal:
    scaled = quote / volume * 10**12
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    rounded = floor + (1 if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1) else 0)
    return Decimal(rounded).scaleb(-12).quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN)


def expected_bars(trades: list[tuple[Arrival, Trade]]) -> dict[Key, dict[str, object]]:
    """Every 1s and 1m bar of the accepted trades: key -> the fields :func:`bar_fields` gives."""
    out: dict[Key, dict[str, object]] = {}
    for interval, size in SIZES.items():
        groups: dict[Key, list[tuple[Arrival, Trade]]] = defaultdict(list)
        for arrival, t in trades:
            groups[(interval, t.exchange, t.symbol, t.ts_event // size * size)].append((arrival, t))
        for key, members in groups.items():
            ordered = sorted(members, key=lambda m: (m[1].ts_event, m[0]))
            volume = sum((Fraction(t.size) for _, t in members), Fraction(0))
            quote = sum((Fraction(t.price) * Fraction(t.size) for _, t in members), Fraction(0))
            out[key] = {
                "window_end": key[3] + size,
                "open": ordered[0][1].price,
                "close": ordered[-1][1].price,
                "high": max((t.price for _, t in members), key=Fraction),
                "low": min((t.price for _, t in members), key=Fraction),
                "volume": volume,
                "quote_volume": quote,
                "vwap": _vwap(quote, volume),
                "trade_count": len(members),
                "buy_volume": sum((Fraction(t.size) for _, t in members if t.side == "buy"), Fraction(0)),
                "sell_volume": sum((Fraction(t.size) for _, t in members if t.side == "sell"), Fraction(0)),
                "first_trade_id": ordered[0][1].trade_id,
                "last_trade_id": ordered[-1][1].trade_id,
            }
    return out


def bar_fields(bar: Bar) -> dict[str, object]:
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


def bar_key(bar: Bar) -> Key:
    return (bar.interval, bar.exchange, bar.symbol, bar.window_start)
