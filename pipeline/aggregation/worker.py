"""The bar worker: feeds consumed records to each partition's engine and publishes what it closes.

One :class:`BarWorker` per process. For each batch of events (Faust ``take_events``) it decodes the
records, applies them to the partition's :class:`~pipeline.aggregation.engine.PartitionAggregator`,
closes the windows the watermark passed, publishes the bars and *waits for their delivery*, then
writes the partition state to the state store (the Faust table changelog). Faust commits an offset
only after flushing that changelog, so a restarted worker restores a state at or after its committed
offset and skips the replayed records it already counted: bars are emitted at least once and are
identical when emitted again. Bad records (undecodable, non-positive price/size) and late trades go
to ``ops.dlq.v1`` with reason ``decode``, ``invalid`` or ``late``, and are counted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from pipeline.aggregation.bars import EXACT, fmt
from pipeline.aggregation.engine import PartitionAggregator
from pipeline.aggregation.health import FeedStatsCollector
from pipeline.aggregation.reference import asset_of
from pipeline.aggregation.summaries import MidPartial, Summary, encode_summary
from pipeline.aggregation.windows import WindowPolicy
from pipeline.contracts import Bar, Bbo, DecodeError, Trade, decoder_for, market_key
from pipeline.kafka import DeadLetterPublisher, RecordProducer
from pipeline.observability.metrics import counter, gauge

log = logging.getLogger(__name__)

SUMMARY_TOPIC = "marketprism-aggregator-summaries"
BAR_TOPICS = {"1s": "md.bars.1s.v1", "1m": "md.bars.1m.v1"}

RECORDS = counter("aggregation_records_total", "Records applied to bar windows by result", ["stream", "result"])
BARS = counter("aggregation_bars_total", "Bars published", ["interval"])
OPEN_WINDOWS = gauge("aggregation_open_windows", "Open bar windows on this worker")

_trade_decoder = decoder_for(Trade)
_bbo_decoder = decoder_for(Bbo)


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class StateStore(Protocol):
    """Where partition states live (the Faust table; a dict in unit tests)."""

    def get(self, partition: int) -> bytes | None: ...

    def put(self, partition: int, value: bytes) -> None: ...


@dataclass(frozen=True)
class Incoming:
    """One consumed record: its topic (full name), partition, offset and raw value."""

    topic: str
    partition: int
    offset: int
    value: bytes


class Outputs:
    """The worker's producer of contract records and dead letters, created in the running loop on first use."""

    def __init__(self, factory: Callable[[], RecordProducer]):
        self._factory = factory
        self._producer: RecordProducer | None = None
        self._dead_letters: DeadLetterPublisher | None = None

    async def start(self) -> None:
        if self._producer is None:
            producer = self._factory()
            await producer.start()
            self._producer, self._dead_letters = producer, DeadLetterPublisher(producer, "aggregator")

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    @property
    def producer(self) -> RecordProducer:
        assert self._producer is not None, "Outputs.start() first"
        return self._producer

    @property
    def dead_letters(self) -> DeadLetterPublisher:
        assert self._dead_letters is not None, "Outputs.start() first"
        return self._dead_letters


