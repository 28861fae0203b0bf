"""Live views: materialised state folded from the topics, one owner per view (the only thing routes read).

Each view folds one kind of record into a dict keyed like its topic. :class:`ViewReader` owns one aiokafka
consumer assigned every partition of the topics it reads (no consumer group: every replica of the API reads
everything, so replicas need no coordination), rebuilds the views at start and keeps them current. The
compacted state topics (``ops.alerts.v1``, ``ops.silences.v1``) are read from their beginning; the
high-volume ones (market data, feed health, anomalies) from ``tail`` records before each partition's end,
since only their latest state (or a bounded recent window) is served. The reader is *caught up* once each
partition reached the end it had when the reader started: that is ``/readyz``.

Changes after catch-up are handed to an :class:`~pipeline.api.events.EventBus` (alert changes, anomalies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from pipeline.api.events import EventBus
from pipeline.contracts import decoder_for, load_registry
from pipeline.contracts.records import Alert, Anomaly, Bar, Bbo, FeedMetrics, Record, ReferencePrice, Silence
from pipeline.contracts.topics import ALERTS, ANOMALIES, BARS_1M, BARS_1S, BBO, FEED_METRICS, REFERENCE, SILENCES
from pipeline.kafka import make_consumer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.observability.metrics import counter, gauge
from pipeline.settings import Settings

log = logging.getLogger(__name__)

UNDECODABLE = counter("api_view_undecodable_total", "Records a live view could not decode (skipped)", ["topic"])
VIEW_RECORDS = counter("api_view_records_total", "Records folded into the API's live views", ["topic"])
VIEW_CAUGHT_UP = gauge("api_views_caught_up", "1 once the live views reached the log ends they had at start")

ACTIVE_STATES = frozenset({"pending", "firing", "acked", "silenced", "flapping"})


class AlertsView:
    """Current state per fingerprint of the compacted ``ops.alerts.v1`` (the highest version wins)."""

    def __init__(self) -> None:
        self.by_fingerprint: dict[str, Alert] = {}
        self.generation = 0  # bumped on every change (cache key for rendered lists)

    def apply(self, alert: Alert) -> bool:
        current = self.by_fingerprint.get(alert.fingerprint)
        if current is not None and (alert.version < current.version or alert == current):
            return False
        self.by_fingerprint[alert.fingerprint] = alert
        self.generation += 1
        return True


class SilencesView:
    """Current version per silence id of the compacted ``ops.silences.v1`` (topic order: the last one wins)."""

    def __init__(self) -> None:
        self.by_id: dict[str, Silence] = {}

    def apply(self, silence: Silence) -> bool:
        if self.by_id.get(silence.silence_id) == silence:
            return False
        self.by_id[silence.silence_id] = silence
        return True


class AnomaliesView:
    """The most recent anomalies and forecasts (bounded) and the latest one per series."""

    def __init__(self, keep: int) -> None:
        self.recent: deque[Anomaly] = deque(maxlen=keep)
        self.latest: dict[str, Anomaly] = {}

    def apply(self, anomaly: Anomaly) -> bool:
        self.recent.append(anomaly)
        current = self.latest.get(anomaly.series_id)
        if current is None or anomaly.ts_event >= current.ts_event:
            self.latest[anomaly.series_id] = anomaly
        return True


class FeedHealthView:
    """Latest feed metrics per ``(exchange, stream, source)``."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str, str], FeedMetrics] = {}

    def apply(self, m: FeedMetrics) -> bool:
        key = (m.exchange, m.stream, m.source)
        current = self.latest.get(key)
        if current is None or m.ts_event >= current.ts_event:
            self.latest[key] = m
            return True
        return False

    def venue_scores(self) -> dict[str, float | None]:
        """Each venue's health score: the lowest aggregator ``health_score`` of its streams (None: not scored)."""
        out: dict[str, float | None] = {}
        for (exchange, _stream, source), m in self.latest.items():
            out.setdefault(exchange, None)
            if source == "aggregator" and m.health_score is not None:
                prev = out[exchange]
                out[exchange] = m.health_score if prev is None else min(prev, m.health_score)
        return out


class MarketView:
    """Latest BBO, 1 s and 1 m bar per ``exchange:symbol`` and the latest reference price per asset."""

    def __init__(self) -> None:
        self.bbo: dict[str, Bbo] = {}
        self.bars: dict[tuple[str, str], Bar] = {}  # (market, interval)
        self.reference: dict[str, ReferencePrice] = {}

    def apply_bbo(self, b: Bbo) -> bool:
        key = f"{b.exchange}:{b.symbol}"
        if (current := self.bbo.get(key)) is None or b.ts_event >= current.ts_event:
            self.bbo[key] = b
        return False

    def apply_bar(self, b: Bar) -> bool:
        key = (f"{b.exchange}:{b.symbol}", b.interval)
        if (current := self.bars.get(key)) is None or b.window_end >= current.window_end:
            self.bars[key] = b
        return False

    def apply_reference(self, r: ReferencePrice) -> bool:
        if (current := self.reference.get(r.asset)) is None or r.ts_event >= current.ts_event:
            self.reference[r.asset] = r
        return False

    def markets(self) -> list[str]:
        return sorted(set(self.bbo) | {market for market, _ in self.bars})


