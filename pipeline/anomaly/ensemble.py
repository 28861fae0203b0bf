"""One series' detector: the raw detectors (robust, predictive, Half-Space Trees, seasonal profile)
calibrated into one score in [0, 1], plus the policies around them.

The wrapper owns what STYLE item 9 keeps out of detectors: warm-up (score 0 until ``warmup`` points
were seen), calibration (each raw score becomes the z-score of its short-term mean against its
long-term distribution, after the "anomaly likelihood" of Numenta's detector), the combination
(the most confident detector wins and is named as the contributor), ADWIN drift detection (after a
regime change the robust window keeps only the new regime), not learning anomalous points, and a
refractory period after a report so one incident yields one report rather than a burst. Two options
(off unless set; docs/anomaly.md): a range check (a value far beyond everything seen, after HTM's spatial
anomaly) and a record gate (a calibrated score counts fully only when it beats the detector's recent peak).

The same :class:`SeriesDetector` runs in the Faust agents and in the NAB harness.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from river import drift

from pipeline.anomaly.detectors import (
    Detector,
    Features,
    HalfSpaceTrees,
    Predictive,
    RobustZScore,
    SeasonalProfile,
    predictive,
)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that shapes a series detector (docs/benchmarks.md lists the values NAB was run with)."""

    warmup: int = 150
    robust_window: int = 300
    holt_alpha: float = 0.5
    holt_beta: float | None = 0.05
    pad_n_std: float = 6.0
    hst_trees: int = 5
    hst_height: int = 6
    hst_window: int = 250
    hst_seed: int = 42
    calib_long: int = 2000
    calib_short: int = 5
    calib_min: int = 30
    z_half: float = 5.0
    adwin_delta: float = 0.002
    learn_anomalies: bool = False
    report_floor: float = 0.475
    refractory: int = 100
    refractory_damp: float = 0.0
    seasonal_period_s: float = 86400.0
    seasonal_bucket_s: float = 1800.0
    seasonal_alpha: float = 0.05
    detectors: tuple[str, ...] = ("robust", "predictive", "hst", "seasonal")
    # Minimum effect size: a score at or above the floor is only reported when the value stands at least
    # max(min_effect, min_effect_rel * |median|) from the rolling median (0: off, as on NAB). Series whose
    # noise is spiky but whose incidents are large (feed staleness, message rate) use it (registry.METRIC_POLICY).
    min_effect: float = 0.0
    min_effect_rel: float = 0.0
    # Range (after HTM's "spatial anomaly"): a value beyond everything the series has seen by more than
    # ``spatial_tolerance`` of its range scores at least ``spatial_score`` (0: off).
    spatial_tolerance: float = 0.0
    spatial_score: float = 0.9
    # Record gate: a calibrated score counts fully only when the detector's short-term mean beats
    # ``record_ratio`` x its own decaying peak (half-life ``record_halflife`` points; 0: off), else it is
    # scaled by (mean / bar) ** ``record_power``: the series' ordinary bursts stop looking new.
    record_halflife: int = 0
    record_ratio: float = 1.0
    record_power: float = 2.0


class TailCalibrator:
    """Raw score -> z-score of its short-term mean against the long-term (exponentially weighted) distribution."""

    # class-level defaults: a calibrator restored from a checkpoint written before the record gate has it off
    decay = 0.0
    peak = 0.0
    record_ratio = 1.0
    record_power = 2.0

    def __init__(
        self,
        long_window: int,
        short_window: int,
        min_points: int,
        record_halflife: int = 0,
        record_ratio: float = 1.0,
        record_power: float = 2.0,
    ):
        self.alpha = 2.0 / (long_window + 1.0)
        self.decay = 0.5 ** (1.0 / record_halflife) if record_halflife > 0 else 0.0
        self.record_ratio = record_ratio
        self.record_power = record_power
        self.peak = 0.0
        self.short: deque[float] = deque(maxlen=short_window)
        self.short_sum = 0.0
        self.min_points = min_points
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def update(self, raw: float) -> float:
        """The calibrated z of ``raw`` (0 until ``min_points`` were seen), then learn it."""
        short = self.short
        if len(short) == short.maxlen:
            self.short_sum -= short[0]
        short.append(raw)
        self.short_sum += raw
        value = self.short_sum / len(short)
        z = 0.0
        mean = self.mean
        if self.n >= self.min_points:
            sd = math.sqrt(self.var) if self.var > 0.0 else 0.0
            floor = 1e-6 * abs(mean) if abs(mean) > 1.0 else 1e-6
            z = (value - mean) / (sd if sd > floor else floor)
            if self.decay > 0.0 and z > 0.0:
                bar = self.record_ratio * self.peak
                if value < bar:
                    z *= (value / bar) ** self.record_power
        if self.decay > 0.0:
            self.peak = max(value, self.peak * self.decay)
        self.n += 1
        a = 1.0 / self.n if self.n * self.alpha < 1.0 else self.alpha
        delta = value - mean
        self.mean += a * delta
        self.var = (1.0 - a) * (self.var + a * delta * delta)
        return z


