"""The bounded hand-off from websocket readers to the Kafka producer.

Readers never wait on the broker: :meth:`Output.record`, :meth:`Output.dead` and
:meth:`Output.metric` put into a bounded queue without blocking, and a full queue drops the item,
counts it (``marketprism_collector_queue_overflow_total{kind}``) and logs (at most once per 5 s); the runtime
reports each dropped record as a gap of its stream in ``ops.feed_metrics.v1``. A dropped book change would
leave every consumer rebuilding that book from ``md.book.v1`` silently wrong, so it marks the book broken
(``marketprism_collector_books_broken_total``): its further deltas are not published (``kind="book_suppressed"``)
until a snapshot replaces it, either the venue's own or the one the runtime builds from the collector's book
(``resync=True``), which is exact because the collector applied the change it could not publish. One pump
task drains the queue into the :class:`~pipeline.kafka.RecordProducer` (batched, zstd, keyed
``exchange:symbol``); when the broker is away the pump waits and retries the producer start with
backoff, and data flows again when the broker returns.

Trades also go to ``md.trade_batches.v1`` (:class:`~pipeline.contracts.TradeBatch`, for consumers
that pay per record, like the Faust aggregation worker). Each trade is published alone at once, as
before, and added to its market's pending batch; a market's batch is published when it has waited
``batch_linger_s`` since that market's previous batch (so a market sends at most one batch per
linger: a market that was quiet for that long sends at once, adding no latency when idle, while under
load its batch grows with the trade rate and bounds the record rate), or when it holds ``max_batch``
trades. Every trade published to ``md.trades.v1`` is in exactly one batch, after the same dedup, in
the same per-market order. ``drain`` publishes pending batches too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from pipeline.backoff import Backoff
from pipeline.collectors.base import TOPIC_OF
from pipeline.collectors.metrics import BOOKS_BROKEN, OVERFLOW, QUEUE_DEPTH
from pipeline.contracts import BookUpdate, FeedMetrics, Record, Trade, TradeBatch, encode, market_key
from pipeline.contracts.topics import FEED_METRICS, TRADE_BATCHES
from pipeline.kafka import DeadLetterPublisher, RecordProducer

log = logging.getLogger(__name__)

FEED_METRICS_TOPIC = FEED_METRICS.name
TRADE_BATCHES_TOPIC = TRADE_BATCHES.name
DLQ_SOURCE = "collector"
MARKET_KEYS = 65_536  # market keys remembered (symbols are few; the bound guards odd venue output)
DEPTH_EVERY = 256  # the queue-depth gauge is set at least every this many items, and whenever the queue empties


@dataclass(frozen=True, slots=True)
class _Dead:
    reason: str
    error: str
    payload: str | bytes
    exchange: str


_Item = tuple[str, bytes, bytes, Trade | None] | _Dead  # (topic, key, value, the trade when it is one)


class Output:
    def __init__(
        self,
        producer: RecordProducer,
        maxsize: int = 100_000,
        backoff: Backoff | None = None,
        max_batch: int = 1000,
        batch_linger_s: float = 0.02,
    ):
        self.producer = producer
        self.max_batch = max_batch
        self.batch_linger_s = batch_linger_s
        self.batches = 0
        self._pending: dict[bytes, list[Trade]] = {}  # market key -> trades waiting for its next batch
        self._last_batch: dict[bytes, float] = {}  # market key -> monotonic time of its last batch
        self._due = float("inf")  # when the earliest pending batch is due
        self._undone = 0  # items taken from the queue whose task_done waits for the pending batches
        self.dlq = DeadLetterPublisher(producer, DLQ_SOURCE)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize)
        self._backoff = backoff or Backoff(0.5, 10.0)
        self.overflowed = 0
        self.sent = 0
        self._last_overflow_log = 0.0
        self._started = False
        self._keys: dict[tuple[str, str], bytes] = {}  # (exchange, symbol) -> market key
        # (exchange, symbol) of books whose published stream lost a change: no delta until a snapshot
        self.broken_books: set[tuple[str, str]] = set()

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
        """Queue one market-data record (``value``: its encoding, when already made) keyed ``exchange:symbol``;
        False when it was not queued (the queue is full, or it is a delta of a broken book)."""
        market = (record.exchange, record.symbol)  # type: ignore[attr-defined]
        book = type(record) is BookUpdate
        if book and self.broken_books and market in self.broken_books and record.kind != "snapshot":  # type: ignore[attr-defined]
            OVERFLOW.labels("book_suppressed").inc()
            return False
        key = self._keys.get(market)
        if key is None:
            if len(self._keys) >= MARKET_KEYS:
                self._keys.clear()
            key = self._keys[market] = market_key(*market)
        item: _Item = (
            TOPIC_OF[type(record)],
            key,
            encode(record) if value is None else value,
            record if type(record) is Trade else None,
        )
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if not book:
                return self._put(item, "record")  # counts and logs the overflow
            if market not in self.broken_books:
                self.broken_books.add(market)
                BOOKS_BROKEN.labels(market[0]).inc()
                log.warning("%s %s: a book change could not be queued; book marked broken until a snapshot", *market)
            return self._put(item, "book")
        if book and self.broken_books and record.kind == "snapshot":  # type: ignore[attr-defined]
            self.broken_books.discard(market)
        return True

    def metric(self, record: FeedMetrics) -> bool:
        key = f"{record.exchange}:{record.stream}".encode()
        return self._put((FEED_METRICS_TOPIC, key, encode(record), None), "metric")

    def dead(self, reason: str, error: str, payload: str | bytes, exchange: str) -> bool:
        return self._put(_Dead(reason, error, payload, exchange), "dead_letter")

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def has_room(self) -> bool:
        return not self._queue.full()

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
        linger = self.batch_linger_s
        send_raw = self.producer.send_raw
        count = 0
        while True:
            item: _Item | None = None
            try:  # take what is waiting without a coroutine per item
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                QUEUE_DEPTH.set(0)
                if not self._pending:
                    item = await queue.get()
                else:  # wait for an item at most until a batch is due
                    wait = self._due - time.monotonic()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            item = await asyncio.wait_for(queue.get(), wait)
            if item is not None:
                count += 1
                if count >= DEPTH_EVERY:
                    count = 0
                    QUEUE_DEPTH.set(queue.qsize())
                if type(item) is tuple:
                    await send_raw(item[0], item[1], item[2])
                    self.sent += 1
                    self._undone += 1
                    if item[3] is not None:
                        await self._add_to_batch(item[1], item[3], linger)
                else:
                    await self._send(item)
                    self._undone += 1
            if self._pending:
                now = time.monotonic()
                if now >= self._due:
                    await self._publish_due(now, linger)
            if not self._pending:  # everything taken so far is with the producer, batches included
                for _ in range(self._undone):
                    queue.task_done()
                self._undone = 0

    async def _add_to_batch(self, key: bytes, trade: Trade, linger: float) -> None:
        pending = self._pending.get(key)
        if pending is not None and pending[0].raw_symbol != trade.raw_symbol:
            await self._send_batch(key, self._pending.pop(key))  # keep the market's order
            pending = None
        if pending is None:
            pending = self._pending[key] = []
            self._due = min(self._due, self._last_batch.get(key, -linger) + linger)
        pending.append(trade)
        if len(pending) >= self.max_batch:
            await self._send_batch(key, self._pending.pop(key))
            self._last_batch[key] = time.monotonic()

    async def _publish_due(self, now: float, linger: float) -> None:
        due = float("inf")
        for key in list(self._pending):
            at = self._last_batch.get(key, -linger) + linger
            if at <= now:
                await self._send_batch(key, self._pending.pop(key))
                self._last_batch[key] = now
            else:
                due = min(due, at)
        self._due = due
        if len(self._last_batch) > 4 * len(self._pending) + 10_000:  # forget long-quiet markets
            self._last_batch = {k: v for k, v in self._last_batch.items() if now - v < linger}

    async def _send(self, item: _Item) -> None:
        if isinstance(item, _Dead):
            await self.dlq.publish(item.reason, item.error, item.payload, exchange=item.exchange)
        else:
            await self.producer.send_raw(item[0], item[1], item[2])
        self.sent += 1

    async def _send_batch(self, key: bytes, trades: list[Trade]) -> None:
        await self.producer.send_raw(TRADE_BATCHES_TOPIC, key, encode(TradeBatch.of(trades)))
        self.batches += 1

    async def drain(self) -> None:
        """Wait until everything queued so far (batches included) was handed to the producer, then flush it."""
        await self._queue.join()
        if self._started:
            await self.producer.flush()

    async def stop(self) -> None:
        if self._started:
            await self.producer.stop()
            self._started = False
