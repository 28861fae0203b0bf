"""The aggregation Faust app: wiring only (agents, table, timer); behaviour lives in the workers.

- ``aggregator-bars``: ``md.trades.v1`` + ``md.bbo.v1`` (co-partitioned) in batches
  (``take_events``) -> :class:`~pipeline.aggregation.worker.BarWorker` -> ``md.bars.1s.v1``,
  ``md.bars.1m.v1``, ``ops.dlq.v1``; partition state in the ``bar-state`` table (one changelog
  value per input partition, written after the bars it closed were delivered).
- ``aggregator-feeds``: the internal summary topic + ``ops.feed_metrics.v1`` ->
  :class:`~pipeline.aggregation.feeds.FeedsWorker` -> ``ops.feed_metrics.v1`` (aggregator),
  ``md.reference.v1``.
- a timer (``tick_s``) closes quiet partitions' windows and ships/publishes the per-second records.

Faust's own windowed tables are not used: they expire on wall-clock time (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faust.types import TP, TableT

from pipeline.aggregation.feeds import FEED_METRICS_TOPIC, FeedsWorker
from pipeline.aggregation.health import FeedHealthTracker
from pipeline.aggregation.reference import ReferenceTracker
from pipeline.aggregation.windows import WindowPolicy
from pipeline.aggregation.worker import SUMMARY_TOPIC, BarWorker, Outputs, incoming, wall_clock_us
from pipeline.contracts import load_registry
from pipeline.kafka import RecordProducer, make_producer
from pipeline.kafka.clients import client_options
from pipeline.kafka.faust_app import create_app
from pipeline.settings import Settings

log = logging.getLogger(__name__)

APP_ID = "aggregator"
SUMMARY_PARTITIONS = 3  # as ops.feed_metrics.v1: both keyed exchange:stream, so co-partitioned


@dataclass(frozen=True)
class AggregatorConfig:
    policy: WindowPolicy = field(default_factory=WindowPolicy)
    batch_max: int = 10_000
    batch_within_s: float = 0.05
    tick_s: float = 1.0
    commit_interval_s: float = 1.0
    health_settle_us: int = 2_000_000
    stale_after_us: int = 5_000_000
    max_divergence_bps: float = 50.0


class TableStore:
    """Partition states in a Faust table: local value plus a changelog record on the same partition."""

    def __init__(self, table: TableT[Any, Any]):
        self.table = table

    @staticmethod
    def key(partition: int) -> bytes:
        return str(partition).encode()

    def get(self, partition: int) -> bytes | None:
        value = self.table.data.get(self.key(partition))
        return value if isinstance(value, bytes) else None

    def put(self, partition: int, value: bytes) -> None:
        key = self.key(partition)
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value, key_serializer="raw", value_serializer="raw")


async def ensure_internal_topics(settings: Settings) -> None:
    """Create the internal summary topic (idempotent)."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        name = settings.topic(SUMMARY_TOPIC)
        if name not in set(await admin.list_topics()):
            topic = NewTopic(name, SUMMARY_PARTITIONS, 1, topic_configs={"retention.ms": "3600000"})
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


def build_app(
    settings: Settings,
    config: AggregatorConfig | None = None,
    clock: Callable[[], int] = wall_clock_us,
    **overrides: Any,
) -> faust.App:
    config = config or AggregatorConfig()
    registry = load_registry()
    partitions = registry.get("md.trades.v1").partitions
    if registry.get("md.bbo.v1").partitions != partitions:
        raise ValueError("md.trades.v1 and md.bbo.v1 must have the same partition count (co-partitioned)")
    options: dict[str, Any] = {
        "topic_partitions": partitions,
        "broker_commit_interval": config.commit_interval_s,
        "broker_max_poll_records": config.batch_max,
        "stream_buffer_maxsize": max(4096, config.batch_max * 2),
        "producer_max_request_size": 16 * 1024 * 1024,
    }
    app = create_app(settings, APP_ID, **(options | overrides))
    trades_topic, bbo_topic = settings.topic("md.trades.v1"), settings.topic("md.bbo.v1")
    summary_topic = settings.topic(SUMMARY_TOPIC)
    table = app.Table("bar-state", partitions=partitions, key_type=bytes, value_type=bytes)
    outputs = Outputs(lambda: RecordProducer(make_producer(settings.kafka), settings.topic_prefix))

    def assignment() -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment()}

    def highwater(topic: str, partition: int) -> int | None:
        try:
            return app.consumer.highwater(TP(topic, partition))  # type: ignore[no-any-return]
        except (AssertionError, KeyError, AttributeError):  # not assigned / consumer not started
            return None

    bars_worker = BarWorker(
        outputs,
        TableStore(table),
        config.policy,
        trades_topic,
        bbo_topic,
        clock=clock,
        assignment=assignment,
        highwater=highwater,
    )
    feeds_worker = FeedsWorker(
        outputs,
        clock,
        FeedHealthTracker(config.health_settle_us),
        ReferenceTracker(config.stale_after_us, config.max_divergence_bps),
    )

    @app.agent(app.topic(trades_topic, bbo_topic), name="aggregator-bars")
    async def bars(stream: faust.StreamT) -> None:
        async for events in stream.take_events(config.batch_max, config.batch_within_s):  # type: ignore[attr-defined]
            await bars_worker.process(incoming(events))

    @app.agent(app.topic(summary_topic, settings.topic(FEED_METRICS_TOPIC)), name="aggregator-feeds")
    async def feeds(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if event.message.topic == summary_topic:
                await feeds_worker.on_summary(event.message.value)
            else:
                await feeds_worker.on_feed_metrics(event.message.value)

    @app.timer(interval=config.tick_s)
    async def tick() -> None:
        await bars_worker.tick()
        await feeds_worker.tick()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(sender: object, revoked: set[Any], **kwargs: Any) -> None:
        gone = sorted(tp.partition for tp in revoked if tp.topic == trades_topic)
        log.info("aggregator revoked %s partitions %s", trades_topic, gone)
        bars_worker.forget(gone)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(sender: object, assigned: set[Any], **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == trades_topic)
        log.info("aggregator assigned %s partitions %s", trades_topic, mine)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def shutdown(sender: object, **kwargs: Any) -> None:
        await outputs.stop()

    app.bars_worker = bars_worker  # type: ignore[attr-defined]
    return app
