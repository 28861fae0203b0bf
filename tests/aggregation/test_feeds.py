"""Feed health (score formula, merging partials from several workers, silent streams) and the
cross-venue reference (median, stale and diverging venues), unit and end to end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from aggregation_harness import WorkerProcess, assigned_in, frames_of, produce, produce_trades, read_topic
from prometheus_client import REGISTRY

from pipeline.aggregation.health import FeedHealthTracker, FeedStatsCollector, health_score
from pipeline.aggregation.reference import ReferenceTracker, asset_of
from pipeline.aggregation.summaries import MidPartial, decode_summary, encode_summary
from pipeline.contracts import Bbo, FeedMetrics, Trade, decode
from pipeline.contracts.records import ReferencePrice
from pipeline.settings import Settings

S = 1_000_000
T = 1_700_000_000 * S


def test_health_score_formula() -> None:
    assert health_score(500_000, 100_000, 0, 0, 0, 0, True) == 100.0
    assert health_score(10 * S, 100_000, 0, 0, 0, 0, True) == 60.0  # stale: freshness gone
    assert health_score(5_500_000, 100_000, 0, 0, 0, 0, True) == 80.0  # half stale
    assert health_score(500_000, 5 * S, 0, 0, 0, 0, True) == 80.0  # slow
    assert health_score(500_000, None, 1, 1, 0, 0, True) == 80.0  # a gap and a resync
    assert health_score(500_000, None, 0, 0, 1, 0, True) == 92.5  # a reconnect
    assert health_score(500_000, None, 0, 0, 0, 0, False) == 85.0  # disconnected
    assert health_score(20 * S, 9 * S, 5, 0, 3, 10, False) == 0.0


def test_partials_from_two_workers_merge_and_silent_streams_are_reported() -> None:
    first, second = FeedStatsCollector(), FeedStatsCollector()
    for i in range(100):  # lags 1..100 ms split over two workers
        (first if i % 2 else second).observe("binance", "trades", T + i * 5000 - (i + 1) * 1000, T + i * 5000)
    tracker = FeedHealthTracker(settle_us=2 * S, max_wait_us=10 * S)
    for partial in first.drain() + second.drain():
        tracker.add_partial(decode_summary(encode_summary(partial)))  # as shipped over the topic
    tracker.add_collector(FeedMetrics(exchange="binance", stream="trades", source="collector", ts_event=T + S,
                                      interval_us=S, gaps=1, reconnects=0, connected=True))  # fmt: skip
    assert tracker.due(T + 2 * S) == []  # not settled yet
    (metrics,) = tracker.due(T + 3 * S)
    assert (metrics.source, metrics.messages, metrics.rate, metrics.gaps) == ("aggregator", 100, 100.0, 1)
    assert (metrics.lag_p50_us, metrics.lag_p99_us) == (50_000, 99_000)
    assert metrics.staleness_us == T + S - (T + 99 * 5000)
    assert metrics.health_score == health_score(metrics.staleness_us, 99_000, 1, 0, 0, 0, True)
    assert tracker.due(T + 8 * S) == []  # no worker shipped a later second: wait for them (up to max_wait)
    later = tracker.due(T + 16 * S)  # nothing arrived: one record per silent second, staleness grows
    assert [m.messages for m in later] == [0] * 5
    assert [m.staleness_us for m in later] == [metrics.staleness_us + k * S for k in range(1, 6)]
    assert later[-1].health_score < metrics.health_score


def test_a_stream_only_the_collector_reports_is_not_mirrored() -> None:
    """The collectors' per-channel book/funding streams never reach the bar workers: no aggregator record for them
    (their gaps and connectivity are the collector's own record); once the workers count a stream it is reported."""
    tracker = FeedHealthTracker(settle_us=2 * S, max_wait_us=10 * S)
    for k in range(5):
        tracker.add_collector(FeedMetrics(exchange="okx", stream="books", source="collector", ts_event=T + k * S,
                                          interval_us=S, gaps=1 if k == 2 else 0, connected=True))  # fmt: skip
    assert tracker.due(T + 20 * S) == []
    collector = FeedStatsCollector()
    collector.observe("okx", "books", T + 20 * S, T + 20 * S + 1000)
    for partial in collector.drain():
        tracker.add_partial(partial)
    reported = tracker.due(T + 23 * S)
    counted = [(m.stream, m.ts_event, m.messages, m.rate) for m in reported if m.messages]
    assert counted == [("books", T + 21 * S, 1, 1.0)]


def test_a_stream_lagging_behind_the_others_is_not_reported_empty() -> None:
    """The worker's bbo partition runs 4 s behind its trades: each bbo second waits for its own partials (up to
    max_wait) instead of going out with 0 messages because the trades' partials had passed it."""
    tracker = FeedHealthTracker(settle_us=2 * S, max_wait_us=10 * S)
    reported: dict[str, list[int]] = {"trades": [], "bbo": []}
    for tick in range(3, 30):
        collector = FeedStatsCollector()
        for k in range(10):  # ten of each per second, trades of the second that just ended, bbo 4 s older
            collector.observe("kraken", "trades", T + (tick - 1) * S + k * 90_000, T + (tick - 1) * S + k * 90_000)
            collector.observe("kraken", "bbo", T + (tick - 5) * S + k * 90_000, T + (tick - 5) * S + k * 90_000)
        for partial in collector.drain():
            tracker.add_partial(partial)
        for metrics in tracker.due(T + tick * S):
            reported[metrics.stream].append(metrics.messages)
    assert set(reported["trades"][1:]) == {10} and set(reported["bbo"][1:]) == {10}, reported  # no empty seconds
    assert tracker.dropped_late == 0


def mid(exchange: str, symbol: str, value: str, age_s: float) -> MidPartial:
    return MidPartial(exchange, symbol, value, T - int(age_s * S), T - int(age_s * S))


def test_reference_is_the_median_without_stale_or_diverging_venues() -> None:
    assert (asset_of("BTC-USDT"), asset_of("BTC-USD"), asset_of("BTC-USDT-PERP"), asset_of("ETH-BTC")) == (
        "BTC-USD", "BTC-USD", None, "ETH-BTC")  # fmt: skip
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50, max_trail_us=15 * S)
    quotes = (
        mid("binance", "BTC-USDT", "36500.5", 0.1),
        mid("coinbase", "BTC-USD", "36501.5", 0.2),
        mid("okx", "BTC-USDT", "36502.0", 0.3),
        mid("kraken", "BTC-USD", "37000", 0.1),  # 136 bps away: diverging
        mid("binance_usdm", "BTC-USDT-PERP", "36600", 0.1),  # perpetual: not a reference input
        mid("okx", "BTC-USDC", "36400", 30),  # 30 s behind the newest quote (more than max_trail): stale
    )
    for partial in quotes:
        tracker.observe(partial, T)
    (price,) = tracker.compute(T)
    assert (price.asset, price.price, price.venues) == ("BTC-USD", "36501.5", 3)
    assert price.excluded == {"kraken:BTC-USD": "diverging", "okx:BTC-USDC": "stale"}
    assert price.divergence_bps["kraken:BTC-USD"] == pytest.approx(
        float((Decimal(37000) - Decimal("36501.5")) / Decimal("36501.5")) * 1e4, abs=1e-4)  # fmt: skip
    # stamped where every live venue has quoted (okx BTC-USDT, 0.3 s old), not when we computed it
    assert price.ts_event == T - int(0.3 * S)
    tracker.observe(mid("binance", "BTC-USDT", "36500.5", 10), T + 100 * S)  # an older quote never replaces
    assert tracker.compute(T + S) == []  # no quote moved on: nothing repeated under a later time
    for partial in quotes[:5]:  # the live venues sample their (unchanged) mids again, 100 s later
        tracker.observe(partial, T + 100 * S)
    tracker.observe(mid("coinbase", "BTC-USD", "36501.5", 0), T + 100 * S)
    tracker.observe(mid("okx", "BTC-USDT", "36502.0", 0), T + 100 * S)
    (again,) = tracker.compute(T + 100 * S)  # however far behind we are, new quotes make a new reference
    assert (again.ts_event, again.price, again.excluded) == (T - int(0.1 * S), "36501.5", price.excluded)


