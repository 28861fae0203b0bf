"""Resuming the engine: from a checkpoint (pending timers, keep_firing_for, windows continue exactly) and,
without one, from the compacted ops.alerts.v1 view."""

from __future__ import annotations

from pipeline.alerting.engine import AlertEngine

RULES = """
rules:
  - name: Lag
    severity: P2
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 1000, recovery: 500}
    for: 10s
    keep_firing_for: 20s
  - name: Quiet
    severity: P2
    by: [exchange, stream]
    condition: {type: absent, source: feed_metrics, after: 15s}
"""


def _records(rec, t: int):  # type: ignore[no-untyped-def]
    out = [rec.fm(t, exchange="okx")]
    if not 60 <= t < 90:  # binance goes quiet for 30s
        out.append(rec.fm(t, lag_p99_us=3_000_000 if 10 <= t < 40 else 20_000))
    return out


def test_restore_at_every_second_gives_the_uninterrupted_transitions(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    whole = scenario(RULES)
    for t in range(120):
        whole.at(t, *_records(rec, t))
    expected = [(a.fingerprint, a.version, a.state, a.ts_event) for a in whole.alerts]
    assert [s for _, s in whole.transitions("Lag")] == ["pending", "firing", "resolved"]
    assert [s for _, s in whole.transitions("Quiet", exchange="binance")] == ["firing", "resolved"]

    for cut in (15, 25, 45, 55, 70):  # pending; firing; in keep_firing_for; ...; absent pending its deadline
        first = scenario(RULES)
        for t in range(cut):
            first.at(t, *_records(rec, t))
        second = scenario(RULES)
        second.engine = AlertEngine(second.rules)
        second.engine.restore(first.engine.snapshot())
        for t in range(cut, 120):
            second.at(t, *_records(rec, t))
        got = [(a.fingerprint, a.version, a.state, a.ts_event) for a in first.alerts + second.alerts]
        assert got == expected, cut


def test_without_a_checkpoint_firing_alerts_resume_from_the_alerts_topic(scenario, rec) -> None:  # type: ignore[no-untyped-def]
    first = scenario(RULES)
    for t in range(30):
        first.at(t, *_records(rec, t))
    assert [s for _, s in first.transitions("Lag")] == ["pending", "firing"]
    latest = {a.fingerprint: a for a in first.alerts}

    second = scenario(RULES)
    second.engine.seed(list(latest.values()))
    for t in range(30, 100):
        second.at(t, *_records(rec, t))
    lag = [(t, s, a.version) for (t, s), a in zip(second.transitions("Lag"), second.alerts, strict=False)]
    # no second pending/firing: the alert resumes firing and resolves 20s (keep_firing_for) after it clears
    assert [(t, s) for t, s, _ in lag] == [(60, "resolved")]
    assert next(a for a in second.alerts if a.rule == "Lag").version == 3
