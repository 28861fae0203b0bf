"""Failure prediction: time-to-threshold of a steadily growing series, before it crosses."""

from __future__ import annotations

import random

import pytest

from pipeline.anomaly.forecasting import Crossing, DampedTrend, ThresholdForecast
from pipeline.anomaly.health import forecast_record


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_growing_series_gets_time_to_threshold_within_20_percent_before_crossing(seed: int) -> None:
    rng = random.Random(seed)
    step_s, slope, threshold = 10.0, 0.5, 100.0
    crossing_t = (threshold - 10.0) / slope * step_s  # 10 + 0.5 * k = 100 at k = 180 -> t = 1800 s
    forecaster = ThresholdForecast(threshold, horizon_steps=720)
    checked = 0
    for k in range(0, 150):  # stop well before the crossing
        t = k * step_s
        forecaster.learn_one(t, 10.0 + slope * k + rng.gauss(0, 1.0))
        if k >= 60 and k % 10 == 0:
            crossing = forecaster.crossing()
            assert crossing is not None, f"no prediction at t={t}"
            true_remaining = crossing_t - t
            assert abs(crossing.seconds - true_remaining) <= 0.2 * true_remaining, (t, crossing)
            assert crossing.earliest_seconds <= crossing.seconds
            assert crossing.lower <= crossing.expected <= crossing.upper
            checked += 1
    assert checked == 9


def test_flat_noisy_series_predicts_no_crossing() -> None:
    rng = random.Random(4)
    forecaster = ThresholdForecast(100.0)
    for k in range(300):
        forecaster.learn_one(k * 10.0, 50.0 + rng.gauss(0, 2.0))
    assert forecaster.crossing() is None


def test_falling_series_and_forecast_record() -> None:
    forecaster = ThresholdForecast(10.0, rising=False)
    for k in range(50):
        forecaster.learn_one(k * 2.0, 100.0 - k)  # reaches 10 at k = 90 -> 80 s after the last point
    record = forecast_record("health:disk_free", "disk_free", forecaster, 98_000_000, horizon_s=1440.0)
    assert record is not None and record.kind == "forecast"
    assert record.time_to_threshold_s == pytest.approx(80.0, rel=0.2)
    assert 0.0 < record.score <= 1.0 and record.value == 51.0


def test_damped_trend_keeps_river_forecaster_contract() -> None:
    model = DampedTrend(phi=0.9)
    for y in range(20):
        model.learn_one(float(y))
    path = model.forecast(50)
    assert len(path) == 50 and path[0] < path[-1]
    assert path[-1] - path[-2] < path[1] - path[0]  # damping flattens the extrapolation


def test_an_odd_first_sample_does_not_become_a_trend() -> None:
    """A start-up sample far off (a feed's first lag read on a clock-skewed snapshot, -11 s in the demo) used to
    seed Holt's trend with the first step, predicting a crossing for ~90 samples of a flat series."""
    rng = random.Random(6)
    forecaster = ThresholdForecast(5.0)
    forecaster.learn_one(0.0, -11.3)
    for k in range(1, 200):
        forecaster.learn_one(float(k), abs(rng.gauss(0.01, 0.005)))
        assert forecaster.crossing() is None, k


def test_min_history_and_max_extrapolation_hold_back_a_crossing() -> None:
    def climb(seconds: int, **guards: float) -> Crossing | None:
        f = ThresholdForecast(1000.0, horizon_steps=2000, **guards)  # type: ignore[arg-type]
        for t in range(seconds):
            f.learn_one(float(t), 1.0 * t)  # 1 a second towards 1000
        return f.crossing()

    assert climb(40) is not None  # no guard: 40 points are enough
    assert climb(40, min_history_s=60) is None  # 39 s of history
    assert climb(62, min_history_s=60) is not None
    # from 100 s of history the crossing is ~900 s ahead: too far at 1x, predicted once it is closer than the history
    assert climb(100, max_extrapolation=1.0) is None
    later = climb(600, max_extrapolation=1.0)
    assert later is not None and later.seconds <= 600
    assert climb(300, max_extrapolation=4.0) is not None  # ~700 s ahead from 300 s
    with pytest.raises(ValueError):
        ThresholdForecast(1.0, min_history_s=-1)