def z_to_score(z: float, z_half: float) -> float:
    """Map a calibrated z (>= 0 matters) into [0, 1) without saturating: ``z_half`` maps to 0.5."""
    return z / (z + z_half) if z > 0 else 0.0


@dataclass(frozen=True)
class Scored:
    """One scored point: the calibrated score, who contributed most, and the expected value/range."""

    value: float
    score: float
    detector: str
    expected: float | None
    lower: float | None
    upper: float | None
    drift: bool = False
    raw: dict[str, float] = field(default_factory=dict)


class SeriesDetector:
    """Score-then-learn on each value of one series."""

    # class-level defaults for detectors restored from checkpoints written before the range check
    low = math.inf
    high = -math.inf

    def __init__(self, config: DetectorConfig | None = None):
        self.config = c = config or DetectorConfig()
        self.robust = RobustZScore(c.robust_window)
        self.predictive: Predictive = predictive(c.holt_alpha, c.holt_beta, c.pad_n_std, warmup=min(c.warmup, 30))
        self.hst = HalfSpaceTrees(c.hst_trees, c.hst_height, c.hst_window, c.hst_seed)
        self.seasonal = SeasonalProfile(c.seasonal_period_s, c.seasonal_bucket_s, c.seasonal_alpha)
        everything: dict[str, Detector] = {
            "robust": self.robust,
            "predictive": self.predictive,
            "hst": self.hst,
            "seasonal": self.seasonal,
        }
        self.detectors = {name: det for name, det in everything.items() if name in c.detectors}
        self.calibrators = {
            name: TailCalibrator(
                c.calib_long, c.calib_short, c.calib_min, c.record_halflife, c.record_ratio, c.record_power
            )
            for name in self.detectors
        }
        self.adwin = drift.ADWIN(delta=c.adwin_delta)
        self.seen = 0
        self.cooldown = 0
        self.low = math.inf
        self.high = -math.inf

    @property
    def warm(self) -> bool:
        return self.seen >= self.config.warmup

    def update(self, value: float, t_s: float | None = None) -> Scored:
        """Score ``value`` (observed at epoch seconds ``t_s``, for the seasonal profile) against the model,
        then learn it (unless it is anomalous and that is off)."""
        c = self.config
        x: Features = {"y": value} if t_s is None else {"y": value, "t": t_s}
        raw = {name: det.score_one(x) for name, det in self.detectors.items()}
        zs = {name: self.calibrators[name].update(r) if self.detectors[name].ready else 0.0 for name, r in raw.items()}
        detector = max(zs, key=zs.__getitem__)
        score = z_to_score(zs[detector], c.z_half) if self.warm else 0.0
        if c.spatial_tolerance > 0.0 and self.warm and self.high > self.low:
            margin = (self.high - self.low) * c.spatial_tolerance
            if value > self.high + margin or value < self.low - margin:
                score = max(score, c.spatial_score)
                detector = "range"
        if c.spatial_tolerance > 0.0:
            self.low = min(self.low, value)
            self.high = max(self.high, value)
        median, lower, upper = self.robust.expected()
        effect = max(c.min_effect, c.min_effect_rel * abs(median))
        if score >= c.report_floor and effect > 0.0 and abs(value - median) < effect:
            score = min(score, c.report_floor * 0.99)  # too small a change to matter: learned, not reported
        if self.cooldown > 0:
            self.cooldown -= 1
            score *= c.refractory_damp
        elif score >= c.report_floor:
            self.cooldown = c.refractory
        expected: float | None = median
        if detector == "predictive" and score >= c.report_floor:
            expected = self.predictive.forecast()
        self.adwin.update(value)
        drifted = self.adwin.drift_detected
        if drifted:
            self.robust.keep_last(max(int(self.adwin.width), 3))
        if c.learn_anomalies or drifted or not self.warm or score < c.report_floor:
            for det in self.detectors.values():
                det.learn_one(x)
        self.seen += 1
        return Scored(value, score, detector, expected, lower, upper, drifted, raw)
