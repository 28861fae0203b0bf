"""Detector conformance (River's learn_one/score_one contract) and the series detector's policies:
warm-up, spike detection, drift adaptation, not learning anomalies, refractory period, checkpoints."""

from __future__ import annotations

import math
import pickle
import random
import zlib

import pytest

from pipeline.anomaly.checkpoint import Checkpointer, CheckpointRefused, loads
from pipeline.anomaly.detectors import HalfSpaceTrees, RobustZScore, SeasonalProfile, predictive
from pipeline.anomaly.ensemble import DetectorConfig, SeriesDetector
from pipeline.anomaly.registry import SeriesRegistry
from pipeline.kafka.sealed import Sealer
from tests.anomaly.helpers import bars

SEALER = Sealer("anomaly-series-state", b"test-key-0123456789abcdef")

DETECTORS = {
    "robust": lambda: RobustZScore(100),
    "predictive": lambda: predictive(0.5, 0.05, 6.0, warmup=10),
    "hst": lambda: HalfSpaceTrees(5, 6, 50, seed=1),
    "seasonal": lambda: SeasonalProfile(period_s=100.0, bucket_s=10.0),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detectors_keep_rivers_contract_and_score_a_spike_higher(name: str) -> None:
    detector = DETECTORS[name]()
    rng = random.Random(1)
    for t in range(300):
        x = {"y": 10.0 + rng.gauss(0, 0.5), "t": float(t)}
        assert detector.score_one(x) >= 0.0
        detector.learn_one(x)
    normal = detector.score_one({"y": 10.0, "t": 300.0})
    assert detector.ready
    spike = detector.score_one({"y": 30.0, "t": 300.0})
    assert spike > normal
    assert math.isfinite(spike)


def quiet(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [100.0 + rng.gauss(0, 1.0) for _ in range(n)]


def test_warm_up_reports_nothing_then_a_spike_scores_high() -> None:
    detector = SeriesDetector(DetectorConfig(warmup=150))
    values = quiet(400, 2)
    values[100] = 200.0  # a spike during warm-up: learned, not reported
    scores = [detector.update(v).score for v in values]
    assert max(scores[:150]) == 0.0
    assert max(scores[150:]) < 0.5
    scored = detector.update(160.0)
    assert scored.score >= 0.5
    assert scored.detector in {"robust", "predictive", "hst", "seasonal"}
    assert scored.lower is not None and scored.upper is not None and scored.lower < 100.0 < scored.upper


def test_refractory_period_turns_an_incident_into_one_report() -> None:
    detector = SeriesDetector(DetectorConfig(warmup=150, refractory=50))
    for v in quiet(300, 3):
        detector.update(v)
    scores = [detector.update(v).score for v in (160.0, 165.0, 170.0, 100.0, 100.0)]
    assert scores[0] >= 0.5 and max(scores[1:]) == 0.0


def test_drift_adapts_to_a_new_level() -> None:
    detector = SeriesDetector(DetectorConfig(warmup=150, refractory=20))
    for v in quiet(400, 4):
        detector.update(v)
    shifted = [v + 50.0 for v in quiet(600, 5)]
    results = [detector.update(v) for v in shifted]
    assert results[0].score >= 0.5  # the level shift is reported ...
    assert any(r.drift for r in results)  # ... ADWIN sees the regime change ...
    assert max(r.score for r in results[300:]) < 0.5  # ... and the new level becomes normal
    assert abs(detector.robust.expected()[0] - 150.0) < 2.0


def test_anomalous_points_are_not_learned_unless_configured() -> None:
    for learn, expect_learned in ((False, False), (True, True)):
        detector = SeriesDetector(DetectorConfig(warmup=150, learn_anomalies=learn, refractory=0))
        for v in quiet(300, 6):
            detector.update(v)
        before = list(detector.robust._window.unsorted_window)
        detector.update(500.0)
        learned = list(detector.robust._window.unsorted_window)[-1] == 500.0
        assert learned is expect_learned, before[-1]


def test_checkpoint_round_trip_continues_identically() -> None:
    registry = SeriesRegistry(DetectorConfig(warmup=150), report_floor=0.5)
    history = bars("binance", "BTC-USDT", 300, seed=2, spikes=frozenset({250}))
    for bar in history[:200]:
        registry.on_bar(bar)
    table: dict[bytes, bytes] = {}
    ckpt = Checkpointer(table, SEALER, every=1)
    for state in registry.series.values():
        state.updates_since_checkpoint = 1
        assert ckpt.maybe_save(state)
    restored = SeriesRegistry(DetectorConfig(warmup=150), report_floor=0.5, loader=ckpt.load)
    a = [registry.on_bar(bar)[0] for bar in history[200:]]
    b = [restored.on_bar(bar)[0] for bar in history[200:]]
    assert a == b and any(a)  # same anomalies (the spike at 250) as the uninterrupted registry
    assert restored.restored == len(registry.series)
    cold = SeriesRegistry(DetectorConfig(warmup=150), report_floor=0.5)
    assert not any(cold.on_bar(bar)[0] for bar in history[200:])  # a cold start misses the spike (warm-up)


def test_corrupt_checkpoint_starts_cold_instead_of_crashing() -> None:
    ckpt = Checkpointer({b"x": b"not a checkpoint"}, SEALER)
    assert ckpt.load("x") is None and ckpt.refused[0][2].reason == "checkpoint_unsealed"
    with pytest.raises(CheckpointRefused, match="not SeriesState"):  # sealed under the key, but not a state
        loads(SEALER.seal(zlib.compress(pickle.dumps({"not": "state"}))), SEALER)


def test_checkpoint_policy_by_count_and_by_time() -> None:
    now = [0.0]
    table: dict[bytes, bytes] = {}
    ckpt = Checkpointer(table, SEALER, every=10, interval_s=5.0, clock=lambda: now[0])
    registry = SeriesRegistry(DetectorConfig(), report_floor=0.5)
    state = registry.state("s", "volume")
    state.updates_since_checkpoint = 9
    assert not ckpt.maybe_save(state)
    state.updates_since_checkpoint = 10
    assert ckpt.maybe_save(state) and b"s" in table
    state.updates_since_checkpoint = 1
    now[0] = 6.0
    assert ckpt.maybe_save(state)


def test_series_first_seen_together_checkpoint_spread_over_the_interval() -> None:
    now = [0.0]
    ckpt = Checkpointer({}, SEALER, every=10_000, interval_s=120.0, clock=lambda: now[0])
    registry = SeriesRegistry(DetectorConfig(), report_floor=0.5)
    states = [registry.state(f"binance:S{i}-USDT:1s:volume", "volume") for i in range(340)]
    assert not any(ckpt.maybe_save(state) for state in states)  # first sight at t=0: nothing due yet
    writes_per_second = []
    for second in range(1, 241):
        now[0] = float(second)
        writes_per_second.append(sum(ckpt.maybe_save(state) for state in states))
    assert sum(writes_per_second[:120]) == 340 and sum(writes_per_second[120:]) == 340  # each once per interval
    assert max(writes_per_second) <= 12  # ~3 per second, not 340 at once every 120 s


def test_registry_series_from_bars_use_exact_decimal_returns() -> None:
    registry = SeriesRegistry(DetectorConfig(), report_floor=0.5)
    history = bars("okx", "ETH-USDT", 3, seed=1)
    for bar in history:
        registry.on_bar(bar)
    ids = set(registry.series)
    assert ids == {f"okx:ETH-USDT:1s:{m}" for m in ("volume", "trade_count", "log_return", "spread_bps", "frozen_bars")}
    assert registry.series["okx:ETH-USDT:1s:log_return"].detector.seen == 2
    registry.on_bar(history[-1])  # a duplicate (replayed) bar is not learned twice
    assert registry.series["okx:ETH-USDT:1s:volume"].detector.seen == 3
