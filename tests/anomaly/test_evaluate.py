"""The simulator evaluation on hand-made labels and anomalies: detection window, latency, right series, false
anomalies per series-hour; and the dump round trip the CLI uses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.bench.anomaly.evaluate import Capture, Label, Options, evaluate, read_labels
from pipeline.contracts import Anomaly

T0 = 1_767_225_600_000_000
S = 1_000_000


def anomaly(
    series_id: str, metric: str, t_s: float, exchange: str, symbol: str | None, kind: str = "anomaly"
) -> Anomaly:
    return Anomaly(
        series_id=series_id,
        metric=metric,
        ts_event=T0 + round(t_s * S),
        value=1.0,
        score=0.9,
        detector="robust",
        exchange=exchange,
        symbol=symbol,
        kind=kind,  # type: ignore[arg-type]
    )


LABELS = [
    Label("spike", "price_spike", "binance", "BTC-USDT", T0 + 300 * S, T0 + 315 * S),
    Label("frozen", "frozen_price", "coinbase", "ETH-USD", T0 + 400 * S, T0 + 430 * S),
    Label("lat", "latency_increase", "okx", None, T0 + 500 * S, T0 + 520 * S),
    Label("div", "venue_divergence", "kraken", "BTC-USD", T0 + 600 * S, T0 + 630 * S),
    Label("gap", "sequence_gap", "okx", "BTC-USDT", T0 + 700 * S, T0 + 700 * S),  # not a scored kind
]


def test_detection_latency_right_series_and_false_rate() -> None:
    found = [
        anomaly("binance:BTC-USDT:1s:log_return", "log_return", 301, "binance", "BTC-USDT"),  # 1 s: detected
        anomaly("binance:BTC-USDT:1s:volume", "volume", 300, "binance", "BTC-USDT"),  # wrong series: not a detection
        anomaly("coinbase:ETH-USD:1s:frozen_bars", "frozen_bars", 406, "coinbase", "ETH-USD"),  # 6 s: too late
        anomaly("okx:trades:collector:lag_p99_s", "feed_lag_p99_s", 502, "okx", None),  # venue-wide: detected at 2 s
        anomaly("kraken:ETH-USD:divergence_bps", "divergence_bps", 601, "kraken", "ETH-USD"),  # other symbol
        anomaly("kraken:BTC-USD:divergence_bps", "divergence_bps", 599.5, "kraken", "BTC-USD"),  # 0.5 s early: counts
        anomaly("okx:BTC-USDT:1s:volume", "volume", 760, "okx", "BTC-USDT"),  # 60 s after the gap: explained
        anomaly("okx:BTC-USDT:1s:volume", "volume", 761, "okx", "BTC-USDT"),  # 61 s after: false
        anomaly("binance:ETH-USDT:1s:volume", "volume", 100, "binance", "ETH-USDT"),  # quiet market: false
        anomaly("health:host:memory_bytes", "memory_bytes", 200, "binance", None, kind="forecast"),  # not scored
        anomaly("binance:ETH-USDT:1s:volume", "volume", -5, "binance", "ETH-USDT"),  # before the span: ignored
    ]
    ev = evaluate(LABELS, found, series=[f"s{i}" for i in range(8)])
    by_id = {r.label.id: r for r in ev.incidents}
    assert (by_id["spike"].detected, by_id["spike"].latency_s) == (True, 1.0)
    assert by_id["spike"].series_id == "binance:BTC-USDT:1s:log_return"
    assert not by_id["frozen"].detected and by_id["frozen"].first_any_s == 6.0
    assert (by_id["lat"].detected, by_id["lat"].latency_s) == (True, 2.0)
    assert (by_id["div"].detected, by_id["div"].latency_s) == (True, -0.5)
    assert not by_id["gap"].scored
    assert ev.recall() == (3, 4)
    assert ev.recall(["frozen_price"]) == (0, 1)
    # span: 300 s before the first incident to 60 s after the last end = 0 .. 760 s
    assert ev.span_us == (T0, T0 + 760 * S)
    sink_down = Label("sink-down", "sink_down", "pipeline", None, T0 + 1 * S, T0 + 101 * S)  # a demo fault
    assert evaluate([sink_down, *LABELS], found, series=[]).span_us == ev.span_us  # the span follows the market
    false_keys = sorted((a.series_id, a.ts_event) for a in ev.false)
    assert false_keys == [
        ("binance:ETH-USDT:1s:volume", T0 + 100 * S),
        ("kraken:ETH-USD:divergence_bps", T0 + 601 * S),
    ]  # the 761 s one is after the span's end (the last incident's window)
    # 8 listed series + the 8 that reported anomalies (not the forecast's: forecasts are not scored)
    assert ev.series == 8 + 8
    assert abs(ev.false_per_series_hour - 2 / (16 * 760 / 3600)) < 1e-9
    d = ev.as_dict()
    assert d["recall"] == {"detected": 3, "incidents": 4, "ratio": 0.75}
    assert d["false_by_metric"] == {"volume": 1, "divergence_bps": 1}
    # the feed series (okx lag) and the 8 listed names "s0".."s7" count as market series: none is a feed suffix
    assert d["by_family"]["feed"] == {"series": 1, "false": 0, "false_per_series_hour": 0.0}
    assert d["by_family"]["market"]["series"] == 15 and d["by_family"]["market"]["false"] == 2


def test_explicit_span_and_window_options() -> None:
    found = [anomaly("okx:BTC-USDT:1s:volume", "volume", 761, "okx", "BTC-USDT")]
    ev = evaluate(LABELS, found, series=["x"], options=Options(to_us=T0 + 800 * S, slack_s=120.0))
    assert ev.false == []  # within 120 s of the gap now
    strict = evaluate(LABELS, found, series=["x"], options=Options(to_us=T0 + 800 * S, slack_s=10.0))
    assert len(strict.false) == 1
    frozen = anomaly("coinbase:ETH-USD:1s:frozen_bars", "frozen_bars", 406, "coinbase", "ETH-USD")
    late = evaluate(LABELS[1:2], [frozen], series=[], options=Options(within_s=6.0))
    assert late.recall() == (1, 1)
    cut = evaluate(LABELS, [], series=["x"], options=Options(from_us=T0 + 350 * S, to_us=T0 + 504 * S))
    assert [r.label.id for r in cut.incidents] == ["frozen"]  # the spike is before, the latency window after the span


def test_labels_file_and_dump_round_trip(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        '{"detail":{},"end_us":1767225635000000,"id":"spike-binance-btc","kind":"price_spike",'
        '"params":{"magnitude_pct":4.0},"raw_symbol":"BTCUSDT","start_us":1767225620000000,"symbol":"BTC-USDT",'
        '"venue":"binance"}\n'
    )
    assert read_labels(labels) == [
        Label(
            "spike-binance-btc",
            "price_spike",
            "binance",
            "BTC-USDT",
            1767225620000000,
            1767225635000000,
            raw_symbol="BTCUSDT",
            params={"magnitude_pct": 4.0},
        )
    ]
    captured = Capture([anomaly("a:b:1s:volume", "volume", 1, "binance", "BTC-USDT")], {"a:b:1s:volume", "c"})
    captured.dump(tmp_path / "dump")
    again = Capture.load(tmp_path / "dump")
    assert again.anomalies == captured.anomalies and again.series == captured.series


class _BrokerGoneConsumer:
    """Stands in for AIOKafkaConsumer after the broker went away: ``stop`` re-raises its fetch task's cancellation."""

    async def stop(self) -> None:
        raise asyncio.CancelledError


async def test_stopping_after_the_broker_went_away_does_not_end_the_capture_with_a_traceback() -> None:
    from pipeline.bench.anomaly.evaluate import _stop

    await _stop(_BrokerGoneConsumer())  # type: ignore[arg-type]  # returns: the capture goes on to its last dump

    async def cancelled_while_stopping() -> None:
        await asyncio.sleep(0)
        await _stop(_BrokerGoneConsumer())  # type: ignore[arg-type]

    task = asyncio.create_task(cancelled_while_stopping())
    await asyncio.sleep(0)
    task.cancel()  # a cancellation of the capture itself is not swallowed
    with pytest.raises(asyncio.CancelledError):
        await task
