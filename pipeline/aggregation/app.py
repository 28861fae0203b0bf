"""The aggregation Faust app: wiring only (agents, table, timer); behaviour lives in the workers.

- ``aggregator-bars``: ``md.trade_batches.v1`` + ``md.bbo.v1`` (co-partitioned) in batches
  (``take_events``) -> :class:`~pipeline.aggregation.worker.BarWorker` -> ``md.bars.1s.v1``,
  ``md.bars.1m.v1``, ``ops.dlq.v1``; partition state in the ``bar-state-batches`` table (one
  changelog value per input partition, written after the bars it closed were delivered). One Faust
  event carries a collector's batch of trades of one market: Faust's per-record cost is paid per
  batch, not per trade (docs/aggregation.md). ``md.trades.v1`` is not read here.
- ``aggregator-feeds``: the internal summary topic + ``ops.feed_metrics.v1`` ->
  :class:`~pipeline.aggregation.feeds.FeedsWorker` -> ``ops.feed_metrics.v1`` (aggregator),
  ``md.reference.v1``.
- a timer (``tick_s``) closes quiet partitions' windows and ships/publishes the per-second records.

Faust's own windowed tables are not used: they expire on wall-clock time (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faust.types import TP, TableT
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from pipeline.aggregation.errors import PartitioningError
from pipeline.aggregation.feeds import FEED_METRICS_TOPIC, FeedsWorker
from pipeline.aggregation.health import FeedHealthTracker
from pipeline.aggregation.outputs import Outputs
from pipeline.aggregation.reference import ReferenceTracker
from pipeline.aggregation.shipping import SUMMARY_TOPIC
from pipeline.aggregation.state import last_values
from pipeline.aggregation.windows import WindowPolicy
from pipeline.aggregation.worker import BarWorker, incoming, wall_clock_us
from pipeline.contracts import load_registry
from pipeline.contracts.topics import AGGREGATOR_SUMMARIES, BBO
from pipeline.contracts.topics import TRADE_BATCHES as TRADE_BATCHES_TOPIC
from pipeline.kafka import make_producer, make_record_producer
from pipeline.kafka.clients import client_options, make_consumer
from pipeline.kafka.faust_app import create_app
from pipeline.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

APP_ID = "aggregator"
TRADE_BATCHES = TRADE_BATCHES_TOPIC.name
STATE_TABLE = "bar-state-batches"  # offsets of TRADE_BATCHES, JSON states (was "bar-state": md.trades.v1, msgpack)
STATE_MAX_BYTES = 16 * 1024 * 1024  # one partition state (open windows and their trade ids) per record
SUMMARY_PARTITIONS = AGGREGATOR_SUMMARIES.partitions  # as ops.feed_metrics.v1 (co-partitioned): registry.yaml


@dataclass(frozen=True)
class AggregatorConfig:
    policy: WindowPolicy = field(default_factory=WindowPolicy)
    batch_max: int = 10_000
    batch_within_s: float = 0.01  # take_events wait: 50 ms cost ~25 ms of bar latency on average (2026-11-22)
    tick_s: float = 1.0
    commit_interval_s: float = 1.0
    fetch_max_wait_ms: int = 20  # Faust hard-codes 1500; Tansu answers a waiting fetch only at its end (was 100)
    checkpoint_s: float = 0.5  # a partition state is written at most this often (records commit after it)
    health_settle_us: int = 2_000_000
    stale_after_us: int = 5_000_000  # a venue whose mids stopped arriving this long (pipeline time) is stale
    max_trail_us: int = 60_000_000  # ... or whose latest mid trails the asset's newest by more (not waited for)
    max_wait_us: int = 600_000_000  # a venue whose worker reports unread BBOs is waited for up to this far behind
    max_divergence_bps: float = 50.0
    reference_lagging_after_us: int = 30_000_000  # a reference this far behind pipeline time is counted + logged


class TableStore:
    """Partition states on the Faust table's changelog: one record per state on partition *p*, key *p*.

    The worker writes the changelog itself with its own producer and waits for the broker's
    acknowledgement before it releases the records the state covers for commit. Faust's own path
    (``send_changelog``) buffers the record and Faust's pre-commit flush of that buffer gives up after
    0.1 s without progress, so on a loaded machine Faust committed offsets whose state was not yet
    on the broker: a restart or a new owner then skipped records (bars short of trades). States are
    read back from the changelog too (its last record per partition, read to the true end:
    :mod:`pipeline.aggregation.state`), not from the table Faust recovered, which on Tansu misses the
    last versions written before a crash.
    """

    def __init__(self, table: TableT[Any, Any], kafka: KafkaSettings):
        self.table = table
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    @staticmethod
    def key(partition: int) -> bytes:
        return str(partition).encode()

    async def load(self, partitions: Sequence[int]) -> dict[int, bytes | None]:
        topic = self.table.changelog_topic.get_topic_name()
        values = await last_values(self.kafka, [TopicPartition(topic, p) for p in partitions])
        return {tp.partition: value for tp, value in values.items()}

    async def save(self, states: dict[int, bytes]) -> bool:
        if self._producer is None:
            producer = make_producer(self.kafka, max_request_size=STATE_MAX_BYTES)
            await producer.start()
            self._producer = producer
        topic = self.table.changelog_topic.get_topic_name()
        try:
            futures = [
                await self._producer.send(topic, value, key=self.key(p), partition=p) for p, value in states.items()
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        except KafkaError as exc:
            log.error("state write to %s failed: %s", topic, exc)
            return False
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.error("state write to %s failed: %s", topic, failed[0])
            return False
        for p, value in states.items():
            self.table.data[self.key(p)] = value
        return True

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


class EndOffsets:
    """ListOffsets(latest) through one long-lived consumer (no group), started on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def get(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        if self._consumer is None:
            consumer = make_consumer(self.settings.kafka, group_id=None)
            await consumer.start()
            self._consumer = consumer
        async with asyncio.timeout(10):
            ends = await self._consumer.end_offsets([TopicPartition(t, p) for t, p in partitions])
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def start(self, topic: str, partition: int) -> int:
        """The first offset the partition still holds (ListOffsets earliest)."""
        if self._consumer is None:
            consumer = make_consumer(self.settings.kafka, group_id=None)
            await consumer.start()
            self._consumer = consumer
        tp = TopicPartition(topic, partition)
        async with asyncio.timeout(10):
            return int((await self._consumer.beginning_offsets([tp]))[tp])

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()


async def ensure_internal_topics(settings: Settings, wait_s: float = 300.0) -> None:
    """Create the internal summary topic (idempotent), waiting up to ``wait_s`` for an unreachable broker.

    A worker (re)started while the broker is away waits for it instead of exiting: a chaos round that
    dropped the broker's connections while a killed worker was restarting found it dead (exit 1).
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type((KafkaError, OSError)),
        wait=wait_exponential_jitter(initial=0.2, max=5.0),
        stop=stop_after_delay(wait_s),
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            await _create_internal_topics(settings)


def _log_retry(state: RetryCallState) -> None:
    log.warning("broker unreachable (%s); retrying", state.outcome.exception() if state.outcome else None)


async def _create_internal_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    try:
        await admin.start()
        name = settings.topic(SUMMARY_TOPIC)
        if name not in set(await admin.list_topics()):
            topic = NewTopic(
                name, SUMMARY_PARTITIONS, 1, topic_configs={"retention.ms": str(AGGREGATOR_SUMMARIES.retention_ms)}
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


def shorten_fetch_wait(app: faust.App, wait_ms: int) -> None:
    """Set the fetch long-poll wait of Faust's aiokafka consumer (Faust hard-codes 1,500 ms).

    Tansu does not answer a waiting Fetch when records arrive, only when the wait ends, so with
    Faust's value a record produced while the worker waits reaches it up to 1.5 s later (bar latency
    p50 ~0.8 s, p99 ~1.4 s at 10k trades/s). On Kafka a shorter wait only means more empty fetches.
    """
    try:
        app.consumer._thread._ensure_consumer()._fetcher._fetch_max_wait_ms = wait_ms  # type: ignore[attr-defined]
    except AttributeError as exc:  # another transport or Faust version: keep its default, say so
        log.warning("cannot set the consumer's fetch wait (%s)", exc)


def build_app(
    settings: Settings,
    config: AggregatorConfig | None = None,
    clock: Callable[[], int] = wall_clock_us,
    **overrides: Any,
) -> faust.App:
    config = config or AggregatorConfig()
    registry = load_registry()
    partitions = registry.get(TRADE_BATCHES).partitions
    if registry.get(BBO.name).partitions != partitions:
        raise PartitioningError(f"{TRADE_BATCHES} and {BBO.name} must have the same partition count (co-partitioned)")
    options: dict[str, Any] = {
        "topic_partitions": partitions,
        "broker_commit_interval": config.commit_interval_s,
        "broker_max_poll_records": config.batch_max,
        "stream_buffer_maxsize": max(4096, config.batch_max * 2),
        "producer_max_request_size": STATE_MAX_BYTES,
        "stream_wait_empty": False,  # records wait for their checkpoint, not for a rebalance
    }
    app = create_app(settings, APP_ID, **(options | overrides))
    trades_topic, bbo_topic = settings.topic(TRADE_BATCHES), settings.topic(BBO.name)
    summary_topic = settings.topic(SUMMARY_TOPIC)
    table = app.Table(STATE_TABLE, partitions=partitions, key_type=bytes, value_type=bytes)
    outputs = Outputs(lambda: make_record_producer(settings.kafka, settings.topic_prefix))
    store = TableStore(table, settings.kafka)

    def assignment() -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment()}

    def highwater(topic: str, partition: int) -> int | None:
        try:
            return app.consumer.highwater(TP(topic, partition))  # type: ignore[no-any-return]
        except (AssertionError, KeyError, AttributeError):  # not assigned / consumer not started
            return None

    offsets_reader = EndOffsets(settings)

    async def seek(topic: str, partition: int, offset: int) -> None:
        # on the consumer's own thread (Faust runs aiokafka in a thread of its own): Faust's ``seek`` calls
        # aiokafka's from this one, and the fetcher, dropping the partition's buffered records, raced its own
        # drain (KeyError in fetched_records, the worker crashed); ``seek_wait`` hands it to that thread
        await app.consumer.seek_wait({TP(topic, partition): offset})

    bars_worker = BarWorker(
        outputs,
        store,
        config.policy,
        trades_topic,
        bbo_topic,
        clock=clock,
        assignment=assignment,
        highwater=highwater,
        checkpoint_us=int(config.checkpoint_s * 1_000_000),
        end_offsets=offsets_reader.get,
        seek=seek,
        log_start=offsets_reader.start,
    )
    feeds_worker = FeedsWorker(
        outputs,
        clock,
        FeedHealthTracker(config.health_settle_us),
        ReferenceTracker(
            config.stale_after_us,
            config.max_divergence_bps,
            config.reference_lagging_after_us,
            config.max_trail_us,
            max_wait_us=config.max_wait_us,
        ),
    )

    @app.agent(app.topic(trades_topic, bbo_topic), name="aggregator-bars")
    async def bars(stream: faust.StreamT) -> None:
        async for events in stream.take_events(config.batch_max, config.batch_within_s):  # type: ignore[attr-defined]
            await bars_worker.process(incoming(events, app.consumer))

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
        shorten_fetch_wait(app, config.fetch_max_wait_ms)
        mine = sorted(tp.partition for tp in assigned if tp.topic == trades_topic)
        log.info("aggregator assigned %s partitions %s", trades_topic, mine)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def shutdown(sender: object, **kwargs: Any) -> None:
        await outputs.stop()
        await offsets_reader.stop()
        await store.stop()

    app.bars_worker = bars_worker  # type: ignore[attr-defined]
    return app
