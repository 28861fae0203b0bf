"""Bars from hand-made trade sequences equal an independent computation, field for field."""

from __future__ import annotations

import random

import pytest
from aggregation_reference import bar_fields, expected_bars

from pipeline.aggregation.engine import PartitionAggregator
from pipeline.aggregation.windows import WindowPolicy
from pipeline.contracts import Bar, Bbo, Trade

M = 1_699_999_980_000_000  # a minute boundary
MS = 1000
POLICY = WindowPolicy(allowed_lateness_us=500 * MS, grace_us=500 * MS, idle_timeout_us=3_000 * MS)


def trade(symbol: str, tid: str, at_ms: int, price: str, size: str, side: str = "buy") -> Trade:
    return Trade(
        exchange="binance", symbol=symbol, raw_symbol=symbol.replace("-", ""), trade_id=tid, price=price,
        size=size, side=side, ts_event=M + at_ms * MS, ts_recv=M + at_ms * MS + 700,
    )  # fmt: skip


# (trade, expected verdict) in arrival order: out of order, duplicate, window edges, late, a quiet symbol.
SEQUENCE: list[tuple[Trade, str]] = [
    (trade("BTC-USDT", "1", 100, "100.5", "1"), "ok"),
    (trade("BTC-USDT", "2", 900, "100.70", "0.5", "sell"), "ok"),
    (trade("BTC-USDT", "3", 50, "100.1", "2"), "ok"),  # out of order: becomes the open
    (trade("BTC-USDT", "2", 900, "100.70", "0.5", "sell"), "duplicate"),
    (trade("ETH-USDT", "e1", 999, "2000.01", "0.003"), "ok"),  # last microsecond-ish of window 0
    (trade("ETH-USDT", "e2", 1000, "2000.02", "0.001", "sell"), "ok"),  # exactly the start of window 1
    (trade("BTC-USDT", "4", 1200, "101", "0.25", "sell"), "ok"),
    (trade("BTC-USDT", "5", 2600, "100.9", "1.5"), "ok"),  # watermark 2100: window 0 closes
    (trade("BTC-USDT", "6", 700, "99", "7"), "late"),  # window 0 closed: late beyond grace
    (trade("BTC-USDT", "7", 1700, "100.95", "0.125"), "ok"),  # window 1 still open (within grace)
    (trade("ETH-USDT", "e3", 2500, "1999.99", "0.002"), "ok"),  # ETH goes quiet after this
    (trade("ETH-USDT", "e2", 1000, "2000.02", "0.001", "sell"), "duplicate"),
    *[
        (trade("BTC-USDT", f"b{i}", 3000 + i * 997, f"100.{i % 10}", "0.01", "buy" if i % 3 else "sell"), "ok")
        for i in range(60)
    ],  # BTC keeps trading into the next minute
    (trade("ETH-USDT", "e4", 30_000, "2001", "1"), "late"),  # ETH's window passed by the partition watermark
    (trade("BTC-USDT", "x", 61_000, "101.5", "0.2"), "ok"),
]


def run(sequence: list[tuple[Trade, str]], close_every: int = 0, restore_every: int = 0) -> tuple[list[Bar], list[str]]:
    now = M  # virtual wall clock: never idle during the sequence
    engine = PartitionAggregator(POLICY, now)
    bars: list[Bar] = []
    verdicts = []
    for offset, (t, _) in enumerate(sequence):
        verdicts.append(engine.add_trade(offset, t, now))
        if close_every and offset % close_every == 0:
            bars += engine.close_windows(now)
        if restore_every and offset % restore_every == 0:
            engine = PartitionAggregator.restore(engine.snapshot(), POLICY, now)
    bars += engine.close_windows(now)
    # the whole partition goes quiet: after the idle timeout the watermark follows the wall clock
    bars += engine.close_windows(M + 200_000 * MS)
    assert engine.open_windows() == 0
    return bars, verdicts


def order(bar: Bar) -> tuple[str, str, int]:
    return (bar.interval, bar.symbol, bar.window_start)


def accepted(sequence: list[tuple[Trade, str]]) -> list[tuple[int, Trade]]:
    return [(i, t) for i, (t, verdict) in enumerate(sequence) if verdict == "ok"]


@pytest.mark.parametrize("interval", ["1s", "1m"])
def test_bars_equal_independent_computation(interval: str) -> None:
    bars, verdicts = run(SEQUENCE)
    assert verdicts == [v for _, v in SEQUENCE]
    got = [b for b in bars if b.interval == interval]
    keys = [(b.exchange, b.symbol, b.window_start) for b in got]
    assert len(keys) == len(set(keys)), "every bar is emitted once"
    for symbol in ("BTC-USDT", "ETH-USDT"):
        starts = [b.window_start for b in got if b.symbol == symbol]
        assert starts == sorted(starts), "bars of a symbol come in order"
    expected = expected_bars(accepted(SEQUENCE), interval)
    assert {k: bar_fields(b) for k, b in zip(keys, got, strict=True)} == expected
    assert all(b.spread_mean_bps is None for b in got)  # no BBO: no book metrics


