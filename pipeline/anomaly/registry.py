"""The series registry: which series a Bar, FeedMetrics or ReferencePrice record feeds, their values, and
their detectors.

A series is ``venue x symbol x metric`` for bars (``binance:BTC-USDT:1s:log_return``, ``...:volume``,
``...:trade_count``, ``...:spread_bps``, ``...:frozen_bars``), ``venue x symbol`` for the cross-venue
divergence from ``md.reference.v1`` (``okx:BTC-USDT:divergence_bps``) and ``venue x stream x source x
metric`` for feed health (``binance:trades:collector:lag_p99_s``, ``...:rate``, ``...:staleness_s``).
Log returns are computed from the exact decimal closes; only the ratio becomes a float for the models.
``frozen_bars`` is the length of the current run of bars that traded at one price equal to the previous
close (scored by :class:`~pipeline.anomaly.runs.RunLengthDetector`); every other series by a
:class:`~pipeline.anomaly.ensemble.SeriesDetector` with the metric's policy (:data:`METRIC_POLICY`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from pipeline.anomaly.ensemble import DetectorConfig, Scored, SeriesDetector
from pipeline.anomaly.runs import RunConfig, RunLengthDetector
from pipeline.contracts import Anomaly, Bar, FeedMetrics
from pipeline.contracts.records import ReferencePrice

FROZEN = "frozen_bars"
# Per-metric policy on top of the worker's DetectorConfig: minimum effect sizes (docs/anomaly.md). Feed series
# are spiky (staleness and message rates of Poisson-like streams, scheduling jitter in lags) while the incidents
# worth a report are large: a stream 5 s stale, a rate halved or doubled, a second of extra lag. Returns and volume
# of majors are heavy-tailed: a 1 s move under 20 bps or a single large trade (under 11x the median volume) is
# ordinary trading, not an incident; nor is a spread or trade count that moves by less than half / all of its
# median, or a venue 15 bps off the others. Each report also starts the series' refractory period, so a report
# on a meaningless move (a spread 0.03 bps off) would blind the series to the incident that follows.
METRIC_POLICY: dict[str, dict[str, Any]] = {
    "feed_staleness_s": {"min_effect": 5.0},
    "feed_rate": {"min_effect": 3.0, "min_effect_rel": 0.5},
    "feed_lag_p99_s": {"min_effect": 1.0},
    "divergence_bps": {"min_effect": 15.0},
    "log_return": {"min_effect": 0.002},
    "volume": {"min_effect_rel": 10.0},
    "trade_count": {"min_effect_rel": 1.0},
    "spread_bps": {"min_effect_rel": 0.5},
}
# The policy the first hour-long simulator run used (docs/benchmarks.md), kept to reproduce it with --policy v1.
POLICY_V1: dict[str, dict[str, Any]] = {
    "feed_staleness_s": {"min_effect": 2.0},
    "feed_rate": {"min_effect": 2.0, "min_effect_rel": 0.5},
    "feed_lag_p99_s": {"min_effect": 0.25},
    "divergence_bps": {"min_effect": 5.0},
}


@dataclass
class SeriesState:
    """A series' detector plus what its features need between records (the previous close)."""

    series_id: str
    metric: str
    detector: SeriesDetector | RunLengthDetector
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


def flat_unchanged(bar: Bar, prev_close: str | None) -> bool:
    """Whether the bar traded at one price only, equal to the previous close (exact decimals)."""
    if prev_close is None or bar.trade_count == 0:
        return False
    try:
        return Decimal(bar.high) == Decimal(bar.low) == Decimal(bar.close) == Decimal(prev_close)
    except InvalidOperation:
        return False


def bar_observations(bar: Bar, prev_close: str | None, frozen_run: int = 0) -> list[Observation]:
    """The metric values of one closed bar (log return needs the previous close of the series, the frozen run
    the length of the run of flat unchanged bars this one ends)."""
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
        if bar.trade_count > 0:
            out.append(Observation(f"{base}:{FROZEN}", FROZEN, float(frozen_run), ts))
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


