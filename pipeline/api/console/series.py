"""The anomaly view's data: which series exist, a series' recent values read back from its topic, and a replay of
the anomaly detector over them with other settings (what it would have flagged).

Values come from the topics the anomaly worker reads (``md.bars.1s.v1`` / ``md.bars.1m.v1``,
``ops.feed_metrics.v1``, ``md.reference.v1``): the last ``tail`` records of each partition are read with a
consumer of no group (bounded; nothing is committed), the records of the series kept and turned into
observations by :mod:`pipeline.anomaly.registry`'s public feature functions, exactly as the worker does. The
replay runs a fresh :class:`~pipeline.anomaly.ensemble.SeriesDetector` (score-then-learn) over them, off the
event loop. It works with or without ClickHouse (the demo's chdb database is held by the sink).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from pipeline.anomaly.ensemble import DetectorConfig, SeriesDetector
from pipeline.anomaly.registry import (
    FROZEN,
    METRIC_POLICY,
    Observation,
    bar_observations,
    feed_observations,
    reference_observations,
)
from pipeline.api.views import LiveViews
from pipeline.contracts import decoder_for, load_registry, topics
from pipeline.contracts.records import Bar, FeedMetrics, Record, ReferencePrice
from pipeline.kafka import make_consumer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_POINTS = 3_000  # a replay scores at most this many of the newest points of the range
DETECTORS = ("robust", "predictive", "hst", "seasonal")
FEED_METRICS = {"lag_p99_s": "feed_lag_p99_s", "rate": "feed_rate", "staleness_s": "feed_staleness_s"}
BAR_METRICS = ("log_return", "volume", "trade_count", "spread_bps")
_FEED = re.compile(r"^([a-z0-9_]+):(.+):(collector|aggregator):(lag_p99_s|rate|staleness_s)$")
_BAR = re.compile(r"^([a-z0-9_]+):([A-Z0-9-]+):(1s|1m):(log_return|volume|trade_count|spread_bps)$")
_DIVERGENCE = re.compile(r"^([a-z0-9_]+):([A-Z0-9-]+):divergence_bps$")


class SeriesError(ValueError):
    """The series cannot be replayed (unknown shape, or its topic could not be read); the message says why."""


@dataclass(frozen=True)
class SeriesSource:
    series_id: str
    metric: str  # the registry's metric name (the key of METRIC_POLICY)
    topic: str
    record_type: type[Record]
    match: dict[str, str]


def parse_series(series_id: str) -> SeriesSource:
    """Which topic and records feed ``series_id``; :class:`SeriesError` for a series that cannot be replayed."""
    if m := _FEED.match(series_id):
        exchange, stream, source, name = m.groups()
        match = {"exchange": exchange, "stream": stream, "source": source}
        return SeriesSource(series_id, FEED_METRICS[name], topics.FEED_METRICS.name, FeedMetrics, match)
    if m := _BAR.match(series_id):
        exchange, symbol, interval, name = m.groups()
        return SeriesSource(
            series_id, name, topics.BAR_TOPICS[interval].name, Bar, {"exchange": exchange, "symbol": symbol}
        )
    if m := _DIVERGENCE.match(series_id):
        exchange, symbol = m.groups()
        return SeriesSource(series_id, "divergence_bps", topics.REFERENCE.name, ReferencePrice, {})
    if series_id.endswith(f":{FROZEN}"):
        raise SeriesError("frozen-price runs are scored by the run-length detector, which has no settings to replay")
    raise SeriesError(
        "not a replayable series: <venue>:<stream>:<collector|aggregator>:<lag_p99_s|rate|staleness_s>, "
        "<venue>:<SYMBOL>:<1s|1m>:<log_return|volume|trade_count|spread_bps> or <venue>:<SYMBOL>:divergence_bps"
    )


def known_series(views: LiveViews) -> list[str]:
    """Series the console offers: those with anomalies, every feed stream's metrics, every market's bar metrics."""
    found = {sid for sid in views.anomalies.latest if not sid.startswith("health:") and not sid.endswith(FROZEN)}
    for (exchange, stream, source), metrics in views.feeds.latest.items():
        for obs in feed_observations(metrics):
            found.add(obs.series_id)
        del exchange, stream, source
    for market, interval in views.markets.bars:
        found.update(f"{market}:{interval}:{name}" for name in BAR_METRICS)
    return sorted(found)


def _observations(source: SeriesSource, records: list[Any]) -> list[Observation]:
    out: list[Observation] = []
    if source.record_type is FeedMetrics:
        for m in sorted(records, key=lambda r: r.ts_event):
            out += [o for o in feed_observations(m) if o.series_id == source.series_id]
    elif source.record_type is Bar:
        prev: str | None = None
        for bar in sorted(records, key=lambda r: r.window_end):
            out += [o for o in bar_observations(bar, prev) if o.series_id == source.series_id]
            prev = bar.close
    else:
        for ref in sorted(records, key=lambda r: r.ts_event):
            out += [obs for _, _, obs in reference_observations(ref) if obs.series_id == source.series_id]
    return out


def _accepts(source: SeriesSource, record: Any) -> bool:
    return all(str(getattr(record, name)) == value for name, value in source.match.items())


async def read_tail(settings: Settings, topic_name: str, convert: Callable[[bytes], list[T]], tail: int) -> list[T]:
    """``convert`` applied to the last ``tail`` records of each partition of ``topic_name`` (a registry name);
    values it refuses (raising ``ValueError``) are skipped. :class:`SeriesError` when the topic cannot be read."""
    topic = settings.topic(topic_name)
    partitions = [TopicPartition(topic, p) for p in range(load_registry().get(topic_name).partitions)]
    out: list[T] = []
    try:
        ends = await log_end_offsets(settings.kafka, partitions)
        pending = {tp: end for tp, end in ends.items() if end > 0}
        if not pending:
            return []
        consumer = make_consumer(settings.kafka, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(list(pending))
            for tp, end in pending.items():
                consumer.seek(tp, max(0, end - tail))
            async with asyncio.timeout(60):
                while pending:
                    batch = await consumer.getmany(*pending, timeout_ms=500, max_records=5_000)
                    for tp, messages in batch.items():
                        for message in messages:
                            if message.value is not None:
                                try:
                                    out += convert(message.value)
                                except ValueError:  # msgspec.DecodeError and the sources' BadInput are ValueErrors
                                    continue
                        if messages and messages[-1].offset + 1 >= pending[tp]:
                            del pending[tp]
        finally:
            await consumer.stop()
    except (KafkaError, OSError, TimeoutError) as exc:
        raise SeriesError(f"{topic_name} could not be read: {type(exc).__name__}") from None
    return out


async def read_series(settings: Settings, series_id: str, tail: int = 20_000) -> list[Observation]:
    """The series' observations in the last ``tail`` records of each partition of its topic (time order)."""
    source = parse_series(series_id)
    decoder = decoder_for(source.record_type)

    def convert(value: bytes) -> list[Any]:
        record = decoder.decode(value)
        return [record] if _accepts(source, record) else []

    return _observations(source, await read_tail(settings, source.topic, convert, tail))


