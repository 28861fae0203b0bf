"""The bar worker with faults injected at the exact point (issue 16), driven record by record.

Each test reproduces one defect a chaos run found, deterministically, through :class:`BarWorker`'s own
interfaces (records, timer ticks, a consumer that rewinds, a state store, high-water marks):

- a partition's first records never reach the worker (nothing committed, the consumer's position moved
  past them) while its state applied no trade: they were skipped silently;
- a rewind is lost (records in flight move Faust's read offset past it) at the end of the stream: the
  partition stayed behind its high-water mark and its windows never closed;
- a restart restores a state with open windows and no further record of the partition arrives:
  nothing loaded that state, so its windows never closed;
- a record that decodes but whose processing raises: dead-lettered with a reason, the worker carries on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

from pipeline.aggregation.engine import PartitionAggregator
from pipeline.aggregation.outputs import Outputs
from pipeline.aggregation.windows import WindowPolicy
from pipeline.aggregation.worker import REWIND_RETRY_US, STALL_US, BarWorker, Incoming
from pipeline.contracts import Bar, BatchTrade, Bbo, DeadLetter, TradeBatch, decode, encode
from pipeline.kafka import RecordProducer

T = 1_700_000_000_000_000
S = 1_000_000
TRADES, BBOS = "md.trade_batches.v1", "md.bbo.v1"
POLICY = WindowPolicy()


class RecordingKafka:
    """Stands in for AIOKafkaProducer: every send is delivered and recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.stopped = False

    async def start(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True

    def bars(self, interval: str = "1s") -> list[Bar]:
        return [decode(Bar, v) for t, v in self.sent if t == f"md.bars.{interval}.v1"]

    def dead_letters(self) -> list[DeadLetter]:
        return [decode(DeadLetter, v) for t, v in self.sent if t == "ops.dlq.v1"]


class MemoryStore:
    def __init__(self) -> None:
        self.states: dict[int, bytes] = {}

    async def load(self, partitions: Sequence[int]) -> dict[int, bytes | None]:
        return {p: self.states.get(p) for p in partitions}

    async def save(self, states: dict[int, bytes]) -> bool:
        self.states.update(states)
        return True


class Consumer:
    """A consumer's view for the worker: its assignment, high-water marks, and the rewinds asked of it."""

    def __init__(self, high: dict[str, int]) -> None:
        self.high = high
        self.seeks: list[tuple[str, int, int]] = []

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((topic, partition, offset))

    async def ends(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {(t, p): self.high[t] for t, p in wanted}

    async def log_start(self, topic: str, partition: int) -> int:
        return 0


def worker_for(kafka: RecordingKafka, store: MemoryStore, consumer: Consumer, now: list[int]) -> BarWorker:
    return BarWorker(
        Outputs(lambda: RecordProducer(kafka)),  # type: ignore[arg-type]
        store,
        POLICY,
        TRADES,
        BBOS,
        clock=lambda: now[0],
        assignment=lambda: {(TRADES, 0), (BBOS, 0)},
        highwater=lambda topic, partition: consumer.high[topic],
        end_offsets=consumer.ends,
        seek=consumer.seek,
        log_start=consumer.log_start,
    )


def batch(ts: int, tid: str, price: str = "100", size: str = "1") -> bytes:
    return encode(TradeBatch(exchange="coinbase", symbol="BTC-USD", raw_symbol="BTC-USD",
                             trades=[BatchTrade(trade_id=tid, price=price, size=size, side="buy", ts_event=ts,
                                                ts_recv=ts)]))  # fmt: skip


def bbo(ts: int) -> bytes:
    return encode(Bbo(exchange="coinbase", symbol="BTC-USD", raw_symbol="BTC-USD", bid_price="99.9", bid_size="1",
                      ask_price="100.1", ask_size="1", ts_event=ts, ts_recv=ts))  # fmt: skip


PRICES = ["100", "101", "102", "103", "104", "105"]


def trade_records() -> list[Incoming]:
    """Six one-trade batches at offsets 0..5, all in the 1 s window starting at T (each held until a checkpoint
    covers it, as Faust's messages are)."""
    return [Incoming(TRADES, 0, k, batch(T + k * 100_000, f"t{k}", PRICES[k]), release=list) for k in range(6)]


async def settle(worker: BarWorker, now: list[int]) -> None:
    """Let the partition go idle past its windows: the timer closes them."""
    now[0] += POLICY.idle_timeout_us + 62 * S  # past the 1 m window too
    await worker.tick()


async def test_first_trades_of_a_partition_whose_state_applied_none_are_not_skipped() -> None:
    """Nothing committed, the state applied BBOs but no trade, and the first trade records the worker sees are at
    offset 2: it must not apply them (it did: trades 0 and 1 were lost, no dead letter) but rewind to offset 0."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 6, BBOS: 2}), [T]
    worker = worker_for(kafka, store, consumer, now)
    await worker.process([Incoming(BBOS, 0, k, bbo(T + k * 50_000)) for k in range(2)])
    assert worker.engines[0].state.trade_offset == -1  # the state has applied no trade

    records = trade_records()
    await worker.process(records[2:4])  # records 0 and 1 never reached the worker
    assert consumer.seeks == [(TRADES, 0, 0)]
    assert worker.engines[0].state.trade_offset == -1  # nothing past the gap applied
    await worker.process(records)  # read again from offset 0
    await settle(worker, now)
    bars = kafka.bars()
    assert [(b.trade_count, b.open, b.close, b.volume) for b in bars] == [(6, "100", "105", "6")]
    assert kafka.dead_letters() == []


async def test_a_lost_rewind_at_the_end_of_the_stream_is_made_again_and_the_windows_close() -> None:
    """A rewind whose re-read records never come (Faust's read offset moved past it again) while no further record
    arrives: the worker makes it again; before, the partition stayed behind its high-water mark for good and its
    windows never closed."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 6, BBOS: 0}), [T]
    worker = worker_for(kafka, store, consumer, now)
    records = trade_records()
    await worker.process(records[:2])
    await worker.process(records[4:])  # stale: 2 and 3 are expected first
    assert consumer.seeks == [(TRADES, 0, 2)]
    for _ in range(REWIND_RETRY_US // S + 1):  # the rewind was lost: nothing more arrives
        now[0] += S
        await worker.tick()
    assert consumer.seeks[1:] and set(consumer.seeks) == {(TRADES, 0, 2)}  # made again
    await worker.process(records[2:])  # the consumer delivers from the rewound offset
    await settle(worker, now)
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(6, "105")]
    assert worker.engines[0].open_windows() == 0


async def test_windows_restored_after_a_restart_close_when_no_record_of_the_partition_arrives() -> None:
    """The state saved before a SIGKILL holds open windows and covers every record on the broker: after the
    restart no record of the partition arrives, and its windows must still close (nothing loaded them)."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 6, BBOS: 0}), [T]
    first = worker_for(kafka, store, consumer, now)
    await first.process(trade_records())
    assert first.engines[0].open_windows() > 0 and store.states[0]  # saved with its windows open
    assert kafka.bars() == []

    restarted = worker_for(kafka, store, consumer, now)  # same store: the changelog
    for _ in range(2):
        await settle(restarted, now)
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(6, "105")]
    assert PartitionAggregator.restore(store.states[0], POLICY, now[0]).open_windows() == 0


async def test_a_record_whose_processing_raises_is_dead_lettered_and_the_next_is_processed() -> None:
    """A trade batch that decodes (the price matches the decimal pattern) but whose processing raises (more
    digits than Python converts to an int): a dead letter with reason ``processing``, the next record counts."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 3, BBOS: 0}), [T]
    worker = worker_for(kafka, store, consumer, now)
    poison = batch(T + 50_000, "p0", price="1" * 5000)
    good = trade_records()
    await worker.process([good[0], Incoming(TRADES, 0, 1, poison), Incoming(TRADES, 0, 2, good[1].value)])
    dead = kafka.dead_letters()
    assert [(d.reason, d.topic, d.partition, d.offset) for d in dead] == [("processing", TRADES, 0, 1)]
    assert "ValueError" in dead[0].error
    assert consumer.seeks == []  # the poisonous record counts as read: no gap, no rewind
    await settle(worker, now)
    bars = kafka.bars()
    assert [(b.trade_count, b.open, b.close) for b in bars] == [(2, "100", "101")]
    assert Decimal(bars[0].volume) == 2


async def test_an_assigned_partition_without_a_state_gets_no_engine_before_its_first_record() -> None:
    """The timer loads assigned partitions' states (above); a partition with none must not get an empty engine
    then: it would go idle before its first record, follow the wall clock, and that record would be late."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 0, BBOS: 0}), [T + 3600 * S]
    worker = worker_for(kafka, store, consumer, now)
    for _ in range(5):  # the market is quiet for longer than the idle timeout after the assignment
        now[0] += S
        await worker.tick()
    assert worker.engines == {}
    consumer.high[TRADES] = 6
    await worker.process(trade_records())  # event time an hour behind the clock: a replayed capture
    await settle(worker, now)
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(6, "105")]
    assert kafka.dead_letters() == []


async def test_records_dropped_before_the_worker_with_none_after_them_are_read_again() -> None:
    """Faust drops records it fetched when a rebalance stops its flow (aiokafka's position already past them) and,
    with nothing committed, its seek to the committed offset leaves the position there. A quiet market's last
    records (or a whole partition's) then never arrive and no later record shows the gap: the worker must notice
    that the partition is behind its high-water mark while nothing arrives, and rewind (before: 11 windows open
    for good, the issue's third defect, seen again in kill round 4)."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 6, BBOS: 0}), [T]
    worker = worker_for(kafka, store, consumer, now)
    records = trade_records()
    await worker.process(records[:1])  # records 1..5 were dropped on their way to the worker
    for _ in range(STALL_US // S + 2):
        now[0] += S
        await worker.tick()
    assert (TRADES, 0, 1) in consumer.seeks
    await worker.process(records[1:])
    await settle(worker, now)
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(6, "105")]

    consumer.seeks.clear()  # partition 0 of the BBO topic: none of its records ever arrived
    consumer.high[BBOS] = 3
    for _ in range(STALL_US // S + 2):
        now[0] += S
        await worker.tick()
    assert (BBOS, 0, 0) in consumer.seeks


class BlockingStore(MemoryStore):
    """A state store whose loads wait until released (a tick held mid-way)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def load(self, partitions: Sequence[int]) -> dict[int, bytes | None]:
        self.entered.set()
        await self.release.wait()
        return await super().load(partitions)


async def test_a_shutdown_during_a_tick_waits_for_it_instead_of_crashing_it() -> None:
    """SIGTERM while the timer is mid-tick: the shutdown closed the producer under the tick
    (``AssertionError('Outputs.start() first')``, Faust "crashed" instead of stopping; chaos seed 1068 --drops).
    The shutdown now waits for the tick, and work that starts after it is skipped."""
    kafka, store, consumer, now = RecordingKafka(), BlockingStore(), Consumer({TRADES: 6, BBOS: 0}), [T]
    worker = worker_for(kafka, store, consumer, now)
    ticking = asyncio.create_task(worker.tick())  # loads the assigned partitions' states: held there
    await store.entered.wait()
    stopping = asyncio.create_task(worker.outputs.stop())
    await asyncio.sleep(0)
    assert not stopping.done()  # waits for the tick
    store.release.set()
    await ticking  # completes: no AssertionError
    await stopping
    assert kafka.stopped
    await worker.process(trade_records())  # after the stop: skipped, not a crash
    assert worker.engines == {} or worker.engines[0].state.trade_offset == -1


async def test_a_pause_before_a_quiet_markets_first_trade_does_not_make_its_trades_late() -> None:
    """A replayed capture (event time an hour behind the clock): a quiet market's partition gets its first BBOs, then
    nothing for longer than the idle timeout (the collector paused on a loaded machine) while the worker has read
    everything the broker holds. The idle advance put the watermarks on the wall clock although no window held a
    trade: every trade of the market that came after was dead-lettered as late and none of its bars was emitted
    (chaos seed 9: KEEP-USDT-PERP, all 5 bars missing). With nothing to emit the watermarks stay on event time."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 0, BBOS: 4}), [T + 3600 * S]
    worker = worker_for(kafka, store, consumer, now)
    await worker.process([Incoming(BBOS, 0, k, bbo(T - 2 * S + k * 100_000)) for k in range(4)])
    for _ in range(5):  # the pause: caught up (the broker holds nothing more), idle past the timeout
        now[0] += S
        await worker.tick()
    consumer.high[TRADES] = 6
    await worker.process(trade_records())
    await settle(worker, now)
    assert kafka.dead_letters() == []
    assert [(b.trade_count, b.open, b.close) for b in kafka.bars()] == [(6, "100", "105")]
    assert [(b.trade_count, b.close) for b in kafka.bars("1m")] == [(6, "105")]


async def test_an_idle_advance_closes_the_open_windows_and_later_minutes_still_count() -> None:
    """Idle with open windows holding trades: they close (a quiet market's, a finished replay's), but the watermarks
    go only as far as that takes (the end of their minute + grace), not to the wall clock an hour ahead: trades of
    a later minute that arrive after the pause are counted, not late."""
    kafka, store, consumer, now = RecordingKafka(), MemoryStore(), Consumer({TRADES: 3, BBOS: 0}), [T + 3600 * S]
    worker = worker_for(kafka, store, consumer, now)
    records = trade_records()
    await worker.process(records[:3])
    for _ in range(5):
        now[0] += S
        await worker.tick()
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(3, "102")]  # closed by the idle advance
    assert [(b.trade_count, b.close) for b in kafka.bars("1m")] == [(3, "102")]
    consumer.high[TRADES] = 6
    later = [Incoming(TRADES, 0, k, batch(T + 61 * S + k * 100_000, f"t{k}", PRICES[k]), release=list)
             for k in range(3, 6)]  # fmt: skip
    await worker.process(later)
    await settle(worker, now)
    assert kafka.dead_letters() == []
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(3, "102"), (3, "105")]
    assert [(b.trade_count, b.close) for b in kafka.bars("1m")] == [(3, "102"), (3, "105")]


class HeldFlushKafka(RecordingKafka):
    """A producer whose flushes wait until released (bars in flight while a rebalance revokes the partition)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushing = asyncio.Event()
        self.release = asyncio.Event()

    async def flush(self) -> None:
        self.flushing.set()
        await self.release.wait()


async def test_a_partition_revoked_while_its_bars_are_delivered_is_not_checkpointed_by_the_old_owner() -> None:
    """The timer closed a partition's windows and waits for their bars' delivery when a rebalance revokes the
    partition (``forget``, which does not wait for the timer): the checkpoint after the delivery looked the engine
    up again and raised ``KeyError`` in the timer. The revoked partition's state is not written by its old owner:
    the new one restores the last state written, re-emits those bars (identical) and writes its own."""
    kafka, store, consumer, now = HeldFlushKafka(), MemoryStore(), Consumer({TRADES: 6, BBOS: 0}), [T]
    worker = worker_for(kafka, store, consumer, now)
    await worker.process(trade_records())  # nothing closes: no flush
    saved = store.states[0]
    now[0] += POLICY.idle_timeout_us + 62 * S
    ticking = asyncio.create_task(worker.tick())
    await kafka.flushing.wait()  # the bars are on their way
    worker.forget([0])  # revoked meanwhile
    kafka.release.set()
    await ticking  # no KeyError
    assert [(b.trade_count, b.close) for b in kafka.bars()] == [(6, "105")]
    assert store.states[0] == saved  # the new owner restores this and re-emits the bars
    assert PartitionAggregator.restore(saved, POLICY, now[0]).open_windows() > 0
