"""One partition's deterministic aggregation state: open windows, watermarks, dedup, offsets.

``PartitionAggregator`` turns the trades and BBOs of one input partition (``md.trade_batches.v1``
and ``md.bbo.v1`` partition *p*: same key, same partition count) into closed 1s and 1m bars. Given
the same records in the same per-topic order it emits the same bars, whatever the processing batch
boundaries: lateness is decided per trade against the watermark at that trade (trades in arrival
order: batch offset, then position in the batch), and windows close when the watermark has passed
them. ``snapshot`` / ``restore`` give the state as one JSON value (the Faust table's changelog
value); it carries the last offset applied per topic, so records replayed after a crash are
skipped instead of counted twice.

Rules: a trade is *late* when its 1s window is closed (``window_end + grace <= trade watermark``,
or the window was already emitted); a *duplicate* (same exchange, symbol, trade_id as a trade in an
open window) is not counted. Windows close at ``min(trade watermark, bbo watermark)`` once the
partition has BBOs (so book metrics are complete), at the trade watermark alone while the BBO
stream is idle, and after ``idle_timeout`` without any record the watermarks advance just far enough to
close the open windows that hold trades (bounded by the wall clock; not at all when none does).
The BBO stream is idle when none arrived for ``idle_timeout`` *and* the consumer holds no unread BBO
of the partition: a BBO partition that merely trails its trades (a loaded worker serving partitions in
turn) holds the windows for up to ``bbo_backlog_wait`` rather than closing them without their spread.
A window without trades yields no bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

from pipeline.aggregation.bars import OhlcvAggregation, OhlcvState
from pipeline.aggregation.book import BookAggregation, BookState, Quote
from pipeline.aggregation.windows import INTERVALS, NO_WATERMARK, Watermark, WindowPolicy, window_start
from pipeline.contracts import Bar, Bbo, Trade, TradeBatch

SECOND = INTERVALS["1s"]
SEQ_BITS = 20  # a trade's arrival position: batch offset << SEQ_BITS | index in the batch
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


_encoder = msgspec.json.Encoder()  # JSON, not msgpack: sums are integers of any size
_decoder = msgspec.json.Decoder(PartitionState)


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
        """One trade as a batch of one at ``offset`` (hand-made sequences in tests)."""
        rejected = self.add_trades(offset, TradeBatch.of([trade]), now_us)
        return "replayed" if rejected is None else rejected[0][1] if rejected else "ok"

    def add_trades(self, offset: int, batch: TradeBatch, now_us: int) -> list[tuple[int, Verdict]] | None:
        """Apply the trades of the batch record at ``offset``; ``None`` when the record was already applied,
        else the ``(index, verdict)`` of each trade not counted (``late``, ``duplicate``, ``invalid``).

        The hot loop of the worker: prices and sizes are parsed to integer mantissas once, the watermark
        is a local, and a trade's arrival position is ``offset << SEQ_BITS | index``.
        """
        state = self.state
        if offset <= state.trade_offset:
            self.counts.replayed += 1
            return None
        state.trade_offset = offset
        self.last_trade_wall = now_us
        key = f"{batch.exchange}:{batch.symbol}"
        sym = self._symbol(key, batch.exchange, batch.symbol)
        seen = self._seen[key]
        seconds = sym.seconds
        closed_through = sym.closed_through
        lateness = self.trade_wm.lateness_us
        watermark = self.trade_wm.value
        horizon = SECOND + self.policy.grace_us
        base = offset << SEQ_BITS
        rejected: list[tuple[int, Verdict]] = []
        initialize, add = OhlcvAggregation.initialize, OhlcvAggregation.add
        ok = duplicates = 0
        for index, trade in enumerate(batch.trades):
            price_text, size_text = trade.price, trade.size
            dot = price_text.find(".")
            if dot < 0:
                price, price_scale = int(price_text), 0
            else:
                price, price_scale = int(price_text.replace(".", "", 1)), len(price_text) - dot - 1
            dot = size_text.find(".")
            if dot < 0:
                size, size_scale = int(size_text), 0
            else:
                size, size_scale = int(size_text.replace(".", "", 1)), len(size_text) - dot - 1
            if price <= 0 or size <= 0:
                rejected.append((index, "invalid"))
                continue
            ts = trade.ts_event
            start = ts - ts % SECOND
            if start + horizon <= watermark or start < closed_through:
                rejected.append((index, "late"))
                continue
            trade_id = trade.trade_id
            if trade_id in seen:
                duplicates += 1
                rejected.append((index, "duplicate"))
                continue
            seen.add(trade_id)
            window = seconds.get(start)
            if window is None:
                window = seconds[start] = SecondWindow(None, [], [])
            if window.ohlcv is None:
                window.ohlcv = initialize(ts, base | index, price_text, price, price_scale, size, size_scale,
                                          trade.side, trade_id)  # fmt: skip
            else:
                add(window.ohlcv, ts, base | index, price_text, price, price_scale, size, size_scale, trade.side,
                    trade_id)  # fmt: skip
            window.trade_ids.append(trade_id)
            if ts - lateness > watermark:
                watermark = ts - lateness
            ok += 1
        self.trade_wm.value = watermark
        self.counts.trades += ok
        self.counts.duplicates += duplicates
        return rejected

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

    def idle(self, now_us: int) -> bool:
        """Whether the partition received no record for the idle timeout (wall clock)."""
        return now_us - max(self.last_trade_wall, self.last_bbo_wall) >= self.policy.idle_timeout_us

    def effective_watermark(self, now_us: int, caught_up: bool = True, bbo_backlog: bool = False) -> int:
        """The watermark windows close at now (advancing idle watermarks to the wall clock).

        ``caught_up`` says the consumer has read everything the broker holds for this partition:
        a partition that is merely paused (rebalance, backlog) is not idle. ``bbo_backlog`` says the
        consumer knows of BBOs of this partition it has not applied yet: the BBO stream is then late, not
        idle, and windows wait for its watermark (at most ``bbo_backlog_wait_us`` since the last BBO).
        """
        policy = self.policy
        if caught_up and now_us - max(self.last_trade_wall, self.last_bbo_wall) >= policy.idle_timeout_us:
            target = self._idle_target(now_us - policy.allowed_lateness_us)
            if target is not None:
                self.trade_wm.advance_to(target)
                self.bbo_wm.advance_to(target)
        if self.state.bbo_seen:
            quiet = now_us - self.last_bbo_wall
            if quiet < policy.idle_timeout_us or (bbo_backlog and quiet < policy.bbo_backlog_wait_us):
                return min(self.trade_wm.value, self.bbo_wm.value)
        return self.trade_wm.value

    def _idle_target(self, wall_us: int) -> int | None:
        """Where an idle partition's watermarks go: far enough to close every open window that holds trades (its
        minute's end + grace), and no further than the wall clock (``wall_us``); ``None`` when no open window
        holds a trade (nothing to emit: the watermarks stay on event time).

        Not the wall clock itself: a producer that pauses longer than the idle timeout (a loaded machine, a
        collector starting) then made every later record of the partition late, and in a replay the wall clock
        is years ahead of event time: a quiet market's first trades arrived after its first BBOs and a pause,
        and all of its trades were dead-lettered as late (chaos seed 9). Live, the wall clock is the bound.
        """
        grace = self.policy.grace_us
        ends = [window_start(start, MINUTE) + MINUTE for sym in self.state.symbols.values()
                for start, window in sym.seconds.items() if window.ohlcv is not None]  # fmt: skip
        ends += [start + MINUTE for sym in self.state.symbols.values()
                 for start, minute in sym.minutes.items() if minute.ohlcv is not None]  # fmt: skip
        return min(max(ends) + grace, wall_us) if ends else None

    def close_windows(self, now_us: int, caught_up: bool = True, bbo_backlog: bool = False) -> list[Bar]:
        """Close every window the watermark has passed; returns their bars, each symbol's in order."""
        watermark = self.effective_watermark(now_us, caught_up, bbo_backlog)
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

    def _bar(
        self, sym: SymbolState, ohlcv: OhlcvState, book: BookState | None, interval: str, start: int, end: int
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