async def test_worker_publishes_feed_health_and_reference(topics: Settings, tmp_path: Path) -> None:
    worker = await WorkerProcess(topics, tmp_path / "worker.log").start()
    try:
        await assigned_in(worker)
        collector = FeedMetrics(exchange="binance", stream="trades", source="collector", ts_event=0, interval_us=S)
        for round_ in range(8):
            now = time.time_ns() // 1000
            trades = [Trade(exchange="binance", symbol="BTC-USDT", raw_symbol="BTCUSDT", trade_id=f"{round_}-{i}",
                            price="36500.5", size="0.1", side="buy", ts_event=now - 20_000, ts_recv=now)
                      for i in range(20)]  # fmt: skip
            quotes = [Bbo(exchange=ex, symbol=sym, raw_symbol=sym, bid_price=bid, bid_size="1", ask_price=ask,
                          ask_size="1", ts_event=now - 5000, ts_recv=now)
                      for ex, sym, bid, ask in (("binance", "BTC-USDT", "36500", "36501"),
                                                ("coinbase", "BTC-USD", "36501", "36502"),
                                                ("okx", "BTC-USDT", "36502", "36502.5"),
                                                ("kraken", "BTC-USD", "36999", "37001"))]  # fmt: skip
            await produce_trades(topics, frames_of(trades, 5))
            await produce(topics, "md.bbo.v1", quotes)
            gaps = collector.__replace__(ts_event=now, gaps=2)
            await produce(topics, "ops.feed_metrics.v1", [gaps], key_of=lambda m: b"binance:trades")
            await asyncio.sleep(0.5)

        def ours(r: FeedMetrics) -> bool:
            return (r.source, r.exchange, r.stream) == ("aggregator", "binance", "trades")

        def scored_by_formula(r: FeedMetrics) -> bool:
            fields = (r.staleness_us, r.lag_p99_us, r.gaps, r.resyncs, r.reconnects, r.parse_errors, r.connected)
            return r.health_score is not None and r.health_score == health_score(*fields)

        def lag_measured(r: FeedMetrics) -> bool:  # the trades' ts_recv - ts_event
            return ours(r) and r.lag_p50_us == 20_000 and r.messages > 0

        def gaps_merged(r: FeedMetrics) -> bool:
            # the collector's gaps merged into the stream's health: 2 per collector record, and a second can hold
            # one or two rounds (0.5 s apart), so 2 or 4; each gap costs 10 of the score's 25 integrity points
            return ours(r) and r.gaps in (2, 4) and r.health_score is not None and r.health_score <= 80.0

        def health_seen(messages: list) -> bool:  # type: ignore[type-arg]
            # The worker closes seconds on its own schedule, so trades and the collector's record of one round
            # may land in neighbouring intervals on a loaded machine: wait for both kinds of evidence.
            records = [decode(FeedMetrics, m.value) for m in messages]
            return any(map(lag_measured, records)) and any(map(gaps_merged, records))

        records = [decode(FeedMetrics, m.value) for m in await read_topic(topics, "ops.feed_metrics.v1", health_seen)]
        health = [r for r in records if ours(r)]
        assert any(map(lag_measured, health)) and any(map(gaps_merged, health))
        assert all(map(scored_by_formula, health))
        assert any(r.stream == "bbo" and r.source == "aggregator" for r in records)

        def reference_seen(messages: list) -> bool:  # type: ignore[type-arg]
            return any(decode(ReferencePrice, m.value).venues == 3 for m in messages)

        refs = [decode(ReferencePrice, m.value) for m in await read_topic(topics, "md.reference.v1", reference_seen)]
        ref = next(r for r in refs if r.venues == 3)
        assert (ref.asset, ref.price, ref.excluded) == ("BTC-USD", "36501.5", {"kraken:BTC-USD": "diverging"})

        # Six seconds of quotes reach the worker at once (a stalled collector catching up, a busy worker): each
        # second of them still gets its own reference, okx's move showing at the second it happened.
        base = (time.time_ns() // 1000 // S + 30) * S  # whole seconds after everything above

        def eth_quotes(seconds: range) -> list[Bbo]:
            return [Bbo(exchange=ex, symbol=sym, raw_symbol=sym, bid_price=bid, bid_size="1",
                        ask_price=f"{int(bid) + 1}", ask_size="1", ts_event=base + k * S, ts_recv=base + k * S + 100)
                    for k in seconds
                    for ex, sym, bid in (("binance", "ETH-USDT", "2000"), ("coinbase", "ETH-USD", "2000"),
                                         ("okx", "ETH-USDT", "2000" if k < 4 else "2100"))]  # fmt: skip

        def eth_through(second: int) -> Callable[[list], bool]:  # type: ignore[type-arg]
            def seen(messages: list) -> bool:  # type: ignore[type-arg]
                eth = [decode(ReferencePrice, m.value) for m in messages if m.key == b"ETH-USD"]
                return any(r.ts_event >= base + second * S for r in eth)

            return seen

        await produce(topics, "md.bbo.v1", eth_quotes(range(1)))  # the asset's first reference
        await read_topic(topics, "md.reference.v1", eth_through(0))
        await produce(topics, "md.bbo.v1", eth_quotes(range(1, 7)))  # six seconds at once
        eth = [decode(ReferencePrice, m.value) for m in await read_topic(topics, "md.reference.v1", eth_through(5))]
        eth = [r for r in eth if r.asset == "ETH-USD"]
        assert [r.ts_event for r in eth][:6] == [base + k * S + 100 for k in range(6)]  # one per second
        assert [r.excluded.get("okx:ETH-USDT") for r in eth][:6] == [None] * 4 + ["diverging"] * 2
    finally:
        await worker.stop()


def test_reference_without_consensus_excludes_nobody_for_diverging() -> None:
    """Two venues against two, each ~900 bps from the median: no majority to call anyone diverging."""
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50)
    for partial in (
        mid("binance", "BTC-USDT", "100", 0.1),
        mid("coinbase", "BTC-USD", "100", 0.1),
        mid("okx", "BTC-USDT", "120", 0.1),
        mid("kraken", "BTC-USD", "120", 0.1),
    ):
        tracker.observe(partial, T)
    (price,) = tracker.compute(T)
    assert (price.price, price.venues, price.excluded) == ("110", 4, {})