@dataclass(frozen=True)
class ReplaySettings:
    """The detector settings a person may change (the rest stay as the worker runs them)."""

    warmup: int = 150
    report_floor: float = 0.475
    z_half: float = 5.0
    refractory: int = 100
    min_effect: float | None = None  # None: the metric's policy
    detectors: tuple[str, ...] = DETECTORS

    def config(self, metric: str) -> DetectorConfig:
        policy = dict(METRIC_POLICY.get(metric, {}))
        if self.min_effect is not None:
            policy = {"min_effect": self.min_effect, "min_effect_rel": 0.0}
        return replace(
            DetectorConfig(**policy),
            warmup=self.warmup,
            report_floor=self.report_floor,
            z_half=self.z_half,
            refractory=self.refractory,
            detectors=self.detectors,
        )


@dataclass
class Replay:
    series_id: str
    metric: str
    settings: ReplaySettings
    points: list[Observation]
    scores: list[float] = field(default_factory=list)
    bands: list[tuple[float | None, float | None]] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)  # indexes of points at or above the report floor
    detectors: list[str] = field(default_factory=list)


def replay(series_id: str, metric: str, points: list[Observation], settings: ReplaySettings) -> Replay:
    """Score-then-learn a fresh detector over ``points`` with ``settings`` (CPU-bound: run it in a thread)."""
    detector = SeriesDetector(settings.config(metric))
    out = Replay(series_id, metric, settings, points[-MAX_POINTS:])
    for n, obs in enumerate(out.points):
        scored = detector.update(obs.value, obs.ts_event / 1e6)
        out.scores.append(min(1.0, max(0.0, scored.score)))
        out.bands.append((scored.lower, scored.upper))
        out.detectors.append(scored.detector)
        if scored.score >= settings.report_floor:
            out.flagged.append(n)
    return out


def in_range(points: list[Observation], minutes: int) -> list[Observation]:
    """The points of the last ``minutes`` before the newest one."""
    if not points:
        return []
    newest = points[-1].ts_event
    return [p for p in points if p.ts_event >= newest - minutes * 60_000_000]
