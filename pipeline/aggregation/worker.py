"""The bar worker: feeds consumed records to each partition's engine and publishes what it closes.

It owns decoding, offset order (gaps, rewinds), dead letters and the windows; the producer and bar delivery
live in :mod:`pipeline.aggregation.outputs`, partition checkpoints in :mod:`pipeline.aggregation.checkpoints`
and the per-tick summaries for the feeds worker in :mod:`pipeline.aggregation.shipping`.

One :class:`BarWorker` per process. For each batch of events (Faust ``take_events``) it decodes the
records, applies them to the partition's :class:`~pipeline.aggregation.engine.PartitionAggregator`,
closes the windows the watermark passed, publishes the bars and *waits for their delivery*, then
writes the partition state to the state store (the Faust table changelog) at most once per checkpoint
interval. Records are acknowledged to Faust only once a written state covers them, and Faust commits
an offset only after flushing that changelog, so a restarted worker restores a state at or after its
committed offset and skips the replayed records it already counted: bars are emitted at least once
and are identical when emitted again. Bad records (undecodable, non-positive price/size) and late trades go
to ``ops.dlq.v1`` with reason ``decode``, ``invalid`` or ``late``, and are counted; a record that decodes but
whose processing raises goes there with reason ``processing`` and the worker carries on with the next one.

Offsets: a partition state holds the last offset applied per topic (-1: none yet), and the worker
applies each topic's records strictly in offset order from the log start: a record past the next
expected offset (including a partition's first records when the state applied none of them) is not
applied; the worker rewinds the consumer to the expected offset and keeps rewinding until that
record arrives (a rewind can be lost: records Faust had in flight when it was made move its read
offset past the expected one again). The timer also loads the state of every assigned partition,
so windows restored from a state close even when no further record of the partition arrives.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from pipeline.aggregation.checkpoints import Checkpoints, StateStore
from pipeline.aggregation.engine import PartitionAggregator, PartitionState
from pipeline.aggregation.health import FeedStatsCollector
from pipeline.aggregation.outputs import Outputs, publish_bars
from pipeline.aggregation.shipping import collect_summaries, ship_summaries
from pipeline.aggregation.windows import WindowPolicy
from pipeline.contracts import Bar, Bbo, DecodeError, Trade, TradeBatch, decoder_for, encode
from pipeline.observability.metrics import counter, gauge

log = logging.getLogger(__name__)


RECORDS = counter("aggregation_records_total", "Records applied to bar windows by result", ["stream", "result"])
BARS = counter("aggregation_bars_total", "Bars published", ["interval"])
GAPS = counter("aggregation_offset_gaps_total", "Stale records skipped (offset past the next expected) and re-read")
REWINDS = counter("aggregation_rewinds_total", "Consumer rewinds to a partition's next expected offset")
# A rewind whose expected record has not arrived after this long is made again, and a partition behind its
# high-water mark that got no record for STALL_US is rewound. Both are far longer than a loaded machine's fetch
# round trip: a seek discards what the consumer has in flight for the partition, so re-seeking faster than records
# can arrive would keep a lagging partition from ever progressing (being behind is normal while catching up).
REWIND_RETRY_US = 5_000_000
STALL_US = 10_000_000
OPEN_WINDOWS = gauge("aggregation_open_windows", "Open bar windows on this worker")

_batch_decoder = decoder_for(TradeBatch)
_bbo_decoder = decoder_for(Bbo)


def _mark_read(state: PartitionState, is_trades: bool, offset: int) -> None:
    """Record ``offset`` as the last one read of its topic (applied, or dead-lettered whole)."""
    if is_trades:
        state.trade_offset = max(state.trade_offset, offset)
    else:
        state.bbo_offset = max(state.bbo_offset, offset)


def wall_clock_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Incoming:
    """One consumed record: its topic (full name), partition, offset and raw value; ``release`` marks it
    safe to commit (called once the partition state that covers it is written)."""

    topic: str
    partition: int
    offset: int
    value: bytes
    release: Callable[[], object] | None = None


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
        checkpoint_us: int = 0,
        end_offsets: Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]] | None = None,
        seek: Callable[[str, int, int], Awaitable[None]] | None = None,
        log_start: Callable[[str, int], Awaitable[int]] | None = None,
    ):
        self.outputs = outputs
        self.store = store
        self.policy = policy
        self.trades_topic = trades_topic
        self.bbo_topic = bbo_topic
        self.clock = clock
        self.assignment = assignment
        self.highwater = highwater
        self.checkpoint_us = checkpoint_us
        self.end_offsets = end_offsets
        self.seek = seek
        self.log_start = log_start
        self.engines: dict[int, PartitionAggregator] = {}
        self.checkpoints = Checkpoints(store, checkpoint_us)
        self.feed = FeedStatsCollector()
        # per market, the last BBO of each receipt second since the last tick: the reference tracker gets one mid
        # per second of market time even when a busy worker ticks late (not only the last one before the tick)
        self.mids: dict[tuple[str, str], list[Bbo]] = {}
        self._lock = asyncio.Lock()
        # (topic, partition) -> (offset the consumer was sent back to, clock of that rewind), until it arrives
        self._rewinds: dict[tuple[str, int], tuple[int, int]] = {}
        self._empty: set[int] = set()  # assigned partitions the timer found without a stored state
        self._arrived: dict[tuple[str, int], int] = {}  # (topic, partition) -> clock of its last record (or assignment)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop in-memory state of revoked partitions (the next owner restores it from the table)."""
        for partition in partitions:
            self.engines.pop(partition, None)
            self.checkpoints.forget(partition)  # held records never released: the new owner re-reads them, and skips
            self._empty.discard(partition)
            for key in [k for k in self._arrived if k[1] == partition]:
                del self._arrived[key]
            for key in [k for k in self._rewinds if k[1] == partition]:
                del self._rewinds[key]

    async def _restore(self, partitions: Iterable[int], now: int, stored_only: bool = False) -> None:
        """Load the engines of newly seen partitions from the state store (all at once: one read).

        ``stored_only`` (the timer, for assigned partitions no record reached yet): only partitions that have
        a stored state get an engine now; an empty engine would go idle before the partition's first record
        and follow the wall clock, making that record late. Partitions found without a state are not asked again
        until they are revoked.
        """
        missing = sorted({p for p in partitions if p not in self.engines and not (stored_only and p in self._empty)})
        if missing:
            states = await self.store.load(missing)
            for partition in missing:
                state = states.get(partition)
                if stored_only and state is None:
                    self._empty.add(partition)
                    continue
                self.engines[partition] = PartitionAggregator.restore(state, self.policy, now)

    async def process(self, batch: Sequence[Incoming]) -> None:
        async with self.outputs.use() as usable:
            if usable:  # else stopping: the records stay unacknowledged, the next owner reads them
                await self._process(batch)

    async def _process(self, batch: Sequence[Incoming]) -> None:
        async with self._lock:
            now = self.clock()
            touched: dict[int, PartitionAggregator] = {}
            dead: list[tuple[str, str, Incoming, str | None, bytes]] = []
            assigned = self.assignment() if self.assignment is not None else None
            if assigned is not None:  # buffered before a revocation: the new owner processes it
                batch = [item for item in batch if (item.topic, item.partition) in assigned]
            await self._restore((item.partition for item in batch), now)
            gaps: dict[tuple[str, int], int] = {}
            for item in batch:
                self._arrived[(item.topic, item.partition)] = now
                engine = touched.get(item.partition)
                if engine is None:
                    engine = touched[item.partition] = self.engines[item.partition]
                is_trades = item.topic == self.trades_topic
                expected = (engine.state.trade_offset if is_trades else engine.state.bbo_offset) + 1
                if item.offset > expected and self.seek is not None:
                    # stale, or the partition's first records never reached us (nothing committed yet and the
                    # consumer's position moved past them): not applied, not released; the consumer is rewound
                    if self._rewind_due((item.topic, item.partition), expected, now):
                        gaps.setdefault((item.topic, item.partition), expected)
                    GAPS.inc()
                    continue
                if item.offset == expected:
                    self._rewinds.pop((item.topic, item.partition), None)
                if item.release is not None:
                    self.checkpoints.hold(item.partition, item.release)
                try:
                    self._apply(engine, item, is_trades, now, dead)
                except Exception as exc:  # a poisonous record is dead-lettered; the worker carries on
                    log.exception("%s[%d]@%d: processing failed", item.topic, item.partition, item.offset)
                    _mark_read(engine.state, is_trades, item.offset)
                    RECORDS.labels(stream="trades" if is_trades else "bbo", result="error").inc()
                    error = f"processing raised {type(exc).__name__}: {exc}"
                    dead.append(("processing", error, item, None, item.value))
            if gaps:
                await self._seek_back(gaps, now)
            for reason, error, item, exchange, payload in dead:
                await self.outputs.dead_letters.publish(
                    reason, error, payload, exchange=exchange, topic=item.topic, partition=item.partition,
                    offset=item.offset,
                )  # fmt: skip
            await self._close(touched, now)

    def _apply(
        self,
        engine: PartitionAggregator,
        item: Incoming,
        is_trades: bool,
        now: int,
        dead: list[tuple[str, str, Incoming, str | None, bytes]],
    ) -> None:
        """Decode one record and apply it to its partition's engine; rejected parts go to ``dead``.

        A record that is dead-lettered whole (undecodable, or its processing raised) still counts as read:
        its offset is the partition's last applied one, so the next record is the expected one.
        """
        state = engine.state
        if item.offset <= (state.trade_offset if is_trades else state.bbo_offset):
            engine.counts.replayed += 1  # replayed after a restart: already counted (or dead-lettered)
            return
        if is_trades:
            try:
                trades = _batch_decoder.decode(item.value)
            except DecodeError as exc:
                _mark_read(state, is_trades, item.offset)
                dead.append(("decode", f"not a TradeBatch: {exc}", item, None, item.value))
                return
            rejected = engine.add_trades(item.offset, trades, now)
            if rejected is None:
                return  # replayed after a restart: already counted
            self.feed.observe_many(trades.exchange, "trades", trades.trades)
            for index, verdict in rejected:
                if verdict == "late":
                    trade = trades.trade(index)
                    dead.append(("late", self._late_reason(engine, trade), item, trade.exchange, encode(trade)))
                elif verdict == "invalid":
                    error = "price and size must be positive"
                    dead.append(("invalid", error, item, trades.exchange, encode(trades.trade(index))))
        else:
            try:
                bbo = _bbo_decoder.decode(item.value)
            except DecodeError as exc:
                _mark_read(state, is_trades, item.offset)
                dead.append(("decode", f"not a Bbo: {exc}", item, None, item.value))
                return
            if engine.add_bbo(item.offset, bbo, now) != "replayed":
                self.feed.observe(bbo.exchange, "bbo", bbo.ts_event, bbo.ts_recv)
                samples = self.mids.get((bbo.exchange, bbo.symbol))
                if samples is None:
                    self.mids[(bbo.exchange, bbo.symbol)] = [bbo]
                elif samples[-1].ts_recv // 1_000_000 == bbo.ts_recv // 1_000_000:
                    samples[-1] = bbo
                else:
                    samples.append(bbo)

    def _rewind_due(self, key: tuple[str, int], expected: int, now: int) -> bool:
        """Whether to rewind the consumer to ``expected``: not while a rewind there is pending (young)."""
        pending = self._rewinds.get(key)
        return pending is None or pending[0] != expected or now - pending[1] >= REWIND_RETRY_US

    async def _retry_rewinds(self, now: int) -> None:
        """Make again the rewinds whose expected record has not arrived (lost, or nothing came after them).

        Faust's getmany drops records below its read offset, and a record it was handing over when the
        rewind was made sets that offset past the expected one again: the re-read records are then dropped.
        Records arriving later trigger another rewind, but at the end of a stream nothing arrives: without
        this the partition stayed behind its high-water mark and its windows never closed.
        """
        due = {key: offset for key, (offset, at) in self._rewinds.items() if now - at >= REWIND_RETRY_US}
        if due:
            await self._seek_back(due, now)

    async def _rewind_stalled(self, now: int) -> None:
        """Rewind the partitions that are behind their high-water mark while no record of theirs arrives.

        Faust drops records it has fetched when the flow stops or the generation changes during a
        rebalance, or when a partition is not active yet (table recovery), after aiokafka has moved the
        partition's position past them; its seek to the committed offset afterwards puts that right, except
        for a partition with nothing committed yet (aiokafka's ``seek_to_committed`` leaves it where it is).
        Those records are lost to the worker, and with no later record to show the gap (a quiet market, the
        end of a stream) nothing else notices: the partition stays behind and its windows open for good.
        """
        if self.seek is None or self.highwater is None or self.assignment is None:
            return
        stalled: dict[tuple[str, int], int] = {}
        for topic, partition in sorted(self.assignment()):
            if topic not in (self.trades_topic, self.bbo_topic):
                continue
            key = (topic, partition)
            if now - self._arrived.setdefault(key, now) < STALL_US or key in self._rewinds:
                continue  # records flowing (or a rewind pending, retried on its own)
            high = self.highwater(topic, partition)
            engine = self.engines.get(partition)
            state = engine.state if engine is not None else None
            last = -1 if state is None else state.trade_offset if topic == self.trades_topic else state.bbo_offset
            if high is not None and high > last + 1:
                log.warning("%s[%d]: %d record(s) behind the high-water mark and none arrived for %.1f s; rewinding",
                            topic, partition, high - last - 1, (now - self._arrived[key]) / 1e6)  # fmt: skip
                stalled[key] = last + 1
        if stalled:
            await self._restore((p for _, p in stalled), now)  # a partition none of whose records ever arrived
            await self._seek_back(stalled, now)

    async def _seek_back(self, gaps: dict[tuple[str, int], int], now: int) -> None:
        """Send the consumer back to the next expected offset of partitions that got records past it.

        After a rebalance Faust seeks to the committed offset, but events fetched before can still be
        buffered in the stream: applied first, they would make the engine skip the re-read records as
        replayed (bars short of trades). The offsets of these topics have no holes, so a jump means
        stale events: they are skipped and the partition is read again from the expected offset, or
        from the log start when retention removed it (the engine then continues from there).
        """
        assert self.seek is not None
        assigned = self.assignment() if self.assignment is not None else None
        for (topic, partition), offset in gaps.items():
            if (assigned is not None and (topic, partition) not in assigned) or partition not in self.engines:
                self._rewinds.pop((topic, partition), None)
                continue  # revoked meanwhile: the next owner reads from the committed offset
            try:
                start = (await self.log_start(topic, partition)) if self.log_start is not None else 0
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("%s[%d]: log start unavailable (%s); rewind retried", topic, partition, exc)
                self._rewinds[(topic, partition)] = (offset, now)
                continue
            if offset < start:
                log.warning("%s[%d]: records %d..%d are gone (retention); continuing at %d", topic, partition,
                            offset, start - 1, start)  # fmt: skip
                state = self.engines[partition].state
                if topic == self.trades_topic:
                    state.trade_offset = start - 1
                else:
                    state.bbo_offset = start - 1
                offset = start
            self._rewinds[(topic, partition)] = (offset, now)
            REWINDS.inc()
            try:
                await self.seek(topic, partition, offset)
            except (KafkaError, OSError, TimeoutError, AssertionError) as exc:  # revoked meanwhile, broker away
                log.warning("%s[%d]: rewind to %d failed (%s); retried", topic, partition, offset, exc)

    def _late_reason(self, engine: PartitionAggregator, trade: Trade) -> str:
        return (
            f"trade {trade.exchange}:{trade.symbol}:{trade.trade_id} at {trade.ts_event} is beyond the grace period "
            f"(trade watermark {engine.trade_wm.value}, grace {self.policy.grace_us} us)"
        )

    async def tick(self) -> None:
        """Once a second: close windows of quiet partitions, ship feed and mid partials."""
        async with self.outputs.use() as usable:
            if usable:
                await self._tick()

    async def _tick(self) -> None:
        async with self._lock:
            now = self.clock()
            if self.assignment is not None:  # partitions no record reached since the (re)start: their windows too
                try:
                    await self._restore(
                        (p for t, p in self.assignment() if t == self.trades_topic), now, stored_only=True
                    )
                except (KafkaError, OSError, TimeoutError) as exc:
                    log.warning("partition states not loaded (%s); next tick retries", exc)
            if self._rewinds:
                await self._retry_rewinds(now)
            await self._rewind_stalled(now)
            await self._close(self.engines, now)
            summaries = collect_summaries(
                self.feed, self.mids, self.engines, self._bbo_unread, self.policy.allowed_lateness_us,
                self.policy.idle_timeout_us, now,
            )  # fmt: skip
            await ship_summaries(self.outputs.producer, summaries)

    async def _close(self, engines: dict[int, PartitionAggregator], now: int) -> None:
        """Close due windows, publish their bars (delivered), then checkpoint the partitions that are due.

        A partition's state is written at most once per ``checkpoint_us`` (it is the costly part: the
        whole partition state, dedup ids included); its applied records are released for commit only
        after that write, so the committed offset never passes the state. A crash replays at most one
        interval of records, which the restored state skips or re-applies to identical bars.
        """
        bars: list[Bar] = []
        due: list[int] = []
        idle = [p for p, engine in engines.items() if engine.idle(now) and self._caught_up(p, engine)]
        caught_up = await self._confirm_caught_up(idle) if idle else set()
        for partition, engine in engines.items():
            before = (engine.trade_wm.value, engine.bbo_wm.value)
            closed = engine.close_windows(now, partition in caught_up, self._bbo_unread(partition, engine) > 0)
            bars += closed
            changed = bool(closed) or before != (engine.trade_wm.value, engine.bbo_wm.value)
            if self.checkpoints.due(partition, changed, now):
                due.append(partition)
            self._count(engine)
        if bars:
            await publish_bars(self.outputs.producer, bars)
        # a partition revoked while its bars were delivered (``forget`` does not wait for the lock) is not written
        # by its old owner: the new one restores the last state written and re-emits those bars, identical
        states = {p: engines[p].snapshot() for p in due if p in engines and self.engines.get(p) is engines[p]}
        if states:
            await self.checkpoints.save(states, now)
        OPEN_WINDOWS.set(sum(e.open_windows() for e in self.engines.values()))

    async def _confirm_caught_up(self, partitions: list[int]) -> set[int]:
        """The idle partitions whose every record the broker holds was applied, asked of the broker now.

        The consumer's high-water marks come with its last fetch: when its fetching stalls (an
        overloaded machine, a rebalance starting) they are stale, and a partition that only looks
        idle would follow the wall clock and close windows early (bars that a replay would not give).
        ListOffsets is asked fresh; on Tansu it under-reports the end (base offset of the last batch
        + 1), which only errs toward "not caught up" by at most the batch just fetched.
        """
        if self.end_offsets is None:
            return set(partitions)
        wanted = [(topic, p) for p in partitions for topic in (self.trades_topic, self.bbo_topic)]
        try:
            ends = await self.end_offsets(wanted)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("end offsets unavailable (%s): idle partitions wait", exc)
            return set()
        out = set()
        for p in partitions:
            state = self.engines[p].state if p in self.engines else None
            if state is not None and all(
                last + 1 >= ends.get((topic, p), 0)
                for topic, last in ((self.trades_topic, state.trade_offset), (self.bbo_topic, state.bbo_offset))
            ):
                out.add(p)
        return out

    def _bbo_unread(self, partition: int, engine: PartitionAggregator) -> int:
        """How many BBOs of the partition the consumer knows of (its last fetch) and has not applied yet."""
        if self.highwater is None or not engine.state.bbo_seen:
            return 0
        high = self.highwater(self.bbo_topic, partition)
        return 0 if high is None else max(0, high - engine.state.bbo_offset - 1)

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


def incoming(events: Sequence[Any], consumer: Any) -> list[Incoming]:
    """Faust events as :class:`Incoming` records, each holding its message unacknowledged (one extra
    reference) until :meth:`BarWorker._close` releases it after the checkpoint that covers it."""
    out = []
    for event in events:
        message = event.message
        message.incref()
        out.append(Incoming(message.topic, message.partition, message.offset, message.value,
                            functools.partial(message.ack, consumer)))  # fmt: skip
    return out