def test_a_venue_that_stops_holds_references_back_until_it_is_stale() -> None:
    """okx stops after its quote at second 2: while it may only be late, references wait for it (at most
    stale_after); then it is stale and the seconds it held back are published, in order, without it."""
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50, lagging_after_us=30 * S)
    published = []
    for second in range(12):
        for exchange, symbol, value in (("binance", "BTC-USDT", "100"), ("coinbase", "BTC-USD", "100.2"),
                                        ("okx", "BTC-USDT", "100.1")):  # fmt: skip
            if exchange != "okx" or second <= 2:
                tracker.observe(MidPartial(exchange, symbol, value, T + second * S, T + second * S), T + second * S)
        refs = tracker.compute(T + second * S + 200_000)
        if 3 <= second <= 6:
            assert refs == []  # okx's last mid arrived <= 5 s ago: it may be late, not gone
        if second == 7:
            assert [r.ts_event for r in refs] == [T + k * S for k in range(3, 8)]  # the held-back seconds
        published += refs
    assert [r.ts_event for r in published] == [T + k * S for k in range(12)]  # every second, once, in order
    for ref in published:
        if ref.ts_event <= T + 2 * S:
            assert (ref.price, ref.venues, ref.excluded) == ("100.1", 3, {})
        else:
            assert (ref.price, ref.venues, ref.excluded) == ("100.1", 2, {"okx:BTC-USDT": "stale"})
            assert ref.mids["okx:BTC-USDT"] == "100.1"  # still reported, with its divergence
    assert tracker.compute(T + 60 * S) == []  # every venue stopped: no more references


