"""The consumer loop: a consumer group over the topics, batches by rows, bytes and time, writes through
a sink, commits offsets only after the write (and any dead letters) are durable.

- Backpressure (the sink raised :class:`SinkBackpressureError`): pause every assigned partition, drop
  the buffers (memory stays bounded), seek back to the committed offsets, wait ``retry_after`` while
  still polling (the group keeps us), then learn what the database already holds and resume.
- Assignment (start, rebalance): a new partition is paused until the sink has learned which offsets
  from the committed one on it already stored (a previous owner was killed between insert and
  commit), so it skips them; revocation flushes and commits first.
- Records the sink cannot convert go to ``ops.dlq.v1`` (DeadLetterPublisher) and the batch goes on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from pipeline.kafka import DeadLetterPublisher, make_consumer, make_record_producer
from pipeline.settings import Settings
from pipeline.sinks import metrics
from pipeline.sinks.base import BatchingSink, Checkpoint, DeadRecord, SinkBackpressureError

log = logging.getLogger(__name__)

DLQ_SOURCE = "sink.clickhouse"
GROUP = "marketprism-sink"


def tune_gc() -> None:
    """A sink process holds tens of thousands of decoded records per batch; with CPython's default
    thresholds (a young collection every 700 allocations) the collector walks them again and again,
    about 1 us per row. Collect every 50,000 allocations instead, and take what is alive at start-up
    (modules, the engine's bindings) out of its way. Called by ``marketprism sink`` and the bench."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def default_group_id(settings: Settings) -> str:
    """The sink's consumer group under the settings' topic prefix, as every component names its group."""
    return f"{settings.topic_prefix}{GROUP}"


@dataclass(frozen=True)
class RunnerOptions:
    group_id: str | None = None  # None: :func:`default_group_id`
    batch_rows: int = 50_000
    batch_interval_s: float = 1.0
    max_buffer_bytes: int = 64 * 1024 * 1024
    poll_ms: int = 200


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: SinkRunner):
        self._runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._runner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._runner.on_assigned(set(assigned))


