"""OHLCV aggregation of trades into one window, as an ``initialize / add / merge / result`` object.

Arithmetic is exact and cheap: a decimal string is an integer mantissa and a scale (number of
fraction digits: ``"0.00120000"`` is ``(120000, 8)``), sums keep the largest scale seen and
products add scales, so every sum is exactly what ``Decimal`` would give, trailing zeros included
(``Decimal`` is ~10x slower per trade). Open/high/low/close keep the venue's price string. Open and
close are the trades with the smallest and largest ``(ts_event, seq)``, where ``seq`` is the
arrival position (topic offset and index in the batch), so out-of-order trades land where their
event time says. ``vwap`` is ``quote_volume / volume`` rounded half-even to 12 decimal places (the
``Bar`` contract), computed on integers.
"""

from __future__ import annotations

import decimal
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from pipeline.contracts import Bar

EXACT = decimal.Context(prec=200, rounding=ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])
VWAP_DIGITS = 12
POW10 = [10**i for i in range(160)]


def parse(text: str) -> tuple[int, int]:
    """``"36512.010"`` -> ``(36512010, 3)``: the exact mantissa and scale of a decimal string."""
    dot = text.find(".")
    if dot < 0:
        return int(text), 0
    return int(text.replace(".", "", 1)), len(text) - dot - 1


def scaled_text(mantissa: int, scale: int) -> str:
    """``(120000, 8)`` -> ``"0.00120000"`` (what ``format(Decimal, "f")`` gives for the same value)."""
    if scale == 0:
        return str(mantissa)
    sign, digits = ("-", str(-mantissa)) if mantissa < 0 else ("", str(mantissa))
    digits = digits.rjust(scale + 1, "0")
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


def fmt(value: Decimal) -> str:
    """A decimal as a plain string (never exponent notation), keeping its exponent."""
    return format(value, "f")


def _add(a: int, a_scale: int, b: int, b_scale: int) -> tuple[int, int]:
    if a_scale == b_scale:
        return a + b, a_scale
    if a_scale > b_scale:
        return a + b * POW10[a_scale - b_scale], a_scale
    return a * POW10[b_scale - a_scale] + b, b_scale


def _less(a: int, a_scale: int, b: int, b_scale: int) -> bool:
    if a_scale == b_scale:
        return a < b
    if a_scale > b_scale:
        return a < b * POW10[a_scale - b_scale]
    return a * POW10[b_scale - a_scale] < b


class OhlcvState(msgspec.Struct, array_like=True):
    """Running OHLCV of one window (also its changelog form): sums as (mantissa, scale) integers."""

    open_ts: int
    open_seq: int
    open: str
    first_trade_id: str
    close_ts: int
    close_seq: int
    close: str
    last_trade_id: str
    high: int
    high_scale: int
    high_text: str
    low: int
    low_scale: int
    low_text: str
    volume: int
    volume_scale: int
    quote_volume: int
    quote_scale: int
    buy_volume: int
    buy_scale: int
    sell_volume: int
    sell_scale: int
    count: int