def test_partitions_progressing_unevenly_do_not_make_venues_stale() -> None:
    """The aggregation partitions of a loaded worker sample their markets seconds apart: binance's mids run
    8 s ahead of coinbase's and okx's. No venue is stale; each second gets one reference with every venue's
    mid as of that second, and okx's divergence shows at the second it began (an as-of join)."""
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50, max_trail_us=15 * S)

    def okx_mid(second: int) -> str:
        return "100" if second < 20 else "101"  # okx moves 100 bps away at second 20

    published = []
    for tick in range(12, 40):
        now = T + tick * S
        tracker.observe(MidPartial("binance", "BTC-USDT", "100", now, now), now)
        for exchange, symbol in (("coinbase", "BTC-USD"), ("kraken", "BTC-USD"), ("okx", "BTC-USDT")):
            behind = now - 8 * S
            value = okx_mid(tick - 8) if exchange == "okx" else "100"
            tracker.observe(MidPartial(exchange, symbol, value, behind, behind), now)
        published += tracker.compute(now)
    assert all(r.excluded.get(v) != "stale" for r in published for v in r.mids)
    assert [r.ts_event for r in published] == [T + k * S for k in range(4, 32)]
    first_diverging = next(r for r in published if r.excluded.get("okx:BTC-USDT") == "diverging")
    assert first_diverging.ts_event == T + 20 * S and first_diverging.divergence_bps["okx:BTC-USDT"] == 100.0


