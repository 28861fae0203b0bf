"""Acceptance tests in Prometheus/Alertmanager rule-test style on a virtual clock: records pushed at
scripted event times, the exact alert state changes expected at exact times."""

from __future__ import annotations

LAG = """
rules:
  - name: Lag
    severity: P3
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 100, recovery: RECOVERY}
    for: 10s
    keep_firing_for: KEEP
    annotations: {summary: "{exchange} {stream} lag {value:.0f} ms"}
"""


def _lag(rec, lags: dict[tuple[float, float], int]):  # type: ignore[no-untyped-def]
    def make(t: float):  # type: ignore[no-untyped-def]
        for (start, end), ms in lags.items():
            if start <= t < end:
                return [rec.fm(t, lag_p99_us=ms * 1000)]
        return [rec.fm(t, lag_p99_us=10_000)]

    return make


def test_for_holds_pending_then_fires_and_a_short_blip_never_fires(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(LAG.replace("RECOVERY", "null").replace("KEEP", "0s"))
    sc.run(60, 1, _lag(rec, {(5, 9): 500, (20, 35): 500}))
    assert sc.transitions() == [(5, "pending"), (9, "inactive"), (20, "pending"), (30, "firing"), (35, "resolved")]
    firing = next(a for a in sc.alerts if a.state == "firing")
    assert firing.annotations["summary"] == "binance book lag 500 ms"
    assert firing.severity == "P3" and firing.labels["alertname"] == "Lag"
    assert [a.version for a in sc.alerts] == [1, 2, 3, 4, 5]


def test_keep_firing_for_bridges_short_clears_and_resolves_after_it(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(LAG.replace("RECOVERY", "null").replace("KEEP", "8s"))
    # fires at 15, clears at 30 for 5s (< 8s: keeps firing), clears again at 40 for good: resolved at 48
    sc.run(70, 1, _lag(rec, {(5, 30): 500, (35, 40): 500}))
    assert sc.transitions() == [(5, "pending"), (15, "firing"), (48, "resolved")]


def test_hysteresis_keeps_firing_until_the_recovery_threshold(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(LAG.replace("RECOVERY", "50").replace("KEEP", "0s"))
    # 500 ms fires; 80 ms is below 100 but above the recovery 50: still firing; 10 ms resolves
    sc.run(60, 1, _lag(rec, {(0, 20): 500, (20, 40): 80}))
    assert sc.transitions() == [(0, "pending"), (10, "firing"), (40, "resolved")]
    # without hysteresis the same input resolves at 20
    plain = scenario(LAG.replace("RECOVERY", "null").replace("KEEP", "0s"))
    plain.run(60, 1, _lag(rec, {(0, 20): 500, (20, 40): 80}))
    assert plain.transitions() == [(0, "pending"), (10, "firing"), (20, "resolved")]


def test_no_data_fires_after_silence_and_resolves_when_data_returns(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Quiet
    severity: P2
    by: [exchange, stream]
    condition: {type: absent, source: feed_metrics, after: 10s}
    for: 5s
""")
    sc.run(20, 1, lambda t: [rec.fm(t, stream="trades"), rec.fm(t, exchange="okx", stream="trades")])
    # binance stops at 20, okx keeps the watermark moving
    for t in range(21, 60):
        sc.at(t, rec.fm(t, exchange="okx", stream="trades"))
    sc.at(60, rec.fm(60, stream="trades"), rec.fm(60, exchange="okx", stream="trades"))
    assert sc.transitions(exchange="binance") == [(30, "pending"), (35, "firing"), (60, "resolved")]
    assert sc.transitions(exchange="okx") == []
    quiet = next(a for a in sc.alerts if a.state == "firing")
    assert quiet.value == 15.0  # seconds without data when it fired


def test_no_data_is_decided_in_event_time_even_when_the_late_sample_arrives_first(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Quiet
    severity: P2
    by: [exchange, stream]
    condition: {type: absent, source: feed_metrics, after: 10s}
""")
    sc.at(0, rec.fm(0))
    sc.push(rec.fm(25))  # the next sample comes 25s later: the series was absent from 10 to 25
    sc.at(25)
    assert sc.transitions() == [(10, "firing"), (25, "resolved")]


def test_rate_of_change(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Collapse
    severity: P3
    by: [exchange, stream]
    condition: {type: rate, source: feed_metrics, metric: messages, window: 10s, mode: percent, op: "<=", value: -80}
  - name: LagGrowing
    severity: P3
    by: [exchange, stream]
    condition: {type: rate, source: feed_metrics, metric: lag_p99_ms, window: 10s, per: 1s, op: ">", value: 50}
""")

    def make(t: float):  # type: ignore[no-untyped-def]
        messages = 1000 if t < 30 or t >= 45 else 50
        lag_ms = 10 + (100 * (t - 60) if 60 <= t < 70 else 0)
        return [rec.fm(t, messages=messages, lag_p99_us=int(lag_ms * 1000))]

    sc.run(90, 1, make)
    # messages drop 95% at 30; the 10s window (ts > t - 10s) forgets the old level at 39
    assert sc.transitions("Collapse") == [(30, "firing"), (39, "resolved")]
    # lag grows 100 ms/s from 60: the slope over the 10s window passes 50 ms/s at 65 (500 ms / 9 s);
    # it falls back to 10 ms at 70, which turns the slope negative at once
    assert sc.transitions("LagGrowing") == [(65, "firing"), (70, "resolved")]


def test_anomaly_score_and_hold(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Spike
    severity: P2
    by: [exchange, symbol]
    condition: {type: anomaly, min_score: 0.9, hold: 30s}
""")
    sc.at(0, rec.bar(0))
    sc.at(10, rec.anomaly(10, score=0.5))  # below min_score
    sc.at(20, rec.anomaly(20, score=0.97))
    sc.at(40, rec.anomaly(40, score=0.95))
    sc.at(100, rec.bar(100))
    assert sc.transitions() == [(20, "firing"), (70, "resolved")]


def test_forecast_time_to_threshold(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Capacity
    severity: P3
    by: [series_id]
    condition: {type: forecast, horizon: 10m, hold: 2m}
    annotations: {summary: "{series_id} breach in {value:.0f}s"}
""")
    sc.at(0, rec.anomaly(0, 0.6, metric="lag_p99_ms", kind="forecast", tts=3600))  # too far out
    sc.at(60, rec.anomaly(60, 0.7, metric="lag_p99_ms", kind="forecast", tts=300))
    sc.at(120, rec.anomaly(120, 0.7, metric="lag_p99_ms", kind="forecast", tts=1800))
    sc.at(300, rec.fm(300))
    assert sc.transitions() == [(60, "firing"), (120, "resolved")]
    assert sc.alerts[0].annotations["summary"] == "binance:BTC-USDT:1s:lag_p99_ms breach in 300s"


def test_forecast_sooner_than_min_lead_is_not_a_prediction(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Capacity
    severity: P3
    by: [series_id]
    condition: {type: forecast, horizon: 10m, min_lead: 1m, hold: 2m}
""")
    sc.at(0, rec.anomaly(0, 0.7, metric="lag_p99_ms", kind="forecast", tts=6))  # a start-up ramp: imminent
    sc.at(30, rec.anomaly(30, 0.7, metric="lag_p99_ms", kind="forecast", tts=59))
    sc.at(60, rec.anomaly(60, 0.7, metric="lag_p99_ms", kind="forecast", tts=60))  # a real lead
    sc.at(120, rec.anomaly(120, 0.7, metric="lag_p99_ms", kind="forecast", tts=20))  # now imminent
    sc.at(300, rec.fm(300))
    assert sc.transitions() == [(60, "firing"), (120, "resolved")]


def test_cross_venue_divergence_with_exact_prices(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Diverge
    severity: P2
    by: [exchange, symbol]
    condition: {type: divergence, source: bars_1m, threshold_bps: 100, recovery_bps: 50, min_peers: 2, max_age: 3m}
""")
    venues = ["binance", "okx", "kraken"]

    def make(t: float):  # type: ignore[no-untyped-def]
        out = []
        for venue in venues:
            close = "36500.00"
            if venue == "okx" and 120 <= t < 240:
                close = "37000.00"  # +137 bps
            if venue == "okx" and 240 <= t < 360:
                close = "36750.00"  # +68 bps: above recovery, stays firing
            out.append(rec.bar(t, exchange=venue, interval="1m", close=close))
        return out

    sc.run(480, 60, make)
    assert sc.transitions(exchange="okx") == [(120, "firing"), (360, "resolved")]
    assert sc.transitions(exchange="binance") == [] and sc.transitions(exchange="kraken") == []
    firing = sc.alerts[0]
    assert round(firing.value or 0, 2) == 136.99


def test_boolean_all_and_any(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: BothBad
    severity: P2
    by: [exchange, stream]
    condition:
      type: all
      conditions:
        - {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 100}
        - {type: threshold, source: feed_metrics, metric: gaps, op: ">", value: 0}
  - name: EitherBad
    severity: P3
    by: [exchange, stream]
    condition:
      type: any
      conditions:
        - {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 100}
        - {type: threshold, source: feed_metrics, metric: gaps, op: ">", value: 0}
""")

    def make(t: float):  # type: ignore[no-untyped-def]
        lag = 500_000 if 10 <= t < 30 else 1000
        gaps = 2 if 20 <= t < 40 else 0
        return [rec.fm(t, lag_p99_us=lag, gaps=gaps)]

    sc.run(50, 1, make)
    assert sc.transitions("BothBad") == [(20, "firing"), (30, "resolved")]
    assert sc.transitions("EitherBad") == [(10, "firing"), (40, "resolved")]


INHIBIT = """
rules:
  - name: VenueDown
    severity: P1
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: connected, op: "<", value: 1}
    labels: {category: feed}
  - name: Spread
    severity: P3
    by: [exchange, symbol]
    condition: {type: threshold, source: bars_1s, metric: spread_max_bps, op: ">", value: 50}
    labels: {category: market}
inhibit_rules:
  - source: ['alertname="VenueDown"']
    target: ['category="market"']
    equal: [exchange]
"""


def test_inhibition_mutes_the_venues_market_alerts_while_the_venue_is_down(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(INHIBIT)

    def make(t: float):  # type: ignore[no-untyped-def]
        down = 20 <= t < 40
        wide = 10 <= t < 50
        return [
            rec.fm(t, connected=not down),
            rec.bar(t, spread_max_bps=80.0 if wide else 2.0),
            rec.bar(t, exchange="okx", spread_max_bps=80.0 if wide else 2.0),
        ]

    sc.run(60, 1, make)
    assert sc.transitions("VenueDown") == [(20, "firing"), (40, "resolved")]
    assert sc.transitions("Spread", exchange="binance") == [
        (10, "firing"), (20, "silenced"), (40, "firing"), (50, "resolved"),
    ]  # fmt: skip
    assert sc.transitions("Spread", exchange="okx") == [(10, "firing"), (50, "resolved")]
    muted = next(a for a in sc.alerts if a.state == "silenced")
    assert muted.actor == "inhibition" and "VenueDown" in (muted.comment or "")


def test_silence_mutes_in_its_window_and_unmutes_when_it_ends(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(INHIBIT)
    sc.silence(['exchange="okx"', 'alertname=~"Spr.*"'], start=15, end=30)
    sc.run(60, 1, lambda t: [rec.bar(t, exchange="okx", spread_max_bps=80.0 if 10 <= t < 50 else 2.0)])
    assert sc.transitions() == [(10, "firing"), (15, "silenced"), (30, "firing"), (50, "resolved")]
    muted = next(a for a in sc.alerts if a.state == "silenced")
    assert muted.actor == "silence:s1" and muted.comment == "maintenance"


def test_an_alert_firing_under_a_silence_is_published_as_silenced(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(INHIBIT)
    sc.silence(['exchange="okx"'], start=0, end=100)
    sc.run(60, 1, lambda t: [rec.bar(t, exchange="okx", spread_max_bps=80.0 if 10 <= t < 50 else 2.0)])
    assert sc.transitions() == [(10, "silenced"), (50, "resolved")]


def test_flapping_is_reported_once_and_held_until_quiet(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Flappy
    severity: P3
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: gaps, op: ">", value: 0}
    flap: {window: 60s, max_changes: 4, quiet: 30s}
""")
    # toggles every 5s from 0 to 40, then stays bad
    sc.run(120, 1, lambda t: [rec.fm(t, gaps=1 if (t < 40 and int(t // 5) % 2 == 0) or t >= 40 else 0)])
    assert sc.transitions() == [(0, "firing"), (5, "resolved"), (10, "firing"), (15, "flapping"), (70, "firing")]


def test_ack_and_unack_and_a_new_episode_is_not_acked(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(INHIBIT)
    make = lambda t: [rec.bar(t, exchange="okx", spread_max_bps=80.0 if 10 <= t < 30 or t >= 50 else 2.0)]  # noqa: E731
    sc.run(20, 1, make)
    fp = sc.fingerprint("Spread", exchange="okx")
    sc.ack(fp)
    sc.run(80, 1, make, start=21)
    assert sc.transitions() == [(10, "firing"), (20, "acked"), (30, "resolved"), (50, "firing")]
    acked = next(a for a in sc.alerts if a.state == "acked")
    assert acked.actor == "sre" and acked.comment == "on it"
    sc.ack(fp)
    sc.ack(fp, "unack")
    assert sc.transitions()[-2:] == [(80, "acked"), (80, "firing")]


def test_manual_resolve_rearms_only_after_the_condition_clears(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario(INHIBIT)
    make = lambda t: [rec.bar(t, exchange="okx", spread_max_bps=80.0 if 10 <= t < 40 or t >= 50 else 2.0)]  # noqa: E731
    sc.run(20, 1, make)
    sc.ack(sc.fingerprint("Spread", exchange="okx"), "resolve")
    sc.run(60, 1, make, start=21)
    assert sc.transitions() == [(10, "firing"), (20, "resolved"), (50, "firing")]
    assert sc.alerts[1].actor == "sre"


def test_bbo_source_crossed_and_spread(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Crossed
    severity: P2
    by: [exchange, symbol]
    condition: {type: threshold, source: bbo, metric: crossed, op: ">", value: 0}
    for: 2s
""")
    sc.run(20, 1, lambda t: [rec.bbo(t, "100.5", "100.4") if 5 <= t < 10 else rec.bbo(t, "100.1", "100.2")])
    assert sc.transitions() == [(5, "pending"), (7, "firing"), (10, "resolved")]


def test_dead_letters_count_in_a_sliding_window(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    sc = scenario("""
rules:
  - name: Dlq
    severity: P3
    by: [source]
    condition: {type: sum, source: dlq, metric: count, window: 60s, op: ">=", value: 3}
""")
    for t in (0, 10, 20):
        sc.at(t, rec.dead_letter(t, source="collector.okx"))
    sc.at(200, rec.fm(200))
    assert sc.transitions() == [(20, "firing"), (60, "resolved")]
