"""Failure prediction: Holt's damped-trend forecaster with prediction intervals, and time-to-threshold.

:class:`DampedTrend` keeps River's forecaster contract (``learn_one(y)``, ``forecast(horizon)``) and
adds :meth:`DampedTrend.interval` (ETS(A,Ad,N) forecast variance from the one-step error variance).
:class:`ThresholdForecast` wraps it for one health series sampled at irregular times: it estimates
the sampling step, and says in how many seconds the forecast reaches a threshold (rising or falling)
and the interval around it. Unlike Prometheus' ``predict_linear`` the trend is smoothed (outliers do
not swing it), damped (no runaway extrapolation) and comes with uncertainty; a crossing is only
predicted once the trend is significant (the interval at the crossing excludes today's value).

Too little history is no forecast: a crossing is predicted only once the series spans ``min_history_s`` seconds
(and ``min_points`` samples), and never further ahead than ``max_extrapolation`` times the span learnt (a trend seen
for one minute says nothing about the next fifteen). Start-up ramps are kept out by the caller
(:class:`pipeline.anomaly.health.HealthMonitor` learns nothing from a series' first ``warmup_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from river.time_series.base import Forecaster


class DampedTrend(Forecaster):
    """Holt's linear trend with damping ``phi`` (``phi=1`` is plain Holt)."""

    def __init__(
        self, alpha: float = 0.2, beta: float = 0.05, phi: float = 1.0, error_alpha: float = 0.05, init_points: int = 5
    ):
        self.alpha = alpha
        self.beta = beta
        self.phi = phi
        self.error_alpha = error_alpha
        self.init_points = max(2, init_points)
        self.level: float | None = None
        self.trend = 0.0
        self.error_var = 0.0
        self.step_mean = 0.0
        self.step_var = 0.0
        self.n = 0
        self._first: list[float] = []

    def learn_one(self, y: float, x: dict[str, float] | None = None) -> None:
        self.n += 1
        if self.n <= self.init_points:
            # Robust start: the trend is the median of the first steps, so one odd first value (a start-up
            # backlog, a clock-skewed sample) does not become a trend that takes 1/beta steps to fade.
            self._first.append(y)
            self.level = y
            if self.n == self.init_points:
                steps = sorted(b - a for a, b in zip(self._first, self._first[1:], strict=False))
                self.trend = self.step_mean = steps[len(steps) // 2]
                last = len(self._first) - 1  # the level: the median of the points carried to the last one's time
                carried = sorted(v + self.trend * (last - i) for i, v in enumerate(self._first))
                self.level = carried[len(carried) // 2]
                self._first = []
            return
        assert self.level is not None
        predicted = self.level + self.phi * self.trend
        error = y - predicted
        self.error_var = (1 - self.error_alpha) * self.error_var + self.error_alpha * error * error
        level = self.alpha * y + (1 - self.alpha) * predicted
        step = level - self.level
        self.trend = self.beta * step + (1 - self.beta) * self.phi * self.trend
        self.level = level
        delta = step - self.step_mean
        self.step_mean += self.error_alpha * delta
        self.step_var = (1 - self.error_alpha) * (self.step_var + self.error_alpha * delta * delta)

    @property
    def trend_se(self) -> float:
        """Standard error of the trend: an AR(1) of level steps, ``Var = beta / (2 - beta) * Var(step)``."""
        return math.sqrt(self.beta / (2.0 - self.beta) * self.step_var)

    def forecast(self, horizon: int, xs: list[dict[str, float]] | None = None) -> list[float]:
        level = self.level if self.level is not None else 0.0
        out = []
        damp = 0.0
        power = 1.0
        for _ in range(horizon):
            power *= self.phi
            damp += power
            out.append(level + damp * self.trend)
        return out

    def interval(self, horizon: int, z: float = 1.96) -> list[tuple[float, float]]:
        """``(lower, upper)`` for steps 1..horizon (ETS(A,Ad,N) variance)."""
        means = self.forecast(horizon)
        bounds = []
        acc = 1.0
        damp = 0.0
        power = 1.0
        for h, mean in enumerate(means, start=1):
            if h > 1:
                acc += (self.alpha + self.alpha * self.beta * damp) ** 2
            power *= self.phi
            damp += power
            half = z * math.sqrt(self.error_var * acc)
            bounds.append((mean - half, mean + half))
        return bounds


@dataclass(frozen=True)
class Crossing:
    """A predicted threshold crossing."""

    seconds: float  # point estimate of the time until the forecast reaches the threshold
    expected: float  # the forecast at that time
    lower: float  # prediction interval at that time
    upper: float
    earliest_seconds: float  # when the interval's bound first reaches it (the pessimistic case)


class ThresholdForecast:
    """One health series: learn each observation, predict when it reaches ``threshold``."""

    def __init__(
        self,
        threshold: float,
        rising: bool = True,
        horizon_steps: int = 720,
        model: DampedTrend | None = None,
        min_points: int = 10,
        trend_z: float = 3.0,
        min_history_s: float = 0.0,
        max_extrapolation: float | None = None,
    ):
        if min_history_s < 0 or (max_extrapolation is not None and max_extrapolation <= 0):
            raise ValueError("min_history_s must be >= 0 and max_extrapolation > 0")
        self.min_history_s = min_history_s
        self.max_extrapolation = max_extrapolation
        self.first_t: float | None = None
        self.trend_z = trend_z
        self.threshold = threshold
        self.rising = rising
        self.horizon_steps = horizon_steps
        self.model = model or DampedTrend()
        self.min_points = min_points
        self.step_s: float | None = None
        self.last_t: float | None = None
        self.last_value: float | None = None

    @property
    def history_s(self) -> float:
        """Seconds between the first and the last observation learnt."""
        return 0.0 if self.first_t is None or self.last_t is None else self.last_t - self.first_t

    def learn_one(self, t_s: float, value: float) -> None:
        if self.first_t is None:
            self.first_t = t_s
        if self.last_t is not None and t_s > self.last_t:
            dt = t_s - self.last_t
            self.step_s = dt if self.step_s is None else 0.9 * self.step_s + 0.1 * dt
        self.last_t = t_s
        self.last_value = value
        self.model.learn_one(value)

    def _beyond(self, value: float) -> bool:
        return value >= self.threshold if self.rising else value <= self.threshold

    def _significant(self) -> bool:
        """The trend points at the threshold and stands ``trend_z`` standard errors clear of 0."""
        trend = self.model.trend if self.rising else -self.model.trend
        return trend > 0 and trend > self.trend_z * self.model.trend_se

    def crossing(self) -> Crossing | None:
        """The predicted crossing within the horizon, or None (not enough data or history, no trend, already beyond,
        or further ahead than the history allows)."""
        if self.model.n < self.min_points or self.step_s is None or self.last_value is None:
            return None
        if self.history_s < self.min_history_s:
            return None
        if self._beyond(self.last_value):
            return None
        bounds = self.model.interval(self.horizon_steps)
        means = self.model.forecast(self.horizon_steps)
        earliest = None
        for h, (mean, (lower, upper)) in enumerate(zip(means, bounds, strict=True), start=1):
            if earliest is None and self._beyond(upper if self.rising else lower):
                earliest = h
            if self._beyond(mean):
                significant = self._significant()
                if not significant:
                    return None
                if self.max_extrapolation is not None and h * self.step_s > self.max_extrapolation * self.history_s:
                    return None
                return Crossing(h * self.step_s, mean, lower, upper, (earliest or h) * self.step_s)
        return None
