"""The demo summary's matching of incidents (simulator labels) to alerts (``ops.alerts.v1`` records)."""

from __future__ import annotations

from decimal import Decimal

from pipeline.contracts import Alert, IncidentLabel, Notification
from pipeline.demo.summary import _episodes, _outcome, _unexplained

S = 1_000_000
T0 = 1_767_225_600 * S


def alert(rule: str, state: str, labels: dict[str, str], fired_s: float | None, at_s: float,
          resolved_s: float | None = None, fingerprint: str = "f1") -> Alert:  # fmt: skip
    return Alert(
        fingerprint=fingerprint,
        rule=rule,
        state=state,
        severity="P2",
        labels=labels,
        annotations={},  # type: ignore[arg-type]
        ts_event=T0 + int(at_s * S),
        fired_at=None if fired_s is None else T0 + int(fired_s * S),
        resolved_at=None if resolved_s is None else T0 + int(resolved_s * S),
    )


def label(kind: str, venue: str, symbol: str | None, raw: str | None, start_s: float, end_s: float) -> IncidentLabel:
    return IncidentLabel(id=f"{kind}-1", kind=kind, venue=venue, symbol=symbol, start_us=T0 + int(start_s * S),
                  end_us=T0 + int(end_s * S), raw_symbol=raw)  # fmt: skip


def sent(fingerprint: str, at_s: float) -> Notification:
    return Notification(
        notification_id="n",
        idempotency_key="k",
        channel="webhook",
        receiver="demo",
        group_key="g",
        status="sent",
        attempt=1,
        ts=T0 + int(at_s * S),
        fingerprints=[fingerprint],
    )


def test_a_stream_alert_matches_the_symbol_its_stream_names_with_latency_resolution_and_notification() -> None:
    stall = label("feed_stall", "okx", "ETH-USDT", "ETH-USDT", 15, 75)
    alerts = [
        alert("FeedStalled", "pending", {"exchange": "okx", "stream": "books:BTC-USDT"}, None, 40, fingerprint="a"),
        alert("FeedStalled", "firing", {"exchange": "okx", "stream": "books:BTC-USDT"}, 55, 55, fingerprint="a"),
        alert("FeedStalled", "firing", {"exchange": "okx", "stream": "books:ETH-USDT"}, 60, 60, fingerprint="b"),
        alert("FeedStalled", "resolved", {"exchange": "okx", "stream": "books:ETH-USDT"}, 60, 76, 76, "b"),
    ]
    outcome = _outcome(stall, _episodes(alerts), [sent("b", 60.5)])
    assert (outcome.rule, outcome.fingerprint) == ("FeedStalled", "b")  # not the BTC-USDT stream that fired first
    assert (outcome.latency_s, outcome.resolved_after_end_s, outcome.notified_s) == (45.0, 1.0, 45.5)


def test_an_inhibited_alert_was_raised_and_a_pending_one_was_not() -> None:
    checksum = label("bad_checksum", "kraken", "BTC-USD", "BTC/USD", 25, 25)
    inhibited = [alert("ChecksumFailures", "silenced", {"exchange": "kraken", "stream": "book"}, 26, 26)]
    assert _outcome(checksum, _episodes(inhibited), []).caught
    pending = [alert("ChecksumFailures", "pending", {"exchange": "kraken", "stream": "book"}, None, 26)]
    assert not _outcome(checksum, _episodes(pending), []).caught


def test_alerts_before_the_incident_or_on_another_venue_do_not_count() -> None:
    spike = label("price_spike", "binance", "BTC-USDT", "BTCUSDT", 55, 70)
    alerts = [
        alert("PriceSpikeAnomaly", "firing", {"exchange": "binance", "symbol": "BTC-USDT"}, 30, 30, fingerprint="a"),
        alert("PriceSpikeAnomaly", "firing", {"exchange": "okx", "symbol": "BTC-USDT"}, 56, 56, fingerprint="b"),
        alert("VolumeBurst", "firing", {"exchange": "binance", "symbol": "BTC-USDT"}, 56, 56, fingerprint="c"),
    ]
    assert not _outcome(spike, _episodes(alerts), []).caught


def test_unexplained_alerts_are_those_no_incident_expects_or_causes() -> None:
    stall = label("feed_stall", "okx", "ETH-USDT", "ETH-USDT", 15, 75)
    latency = label("latency_increase", "binance_usdm", None, None, 10, 90)
    alerts = [
        alert("MessageRateCollapse", "firing", {"exchange": "okx", "stream": "trades:ETH-USDT"}, 50, 50, None, "a"),
        alert("CapacityBreachPredicted", "firing", {"series_id": "health:binance_usdm:trades:collector:feed_lag_s"},
              40, 40, None, "b"),
        alert("CapacityBreachPredicted", "firing", {"series_id": "health:memory_bytes"}, 40, 40, None, "c"),
        alert("VenueDisconnected", "firing", {"exchange": "kraken", "stream": "kraken-0"}, 20, 20, None, "d"),
    ]  # fmt: skip
    assert _unexplained([stall, latency], _episodes(alerts)) == [
        "CapacityBreachPredicted{series_id=health:memory_bytes}",
        "VenueDisconnected{exchange=kraken,stream=kraken-0}",
    ]