def test_quiet_symbol_closes_by_partition_watermark() -> None:
    now = M
    engine = PartitionAggregator(POLICY, now)
    bars: list[Bar] = []
    for offset, (t, _) in enumerate(SEQUENCE[:12]):
        engine.add_trade(offset, t, now)
    bars += engine.close_windows(now)
    assert [b.window_start for b in bars if b.symbol == "ETH-USDT"] == [M]
    engine.add_trade(100, trade("BTC-USDT", "later", 4_000, "100", "1"), now)  # only BTC trades
    bars = engine.close_windows(now)
    eth = [b.window_start for b in bars if b.symbol == "ETH-USDT" and b.interval == "1s"]
    assert eth == [M + 1_000 * MS, M + 2_000 * MS]


@pytest.mark.parametrize(("close_every", "restore_every"), [(1, 0), (7, 5), (1, 1), (13, 3)])
def test_bars_do_not_depend_on_batching_or_restores(close_every: int, restore_every: int) -> None:
    reference, _ = run(SEQUENCE)
    bars, _ = run(SEQUENCE, close_every, restore_every)
    assert sorted(bars, key=order) == sorted(reference, key=order)
    assert [b for b in bars if b.symbol == "BTC-USDT"] == [b for b in reference if b.symbol == "BTC-USDT"]


def test_replayed_offsets_after_restore_are_not_counted_twice() -> None:
    reference, _ = run(SEQUENCE)
    engine = PartitionAggregator(POLICY, M)
    emitted: list[Bar] = []
    for offset, (t, _) in enumerate(SEQUENCE[:40]):
        engine.add_trade(offset, t, M)
    emitted += engine.close_windows(M)
    snapshot = engine.snapshot()
    engine = PartitionAggregator.restore(snapshot, POLICY, M)
    for offset, (t, _) in enumerate(SEQUENCE):  # a consumer resuming from an older committed offset
        engine.add_trade(offset, t, M)
    emitted += engine.close_windows(M) + engine.close_windows(M + 200_000 * MS)
    assert sorted(emitted, key=order) == sorted(reference, key=order)


def test_invalid_sizes_are_rejected_not_counted() -> None:
    engine = PartitionAggregator(POLICY, M)
    assert engine.add_trade(0, trade("BTC-USDT", "z", 10, "100", "0"), M) == "invalid"
    assert engine.close_windows(M + 200_000 * MS) == []


def test_randomised_shuffles_match_independent_computation() -> None:
    rng = random.Random(7)
    trades = [
        trade(rng.choice(["BTC-USDT", "ETH-USDT", "SOL-USDT"]), str(i), rng.randrange(0, 130_000),
              f"{rng.randrange(1, 10_000)}.{rng.randrange(0, 1000):03d}", f"0.{rng.randrange(1, 10**8):08d}",
              rng.choice(["buy", "sell"]))
        for i in range(3000)
    ]  # fmt: skip
    trades.sort(key=lambda t: t.ts_event + rng.randrange(-300_000, 300_000))  # bounded disorder
    trades += [trades[i] for i in range(0, 3000, 97)]  # late duplicates
    engine = PartitionAggregator(POLICY, M)
    verdicts = [engine.add_trade(i, t, M) for i, t in enumerate(trades)]
    bars = engine.close_windows(M) + engine.close_windows(M + 500_000 * MS)
    ok = [(i, t) for i, (t, v) in enumerate(zip(trades, verdicts, strict=True)) if v == "ok"]
    # independent acceptance: a trade is late when its 1s window end + grace <= max(ts seen) - lateness
    high = -1
    expected_ok = []
    seen: set[str] = set()
    for i, t in enumerate(trades):
        end = t.ts_event // 1_000_000 * 1_000_000 + 1_000_000
        if high >= 0 and end + POLICY.grace_us <= high - POLICY.allowed_lateness_us:
            continue
        if t.trade_id in seen:
            continue
        seen.add(t.trade_id)
        expected_ok.append((i, t))
        high = max(high, t.ts_event)
    assert ok == expected_ok
    for interval in ("1s", "1m"):
        got = {(b.exchange, b.symbol, b.window_start): bar_fields(b) for b in bars if b.interval == interval}
        assert got == expected_bars(ok, interval)


def bbo(at_ms: int, bid: str, ask: str) -> Bbo:
    return Bbo(exchange="binance", symbol="BTC-USDT", raw_symbol="BTCUSDT", bid_price=bid, bid_size="1",
               ask_price=ask, ask_size="1", ts_event=M + at_ms * MS, ts_recv=M + at_ms * MS + 300)  # fmt: skip


