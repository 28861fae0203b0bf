"""Pipeline health series and their time-to-threshold forecasts (failure prediction).

Series: feed lag per stream and feed error rate per stream (from ``ops.feed_metrics.v1``), the DLQ
rate (records on ``ops.dlq.v1`` per second), consumer-group lag (committed vs end offsets of the watched groups,
from the broker), resident memory of our processes and disk use of the state directory (psutil). Each has a
:class:`~pipeline.anomaly.forecasting.ThresholdForecast`; when a crossing is predicted within the
horizon, an ``Anomaly(kind="forecast", time_to_threshold_s=...)`` is published, its score the
urgency ``1 - seconds / horizon`` so a rule can fire before the breach.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.anomaly.forecasting import ThresholdForecast
from pipeline.contracts import Anomaly, FeedMetrics
from pipeline.kafka import client_options
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class HealthThresholds:
    feed_lag_s: float = 5.0
    feed_errors_per_s: float = 1.0
    dlq_per_s: float = 10.0
    consumer_lag: float = 100_000.0
    memory_bytes: float = 2 * 1024**3
    disk_percent: float = 90.0
    horizon_steps: int = 360


def forecast_record(
    series_id: str, metric: str, forecaster: ThresholdForecast, ts_us: int, horizon_s: float, **meta: str | None
) -> Anomaly | None:
    """An ``Anomaly(kind="forecast")`` when ``forecaster`` predicts a crossing, else None."""
    crossing = forecaster.crossing()
    if crossing is None or forecaster.last_value is None:
        return None
    urgency = max(0.0, min(1.0, 1.0 - crossing.seconds / horizon_s)) if horizon_s > 0 else 1.0
    return Anomaly(
        series_id=series_id,
        metric=metric,
        ts_event=ts_us,
        value=forecaster.last_value,
        score=urgency,
        detector="damped_trend",
        expected=crossing.expected,
        lower=crossing.lower,
        upper=crossing.upper,
        kind="forecast",
        time_to_threshold_s=crossing.seconds,
        **meta,  # type: ignore[arg-type]
    )


class HealthMonitor:
    """Keeps one forecaster per health series and turns predicted crossings into forecast records."""

    def __init__(
        self,
        settings: Settings,
        thresholds: HealthThresholds,
        groups: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.groups = dict(groups or {})
        self.thresholds = thresholds
        self.clock = clock
        self.forecasters: dict[str, ThresholdForecast] = {}
        self.dead_letters = 0
        self._last_sample: float | None = None
        self._group_consumers: dict[str, AIOKafkaConsumer] = {}

    def _forecaster(self, series_id: str, threshold: float) -> ThresholdForecast:
        f = self.forecasters.get(series_id)
        if f is None:
            f = self.forecasters[series_id] = ThresholdForecast(threshold, horizon_steps=self.thresholds.horizon_steps)
        return f

    def _observe(
        self, series_id: str, metric: str, threshold: float, t_s: float, value: float, **meta: str | None
    ) -> Anomaly | None:
        f = self._forecaster(series_id, threshold)
        f.learn_one(t_s, value)
        horizon_s = (f.step_s or 0.0) * self.thresholds.horizon_steps
        return forecast_record(series_id, metric, f, int(t_s * 1e6), horizon_s, **meta)

    def on_feed_metrics(self, m: FeedMetrics) -> list[Anomaly]:
        t_s = m.ts_event / 1e6
        base = f"health:{m.exchange}:{m.stream}:{m.source}"
        out = []
        if m.lag_p99_us is not None:
            out.append(self._observe(f"{base}:feed_lag_s", "feed_lag_s", self.thresholds.feed_lag_s, t_s,
                                     m.lag_p99_us / 1e6, exchange=m.exchange, stream=m.stream))
        errors = m.parse_errors + m.gaps + m.checksum_failures
        out.append(self._observe(f"{base}:feed_errors_per_s", "feed_errors_per_s", self.thresholds.feed_errors_per_s,
                                 t_s, errors / (m.interval_us / 1e6), exchange=m.exchange, stream=m.stream))
        return [a for a in out if a is not None]

    def on_dead_letter(self) -> None:
        self.dead_letters += 1

    async def sample(self) -> list[Anomaly]:
        """One sample of the process/broker health series (called by the worker's timer)."""
        now = self.clock()
        values: list[tuple[str, str, float, float]] = []
        if self._last_sample is not None and now > self._last_sample:
            values.append(("health:dlq_per_s", "dlq_per_s", self.thresholds.dlq_per_s,
                           self.dead_letters / (now - self._last_sample)))
        self.dead_letters = 0
        self._last_sample = now
        values.append(("health:memory_bytes", "memory_bytes", self.thresholds.memory_bytes, float(process_memory())))
        disk = psutil.disk_usage(str(self.settings.state_dir if self.settings.state_dir.exists() else "."))
        values.append(("health:disk_percent", "disk_percent", self.thresholds.disk_percent, disk.percent))
        for group, lag in (await self.consumer_lags()).items():
            values.append((f"health:consumer_lag:{group}", "consumer_lag", self.thresholds.consumer_lag, float(lag)))
        out = [self._observe(sid, metric, threshold, now, value) for sid, metric, threshold, value in values]
        return [a for a in out if a is not None]

    async def consumer_lags(self) -> dict[str, int]:
        """Total lag (end offset - committed offset) of each watched group over its topics.

        Uses a non-joining consumer per group (FindCoordinator + OffsetFetch, which every broker we
        run on serves; Tansu cannot answer the admin API's ListGroups/OffsetFetch variants).
        """
        lags: dict[str, int] = {}
        for group, topics in self.groups.items():
            try:
                consumer = self._group_consumers.get(group)
                if consumer is None:
                    consumer = AIOKafkaConsumer(
                        **client_options(self.settings.kafka), group_id=group, enable_auto_commit=False
                    )
                    await consumer.start()
                    self._group_consumers[group] = consumer
                known = await consumer.topics()
                tps = [
                    TopicPartition(t, p) for t in topics if t in known for p in consumer.partitions_for_topic(t) or ()
                ]
                if not tps:
                    continue
                ends = await log_end_offsets(self.settings.kafka, tps)
                lag = 0
                for tp in tps:
                    committed = await consumer.committed(tp)
                    lag += max(0, ends[tp] - (committed or 0))
                lags[group] = lag
            except KafkaError as exc:
                log.warning("consumer lag of %s unavailable: %s", group, exc)
        return lags

    async def stop(self) -> None:
        for consumer in self._group_consumers.values():
            await consumer.stop()
        self._group_consumers.clear()


def process_memory() -> int:
    """Resident memory of this process plus every other ``marketprism`` process of this user."""
    me = psutil.Process()
    total = me.memory_info().rss
    for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
        if proc.info["pid"] == me.pid or not proc.info["memory_info"]:
            continue
        if any("marketprism" in part for part in proc.info["cmdline"] or ()):
            total += proc.info["memory_info"].rss
    return total