class OhlcvAggregation:
    """Aggregates trades of one window; stateless itself, it works on :class:`OhlcvState`.

    ``price``/``size`` are the parsed ``(mantissa, scale)`` of ``price_text`` and the size string.
    """

    @staticmethod
    def initialize(
        ts: int,
        seq: int,
        price_text: str,
        price: int,
        price_scale: int,
        size: int,
        size_scale: int,
        side: str,
        trade_id: str,
    ) -> OhlcvState:
        buy = side == "buy"
        return OhlcvState(
            ts, seq, price_text, trade_id, ts, seq, price_text, trade_id,
            price, price_scale, price_text, price, price_scale, price_text,
            size, size_scale, price * size, price_scale + size_scale,
            size if buy else 0, size_scale if buy else 0, 0 if buy else size, 0 if buy else size_scale,
            1,
        )  # fmt: skip

    @staticmethod
    def add(
        state: OhlcvState,
        ts: int,
        seq: int,
        price_text: str,
        price: int,
        price_scale: int,
        size: int,
        size_scale: int,
        side: str,
        trade_id: str,
    ) -> None:
        if ts < state.open_ts or (ts == state.open_ts and seq < state.open_seq):
            state.open_ts, state.open_seq, state.open, state.first_trade_id = ts, seq, price_text, trade_id
        if ts > state.close_ts or (ts == state.close_ts and seq > state.close_seq):
            state.close_ts, state.close_seq, state.close, state.last_trade_id = ts, seq, price_text, trade_id
        if _less(state.high, state.high_scale, price, price_scale):
            state.high, state.high_scale, state.high_text = price, price_scale, price_text
        elif _less(price, price_scale, state.low, state.low_scale):
            state.low, state.low_scale, state.low_text = price, price_scale, price_text
        if size_scale == state.volume_scale:
            state.volume += size
        else:
            state.volume, state.volume_scale = _add(state.volume, state.volume_scale, size, size_scale)
        quote_scale = price_scale + size_scale
        if quote_scale == state.quote_scale:
            state.quote_volume += price * size
        else:
            state.quote_volume, state.quote_scale = _add(state.quote_volume, state.quote_scale, price * size,
                                                         quote_scale)  # fmt: skip
        if side == "buy":
            state.buy_volume, state.buy_scale = _add(state.buy_volume, state.buy_scale, size, size_scale)
        else:
            state.sell_volume, state.sell_scale = _add(state.sell_volume, state.sell_scale, size, size_scale)
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
        if _less(into.high, into.high_scale, other.high, other.high_scale):
            into.high, into.high_scale, into.high_text = other.high, other.high_scale, other.high_text
        if _less(other.low, other.low_scale, into.low, into.low_scale):
            into.low, into.low_scale, into.low_text = other.low, other.low_scale, other.low_text
        into.volume, into.volume_scale = _add(into.volume, into.volume_scale, other.volume, other.volume_scale)
        into.quote_volume, into.quote_scale = _add(into.quote_volume, into.quote_scale, other.quote_volume,
                                                   other.quote_scale)  # fmt: skip
        into.buy_volume, into.buy_scale = _add(into.buy_volume, into.buy_scale, other.buy_volume, other.buy_scale)
        into.sell_volume, into.sell_scale = _add(into.sell_volume, into.sell_scale, other.sell_volume,
                                                 other.sell_scale)  # fmt: skip
        into.count += other.count
        return into

    @staticmethod
    def vwap(state: OhlcvState) -> str:
        """``quote_volume / volume`` rounded half-even to 12 places, exactly, as a decimal string."""
        # quote / 10^qs / (volume / 10^vs) * 10^12 = quote * 10^(vs + 12) / (volume * 10^qs)
        numerator = state.quote_volume * POW10[state.volume_scale + VWAP_DIGITS]
        denominator = state.volume * POW10[state.quote_scale]
        quotient, remainder = divmod(numerator, denominator)
        twice = 2 * remainder
        if twice > denominator or (twice == denominator and quotient % 2 == 1):
            quotient += 1
        return scaled_text(quotient, VWAP_DIGITS)

    @staticmethod
    def result(
        state: OhlcvState, exchange: str, symbol: str, interval: str, start: int, end: int, **book: object
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
            volume=scaled_text(state.volume, state.volume_scale),
            quote_volume=scaled_text(state.quote_volume, state.quote_scale),
            vwap=OhlcvAggregation.vwap(state),
            trade_count=state.count,
            buy_volume=scaled_text(state.buy_volume, state.buy_scale),
            sell_volume=scaled_text(state.sell_volume, state.sell_scale),
            first_trade_id=state.first_trade_id,
            last_trade_id=state.last_trade_id,
            **book,  # type: ignore[arg-type]
        )