class SinkRunner:
    """Drives one sink from a consumer group until ``stop`` is set."""

    def __init__(self, settings: Settings, sink: BatchingSink, topics: list[str], options: RunnerOptions):
        self.settings = settings
        self.sink = sink
        self.topics = topics
        self.options = options
        self.consumer: AIOKafkaConsumer | None = None
        self._producer = make_record_producer(settings.kafka, settings.topic_prefix)
        self._dlq = DeadLetterPublisher(self._producer, DLQ_SOURCE)
        self._lock = asyncio.Lock()
        self._resume_at: float | None = None
        self._backoff_failures = 0
        self._pending_since: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._to_recover: set[TopicPartition] = set()
        self.committed_batches = 0
        self.group_id = options.group_id or default_group_id(settings)

    async def run(self, stop: asyncio.Event) -> None:
        await self.sink.setup()
        await self._producer.start()
        consumer = self.consumer = make_consumer(
            self.settings.kafka, group_id=self.group_id, max_partition_fetch_bytes=4 * 1024 * 1024
        )
        consumer.subscribe(topics=self.topics, listener=_Listener(self))
        await consumer.start()
        log.info("sink consuming %d topic(s) as group %s", len(self.topics), self.group_id)
        try:
            while not stop.is_set():
                if self._resume_at is not None:
                    await self._paused_poll()
                    continue
                if self._to_recover:
                    await self._recover_assigned()
                    continue
                data = await consumer.getmany(timeout_ms=self.options.poll_ms, max_records=self.options.batch_rows)
                self._add(data)
                if self._due():
                    await self.flush_and_commit()
            if self._resume_at is None:
                await self.flush_and_commit(wait=True)
        finally:
            await consumer.stop()
            await self._producer.stop()
            await self.sink.close()

    def _add(self, data: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        for tp, messages in data.items():
            metrics.CONSUMED.labels(topic=tp.topic).inc(len(messages))
            skipped = self.sink.skipped
            self.sink.add_batch(tp.topic, tp.partition, [m.offset for m in messages], [m.value for m in messages])
            if self.sink.skipped != skipped:
                metrics.SKIPPED.labels(topic=tp.topic).inc(self.sink.skipped - skipped)
        if self._pending_since is None and self.sink.pending:
            self._pending_since = time.monotonic()
        metrics.BUFFERED_ROWS.set(self.sink.buffered_rows)

    def _due(self) -> bool:
        if (
            self.sink.buffered_rows >= self.options.batch_rows
            or self.sink.buffered_bytes >= self.options.max_buffer_bytes
        ):
            return True
        return (
            self._pending_since is not None and time.monotonic() - self._pending_since >= self.options.batch_interval_s
        )

    async def flush_and_commit(self, *, wait: bool = False) -> None:
        """Detach the buffers and write them in the background while the next batch is read; the
        previous write finishes (and commits) first, so commits stay in order and at most two batches
        are held. ``wait`` also waits for this write. Backpressure pauses consumption instead."""
        async with self._lock:
            await self._drain()
            if self._resume_at is None and self.sink.pending:
                self._inflight = asyncio.create_task(self._write_and_commit(self.sink.checkpoint()))
                self._pending_since = None
                metrics.BUFFERED_ROWS.set(0)
            if wait:
                await self._drain()

    async def _drain(self) -> None:
        if self._inflight is None:
            return
        task, self._inflight = self._inflight, None
        try:
            await task
        except SinkBackpressureError as exc:
            await self._enter_backpressure(exc)

    async def _write_and_commit(self, checkpoint: Checkpoint) -> None:
        started = time.perf_counter()
        await self.sink.write_checkpoint(checkpoint)
        await self._publish_dead(checkpoint.dead)
        await self._commit(checkpoint.offsets)
        self._backoff_failures = 0
        metrics.FLUSH_SECONDS.observe(time.perf_counter() - started)
        await self._update_lag()

    async def _publish_dead(self, dead: list[DeadRecord]) -> None:
        for d in dead:
            metrics.DEAD.labels(topic=d.topic, reason=d.reason).inc()
            await self._dlq.publish(d.reason, d.error, d.value, topic=d.topic, partition=d.partition, offset=d.offset)
        if dead:
            await self._producer.flush()
            log.warning("sent %d record(s) to ops.dlq.v1: %s", len(dead), dict(Counter(d.reason for d in dead)))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        owned = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not owned:
            return
        try:
            await self.consumer.commit(owned)
        except (CommitFailedError, KafkaError) as exc:
            # The rows are stored; whoever reads these partitions next skips them (recovery).
            log.warning("commit failed after a successful write (%s); the next owner will skip stored rows", exc)
            return
        self.committed_batches += 1
        metrics.COMMITS.inc()

    async def _update_lag(self) -> None:
        assert self.consumer is not None
        lag: Counter[str] = Counter()
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag[tp.topic] += max(0, highwater - await self.consumer.position(tp))
        for topic, value in lag.items():
            metrics.LAG.labels(topic=topic).set(value)

    async def _enter_backpressure(self, exc: SinkBackpressureError) -> None:
        assert self.consumer is not None
        self._backoff_failures += 1
        delay = min(exc.retry_after * self._backoff_failures, 30.0)
        log.warning("ClickHouse unavailable (%s); pausing consumption for %.1fs", exc.reason, delay)
        metrics.BACKPRESSURE.inc()
        metrics.PAUSED.set(1)
        assigned = self.consumer.assignment()
        self.consumer.pause(*assigned)
        self.sink.on_paused()
        self._pending_since = None
        metrics.BUFFERED_ROWS.set(0)
        for tp in assigned:
            await self._seek_committed(tp)
        self._resume_at = time.monotonic() + delay

    async def _seek_committed(self, tp: TopicPartition) -> None:
        assert self.consumer is not None
        committed = await self.consumer.committed(tp)
        if committed is None:
            await self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, committed)

    async def _paused_poll(self) -> None:
        """Keep polling (group membership) with every partition paused; resume when the wait is over."""
        assert self.consumer is not None and self._resume_at is not None
        self.consumer.pause(*self.consumer.assignment())
        await self.consumer.getmany(timeout_ms=self.options.poll_ms)
        if time.monotonic() < self._resume_at:
            return
        assigned = self.consumer.assignment()
        async with self._lock:
            self._resume_at = None
            self._to_recover = set()
            try:
                await self._recover(assigned)
            except SinkBackpressureError as exc:
                await self._enter_backpressure(exc)
                return
        metrics.PAUSED.set(0)
        self.consumer.resume(*assigned)
        log.info("resumed consumption of %d partition(s)", len(assigned))

    async def _recover(self, partitions: set[TopicPartition]) -> None:
        assert self.consumer is not None
        for tp in partitions:
            committed = await self.consumer.committed(tp)
            found = await self.sink.recover(tp, committed or 0)
            if found:
                log.info(
                    "%s[%d]: %d record(s) after offset %s are already stored; skipping them",
                    tp.topic,
                    tp.partition,
                    found,
                    committed,
                )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._resume_at is None:
            await self.flush_and_commit(wait=True)
        self.sink.forget(revoked)
        self._to_recover -= revoked

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Pause new partitions at once; the loop recovers them (learns what is stored) before resuming,
        so no record of theirs is buffered before the sink knows what to skip."""
        assert self.consumer is not None
        self.consumer.pause(*assigned)
        self._to_recover |= assigned

    async def _recover_assigned(self) -> None:
        assert self.consumer is not None
        partitions = self._to_recover & self.consumer.assignment()
        self._to_recover = set()
        async with self._lock:
            try:
                await self._recover(partitions)
            except SinkBackpressureError as exc:
                await self._enter_backpressure(exc)
                return
        self.consumer.resume(*partitions)
