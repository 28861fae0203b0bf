"""Pipeline health series and their time-to-threshold forecasts (failure prediction).

Series: feed lag per stream and feed error rate per stream (from ``ops.feed_metrics.v1``), the DLQ
rate (records on ``ops.dlq.v1`` per second), consumer-group lag (committed vs end offsets of the watched groups,
from the broker), resident memory of our processes and disk use of the state directory (psutil). Each has a
:class:`~pipeline.anomaly.forecasting.ThresholdForecast`; when a crossing is predicted within the
horizon, an ``Anomaly(kind="forecast", time_to_threshold_s=...)`` is published, its score the
urgency ``1 - seconds / horizon`` so a rule can fire before the breach.

Each series is produced once however many workers run: feed series by the worker owning the feed
record's partition; the cluster-wide series (DLQ rate from the DLQ topic's end offsets, consumer-group
lag) by the worker owning partition 0 of ``ops.dlq.v1``; the host series (``health:<host>:memory_bytes``,
``health:<host>:disk_percent``) by the one worker per host and broker/prefix holding :class:`HostLock`.

Start-up ramps and short histories forecast nothing: a series learns nothing during its first ``warmup_s`` (from
its first sample: the producer connecting, a worker working off its start-up backlog, this monitor's first DLQ
reading), then predicts no crossing before it spans ``min_history_s`` of learnt history nor further ahead than
that history (``max_extrapolation``); the memory series also waits until every process of the deployment is
``memory_warmup_s`` old (a restarted process ramps up again).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.anomaly.forecasting import ThresholdForecast
from pipeline.contracts import Anomaly, FeedMetrics
from pipeline.contracts.topics import DLQ
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
    # A process's resident memory climbs while it starts (imports, caches, consumer buffers): no trend is learnt
    # from the memory series until the youngest process of the deployment is this old.
    memory_warmup_s: float = 120.0
    # Every series: nothing learnt in its first warmup_s, no crossing before min_history_s of learnt history, none
    # further ahead than max_extrapolation x that history.
    warmup_s: float = 30.0
    min_history_s: float = 60.0
    max_extrapolation: float = 1.0


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


class HostLock:
    """An advisory lock per host and deployment (broker + topic prefix): its holder reports the host series.

    ``flock`` is released by the kernel when the holder dies, so another worker on the host takes over at its
    next sample."""

    def __init__(self, settings: Settings, directory: Path | None = None):
        key = f"{settings.kafka.bootstrap_servers}|{settings.topic_prefix}".encode()
        name = f"marketprism-anomaly-host-{os.getuid()}-{hashlib.sha256(key).hexdigest()[:16]}.lock"
        self.path = (directory or Path(tempfile.gettempdir())) / name
        self._fd: int | None = None

    def held(self) -> bool:
        """Whether this process holds the lock (tries to take it when not)."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HealthMonitor:
    """Keeps one forecaster per health series and turns predicted crossings into forecast records."""

    def __init__(
        self,
        settings: Settings,
        thresholds: HealthThresholds,
        groups: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
        host_lock: HostLock | None = None,
    ):
        self.settings = settings
        self.groups = dict(groups or {})
        self.thresholds = thresholds
        self.clock = clock
        self.forecasters: dict[str, ThresholdForecast] = {}
        self.host = socket.gethostname()
        self.host_lock = host_lock or HostLock(settings)
        self._last_sample: float | None = None
        self._last_dlq_end: int | None = None
        self._group_consumers: dict[str, AIOKafkaConsumer] = {}
        self._first_seen: dict[str, float] = {}  # series id -> time of its first sample (its warm-up's start)

    def _forecaster(self, series_id: str, threshold: float) -> ThresholdForecast:
        f = self.forecasters.get(series_id)
        if f is None:
            f = self.forecasters[series_id] = ThresholdForecast(
                threshold,
                horizon_steps=self.thresholds.horizon_steps,
                min_history_s=self.thresholds.min_history_s,
                max_extrapolation=self.thresholds.max_extrapolation,
            )
        return f

    def _observe(
        self, series_id: str, metric: str, threshold: float, t_s: float, value: float, **meta: str | None
    ) -> Anomaly | None:
        first = self._first_seen.setdefault(series_id, t_s)
        if t_s - first < self.thresholds.warmup_s:  # its producer's start-up ramp: learn nothing from it
            return None
        f = self._forecaster(series_id, threshold)
        f.learn_one(t_s, value)
        horizon_s = (f.step_s or 0.0) * self.thresholds.horizon_steps
        return forecast_record(series_id, metric, f, int(t_s * 1e6), horizon_s, **meta)

    def on_feed_metrics(self, m: FeedMetrics) -> list[Anomaly]:
        t_s = m.ts_event / 1e6
        base = f"health:{m.exchange}:{m.stream}:{m.source}"
        out = []
        if m.lag_p99_us is not None:  # a negative lag is clock skew (event stamped ahead of receipt), not lag
            out.append(
                self._observe(
                    f"{base}:feed_lag_s",
                    "feed_lag_s",
                    self.thresholds.feed_lag_s,
                    t_s,
                    max(0, m.lag_p99_us) / 1e6,
                    exchange=m.exchange,
                    stream=m.stream,
                )
            )
        errors = m.parse_errors + m.gaps + m.checksum_failures
        out.append(
            self._observe(
                f"{base}:feed_errors_per_s",
                "feed_errors_per_s",
                self.thresholds.feed_errors_per_s,
                t_s,
                errors / (m.interval_us / 1e6),
                exchange=m.exchange,
                stream=m.stream,
            )
        )
        return [a for a in out if a is not None]

    async def sample(self, cluster: bool = True) -> list[Anomaly]:
        """One sample of the health series this worker owns (called by the worker's timer): the host series
        when it holds the host lock, the cluster-wide ones (DLQ rate, consumer lag) when ``cluster``."""
        now = self.clock()
        values: list[tuple[str, str, float, float]] = []
        if self.host_lock.held():
            memory_series = f"health:{self.host}:memory_bytes"
            memory = process_memory()
            if memory.youngest_age_s < self.thresholds.memory_warmup_s:
                self.forecasters.pop(memory_series, None)  # a start-up ramp is not a trend: learn after it
                self._first_seen.pop(memory_series, None)
            else:
                values.append((memory_series, "memory_bytes", self.thresholds.memory_bytes, float(memory.rss_bytes)))
            disk = psutil.disk_usage(str(self.settings.state_dir if self.settings.state_dir.exists() else "."))
            values.append(
                (f"health:{self.host}:disk_percent", "disk_percent", self.thresholds.disk_percent, disk.percent)
            )
        if cluster:
            dlq_end = await self.dlq_end()
            if dlq_end is not None:
                if self._last_dlq_end is not None and self._last_sample is not None and now > self._last_sample:
                    rate = max(0, dlq_end - self._last_dlq_end) / (now - self._last_sample)
                    values.append(("health:dlq_per_s", "dlq_per_s", self.thresholds.dlq_per_s, rate))
                self._last_dlq_end = dlq_end
                self._last_sample = now
            for group, lag in (await self.consumer_lags()).items():
                values.append(
                    (f"health:consumer_lag:{group}", "consumer_lag", self.thresholds.consumer_lag, float(lag))
                )
        else:
            self._last_dlq_end = self._last_sample = None  # another worker owns them now
        out = [self._observe(sid, metric, threshold, now, value) for sid, metric, threshold, value in values]
        return [a for a in out if a is not None]

    async def dlq_end(self) -> int | None:
        """Records ever written to ``ops.dlq.v1`` (sum of its partitions' end offsets), None when unavailable."""
        topic = self.settings.topic(DLQ.name)
        try:
            consumer = await self._consumer(None)
            partitions = consumer.partitions_for_topic(topic) if topic in await consumer.topics() else None
            if not partitions:
                return None
            ends = await log_end_offsets(self.settings.kafka, [TopicPartition(topic, p) for p in partitions])
        except KafkaError as exc:
            log.warning("DLQ end offsets unavailable: %s", exc)
            return None
        return sum(ends.values())

    async def _consumer(self, group: str | None) -> AIOKafkaConsumer:
        key = group or ""
        consumer = self._group_consumers.get(key)
        if consumer is None:
            consumer = AIOKafkaConsumer(**client_options(self.settings.kafka), group_id=group, enable_auto_commit=False)
            await consumer.start()
            self._group_consumers[key] = consumer
        return consumer

    async def consumer_lags(self) -> dict[str, int]:
        """Total lag (end offset - committed offset) of each watched group over its topics.

        Uses a non-joining consumer per group (FindCoordinator + OffsetFetch, which every broker we
        run on serves; Tansu cannot answer the admin API's ListGroups/OffsetFetch variants).
        """
        lags: dict[str, int] = {}
        for group, topics in self.groups.items():
            try:
                consumer = await self._consumer(group)
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
        self.host_lock.release()


