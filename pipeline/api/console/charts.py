"""Server-side SVG charts: a time series with an optional band (expected range), markers (anomalies, flagged
points), a threshold line and shaded windows (the firing window), and an optional score panel below.

Only geometry is computed here (numbers and short labels); ``templates/_chart.html`` draws it, so every text
that reaches the SVG goes through Jinja's autoescape. No script, no inline style: presentation attributes and
CSS classes only, so the page's Content-Security-Policy holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 720
HEIGHT = 240
SCORE_HEIGHT = 80
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 12, 24


@dataclass(frozen=True)
class Point:
    ts_us: int
    value: float


@dataclass
class Chart:
    title: str
    width: int = WIDTH
    height: int = HEIGHT
    line: str = ""  # polyline points of the values
    band: str = ""  # polygon points of the expected range
    markers: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, tooltip
    threshold: tuple[float, str] | None = None  # y, label
    windows: list[tuple[float, float, str]] = field(default_factory=list)  # x0, x1, label
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    score_line: str = ""  # polyline of the score panel (0..1), below the main plot
    score_floor: float | None = None  # y of the report floor in the score panel
    score_top: float = 0.0
    points: int = 0
    summary: str = ""  # the chart in words (aria-label, and for screen readers)

    @property
    def total_height(self) -> int:
        return self.height + (SCORE_HEIGHT + 8 if self.score_line else 0)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _clock(ts_us: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts_us / 1e6))


def _nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / count))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= count:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def series_chart(
    title: str,
    points: Sequence[Point],
    *,
    band: Sequence[tuple[int, float, float]] = (),
    markers: Sequence[tuple[int, float, str]] = (),
    threshold: float | None = None,
    windows: Sequence[tuple[int, int | None, str]] = (),
    scores: Sequence[tuple[int, float]] = (),
    score_floor: float | None = None,
) -> Chart:
    """The chart of ``points`` (time-ordered). ``band``: (ts, lower, upper); ``markers``: (ts, value, label);
    ``windows``: (start, end or None for "still open", label); ``scores``: (ts, score in [0, 1])."""
    chart = Chart(title=title, points=len(points))
    if not points:
        chart.summary = f"{title}: no points"
        return chart
    ts = [p.ts_us for p in points]
    t0, t1 = min(ts), max(ts)
    for start, end, _ in windows:
        t0 = min(t0, start)
        t1 = max(t1, end if end is not None else t1)
    if t1 == t0:
        t1 = t0 + 1_000_000
    values = [p.value for p in points if math.isfinite(p.value)]
    values += [v for _, lo, hi in band for v in (lo, hi) if math.isfinite(v)]
    if threshold is not None and math.isfinite(threshold):
        values.append(threshold)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    margin = (hi - lo) * 0.05
    lo, hi = lo - margin, hi + margin
    left, right = PAD_L, chart.width - PAD_R
    top, bottom = PAD_T, chart.height - PAD_B

    def x(t: int) -> float:
        return round(left + (t - t0) / (t1 - t0) * (right - left), 1)

    def y(v: float) -> float:
        return round(bottom - (v - lo) / (hi - lo) * (bottom - top), 1)

    chart.line = " ".join(f"{x(p.ts_us)},{y(p.value)}" for p in points if math.isfinite(p.value))
    if band:
        upper = [f"{x(t)},{y(u)}" for t, _, u in band if math.isfinite(u)]
        lower = [f"{x(t)},{y(low)}" for t, low, _ in reversed(band) if math.isfinite(low)]
        chart.band = " ".join(upper + lower)
    chart.markers = [(x(t), y(v), label) for t, v, label in markers if math.isfinite(v)]
    if threshold is not None and math.isfinite(threshold):
        chart.threshold = (y(threshold), f"threshold {_fmt(threshold)}")
    chart.windows = [(x(start), x(end if end is not None else t1), label) for start, end, label in windows]
    chart.y_ticks = [(y(v), _fmt(v)) for v in _nice_ticks(lo, hi)]
    chart.x_ticks = [(x(t), _clock(t)) for t in (t0, (t0 + t1) // 2, t1)]
    if scores:
        chart.score_top = chart.height + 8
        s_top, s_bottom = chart.score_top, chart.score_top + SCORE_HEIGHT - 4

        def sy(s: float) -> float:
            return round(s_bottom - max(0.0, min(1.0, s)) * (s_bottom - s_top), 1)

        chart.score_line = " ".join(f"{x(t)},{sy(s)}" for t, s in scores)
        if score_floor is not None:
            chart.score_floor = sy(score_floor)
    chart.summary = (
        f"{title}: {len(points)} points from {_clock(t0)} to {_clock(t1)} UTC, values {_fmt(min(values))} "
        f"to {_fmt(max(values))}" + (f", {len(chart.markers)} marked" if chart.markers else "")
    )
    return chart