def test_stage_latencies_are_wall_ms_from_the_records_pipeline_time_to_the_broker_timestamp() -> None:
    """At speed 4 from T0, a trade sent at pipeline T0 + 8 s was sent at wall T0 + 2 s: on the topic 30 ms later it
    took 30 wall ms; its alert and first notification are timed the same way, and only the first one counts."""
    from pipeline.clock import ScaledClock
    from pipeline.contracts import Trade, encode
    from pipeline.demo.summary import percentiles
    from pipeline.demo.view import DemoStats

    clock = ScaledClock(4.0, T0)
    stats = DemoStats(to_wall_us=clock.wall_us)
    wall_ms = (T0 + 2 * S) // 1000
    trade = Trade(exchange="okx", symbol="BTC-USDT", raw_symbol="BTC-USDT", trade_id="1", price=Decimal(1),
                  size=Decimal(1), side="buy", ts_event=T0 + 8 * S, ts_recv=T0 + 8 * S)  # fmt: skip
    stats.add("md.trades.v1", encode(trade), wall_ms + 30)
    firing = alert("FeedStalled", "firing", {"exchange": "okx"}, 8, 8, fingerprint="a")
    stats.add("ops.alerts.v1", encode(firing), wall_ms + 500)
    note = Notification(
        notification_id="n",
        idempotency_key="k",
        channel="webhook",
        receiver="demo",
        group_key="g",
        status="sent",
        attempt=1,
        ts=T0 + 9 * S,
        fingerprints=["a"],
        firing=[f"a@{T0 + 8 * S}"],
    )
    stats.add("ops.notifications.v1", encode(note), wall_ms + 700)
    stats.add("ops.notifications.v1", encode(note), wall_ms + 900)  # the second channel's receipt
    assert stats.stage_ms == {"frame_to_trade": [30.0], "event_to_alert": [500.0], "alert_to_notification": [200.0]}
    assert percentiles([float(v) for v in range(1, 101)]) == {"p50": 50.0, "p99": 99.0, "n": 100}


def test_an_incident_is_caught_only_within_its_bound_the_rules_for_plus_the_allowance() -> None:
    from pipeline.demo.summary import PIPELINE_ALLOWANCE_S, bound_s

    # FeedLatencyHigh holds for 1 m: its bound is 60 s + 15 s; FeedStalled's is 15 s `for` + 30 s staleness + 15 s
    assert bound_s("latency_increase", "FeedLatencyHigh") == 60.0 + PIPELINE_ALLOWANCE_S == 75.0
    assert bound_s("feed_stall", "FeedStalled") == 60.0
    latency = label("latency_increase", "binance_usdm", None, None, 10, 110)
    on_time = [alert("FeedLatencyHigh", "firing", {"exchange": "binance_usdm", "stream": "trades"}, 84, 84)]
    outcome = _outcome(latency, _episodes(on_time), [])
    assert outcome.caught and outcome.latency_s == 74.0 and outcome.bound_s == 75.0
    late = [alert("FeedLatencyHigh", "firing", {"exchange": "binance_usdm", "stream": "trades"}, 86, 86)]
    outcome = _outcome(latency, _episodes(late), [])
    assert not outcome.caught and outcome.late_s == 76.0  # fired, but too late to count: reported as late
    # a sink killed at 1 s is caught by SinkStalled within 15 s of stall clock + 15 s, not at 40 s
    sink = label("sink_down", "pipeline", None, None, 1, 101)
    stalled = {"group": "marketprism-sink", "topic": "md.trades.v1"}
    assert _outcome(sink, _episodes([alert("SinkStalled", "firing", stalled, 20, 20)]), []).caught
    assert not _outcome(sink, _episodes([alert("SinkStalled", "firing", stalled, 40, 40)]), []).caught


def test_an_alert_is_explained_only_by_an_incident_active_around_it() -> None:
    stall = label("feed_stall", "okx", "ETH-USDT", "ETH-USDT", 15, 75)  # bound 60 s: explains alerts up to 135 s
    sink = label("sink_down", "pipeline", None, None, 1, 101)
    alerts = [
        alert("MessageRateCollapse", "firing", {"exchange": "okx", "stream": "trades:ETH-USDT"}, 50, 50, None, "a"),
        alert("MessageRateCollapse", "firing", {"exchange": "okx", "stream": "trades:ETH-USDT"}, 140, 140, None, "b"),
        alert("MessageRateCollapse", "firing", {"exchange": "okx", "stream": "trades:ETH-USDT"}, 5, 5, None, "c"),
        alert("CapacityBreachPredicted", "firing", {"series_id": "health:consumer_lag:marketprism-sink"},
              60, 60, None, "d"),
        alert("WorkerStalled", "firing", {"group": "aggregator", "topic": "md.trade_batches.v1"}, 60, 60, None, "e"),
    ]  # fmt: skip
    assert _unexplained([stall, sink], _episodes(alerts)) == [
        "MessageRateCollapse{exchange=okx,stream=trades:ETH-USDT}",  # at 5 s (before) and 140 s (after the bound)
        "WorkerStalled{group=aggregator,topic=md.trade_batches.v1}",  # no worker fault was injected
    ]
    assert _unexplained([stall], _episodes(alerts[:1])) == []
