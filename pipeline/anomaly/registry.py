"""The series registry: which series a Bar or FeedMetrics record feeds, their values, and their detectors.

A series is ``venue x symbol x metric`` for bars (``binance:BTC-USDT:1s:log_return``, ``...:volume``,
``...:trade_count``, ``...:spread_bps``) and ``venue x stream x metric`` for feed health
(``binance:trades:feed:lag_p99_s``, ``...:rate``, ``...:staleness_s``). Log returns are computed from
the exact decimal closes; only the ratio becomes a float for the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from pipeline.anomaly.ensemble import DetectorConfig, Scored, SeriesDetector
from pipeline.contracts import Anomaly, Bar, FeedMetrics


@dataclass
class SeriesState:
    """A series' detector plus what its features need between records (the previous close)."""

    series_id: str
    metric: str
    detector: SeriesDetector
    exchange: str | None = None
    symbol: str | None = None
    stream: str | None = None
    prev_close: str | None = None
    last_ts: int = 0
    updates_since_checkpoint: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    series_id: str
    metric: str
    value: float
    ts_event: int


def bar_observations(bar: Bar, prev_close: str | None) -> list[Observation]:
    """The metric values of one closed bar (log return needs the previous close of the series)."""
    base = f"{bar.exchange}:{bar.symbol}:{bar.interval}"
    ts = bar.window_end
    out = [
        Observation(f"{base}:volume", "volume", float(Decimal(bar.volume)), ts),
        Observation(f"{base}:trade_count", "trade_count", float(bar.trade_count), ts),
    ]
    if prev_close is not None:
        try:
            ratio = Decimal(bar.close) / Decimal(prev_close)
        except (InvalidOperation, ZeroDivisionError):
            ratio = Decimal(0)
        if ratio > 0:
            out.append(Observation(f"{base}:log_return", "log_return", math.log(float(ratio)), ts))
    if bar.spread_mean_bps is not None:
        out.append(Observation(f"{base}:spread_bps", "spread_bps", bar.spread_mean_bps, ts))
    return out


def feed_observations(metrics: FeedMetrics) -> list[Observation]:
    base = f"{metrics.exchange}:{metrics.stream}:{metrics.source}"
    ts = metrics.ts_event
    out = []
    if metrics.lag_p99_us is not None:
        out.append(Observation(f"{base}:lag_p99_s", "feed_lag_p99_s", metrics.lag_p99_us / 1e6, ts))
    if metrics.rate is not None:
        out.append(Observation(f"{base}:rate", "feed_rate", metrics.rate, ts))
    if metrics.staleness_us is not None:
        out.append(Observation(f"{base}:staleness_s", "feed_staleness_s", metrics.staleness_us / 1e6, ts))
    return out


Loader = Callable[[str], SeriesState | None]


class SeriesRegistry:
    """Series states by id, created on first sight (or restored by ``loader`` from a checkpoint)."""

    def __init__(self, config: DetectorConfig, report_floor: float, loader: Loader | None = None):
        self.config = config
        self.report_floor = report_floor
        self.loader = loader
        self.series: dict[str, SeriesState] = {}
        self.restored = 0

    def state(
        self, series_id: str, metric: str, exchange: str | None = None, symbol: str | None = None,
        stream: str | None = None,
    ) -> SeriesState:
        state = self.series.get(series_id)
        if state is None:
            state = self.loader(series_id) if self.loader else None
            if state is not None:
                self.restored += 1
            else:
                state = SeriesState(
                    series_id, metric, SeriesDetector(self.config), exchange=exchange, symbol=symbol, stream=stream
                )
            self.series[series_id] = state
        return state

    def on_bar(self, bar: Bar) -> tuple[list[Anomaly], list[SeriesState]]:
        """Score and learn every series of one bar; returns the anomalies and the touched states."""
        market = f"{bar.exchange}:{bar.symbol}:{bar.interval}"
        anchor = self.state(f"{market}:volume", "volume", exchange=bar.exchange, symbol=bar.symbol)
        observations = bar_observations(bar, anchor.prev_close)
        anchor.prev_close = bar.close
        return self._score(observations, exchange=bar.exchange, symbol=bar.symbol)

    def on_feed_metrics(self, metrics: FeedMetrics) -> tuple[list[Anomaly], list[SeriesState]]:
        return self._score(feed_observations(metrics), exchange=metrics.exchange, stream=metrics.stream)

    def _score(
        self, observations: list[Observation], exchange: str, symbol: str | None = None, stream: str | None = None
    ) -> tuple[list[Anomaly], list[SeriesState]]:
        anomalies = []
        touched = []
        for obs in observations:
            state = self.state(obs.series_id, obs.metric, exchange=exchange, symbol=symbol, stream=stream)
            if obs.ts_event <= state.last_ts:
                continue  # a replayed or duplicated record: already learned
            scored = state.detector.update(obs.value, obs.ts_event / 1e6)
            state.last_ts = obs.ts_event
            state.updates_since_checkpoint += 1
            touched.append(state)
            if scored.score >= self.report_floor:
                anomalies.append(to_anomaly(state, obs, scored))
        return anomalies, touched


def to_anomaly(state: SeriesState, obs: Observation, scored: Scored) -> Anomaly:
    return Anomaly(
        series_id=state.series_id,
        metric=state.metric,
        ts_event=obs.ts_event,
        value=obs.value,
        score=min(1.0, max(0.0, scored.score)),
        detector=scored.detector,
        exchange=state.exchange,  # type: ignore[arg-type]
        symbol=state.symbol,
        stream=state.stream,
        expected=scored.expected,
        lower=scored.lower,
        upper=scored.upper,
    )
