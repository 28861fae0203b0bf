"""The raw detectors, each keeping River's ``learn_one(x)`` / ``score_one(x)`` contract (high = anomalous).

Inputs are one-feature dicts ``{"y": value}``. Raw scores are not comparable between detectors:
:mod:`pipeline.anomaly.ensemble` calibrates them. Thresholds, warm-up and drift handling live in that
wrapper, not here.

- :class:`RobustZScore`: distance from the rolling median in units of the rolling inter-quartile
  range (robust statistical scorer).
- :func:`predictive`: River's PredictiveAnomalyDetection around a Holt(-Winters) forecaster
  (seasonal/predictive scorer).
- :class:`HalfSpaceTrees`: River's Half-Space Trees on min-max scaled (value, change) features.
- :class:`SeasonalProfile`: distance from the exponentially weighted mean of the same time-of-day
  bucket (``{"y": value, "t": epoch seconds}``), in that bucket's standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from river import anomaly, preprocessing, time_series, utils
from river.base import AnomalyDetector

Features = dict[Hashable, Any]


class Detector(AnomalyDetector):
    """River's anomaly-detector contract plus ``ready``: whether scores mean something yet."""

    @property
    def ready(self) -> bool:
        raise NotImplementedError


IQR_TO_SIGMA = 1.349


class RobustZScore(Detector):
    """``|y - median| / (IQR / 1.349)`` over a rolling window of the last ``window_size`` values."""

    def __init__(self, window_size: int = 300, min_scale: float = 1e-9):
        self.window_size = window_size
        self.min_scale = min_scale
        self._window: utils.SortedWindow[float] = utils.SortedWindow(size=window_size)
        self._quartiles: tuple[float, float, float] | None = None  # of the window as last scored

    @property
    def ready(self) -> bool:
        return len(self._window) >= 3

    def learn_one(self, x: Features) -> None:
        self._window.append(x["y"])
        self._quartiles = None

    def _quantile(self, q: float) -> float:
        w = self._window.data
        pos = q * (len(w) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(w) - 1)
        return w[lo] + (w[hi] - w[lo]) * (pos - lo)

    def _compute_quartiles(self) -> tuple[float, float, float]:
        self._quartiles = (self._quantile(0.25), self._quantile(0.5), self._quantile(0.75))
        return self._quartiles

    def expected(self) -> tuple[float, float, float]:
        """(median, lower, upper): the median and the 1.5-IQR fences of the window."""
        if not self._window:
            return 0.0, 0.0, 0.0
        q1, med, q3 = self._quartiles or self._compute_quartiles()
        return med, q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)

    def score_one(self, x: Features) -> float:
        if len(self._window) < 3:
            return 0.0
        q1, med, q3 = self._quartiles or self._compute_quartiles()
        scale = max((q3 - q1) / IQR_TO_SIGMA, self.min_scale, abs(med) * 1e-6)
        return abs(x["y"] - med) / scale

    def keep_last(self, n: int) -> None:
        """Forget all but the last ``n`` values (after a detected regime change)."""
        recent = list(self._window.unsorted_window)[-n:]
        self._window = utils.SortedWindow(size=self.window_size)
        self._quartiles = None
        for value in recent:
            self._window.append(value)


class Predictive(Detector):
    """River's PredictiveAnomalyDetection on a univariate forecaster, fed ``y`` from ``{"y": value}``.

    :meth:`forecast` gives the one-step forecast the ensemble reports as the expected value.
    """

    def __init__(self, pad: anomaly.PredictiveAnomalyDetection, forecaster: time_series.base.Forecaster):
        self.pad = pad
        self.forecaster = forecaster  # the PAD's model (pickling keeps them one object)

    @property
    def ready(self) -> bool:
        return self.pad.iter >= max(self.pad.warmup_period, 3)

    def learn_one(self, x: Features) -> None:
        self.pad.learn_one({}, float(x["y"]))

    def score_one(self, x: Features) -> float:
        if self.pad.iter < 3:
            return 0.0
        return float(self.pad.score_one({}, float(x["y"])))

    def forecast(self) -> float | None:
        return float(self.forecaster.forecast(1)[0]) if self.pad.iter >= 3 else None


def predictive(alpha: float, beta: float | None, n_std: float, warmup: int) -> Predictive:
    """PredictiveAnomalyDetection around Holt's linear trend (HoltWinters without a season)."""
    forecaster = time_series.HoltWinters(alpha=alpha, beta=beta)
    pad = anomaly.PredictiveAnomalyDetection(forecaster, horizon=1, n_std=n_std, warmup_period=warmup)
    return Predictive(pad, forecaster)


class HalfSpaceTrees(Detector):
    """Half-Space Trees on min-max scaled features ``y`` and ``dy`` (change since the last value)."""

    def __init__(self, n_trees: int, height: int, window_size: int, seed: int):
        self.scaler = preprocessing.MinMaxScaler()
        self.trees = anomaly.HalfSpaceTrees(n_trees=n_trees, height=height, window_size=window_size, seed=seed)
        self._last: float | None = None

    @property
    def ready(self) -> bool:
        """Scores mean something once the first reference window is complete."""
        return not self.trees._first_window

    def _features(self, x: Features) -> Features:
        y = x["y"]
        return {"y": y, "dy": 0.0 if self._last is None else y - self._last}

    def learn_one(self, x: Features) -> None:
        features = self._features(x)
        self.scaler.learn_one(features)
        self.trees.learn_one(self.scaler.transform_one(features))
        self._last = x["y"]

    def score_one(self, x: Features) -> float:
        return float(self.trees.score_one(self.scaler.transform_one(self._features(x))))


class SeasonalProfile(Detector):
    """Time-of-day profile: per bucket of ``bucket_s`` within ``period_s``, an EW mean and variance."""

    def __init__(self, period_s: float = 86400.0, bucket_s: float = 1800.0, alpha: float = 0.1, min_count: int = 3):
        self.period_s = period_s
        self.bucket_s = bucket_s
        self.alpha = alpha
        self.min_count = min_count
        self.n_buckets = max(1, int(period_s // bucket_s))
        self.mean = [0.0] * self.n_buckets
        self.var = [0.0] * self.n_buckets
        self.count = [0] * self.n_buckets
        self._bucket = -1

    def _index(self, x: Features) -> int:
        t = x.get("t")
        return -1 if t is None else int((t % self.period_s) // self.bucket_s) % self.n_buckets

    @property
    def ready(self) -> bool:
        """Ready when the bucket of the last scored point has enough history."""
        return self._bucket >= 0 and self.count[self._bucket] >= self.min_count

    def learn_one(self, x: Features) -> None:
        b = self._index(x)
        if b < 0:
            return
        self.count[b] += 1
        a = max(self.alpha, 1.0 / self.count[b])
        delta = x["y"] - self.mean[b]
        self.mean[b] += a * delta
        self.var[b] = (1.0 - a) * (self.var[b] + a * delta * delta)

    def score_one(self, x: Features) -> float:
        b = self._bucket = self._index(x)
        if b < 0 or self.count[b] < self.min_count:
            return 0.0
        sd = math.sqrt(self.var[b]) if self.var[b] > 0.0 else 0.0
        return abs(x["y"] - self.mean[b]) / max(sd, 1e-9, abs(self.mean[b]) * 1e-6)
