"""OHLCV aggregation of trades into one window, as an ``initialize / add / merge / result`` object.

Arithmetic is exact ``Decimal`` (a 200-digit context that traps inexact results); open/high/low/
close keep the venue's price string. Open and close are the trades with the smallest and largest
``(ts_event, seq)``, where ``seq`` is the arrival position (the topic offset), so out-of-order
trades land where their event time says. ``vwap`` is ``quote_volume / volume`` rounded half-even to
12 decimal places (the ``Bar`` contract).
"""

from __future__ import annotations

import decimal
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from pipeline.contracts import Bar

EXACT = decimal.Context(prec=200, rounding=ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])
_DIVIDE = decimal.Context(prec=200, rounding=ROUND_HALF_EVEN)
VWAP_QUANTUM = Decimal("1e-12")


class OhlcvState(msgspec.Struct, array_like=True):
    """Running OHLCV of one window (also its changelog form)."""

    open_ts: int
    open_seq: int
    open: str
    first_trade_id: str
    close_ts: int
    close_seq: int
    close: str
    last_trade_id: str
    high: Decimal
    high_text: str
    low: Decimal
    low_text: str
    volume: Decimal
    quote_volume: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    count: int


def fmt(value: Decimal) -> str:
    """A decimal as a plain string (never exponent notation), keeping its exponent."""
    return format(value, "f")


class OhlcvAggregation:
    """Aggregates trades of one window; stateless itself, it works on :class:`OhlcvState`."""

    @staticmethod
    def initialize(ts: int, seq: int, price_text: str, price: Decimal, size: Decimal, side: str, trade_id: str
                   ) -> OhlcvState:
        quote = EXACT.multiply(price, size)
        zero = Decimal(0)
        return OhlcvState(
            open_ts=ts, open_seq=seq, open=price_text, first_trade_id=trade_id,
            close_ts=ts, close_seq=seq, close=price_text, last_trade_id=trade_id,
            high=price, high_text=price_text, low=price, low_text=price_text,
            volume=size, quote_volume=quote,
            buy_volume=size if side == "buy" else zero, sell_volume=size if side == "sell" else zero,
            count=1,
        )  # fmt: skip

    @staticmethod
    def add(state: OhlcvState, ts: int, seq: int, price_text: str, price: Decimal, size: Decimal, side: str,
            trade_id: str) -> None:
        if (ts, seq) < (state.open_ts, state.open_seq):
            state.open_ts, state.open_seq, state.open, state.first_trade_id = ts, seq, price_text, trade_id
        if (ts, seq) > (state.close_ts, state.close_seq):
            state.close_ts, state.close_seq, state.close, state.last_trade_id = ts, seq, price_text, trade_id
        if price > state.high:
            state.high, state.high_text = price, price_text
        if price < state.low:
            state.low, state.low_text = price, price_text
        state.volume = EXACT.add(state.volume, size)
        state.quote_volume = EXACT.add(state.quote_volume, EXACT.multiply(price, size))
        if side == "buy":
            state.buy_volume = EXACT.add(state.buy_volume, size)
        else:
            state.sell_volume = EXACT.add(state.sell_volume, size)
        state.count += 1

    @staticmethod
    def merge(into: OhlcvState | None, other: OhlcvState) -> OhlcvState:
        """Fold ``other`` (a later or earlier window's state) into ``into``; returns the merged state."""
        if into is None:
            return msgspec.structs.replace(other)
        if (other.open_ts, other.open_seq) < (into.open_ts, into.open_seq):
            into.open_ts, into.open_seq, into.open = other.open_ts, other.open_seq, other.open
            into.first_trade_id = other.first_trade_id
        if (other.close_ts, other.close_seq) > (into.close_ts, into.close_seq):
            into.close_ts, into.close_seq, into.close = other.close_ts, other.close_seq, other.close
            into.last_trade_id = other.last_trade_id
        if other.high > into.high:
            into.high, into.high_text = other.high, other.high_text
        if other.low < into.low:
            into.low, into.low_text = other.low, other.low_text
        into.volume = EXACT.add(into.volume, other.volume)
        into.quote_volume = EXACT.add(into.quote_volume, other.quote_volume)
        into.buy_volume = EXACT.add(into.buy_volume, other.buy_volume)
        into.sell_volume = EXACT.add(into.sell_volume, other.sell_volume)
        into.count += other.count
        return into

    @staticmethod
    def vwap(state: OhlcvState) -> Decimal:
        return _DIVIDE.divide(state.quote_volume, state.volume).quantize(VWAP_QUANTUM, rounding=ROUND_HALF_EVEN)

    @staticmethod
    def result(state: OhlcvState, exchange: str, symbol: str, interval: str, start: int, end: int, **book: object
               ) -> Bar:
        return Bar(
            exchange=exchange,  # type: ignore[arg-type]
            symbol=symbol,
            interval=interval,  # type: ignore[arg-type]
            window_start=start,
            window_end=end,
            open=state.open,
            high=state.high_text,
            low=state.low_text,
            close=state.close,
            volume=fmt(state.volume),
            quote_volume=fmt(state.quote_volume),
            vwap=fmt(OhlcvAggregation.vwap(state)),
            trade_count=state.count,
            buy_volume=fmt(state.buy_volume),
            sell_volume=fmt(state.sell_volume),
            first_trade_id=state.first_trade_id,
            last_trade_id=state.last_trade_id,
            **book,  # type: ignore[arg-type]
        )