def test_a_venue_whose_worker_has_unread_bbos_is_waited_for_not_stale() -> None:
    """The replay of the live hour's misses: a loaded worker serves its partitions in turn, and the partitions of
    coinbase and kraken ETH stand 120 s behind binance's (no mid of theirs arrives for minutes). Their worker
    reports unread BBOs of those partitions every tick, so the reference waits for them instead of calling them
    stale, and binance's divergence at second 150 shows at that second once they catch up. Without the backlog
    reports the same arrivals make them stale (the divergence of the one venue left is invisible)."""

    def run(report_backlog: bool) -> list:
        tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50, max_trail_us=60 * S)
        published = []
        for tick in range(0, 400):
            now = T + tick * S
            value = "2030" if 150 <= tick < 180 else "2000"  # binance 150 bps away for 30 s
            tracker.observe(MidPartial("binance", "ETH-USDT", value, now, now), now)
            starved = 30 <= tick < 300  # the other partitions: nothing read from 30 s to 300 s, then all at once
            for exchange, symbol in (("coinbase", "ETH-USD"), ("kraken", "ETH-USD")):
                if not starved:
                    seconds = range(30, tick + 1) if tick == 300 else [tick]
                    for k in seconds:
                        tracker.observe(MidPartial(exchange, symbol, "2000.2", T + k * S, T + k * S), now)
                elif report_backlog:
                    tracker.observe_backlog(exchange, symbol, now)
            published += tracker.compute(now)
        return published

    waited = run(report_backlog=True)
    assert [r.ts_event for r in waited] == [T + k * S for k in range(400)]  # every second, once, in order
    assert all(r.excluded.get(v) != "stale" for r in waited for v in r.mids)
    diverging = [r.ts_event for r in waited if r.excluded.get("binance:ETH-USDT") == "diverging"]
    assert diverging == [T + k * S for k in range(150, 180)]  # at the seconds it happened, whatever our lag
    stale = run(report_backlog=False)
    assert any(r.excluded.get("coinbase:ETH-USD") == "stale" for r in stale)
    assert not any(r.excluded.get("binance:ETH-USDT") == "diverging" for r in stale)


def test_a_venue_with_unread_bbos_is_waited_for_only_up_to_max_wait() -> None:
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50, max_trail_us=10 * S, max_wait_us=60 * S)
    for tick in range(0, 100):
        now = T + tick * S
        tracker.observe(MidPartial("binance", "ETH-USDT", "2000", now, now), now)
        if tick == 0:
            tracker.observe(MidPartial("coinbase", "ETH-USD", "2000", now, now), now)
        else:
            tracker.observe_backlog("coinbase", "ETH-USD", now)  # "unread BBOs" that never come
        refs = tracker.compute(now)
        if 1 <= tick <= 60:
            assert refs == []  # waited for
        elif tick == 61:
            assert refs[-1].excluded == {"coinbase:ETH-USD": "stale"} and refs[-1].ts_event == now


