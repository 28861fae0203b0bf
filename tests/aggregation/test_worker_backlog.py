"""The bar worker under a BBO backlog: what it ships and closes when its consumer knows of BBOs it has not read."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pipeline.aggregation.outputs import Outputs
from pipeline.aggregation.shipping import SUMMARY_TOPIC
from pipeline.aggregation.summaries import BacklogPartial, MidPartial, decode_summary
from pipeline.aggregation.windows import WindowPolicy
from pipeline.aggregation.worker import BarWorker, Incoming
from pipeline.contracts import BatchTrade, Bbo, TradeBatch, encode
from pipeline.kafka import RecordProducer

T = 1_700_000_000_000_000
S = 1_000_000
TRADES, BBOS = "md.trade_batches.v1", "md.bbo.v1"


class RecordingKafka:
    """Stands in for AIOKafkaProducer: every send is delivered and recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def start(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def flush(self) -> None:
        return None


class MemoryStore:
    def __init__(self) -> None:
        self.states: dict[int, bytes] = {}

    async def load(self, partitions: Sequence[int]) -> dict[int, bytes | None]:
        return {p: self.states.get(p) for p in partitions}

    async def save(self, states: dict[int, bytes]) -> bool:
        self.states.update(states)
        return True


def bbo(ts: int, bid: str, ask: str) -> bytes:
    return encode(Bbo(exchange="coinbase", symbol="BTC-USD", raw_symbol="BTC-USD", bid_price=bid, bid_size="1",
                      ask_price=ask, ask_size="1", ts_event=ts, ts_recv=ts))  # fmt: skip


def trades(ts: int, tid: str) -> bytes:
    return encode(TradeBatch(exchange="coinbase", symbol="BTC-USD", raw_symbol="BTC-USD",
                             trades=[BatchTrade(trade_id=tid, price="100", size="1", side="buy", ts_event=ts,
                                                ts_recv=ts)]))  # fmt: skip


async def test_unread_bbos_hold_the_bars_and_are_reported_to_the_reference() -> None:
    """Unread BBOs of a partition whose newest applied BBO is older than the idle timeout: its windows wait, and
    its markets are reported to the reference as behind (not stopped)."""
    kafka = RecordingKafka()
    high = {TRADES: 3, BBOS: 10}  # the consumer's high-water marks: 7 BBOs of partition 0 not read yet
    now = [T]
    policy = WindowPolicy()
    worker = BarWorker(
        Outputs(lambda: RecordProducer(kafka)),  # type: ignore[arg-type]
        MemoryStore(),
        policy,
        TRADES,
        BBOS,
        clock=lambda: now[0],
        highwater=lambda topic, partition: high[topic],
    )
    await worker.process([Incoming(BBOS, 0, k, bbo(T + k * 100_000, "99.9", "100.1")) for k in range(3)])
    now[0] = T + S
    await worker.tick()  # BBOs unread, but the partition is current (newest BBO 0.8 s old): nothing to excuse
    assert not any(isinstance(decode_summary(v), BacklogPartial) for t, v in kafka.sent if t == SUMMARY_TOPIC)
    await worker.process([Incoming(TRADES, 0, k, trades(T + k * 3 * S, f"t{k}")) for k in range(3)])
    now[0] = T + policy.idle_timeout_us + S  # no BBO read for longer than the idle timeout: the partition is behind
    await worker.tick()
    bars = [topic for topic, _ in kafka.sent if topic.startswith("md.bars")]
    assert bars == []  # trades reached 6 s, but the unread BBOs hold the windows
    summaries = [decode_summary(value) for topic, value in kafka.sent if topic == SUMMARY_TOPIC]
    assert BacklogPartial("coinbase", "BTC-USD", 7) in summaries
    assert any(isinstance(s, MidPartial) for s in summaries)

    high[BBOS] = 3  # nothing unread: the BBO stream is idle and the trade watermark closes the windows
    kafka.sent.clear()
    await worker.tick()
    assert [topic for topic, _ in kafka.sent if topic.startswith("md.bars.1s")]
    assert not any(isinstance(decode_summary(v), BacklogPartial) for t, v in kafka.sent if t == SUMMARY_TOPIC)
