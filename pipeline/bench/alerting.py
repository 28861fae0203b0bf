"""``marketprism bench alerting``: rule-engine throughput on synthetic inputs of the real record shapes.

Evaluates the shipped core rules over FeedMetrics (collectors and aggregator) and 1s/1m bars of many
series, decoding each encoded record as the runner does. Baseline, same run: decoding alone. CPU
seconds (``time.process_time``), median of the runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Literal

from pipeline.alerting.engine import AlertEngine
from pipeline.alerting.rules import load_rules
from pipeline.alerting.sources import SOURCES
from pipeline.contracts import encode
from pipeline.contracts.records import Bar, Exchange, FeedMetrics

Interval = Literal["1s", "1m"]

T0 = 1_700_000_000_000_000
VENUES: tuple[Exchange, ...] = ("binance", "binance_usdm", "okx", "coinbase", "kraken")
INTERVALS: dict[bool, tuple[Interval, ...]] = {True: ("1s", "1m"), False: ("1s",)}


def inputs(seconds: int, symbols: int) -> Iterator[tuple[str, bytes]]:
    """(source, encoded record) per second: feed metrics of 3 streams per venue, a 1s bar per market,
    a 1m bar per market each minute; one venue lags and one market's spread blows out now and then."""
    for s in range(seconds):
        ts = T0 + s * 1_000_000
        for venue in VENUES:
            for stream in ("trades", "book", "bbo"):
                lag = 3_000_000 if venue == "okx" and s % 300 > 200 else 20_000
                yield (
                    "feed_metrics",
                    encode(
                        FeedMetrics(
                            exchange=venue,
                            stream=stream,
                            source="collector",
                            ts_event=ts,
                            interval_us=1_000_000,
                            messages=400,
                            lag_p99_us=lag,
                            staleness_us=50_000,
                            connected=True,
                        )
                    ),
                )
            yield (
                "feed_metrics",
                encode(
                    FeedMetrics(
                        exchange=venue,
                        stream="book",
                        source="aggregator",
                        ts_event=ts,
                        interval_us=1_000_000,
                        health_score=90.0,
                    )
                ),
            )
            for i in range(symbols):
                spread = 80.0 if i == 0 and s % 120 > 90 else 2.0
                for interval in INTERVALS[s % 60 == 0]:
                    yield f"bars_{interval}", encode(_bar(venue, f"C{i}-USDT", interval, ts, spread))


def _bar(venue: Exchange, symbol: str, interval: Interval, ts: int, spread: float) -> Bar:
    return Bar(
        exchange=venue,
        symbol=symbol,
        interval=interval,
        window_start=ts - 1_000_000,
        window_end=ts,
        open="100.01",
        high="100.05",
        low="99.98",
        close="100.02",
        volume="12.5",
        quote_volume="1250.25",
        vwap="100.020000000000",
        trade_count=40,
        buy_volume="6.0",
        sell_volume="6.5",
        first_trade_id="1",
        last_trade_id="40",
        spread_mean_bps=1.0,
        spread_max_bps=spread,
        mid_change_bps=0.2,
        crossed_us=0,
    )


def _engine_run(records: list[tuple[str, bytes]]) -> tuple[float, int]:
    engine = AlertEngine(load_rules())
    transitions = 0
    started = time.process_time()
    last = 0
    for source, value in records:
        for sample in SOURCES[source].samples(value):
            transitions += len(engine.process(sample))
            if sample.ts > last:
                last = sample.ts
                transitions += len(engine.advance(last))
    return time.process_time() - started, transitions


def _decode_run(records: list[tuple[str, bytes]]) -> float:
    started = time.process_time()
    for source, value in records:
        SOURCES[source].samples(value)
    return time.process_time() - started


def run(seconds: int = 300, symbols: int = 20, repeat: int = 3) -> dict[str, float]:
    records = list(inputs(seconds, symbols))
    engine_times, decode_times, transitions = [], [], 0
    for _ in range(repeat):
        elapsed, transitions = _engine_run(records)
        engine_times.append(elapsed)
        decode_times.append(_decode_run(records))
    engine_s, decode_s = statistics.median(engine_times), statistics.median(decode_times)
    return {
        "records": len(records),
        "transitions": transitions,
        "engine_records_per_s": len(records) / engine_s,
        "decode_records_per_s": len(records) / decode_s,
        "ratio": decode_s / engine_s,
    }
