"""The Faust worker: agents scoring bars and feed metrics, checkpoint tables, and the health forecaster.

- ``bars`` agent: ``md.bars.1s.v1`` + ``md.bars.1m.v1`` -> one detector per series -> ``ops.anomalies.v1``.
- ``feed`` agent: ``ops.feed_metrics.v1`` -> feed lag/rate/staleness detectors, and feed lag forecasts.
- ``reference`` agent: ``md.reference.v1`` -> one divergence detector per venue x symbol.
- ``dlq`` agent: subscribes ``ops.dlq.v1`` so that exactly one worker owns its partition 0, which makes it
  the one that samples the cluster-wide health series (DLQ rate from end offsets, consumer lag).
- a timer samples the health series this worker owns (cluster-wide ones as above; process memory and disk
  of the host by the holder of the host lock) and publishes time-to-threshold forecasts
  (:mod:`pipeline.anomaly.health`).

Model state lives in three Faust tables (one per source topic family) checkpointed by
:class:`~pipeline.anomaly.checkpoint.Checkpointer` (sealed: a forged or corrupt checkpoint is refused, dead-lettered
and its series starts cold). Every input the worker cannot use goes to ``ops.dlq.v1`` and the agent goes on:
``undecodable`` records, and ``processing_error`` for a record that decodes but makes scoring raise (counted in
``marketprism_anomaly_poison_records_total``; its series state is dropped so the next record starts it again
from its checkpoint, never retried forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from mode import Service

from pipeline.anomaly.checkpoint import Checkpointer
from pipeline.anomaly.ensemble import DetectorConfig
from pipeline.anomaly.health import HealthMonitor, HealthThresholds
from pipeline.anomaly.registry import SeriesRegistry, SeriesState
from pipeline.clock import from_settings
from pipeline.contracts import Anomaly, Bar, DecodeError, FeedMetrics, decoder_for
from pipeline.contracts.records import ReferencePrice
from pipeline.contracts.topics import ANOMALIES, BARS_1M, BARS_1S, DLQ, FEED_METRICS, REFERENCE
from pipeline.kafka import DeadLetterPublisher, RecordProducer, make_record_producer
from pipeline.kafka.faust_app import create_app, table_topic_configs
from pipeline.kafka.sealed import sealer_for
from pipeline.observability.metrics import counter
from pipeline.settings import Settings

log = logging.getLogger(__name__)

APP_ID = "anomaly"
SCORED = counter("anomaly_points_total", "Series points scored and learned", ["source"])
PUBLISHED = counter("anomaly_published_total", "Anomaly and forecast records published", ["kind"])
POISON = counter("anomaly_poison_records_total", "Decoded records whose processing raised (dead-lettered)", ["source"])


@dataclass(frozen=True)
class WorkerOptions:
    config: DetectorConfig = field(default_factory=DetectorConfig)
    report_floor: float = 0.475
    checkpoint_every: int = 300
    checkpoint_interval_s: float = 120.0
    health_interval_s: float = 10.0
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    watch_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # other groups' lag: group -> topics


class Outputs:
    """The worker's aiokafka producer for anomalies and dead letters (started once, by the first agent)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._producer: RecordProducer | None = None
        self._dlq: DeadLetterPublisher | None = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> None:
        """Create and start the producer inside the worker's event loop (idempotent)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._producer is None:
                producer = make_record_producer(self.settings.kafka, self.settings.topic_prefix)
                await producer.start()
                self._producer = producer
                self._dlq = DeadLetterPublisher(producer, source="anomaly")

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    @property
    def producer(self) -> RecordProducer:
        assert self._producer is not None, "Outputs.start() runs before the first record"
        return self._producer

    @property
    def dlq(self) -> DeadLetterPublisher:
        assert self._dlq is not None, "Outputs.start() runs before the first record"
        return self._dlq

    async def publish(self, anomalies: list[Anomaly]) -> None:
        for anomaly in anomalies:
            await self.producer.send(ANOMALIES.name, anomaly.series_id.encode(), anomaly)
            PUBLISHED.labels(kind=anomaly.kind).inc()


def build_app(settings: Settings, options: WorkerOptions, **overrides: Any) -> faust.App:
    """The anomaly worker's Faust app with its agents, tables and health timer."""
    # Faust's default 16 KiB producer batches are kept on purpose: a ~13 KiB checkpoint then travels alone in its
    # record batch, and Faust's table recovery reads a changelog up to the ListOffsets end, which Tansu reports as
    # the base offset of the last batch + 1 (docs/development.md): with larger batches a restarted worker recovered
    # checkpoints older than the last one.
    app = create_app(settings, APP_ID, **overrides)
    outputs = Outputs(settings)
    bars_topic_names = (settings.topic(BARS_1S.name), settings.topic(BARS_1M.name))
    bars_topic = app.topic(*bars_topic_names)
    feed_topic = app.topic(settings.topic(FEED_METRICS.name))
    dlq_topic = app.topic(settings.topic(DLQ.name))
    reference_topic = app.topic(settings.topic(REFERENCE.name))
    changelog = table_topic_configs(settings)  # min.insync.replicas of the environment
    bar_table = app.Table("bar-models", partitions=6, key_type=bytes, value_type=bytes, extra_topic_configs=changelog)
    feed_table = app.Table("feed-models", partitions=3, key_type=bytes, value_type=bytes, extra_topic_configs=changelog)
    sealer = sealer_for(settings, "anomaly-series-state")
    bar_ckpt = Checkpointer(bar_table, sealer, options.checkpoint_every, options.checkpoint_interval_s)
    feed_ckpt = Checkpointer(feed_table, sealer, options.checkpoint_every, options.checkpoint_interval_s)
    reference_table = app.Table(
        "reference-models", partitions=3, key_type=bytes, value_type=bytes, extra_topic_configs=changelog
    )
    reference_ckpt = Checkpointer(reference_table, sealer, options.checkpoint_every, options.checkpoint_interval_s)
    bar_registry = SeriesRegistry(options.config, options.report_floor, loader=bar_ckpt.load)
    feed_registry = SeriesRegistry(options.config, options.report_floor, loader=feed_ckpt.load)
    reference_registry = SeriesRegistry(options.config, options.report_floor, loader=reference_ckpt.load)
    dlq_name = dlq_topic.get_topic_name()
    sources = [
        bars_topic_names[0],
        bars_topic_names[1],
        feed_topic.get_topic_name(),
        dlq_name,
        reference_topic.get_topic_name(),
    ]
    clock = from_settings(settings.clock)  # pipeline time stamps the health samples (taken every wall interval)
    health = HealthMonitor(
        settings,
        options.thresholds,
        groups={app.conf.id: sources, **options.watch_groups},
        clock=lambda: clock.now_us() / 1e6,
    )

    async def dead_letter(event: faust.EventT, exc: Exception, reason: str = "undecodable") -> None:
        message = event.message
        await outputs.dlq.publish(
            reason,
            str(exc),
            event.value or b"",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )

    async def refused_checkpoints(checkpointer: Checkpointer, changelog: str) -> None:
        """Dead-letter the checkpoints the last records' series refused to restore (the payload is the record's
        hex, cut by the publisher: a forged pickle is never decoded, not even as text)."""
        while checkpointer.refused:
            series_id, blob, exc = checkpointer.refused.pop(0)
            await outputs.dlq.publish(exc.reason, f"{series_id}: {exc}", blob[:4096].hex(), topic=changelog)

    def scoring_agent(
        topic: faust.TopicT,
        source: str,
        decode: Callable[[bytes], Any],
        score: Callable[[Any], tuple[list[Anomaly], list[SeriesState]]],
        checkpointer: Checkpointer,
        registry: SeriesRegistry,
        table: faust.types.TableT[Any, Any],
        extra: Callable[[Any], list[Anomaly]] = lambda _: [],
    ) -> None:
        """One agent: decode each record (dead-letter what does not decode), score and learn it, publish, checkpoint.
        A record whose scoring raises is dead-lettered and the agent goes on with the next one."""
        changelog = table.changelog_topic.get_topic_name()

        async def agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            await outputs.start()
            async for event in stream.events():
                try:
                    record = decode(event.value or b"")
                except DecodeError as exc:
                    await dead_letter(event, exc)
                    continue
                try:
                    anomalies, touched = score(record)
                    anomalies += extra(record)
                except Exception as exc:  # a poison record: dead letter, the series it touched start again
                    POISON.labels(source=source).inc()
                    log.exception("%s record at offset %s raised while scoring", source, event.message.offset)
                    registry.forget_touched()
                    await refused_checkpoints(checkpointer, changelog)
                    await dead_letter(event, RuntimeError(f"{type(exc).__name__}: {exc}"), "processing_error")
                    continue
                await refused_checkpoints(checkpointer, changelog)
                SCORED.labels(source=source).inc(len(touched))
                await outputs.publish(anomalies)
                for state in touched:
                    checkpointer.maybe_save(state)
                yield None

        app.agent(topic, name=source)(agent)

    scoring_agent(bars_topic, "bars", decoder_for(Bar).decode, bar_registry.on_bar, bar_ckpt, bar_registry, bar_table)
    scoring_agent(
        feed_topic,
        "feed_metrics",
        decoder_for(FeedMetrics).decode,
        feed_registry.on_feed_metrics,
        feed_ckpt,
        feed_registry,
        feed_table,
        extra=health.on_feed_metrics,
    )
    scoring_agent(
        reference_topic,
        "reference",
        decoder_for(ReferencePrice).decode,
        reference_registry.on_reference,
        reference_ckpt,
        reference_registry,
        reference_table,
    )

    @app.agent(dlq_topic)
    async def dlq(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for _ in stream.events():  # the records are counted from end offsets by the partition-0 owner
            yield None

    @app.timer(options.health_interval_s)
    async def sample_health() -> None:
        await outputs.start()
        owns_cluster = any(tp.topic == dlq_name and tp.partition == 0 for tp in app.assignor.assigned_actives())
        await outputs.publish(await health.sample(cluster=owns_cluster))

    @app.service
    class _OutputsService(Service):
        async def on_stop(self) -> None:
            await health.stop()
            await outputs.stop()

    return app