def test_a_burst_of_mids_after_a_stall_yields_the_missing_seconds() -> None:
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50)

    def sample(second: int, arrived: int) -> None:
        for exchange, symbol in (("binance", "ETH-USDT"), ("coinbase", "ETH-USD")):
            ts = T + second * S + (1000 if exchange == "coinbase" else 0)
            tracker.observe(MidPartial(exchange, symbol, str(2000 + second), ts, ts), arrived)

    sample(0, T)
    (first,) = tracker.compute(T)
    assert (first.ts_event, first.price) == (T, "2000")  # coinbase's first mid (1 ms later) stands for before it
    for second in range(1, 6):  # five seconds of mids reach the tracker at once (its consumer stalled)
        sample(second, T + 6 * S)
    refs = tracker.compute(T + 6 * S)
    assert [r.ts_event for r in refs] == [T + k * S for k in range(1, 6)]
    # as of each second: binance's mid of that second, coinbase's of the second before (1 ms short of it)
    assert [r.price for r in refs] == [f"{1999.5 + k}" for k in range(1, 6)]


def test_reference_is_published_while_all_venues_lag_together() -> None:
    """Our own lag (a loaded machine, an accelerated demo) makes every quote old by the same amount:
    the reference is still published, stamped with the quotes' time, and counted as lagging."""
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50, lagging_after_us=30 * S)
    lagging = REGISTRY.get_sample_value("marketprism_aggregation_reference_lagging_total", {"asset": "ETH-USD"}) or 0
    for second, behind_s in ((0, 1), (1, 20), (2, 120), (3, 246)):  # how far the aggregator trails the quotes
        for exchange, symbol, value in (("binance", "ETH-USDT", "2000"), ("coinbase", "ETH-USD", "2000.4"),
                                        ("kraken", "ETH-USD", "2000.2")):  # fmt: skip
            tracker.observe(
                MidPartial(exchange, symbol, value, T + second * S - 1000, T + second * S),
                T + second * S + behind_s * S,
            )
        (ref,) = tracker.compute(T + second * S + behind_s * S)
        assert (ref.asset, ref.ts_event, ref.price, ref.venues, ref.excluded) == (
            "ETH-USD", T + second * S, "2000.2", 3, {})  # fmt: skip
        lag = REGISTRY.get_sample_value("marketprism_aggregation_reference_lag_seconds", {"asset": "ETH-USD"})
        assert lag == behind_s
    after = REGISTRY.get_sample_value("marketprism_aggregation_reference_lagging_total", {"asset": "ETH-USD"})
    assert after == lagging + 2  # 120 s and 246 s behind: past lagging_after_us, published anyway


def test_one_of_three_fresh_venues_diverging_is_excluded() -> None:
    tracker = ReferenceTracker(stale_after_us=5 * S, max_divergence_bps=50)
    for exchange, symbol, value, age_s in (("binance", "SOL-USDT", "60.00", 0.5), ("coinbase", "SOL-USD", "60.06", 0),
                                           ("kraken", "SOL-USD", "61.00", 4.9)):  # fmt: skip
        tracker.observe(mid(exchange, symbol, value, age_s), T + 90 * S)  # arriving late, all of them
    (ref,) = tracker.compute(T + 90 * S)  # far behind pipeline time: judged among the quotes, kraken is fresh
    assert (ref.price, ref.venues, ref.excluded) == ("60.03", 2, {"kraken:SOL-USD": "diverging"})
    assert ref.divergence_bps["kraken:SOL-USD"] == pytest.approx(
        float((Decimal("61.00") - Decimal("60.03")) / Decimal("60.03")) * 1e4, abs=1e-4)  # fmt: skip
