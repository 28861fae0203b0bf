"""The series detector's two optional policies (docs/anomaly.md): the range check and the record gate, plus
restoring a detector pickled before they existed."""

from __future__ import annotations

import pickle
import random

from pipeline.anomaly.ensemble import DetectorConfig, SeriesDetector, TailCalibrator


def _noise(detector: SeriesDetector, n: int, seed: int = 3) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        detector.update(10.0 + rng.uniform(-1.0, 1.0))


def test_range_check_scores_a_value_beyond_everything_seen_and_names_it() -> None:
    config = DetectorConfig(warmup=50, spatial_tolerance=0.15, spatial_score=0.9, detectors=("seasonal",))
    detector = SeriesDetector(config)  # the seasonal profile alone: no time given, so it never scores
    _noise(detector, 200)
    inside = detector.update(10.5)
    assert inside.score == 0.0
    beyond = detector.update(12.0)  # range [9, 11] widened by 15% of 2: 11.3
    assert beyond.score >= 0.9
    assert beyond.detector == "range"


def test_range_check_off_by_default_changes_nothing() -> None:
    a, b = SeriesDetector(DetectorConfig(warmup=50)), SeriesDetector(DetectorConfig(warmup=50, spatial_score=0.1))
    rng = random.Random(5)
    values = [10.0 + rng.gauss(0, 1) for _ in range(400)] + [40.0]
    assert [a.update(v).score for v in values] == [b.update(v).score for v in values]


def test_record_gate_damps_a_burst_below_the_decaying_peak_of_the_last_one() -> None:
    plain = TailCalibrator(500, 1, 30)
    gated = TailCalibrator(500, 1, 30, record_halflife=1000)
    rng = random.Random(7)
    first: list[float] = []
    second: list[float] = []
    for i in range(600):
        raw = {300: 8.0, 400: 7.0}.get(i, abs(rng.gauss(0, 1)))
        z_plain, z_gated = plain.update(raw), gated.update(raw)
        if i in (300, 400):
            first.append(z_plain)
            second.append(z_gated)
    assert second[0] == first[0]  # the first burst is a record: not damped
    assert second[1] < first[1]  # a slightly smaller burst 100 points later is no record
    assert first[1] > 3.0  # ... though the plain calibration still finds it extreme


def test_detector_pickled_before_the_options_restores_with_them_off() -> None:
    detector = SeriesDetector(DetectorConfig(warmup=20))
    _noise(detector, 100)
    state = pickle.loads(pickle.dumps(detector))  # noqa: S301 - our own test data
    for name in ("low", "high"):
        state.__dict__.pop(name, None)
    for calibrator in state.calibrators.values():
        for name in ("decay", "peak", "record_ratio", "record_power"):
            calibrator.__dict__.pop(name, None)
    restored = pickle.loads(pickle.dumps(state))  # noqa: S301 - our own test data
    assert restored.update(10.0).score == detector.update(10.0).score
