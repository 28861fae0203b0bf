"""Our NAB scorer against cases computable by hand (published method: sigmoid weights, probation,
threshold sweep, normalisation against the null and perfect detectors)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from pipeline.bench.anomaly.nab_scorer import (
    Profile,
    optimise_threshold,
    probationary_length,
    scaled_sigmoid,
    score_at,
    score_corpus,
    sweep_file,
)

STANDARD = Profile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
LOW_FN = Profile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11, fn_weight=2.0)
T0 = datetime(2024, 1, 1)


def stamps(n: int) -> list[datetime]:
    return [T0 + timedelta(minutes=5 * i) for i in range(n)]


def window(first: int, last: int) -> tuple[datetime, datetime]:
    return T0 + timedelta(minutes=5 * first), T0 + timedelta(minutes=5 * last)


def test_probation_and_sigmoid_follow_the_published_definitions() -> None:
    assert probationary_length(1000) == 150
    assert probationary_length(10_000) == 750  # 15% capped at 0.15 * 5000
    assert scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.5) == -1.0


@pytest.mark.parametrize("profile", [STANDARD, LOW_FN])
def test_perfect_detector_scores_100_and_null_scores_0(profile: Profile) -> None:
    ts = stamps(1000)
    windows = [window(300, 339), window(700, 739)]
    perfect = [0.0] * 1000
    perfect[300] = perfect[700] = 1.0
    null = [0.0] * 1000
    assert score_corpus([sweep_file("f", ts, perfect, windows, 0)], profile).score == pytest.approx(100.0)
    result = score_corpus([sweep_file("f", ts, null, windows, 0)], profile)
    assert result.score == pytest.approx(0.0)
    assert result.fn == 2 and result.tp == 0


def test_hand_computed_late_detection_and_false_positive() -> None:
    ts = stamps(1000)
    windows = [window(300, 339)]  # 40 rows
    scores = [0.0] * 1000
    scores[319] = 0.9  # detection in the middle of the window: position -(339-319+1)/40 = -0.525
    scores[100] = 0.8  # false positive before any window: full FP weight
    scores[200] = 0.8
    scores[400] = 0.8  # false positive 61 rows after the window end: sigmoid(61/39)
    rows = sweep_file("f", ts, scores, windows, 0)
    tp = scaled_sigmoid(-21 / 40) / scaled_sigmoid(-1.0)
    fp_after = scaled_sigmoid(61 / 39)
    # Row 100 is in the probationary period (first 150 rows) and is not scored.
    expected = tp + 0.11 * (-1.0) + 0.11 * fp_after
    assert score_at([rows], STANDARD, 0.8).raw == pytest.approx(expected)
    assert score_at([rows], STANDARD, 0.85).raw == pytest.approx(tp)
    best = optimise_threshold([rows], STANDARD)
    assert best.threshold == 0.9 and best.raw == pytest.approx(tp)
    result = score_corpus([rows], STANDARD)
    assert result.score == pytest.approx(100 * (tp + 1) / 2)


def test_only_the_first_detection_in_a_window_counts() -> None:
    ts = stamps(1000)
    windows = [window(300, 339)]
    scores = [0.0] * 1000
    for i in range(300, 340):
        scores[i] = 1.0
    assert score_corpus([sweep_file("f", ts, scores, windows, 0)], STANDARD).score == pytest.approx(100.0)


def test_threshold_sweep_trades_false_positives_against_misses() -> None:
    ts = stamps(1000)
    windows = [window(300, 339)]
    scores = [0.0] * 1000
    scores[300] = 0.6
    for i in range(400, 900, 20):  # 25 false positives well past the window, each costing 0.11
        scores[i] = 0.7
    best = optimise_threshold([sweep_file("f", ts, scores, windows, 0)], STANDARD)
    # Detecting needs threshold 0.6: +1 - 25 * 0.11 = -1.75 < -1 (miss), so the sweep keeps no detection.
    assert best.threshold == math.inf and best.raw == pytest.approx(-1.0)