class BarWorker:
    """Applies batches to partition engines, publishes bars, dead letters and summaries."""

    def __init__(
        self,
        outputs: Outputs,
        store: StateStore,
        policy: WindowPolicy,
        trades_topic: str,
        bbo_topic: str,
        clock: Callable[[], int] = wall_clock_us,
        assignment: Callable[[], set[tuple[str, int]]] | None = None,
        highwater: Callable[[str, int], int | None] | None = None,
    ):
        self.outputs = outputs
        self.store = store
        self.policy = policy
        self.trades_topic = trades_topic
        self.bbo_topic = bbo_topic
        self.clock = clock
        self.assignment = assignment
        self.highwater = highwater
        self.engines: dict[int, PartitionAggregator] = {}
        self.feed = FeedStatsCollector()
        self.mids: dict[tuple[str, str], Bbo] = {}
        self._lock = asyncio.Lock()

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop in-memory state of revoked partitions (the next owner restores it from the table)."""
        for partition in partitions:
            self.engines.pop(partition, None)

    def _engine(self, partition: int, now: int) -> PartitionAggregator:
        engine = self.engines.get(partition)
        if engine is None:
            engine = self.engines[partition] = PartitionAggregator.restore(self.store.get(partition), self.policy, now)
        return engine

    async def process(self, batch: Sequence[Incoming]) -> None:
        await self.outputs.start()
        async with self._lock:
            now = self.clock()
            touched: dict[int, PartitionAggregator] = {}
            dead: list[tuple[str, str, Incoming, str | None]] = []
            assigned = self.assignment() if self.assignment is not None else None
            for item in batch:
                if assigned is not None and (item.topic, item.partition) not in assigned:
                    continue  # buffered before a revocation: the new owner processes it
                engine = touched.get(item.partition)
                if engine is None:
                    engine = touched[item.partition] = self._engine(item.partition, now)
                if item.topic == self.trades_topic:
                    try:
                        trade = _trade_decoder.decode(item.value)
                    except DecodeError as exc:
                        dead.append(("decode", f"not a Trade: {exc}", item, None))
                        continue
                    verdict = engine.add_trade(item.offset, trade, now)
                    if verdict != "replayed":
                        self.feed.observe(trade.exchange, "trades", trade.ts_event, trade.ts_recv)
                    if verdict == "late":
                        dead.append(("late", self._late_reason(engine, trade), item, trade.exchange))
                    elif verdict == "invalid":
                        dead.append(("invalid", "price and size must be positive", item, trade.exchange))
                else:
                    try:
                        bbo = _bbo_decoder.decode(item.value)
                    except DecodeError as exc:
                        dead.append(("decode", f"not a Bbo: {exc}", item, None))
                        continue
                    if engine.add_bbo(item.offset, bbo, now) != "replayed":
                        self.feed.observe(bbo.exchange, "bbo", bbo.ts_event, bbo.ts_recv)
                        self.mids[(bbo.exchange, bbo.symbol)] = bbo
            for reason, error, item, exchange in dead:
                await self.outputs.dead_letters.publish(
                    reason, error, item.value, exchange=exchange, topic=item.topic, partition=item.partition,
                    offset=item.offset,
                )  # fmt: skip
            await self._close(touched, now, always_save=True)

    def _late_reason(self, engine: PartitionAggregator, trade: Trade) -> str:
        return (
            f"trade {trade.exchange}:{trade.symbol}:{trade.trade_id} at {trade.ts_event} is beyond the grace period "
            f"(trade watermark {engine.trade_wm.value}, grace {self.policy.grace_us} us)"
        )

    async def tick(self) -> None:
        """Once a second: close windows of quiet partitions, ship feed and mid partials."""
        await self.outputs.start()
        async with self._lock:
            now = self.clock()
            await self._close(self.engines, now, always_save=False)
            summaries: list[tuple[bytes, Summary]] = [
                (f"{p.exchange}:{p.stream}".encode(), p) for p in self.feed.drain()
            ]
            for (exchange, symbol), bbo in self.mids.items():
                asset = asset_of(symbol)
                if asset is not None:
                    mid = EXACT.divide(EXACT.add(Decimal(bbo.bid_price), Decimal(bbo.ask_price)), Decimal(2))
                    partial = MidPartial(exchange, symbol, fmt(mid), bbo.ts_event, bbo.ts_recv)
                    summaries.append((asset.encode(), partial))
            self.mids.clear()
            for key, summary in summaries:
                await self.outputs.producer.send_raw(SUMMARY_TOPIC, key, encode_summary(summary))

    async def _close(self, engines: dict[int, PartitionAggregator], now: int, always_save: bool) -> None:
        bars: list[Bar] = []
        changed: list[int] = []
        for partition, engine in engines.items():
            before = (engine.trade_wm.value, engine.bbo_wm.value)
            closed = engine.close_windows(now, self._caught_up(partition, engine))
            bars += closed
            if always_save or closed or before != (engine.trade_wm.value, engine.bbo_wm.value):
                changed.append(partition)
            self._count(engine)
        if bars:
            await self._publish_bars(bars)
        for partition in changed:
            self.store.put(partition, engines[partition].snapshot())
        OPEN_WINDOWS.set(sum(e.open_windows() for e in self.engines.values()))

    async def _publish_bars(self, bars: list[Bar]) -> None:
        """Deliver the bars before the state that says they were emitted is saved; while the broker refuses,
        retry the whole set with capped backoff (a bar delivered twice is identical: downstream dedups it)."""
        producer = self.outputs.producer
        for attempt in itertools.count():
            failed_before = producer.failed
            for bar in bars:
                await producer.send(BAR_TOPICS[bar.interval], market_key(bar.exchange, bar.symbol), bar)
            await producer.flush()
            if producer.failed == failed_before:
                return
            delay = min(30.0, 0.5 * 2**attempt)
            log.error("%d bar(s) not delivered; re-sending the set in %.1fs", producer.failed - failed_before, delay)
            await asyncio.sleep(delay)

    def _caught_up(self, partition: int, engine: PartitionAggregator) -> bool:
        """Whether this worker has read every record the broker holds for the partition (both topics)."""
        if self.highwater is None:
            return True
        for topic, last in ((self.trades_topic, engine.state.trade_offset), (self.bbo_topic, engine.state.bbo_offset)):
            high = self.highwater(topic, partition)
            if (high is None and last >= 0) or (high is not None and last + 1 < high):
                return False  # unknown high-water mark of a topic we read from, or records left to read
        return True

    @staticmethod
    def _count(engine: PartitionAggregator) -> None:
        counts = engine.take_counts()
        for stream, result, n in (
            ("trades", "ok", counts.trades),
            ("trades", "duplicate", counts.duplicates),
            ("bbo", "ok", counts.bbos),
            ("bbo", "late", counts.late_bbos),
            ("any", "replayed", counts.replayed),
        ):
            if n:
                RECORDS.labels(stream=stream, result=result).inc(n)
        for interval, n in counts.bars.items():
            if n:
                BARS.labels(interval=interval).inc(n)


def incoming(events: Sequence[Any]) -> list[Incoming]:
    """Faust events as :class:`Incoming` records."""
    return [Incoming(e.message.topic, e.message.partition, e.message.offset, e.message.value) for e in events]