# The environment variables that tell one deployment's processes from another's on the same host (the demo and
# the test harness give every run its own state directory and config; production pods run one process each).
DEPLOYMENT_ENV = ("MARKETPRISM_STATE_DIR", "MARKETPRISM_CONFIG", "MARKETPRISM_TOPIC_PREFIX")


@dataclass(frozen=True)
class MemorySample:
    rss_bytes: int
    youngest_age_s: float  # age of the youngest process counted (this one included)


def _deployment(environ: Mapping[str, str]) -> tuple[str | None, ...]:
    return tuple(environ.get(name) for name in DEPLOYMENT_ENV)


def process_memory(now_s: float | None = None) -> MemorySample:
    """Resident memory of this process plus every other ``marketprism`` process of this user that belongs to
    the same deployment (same state directory, config and topic prefix in its environment). Counting every
    ``marketprism`` process of the user made another run on the same machine (a second demo, a test suite)
    look like this deployment's memory climbing toward its limit."""
    now_s = time.time() if now_s is None else now_s
    me = psutil.Process()
    ours = _deployment(os.environ)
    total = me.memory_info().rss
    youngest = now_s - me.create_time()
    for proc in psutil.process_iter(["pid", "cmdline", "memory_info", "create_time"]):
        if proc.info["pid"] == me.pid or not proc.info["memory_info"]:
            continue
        if not any("marketprism" in part for part in proc.info["cmdline"] or ()):
            continue
        try:
            if _deployment(proc.environ()) != ours:
                continue
        except psutil.Error:  # gone, or not ours to read
            continue
        total += proc.info["memory_info"].rss
        youngest = min(youngest, now_s - proc.info["create_time"])
    return MemorySample(total, max(0.0, youngest))
