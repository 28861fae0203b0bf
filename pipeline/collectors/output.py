"""The bounded hand-off from websocket readers to the Kafka producer.

Readers never wait on the broker: :meth:`Output.record`, :meth:`Output.dead` and
:meth:`Output.metric` put into a bounded queue without blocking, and a full queue drops the item,
counts it (``marketprism_collector_queue_overflow_total``) and logs (at most once per 5 s). One pump
task drains the queue into the :class:`~pipeline.kafka.RecordProducer` (batched, zstd, keyed
``exchange:symbol``); when the broker is away the pump waits and retries the producer start with
backoff, and data flows again when the broker returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from pipeline.collectors.backoff import Backoff
from pipeline.collectors.base import TOPIC_OF
from pipeline.collectors.metrics import OVERFLOW, QUEUE_DEPTH
from pipeline.contracts import FeedMetrics, Record, encode, market_key
from pipeline.kafka import DeadLetterPublisher, RecordProducer

log = logging.getLogger(__name__)

FEED_METRICS_TOPIC = "ops.feed_metrics.v1"
DLQ_SOURCE = "collector"


@dataclass(frozen=True, slots=True)
class _Dead:
    reason: str
    error: str
    payload: str | bytes
    exchange: str


_Item = tuple[str, bytes, bytes] | _Dead


class Output:
    def __init__(self, producer: RecordProducer, maxsize: int = 100_000, backoff: Backoff | None = None):
        self.producer = producer
        self.dlq = DeadLetterPublisher(producer, DLQ_SOURCE)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize)
        self._backoff = backoff or Backoff(0.5, 10.0)
        self.overflowed = 0
        self.sent = 0
        self._last_overflow_log = 0.0
        self._started = False

    def _put(self, item: _Item, kind: str) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed += 1
            OVERFLOW.labels(kind).inc()
            now = time.monotonic()
            if now - self._last_overflow_log > 5.0:
                self._last_overflow_log = now
                log.error("producer queue full (%d items): dropped %d so far", self._queue.maxsize, self.overflowed)
            return False
        return True

    def record(self, record: Record, value: bytes | None = None) -> bool:
        """Queue one market-data record (``value``: its encoding, when already made) keyed ``exchange:symbol``."""
        key = market_key(record.exchange, record.symbol)  # type: ignore[attr-defined]
        return self._put((TOPIC_OF[type(record)], key, encode(record) if value is None else value), "record")

    def metric(self, record: FeedMetrics) -> bool:
        key = f"{record.exchange}:{record.stream}".encode()
        return self._put((FEED_METRICS_TOPIC, key, encode(record)), "metric")

    def dead(self, reason: str, error: str, payload: str | bytes, exchange: str) -> bool:
        return self._put(_Dead(reason, error, payload, exchange), "dead_letter")

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _start(self) -> None:
        while True:
            try:
                await self.producer.start()
            except (KafkaError, OSError) as exc:
                delay = self._backoff.next_delay()
                log.error("Kafka producer cannot start (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            else:
                self._backoff.reset()
                self._started = True
                return

    async def run(self) -> None:
        """Drain the queue into the producer until cancelled."""
        await self._start()
        queue = self._queue
        while True:
            item = await queue.get()
            QUEUE_DEPTH.set(queue.qsize())
            if isinstance(item, _Dead):
                await self.dlq.publish(item.reason, item.error, item.payload, exchange=item.exchange)
            else:
                topic, key, value = item
                await self.producer.send_raw(topic, key, value)
            self.sent += 1
            queue.task_done()

    async def drain(self) -> None:
        """Wait until everything queued so far was handed to the producer, then flush it."""
        await self._queue.join()
        if self._started:
            await self.producer.flush()

    async def stop(self) -> None:
        if self._started:
            await self.producer.stop()
            self._started = False