@dataclass
class LiveViews:
    """Every live view of one API process."""

    alerts: AlertsView = field(default_factory=AlertsView)
    silences: SilencesView = field(default_factory=SilencesView)
    anomalies: AnomaliesView = field(default_factory=lambda: AnomaliesView(5_000))
    feeds: FeedHealthView = field(default_factory=FeedHealthView)
    markets: MarketView = field(default_factory=MarketView)


@dataclass(frozen=True)
class _Source:
    topic: str  # registry name
    record_type: type[Record]
    from_beginning: bool
    apply: Callable[[Any], bool]
    event: str | None = None  # the stream event kind a change becomes


def _sources(views: LiveViews) -> list[_Source]:
    return [
        _Source(ALERTS.name, Alert, True, views.alerts.apply, "alert"),
        _Source(SILENCES.name, Silence, True, views.silences.apply, "silence"),
        _Source(ANOMALIES.name, Anomaly, False, views.anomalies.apply, "anomaly"),
        _Source(FEED_METRICS.name, FeedMetrics, False, views.feeds.apply),
        _Source(BBO.name, Bbo, False, views.markets.apply_bbo),
        _Source(BARS_1S.name, Bar, False, views.markets.apply_bar),
        _Source(BARS_1M.name, Bar, False, views.markets.apply_bar),
        _Source(REFERENCE.name, ReferencePrice, False, views.markets.apply_reference),
    ]


class ViewReader:
    """Rebuilds the live views from the topics, then keeps them current until stopped."""

    def __init__(self, settings: Settings, views: LiveViews, bus: EventBus, tail: int = 2_000, fetch_wait_ms: int = 50):
        self.settings = settings
        self.views = views
        self.bus = bus
        self.tail = tail
        self.fetch_wait_ms = fetch_wait_ms
        self.caught_up = asyncio.Event()
        self.error: str | None = None  # the last broker error, for /readyz
        registry = load_registry()
        self._by_topic: dict[str, _Source] = {}
        self._partitions: list[TopicPartition] = []
        for source in _sources(views):
            full = settings.topic(source.topic)
            self._by_topic[full] = source
            self._partitions += [TopicPartition(full, p) for p in range(registry.get(source.topic).partitions)]
        self._targets: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}  # next offset per partition, for a reconnect
        self.lag: dict[str, int] = {}  # records each topic was behind its start-time end (while catching up)

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop`` is set; broker errors are logged and retried (the views keep their state)."""
        while not stop.is_set():
            try:
                await self._run(stop)
            except (KafkaError, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("live views: broker error, retrying in 2 s: %s", self.error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

    async def _run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self.settings.kafka, group_id=None, fetch_max_wait_ms=self.fetch_wait_ms)
        await consumer.start()
        try:
            consumer.assign(self._partitions)
            ends = await log_end_offsets(self.settings.kafka, self._partitions)
            if not self._targets:
                self._targets = {tp: end for tp, end in ends.items() if end > 0}
            for tp in self._partitions:
                source = self._by_topic[tp.topic]
                if tp in self._positions:  # a reconnect: go on where this reader was
                    consumer.seek(tp, self._positions[tp])
                elif source.from_beginning:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, max(0, ends[tp] - self.tail))
            self.error = None
            await self._check_caught_up(consumer)
            decoders = {topic: decoder_for(source.record_type) for topic, source in self._by_topic.items()}
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for tp, messages in batch.items():
                    source = self._by_topic[tp.topic]
                    decoder = decoders[tp.topic]
                    applied = 0
                    if messages:
                        self._positions[tp] = messages[-1].offset + 1
                    for message in messages:
                        if message.value is None:
                            continue
                        try:
                            record = decoder.decode(message.value)
                        except msgspec.DecodeError as exc:
                            UNDECODABLE.labels(topic=source.topic).inc()
                            log.warning("%s@%d:%d undecodable: %s", tp.topic, tp.partition, message.offset, exc)
                            continue
                        applied += 1
                        if source.apply(record) and source.event and self.caught_up.is_set():
                            self.bus.publish(source.event, record)
                    if applied:
                        VIEW_RECORDS.labels(topic=source.topic).inc(applied)
                if not self.caught_up.is_set():
                    await self._check_caught_up(consumer)
        finally:
            await consumer.stop()

    async def _check_caught_up(self, consumer: Any) -> None:
        behind: dict[str, int] = {}
        for tp, target in self._targets.items():
            position = await consumer.position(tp)
            if position < target:
                behind[tp.topic] = behind.get(tp.topic, 0) + target - position
        self.lag = {self._by_topic[topic].topic: n for topic, n in behind.items()}
        if not behind:
            self.caught_up.set()
            VIEW_CAUGHT_UP.set(1)
            log.info("live views caught up")