def test_book_metrics_attach_to_bars() -> None:
    engine = PartitionAggregator(POLICY, M)
    quotes = [bbo(200, "100.0", "100.2"), bbo(100, "100.0", "100.1"), bbo(600, "100.3", "100.2"),
              bbo(800, "100.1", "100.3"), bbo(1500, "100.2", "100.4")]  # fmt: skip
    for offset, q in enumerate(quotes):
        engine.add_bbo(offset, q, M)
    engine.add_trade(0, trade("BTC-USDT", "t1", 300, "100.1", "1"), M)
    engine.add_trade(1, trade("BTC-USDT", "t2", 1600, "100.3", "1"), M)
    # the trade watermark alone does not close window 0 while the BBO watermark lags behind it
    engine.add_trade(2, trade("BTC-USDT", "t3", 2600, "100.3", "1"), M)
    assert [b.window_start for b in engine.close_windows(M)] == []
    engine.add_bbo(5, bbo(2700, "100.2", "100.4"), M)
    bars = engine.close_windows(M)
    first = next(b for b in bars if b.window_start == M and b.interval == "1s")

    def spread(bid: float, ask: float) -> float:
        return (ask - bid) / ((bid + ask) / 2) * 1e4

    window0 = [(100.0, 100.1), (100.0, 100.2), (100.3, 100.2), (100.1, 100.3)]  # event-time order
    spreads = [spread(b, a) for b, a in window0]
    assert first.spread_mean_bps == pytest.approx(sum(spreads) / 4)
    assert first.spread_max_bps == pytest.approx(max(spreads))
    assert first.mid_change_bps == pytest.approx((100.2 - 100.05) / 100.05 * 1e4)
    assert first.crossed_us == 200 * MS  # crossed from 600 ms to 800 ms
    rest = engine.close_windows(M + 200_000 * MS)
    minute = next(b for b in rest if b.interval == "1m")
    assert minute.crossed_us == 200 * MS
    assert minute.spread_max_bps == pytest.approx(max(spreads + [spread(100.2, 100.4)] * 2))


def test_a_trailing_bbo_stream_holds_windows_instead_of_closing_them_without_spread() -> None:
    """A loaded worker serves partitions in turn: the BBOs of a partition can trail its trades by more than the
    idle timeout. While the consumer knows of unread BBOs the windows wait for them (bounded); once the BBO
    stream is really quiet (nothing unread) or the wait is over, windows close on the trade watermark."""
    quiet = POLICY.idle_timeout_us + 1
    engine = PartitionAggregator(POLICY, M)
    engine.add_bbo(0, bbo(100, "100.0", "100.2"), M)
    engine.add_trade(0, trade("BTC-USDT", "t1", 300, "100.1", "1"), M)
    engine.add_trade(1, trade("BTC-USDT", "t2", 5_000, "100.2", "1"), M + quiet)  # BBO stream silent > idle
    assert engine.close_windows(M + quiet, caught_up=False, bbo_backlog=True) == []  # BBOs of window 0 coming
    engine.add_bbo(1, bbo(900, "100.0", "100.4"), M + quiet)
    engine.add_bbo(2, bbo(4_000, "100.1", "100.3"), M + quiet)  # the BBO watermark passes window 0
    [bar] = [b for b in engine.close_windows(M + quiet, caught_up=False, bbo_backlog=False) if b.interval == "1s"]
    assert bar.window_start == M and bar.spread_max_bps is not None
    assert bar.spread_max_bps == pytest.approx(0.4 / 100.2 * 1e4)  # the late BBO at 900 ms counted

    stalled = PartitionAggregator(POLICY, M)
    stalled.add_bbo(0, bbo(100, "100.0", "100.2"), M)
    stalled.add_trade(0, trade("BTC-USDT", "t1", 300, "100.1", "1"), M)
    stalled.add_trade(1, trade("BTC-USDT", "t2", 5_000, "100.2", "1"), M)
    # no unread BBOs: the BBO stream is idle and the trade watermark closes window 0 after the idle timeout
    assert [b.window_start for b in stalled.close_windows(M + quiet, caught_up=False) if b.interval == "1s"] == [M]
    waited = PartitionAggregator(POLICY, M)
    waited.add_bbo(0, bbo(100, "100.0", "100.2"), M)
    waited.add_trade(0, trade("BTC-USDT", "t1", 300, "100.1", "1"), M)
    waited.add_trade(1, trade("BTC-USDT", "t2", 5_000, "100.2", "1"), M)
    late = M + POLICY.bbo_backlog_wait_us
    # unread BBOs that never come: the wait is bounded
    assert [b.window_start for b in waited.close_windows(late, caught_up=False, bbo_backlog=True)
            if b.interval == "1s"] == [M]  # fmt: skip
