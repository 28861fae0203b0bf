"""One partition's deterministic aggregation state: open windows, watermarks, dedup, offsets.

``PartitionAggregator`` turns the trades and BBOs of one input partition (``md.trades.v1`` and
``md.bbo.v1`` partition *p*: same key, same partition count) into closed 1s and 1m bars. Given the
same records in the same per-topic order it emits the same bars, whatever the batch boundaries:
lateness is decided per record against the watermark at that record, and windows close when the
watermark has passed them. ``snapshot`` / ``restore`` give the state as one msgpack value (the
Faust table's changelog value); it carries the last offset applied per topic, so records replayed
after a crash are skipped instead of counted twice.

Rules: a trade is *late* when its 1s window is closed (``window_end + grace <= trade watermark``,
or the window was already emitted); a *duplicate* (same exchange, symbol, trade_id as a trade in an
open window) is not counted. Windows close at ``min(trade watermark, bbo watermark)`` once the
partition has BBOs (so book metrics are complete), at the trade watermark alone while the BBO
stream is idle, and after ``idle_timeout`` without any record the watermarks follow the wall clock.
A window without trades yields no bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import msgspec

from pipeline.aggregation.bars import OhlcvAggregation, OhlcvState
from pipeline.aggregation.book import BookAggregation, BookState, Quote
from pipeline.aggregation.windows import INTERVALS, NO_WATERMARK, Watermark, WindowPolicy, window_start
from pipeline.contracts import Bar, Bbo, Trade

SECOND = INTERVALS["1s"]
MINUTE = INTERVALS["1m"]

Verdict = Literal["ok", "late", "duplicate", "replayed", "invalid"]


class SecondWindow(msgspec.Struct, array_like=True):
    ohlcv: OhlcvState | None
    quotes: list[Quote]
    trade_ids: list[str]


class MinuteWindow(msgspec.Struct, array_like=True):
    ohlcv: OhlcvState | None = None
    book: BookState | None = None


class SymbolState(msgspec.Struct, array_like=True):
    exchange: str
    symbol: str
    seconds: dict[int, SecondWindow]
    minutes: dict[int, MinuteWindow]
    closed_through: int = NO_WATERMARK  # end of the last closed 1s window
    crossed: bool = False


class PartitionState(msgspec.Struct):
    trade_wm: int = NO_WATERMARK
    bbo_wm: int = NO_WATERMARK
    trade_offset: int = -1
    bbo_offset: int = -1
    bbo_seen: bool = False
    symbols: dict[str, SymbolState] = {}


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PartitionState)


@dataclass
class Counts:
    """What happened to the records of one partition since the last ``take_counts``."""

    trades: int = 0
    bbos: int = 0
    late_bbos: int = 0
    duplicates: int = 0
    replayed: int = 0
    bars: dict[str, int] = field(default_factory=lambda: {"1s": 0, "1m": 0})


class PartitionAggregator:
    """Window state of one input partition (see the module docstring for the rules)."""

    def __init__(self, policy: WindowPolicy, now_us: int, state: PartitionState | None = None):
        self.policy = policy
        self.state = state if state is not None else PartitionState(symbols={})
        self.trade_wm = Watermark(policy.allowed_lateness_us, self.state.trade_wm)
        self.bbo_wm = Watermark(policy.allowed_lateness_us, self.state.bbo_wm)
        self.last_trade_wall = now_us
        self.last_bbo_wall = now_us
        self.counts = Counts()
        self._seen: dict[str, set[str]] = {
            key: {tid for w in sym.seconds.values() for tid in w.trade_ids} for key, sym in self.state.symbols.items()
        }

    # ------------------------------------------------------------ input

    def _symbol(self, key: str, exchange: str, symbol: str) -> SymbolState:
        sym = self.state.symbols.get(key)
        if sym is None:
            sym = self.state.symbols[key] = SymbolState(exchange, symbol, {}, {})
            self._seen[key] = set()
        return sym

    def add_trade(self, offset: int, trade: Trade, now_us: int) -> Verdict:
        if offset <= self.state.trade_offset:
            self.counts.replayed += 1
            return "replayed"
        self.state.trade_offset = offset
        self.last_trade_wall = now_us
        price, size = Decimal(trade.price), Decimal(trade.size)
        if price <= 0 or size <= 0:
            return "invalid"
        ts = trade.ts_event
        start = ts - ts % SECOND
        key = f"{trade.exchange}:{trade.symbol}"
        sym = self._symbol(key, trade.exchange, trade.symbol)
        if start + SECOND + self.policy.grace_us <= self.trade_wm.value or start < sym.closed_through:
            return "late"
        seen = self._seen[key]
        if trade.trade_id in seen:
            self.counts.duplicates += 1
            return "duplicate"
        seen.add(trade.trade_id)
        window = sym.seconds.get(start)
        if window is None:
            window = sym.seconds[start] = SecondWindow(None, [], [])
        if window.ohlcv is None:
            window.ohlcv = OhlcvAggregation.initialize(
                ts, offset, trade.price, price, size, trade.side, trade.trade_id
            )
        else:
            OhlcvAggregation.add(window.ohlcv, ts, offset, trade.price, price, size, trade.side, trade.trade_id)
        window.trade_ids.append(trade.trade_id)
        self.trade_wm.observe(ts)
        self.counts.trades += 1
        return "ok"

    def add_bbo(self, offset: int, bbo: Bbo, now_us: int) -> Verdict:
        if offset <= self.state.bbo_offset:
            self.counts.replayed += 1
            return "replayed"
        self.state.bbo_offset = offset
        self.state.bbo_seen = True
        self.last_bbo_wall = now_us
        ts = bbo.ts_event
        start = ts - ts % SECOND
        sym = self._symbol(f"{bbo.exchange}:{bbo.symbol}", bbo.exchange, bbo.symbol)
        if start + SECOND + self.policy.grace_us <= self.bbo_wm.value or start < sym.closed_through:
            self.counts.late_bbos += 1
            return "late"
        window = sym.seconds.get(start)
        if window is None:
            window = sym.seconds[start] = SecondWindow(None, [], [])
        BookAggregation.add(window.quotes, ts, offset, bbo.bid_price, bbo.ask_price)
        self.bbo_wm.observe(ts)
        self.counts.bbos += 1
        return "ok"

    # ------------------------------------------------------------ closing

    def effective_watermark(self, now_us: int, caught_up: bool = True) -> int:
        """The watermark windows close at now (advancing idle watermarks to the wall clock).

        ``caught_up`` says the consumer has read everything the broker holds for this partition:
        a partition that is merely paused (rebalance, backlog) is not idle.
        """
        idle = self.policy.idle_timeout_us
        if caught_up and now_us - max(self.last_trade_wall, self.last_bbo_wall) >= idle:
            self.trade_wm.advance_to(now_us - self.policy.allowed_lateness_us)
            self.bbo_wm.advance_to(now_us - self.policy.allowed_lateness_us)
        if self.state.bbo_seen and now_us - self.last_bbo_wall < idle:
            return min(self.trade_wm.value, self.bbo_wm.value)
        return self.trade_wm.value

    def close_windows(self, now_us: int, caught_up: bool = True) -> list[Bar]:
        """Close every window the watermark has passed; returns their bars, each symbol's in order."""
        watermark = self.effective_watermark(now_us, caught_up)
        self.state.trade_wm, self.state.bbo_wm = self.trade_wm.value, self.bbo_wm.value
        grace = self.policy.grace_us
        bars: list[Bar] = []
        for key in sorted(self.state.symbols):
            sym = self.state.symbols[key]
            for start in sorted(sym.seconds):
                end = start + SECOND
                if watermark < end + grace:
                    break
                window = sym.seconds.pop(start)
                book, sym.crossed = BookAggregation.fold(window.quotes, start, end, sym.crossed)
                self._seen[key].difference_update(window.trade_ids)
                sym.closed_through = end
                if window.ohlcv is not None:
                    bars.append(self._bar(sym, window.ohlcv, book, "1s", start, end))
                if window.ohlcv is not None or book is not None:
                    minute = sym.minutes.setdefault(window_start(start, MINUTE), MinuteWindow())
                    if window.ohlcv is not None:
                        minute.ohlcv = OhlcvAggregation.merge(minute.ohlcv, window.ohlcv)
                    if book is not None:
                        minute.book = BookAggregation.merge(minute.book, book)
            for start in sorted(sym.minutes):
                end = start + MINUTE
                if watermark < end + grace:
                    break
                minute = sym.minutes.pop(start)
                sym.closed_through = max(sym.closed_through, end)
                if minute.ohlcv is not None:
                    bars.append(self._bar(sym, minute.ohlcv, minute.book, "1m", start, end))
        return bars

    def _bar(self, sym: SymbolState, ohlcv: OhlcvState, book: BookState | None, interval: str, start: int, end: int
             ) -> Bar:
        self.counts.bars[interval] += 1
        return OhlcvAggregation.result(
            ohlcv, sym.exchange, sym.symbol, interval, start, end, **BookAggregation.result(book)
        )

    def open_windows(self) -> int:
        return sum(len(s.seconds) + len(s.minutes) for s in self.state.symbols.values())

    def take_counts(self) -> Counts:
        counts, self.counts = self.counts, Counts()
        return counts

    # ------------------------------------------------------------ changelog form

    def snapshot(self) -> bytes:
        self.state.trade_wm, self.state.bbo_wm = self.trade_wm.value, self.bbo_wm.value
        return _encoder.encode(self.state)

    @classmethod
    def restore(cls, data: bytes | None, policy: WindowPolicy, now_us: int) -> PartitionAggregator:
        return cls(policy, now_us, _decoder.decode(data) if data else None)