def reference_observations(ref: ReferencePrice) -> list[tuple[str, str, Observation]]:
    """(exchange, symbol, observation) per venue of a reference price: its divergence from the median in bps.

    A venue the reference excluded as ``stale`` is left out: its last mid is old, so its "divergence" is the
    market's move since it stopped, not a disagreement (a stopped feed is the feed series' anomaly). Venues
    excluded as ``diverging`` are scored: that is the incident.
    """
    out = []
    for venue, bps in sorted(ref.divergence_bps.items()):
        exchange, sep, symbol = venue.partition(":")
        if sep and math.isfinite(bps) and ref.excluded.get(venue) != "stale":
            out.append((exchange, symbol, Observation(f"{venue}:divergence_bps", "divergence_bps", bps, ref.ts_event)))
    return out


Loader = Callable[[str], SeriesState | None]


class SeriesRegistry:
    """Series states by id, created on first sight (or restored by ``loader`` from a checkpoint)."""

    def __init__(
        self,
        config: DetectorConfig,
        report_floor: float,
        loader: Loader | None = None,
        policy: dict[str, dict[str, Any]] | None = None,
        run_config: RunConfig | None = None,
    ):
        self.config = config
        self.report_floor = report_floor
        self.loader = loader
        self.policy = METRIC_POLICY if policy is None else policy
        self.run_config = run_config or RunConfig(report_floor=report_floor, warmup=min(60, config.warmup))
        self.series: dict[str, SeriesState] = {}
        self.restored = 0
        self._configs: dict[str, DetectorConfig] = {}
        self._accessed: list[str] = []  # series looked up by the record being scored (poison containment)

    def config_for(self, metric: str) -> DetectorConfig:
        """The worker's detector configuration with the metric's policy applied."""
        config = self._configs.get(metric)
        if config is None:
            config = self._configs[metric] = replace(self.config, **self.policy.get(metric, {}))
        return config

    def new_detector(self, metric: str) -> SeriesDetector | RunLengthDetector:
        if metric == FROZEN:
            return RunLengthDetector(self.run_config)
        return SeriesDetector(self.config_for(metric))

    def state(
        self,
        series_id: str,
        metric: str,
        exchange: str | None = None,
        symbol: str | None = None,
        stream: str | None = None,
    ) -> SeriesState:
        self._accessed.append(series_id)
        state = self.series.get(series_id)
        if state is None:
            state = self.loader(series_id) if self.loader else None
            if state is not None:
                self.restored += 1
                # the learned state is restored; the policy (thresholds, effect sizes) is today's
                state.detector.config = self.run_config if metric == FROZEN else self.config_for(metric)  # type: ignore[assignment]
            else:
                state = SeriesState(
                    series_id, metric, self.new_detector(metric), exchange=exchange, symbol=symbol, stream=stream
                )
            self.series[series_id] = state
        return state

    def on_bar(self, bar: Bar) -> tuple[list[Anomaly], list[SeriesState]]:
        """Score and learn every series of one bar; returns the anomalies and the touched states."""
        self._accessed.clear()
        market = f"{bar.exchange}:{bar.symbol}:{bar.interval}"
        anchor = self.state(f"{market}:volume", "volume", exchange=bar.exchange, symbol=bar.symbol)
        if bar.window_end <= anchor.last_ts:
            return [], []  # a replayed or duplicated bar: its features were already taken
        run = int(anchor.extra.get(FROZEN, 0))
        run = run + 1 if flat_unchanged(bar, anchor.prev_close) else 0
        observations = bar_observations(bar, anchor.prev_close, run)
        anchor.prev_close = bar.close
        anchor.extra[FROZEN] = float(run)
        return self._score(observations, exchange=bar.exchange, symbol=bar.symbol)

    def on_feed_metrics(self, metrics: FeedMetrics) -> tuple[list[Anomaly], list[SeriesState]]:
        self._accessed.clear()
        return self._score(feed_observations(metrics), exchange=metrics.exchange, stream=metrics.stream)

    def on_reference(self, ref: ReferencePrice) -> tuple[list[Anomaly], list[SeriesState]]:
        """Score and learn each venue's divergence from the cross-venue reference."""
        self._accessed.clear()
        anomalies: list[Anomaly] = []
        touched: list[SeriesState] = []
        for exchange, symbol, obs in reference_observations(ref):
            a, t = self._score([obs], exchange=exchange, symbol=symbol)
            anomalies += a
            touched += t
        return anomalies, touched

    def forget_touched(self) -> None:
        """Drop the series the last record looked up (after its scoring raised: a detector may be half-updated);
        the next record of each restores it from its checkpoint or starts it cold."""
        for series_id in self._accessed:
            self.series.pop(series_id, None)
        self._accessed.clear()

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
