"""Real worker processes and broker helpers for the aggregation end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from pipeline.contracts import Bar, BatchTrade, Record, Trade, TradeBatch, decode, encode, market_key
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings
from tests.conftest import read_to_end as read_to_end  # the shared reader (used by test_resilience)

ROOT = Path(__file__).resolve().parents[2]
MARKETPRISM = Path(sys.executable).parent / "marketprism"


class WorkerProcess:
    """``marketprism worker`` as a child process, stopped by PID."""

    def __init__(self, settings: Settings, log_path: Path, *args: str):
        self.settings = settings
        self.log_path = log_path
        self.args = args
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> WorkerProcess:
        env = os.environ | {
            "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
            "MARKETPRISM_TOPIC_PREFIX": self.settings.topic_prefix,
            "MARKETPRISM_STATE_DIR": str(self.log_path.parent / (self.log_path.stem + "-state")),
            "MARKETPRISM_METRICS_PORT": "0",
            "MARKETPRISM_LOG_LEVEL": "INFO",
        }
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            str(MARKETPRISM), "worker", *self.args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def produce(settings: Settings, topic: str, records: list[Record], key_of=None) -> None:  # type: ignore[no-untyped-def]
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for record in records:
            key = key_of(record) if key_of else market_key(record.exchange, record.symbol)  # type: ignore[attr-defined]
            await producer.send(settings.topic(topic), encode(record), key=key)
        await producer.flush()
    finally:
        await producer.stop()


def to_batches(frames: list[list[Trade]]) -> list[TradeBatch]:
    """Each frame's trades as one TradeBatch per market, in order (what the collectors' output publishes)."""
    batches = []
    for frame in frames:
        groups: dict[tuple[str, str, str], list[Trade]] = {}
        for t in frame:
            groups.setdefault((t.exchange, t.symbol, t.raw_symbol), []).append(t)
        for (exchange, symbol, raw), trades in groups.items():
            batches.append(TradeBatch(
                exchange=exchange, symbol=symbol, raw_symbol=raw,  # type: ignore[arg-type]
                trades=[BatchTrade(trade_id=t.trade_id, price=t.price, size=t.size, side=t.side,
                                   ts_event=t.ts_event, ts_recv=t.ts_recv) for t in trades],
            ))  # fmt: skip
    return batches


def frames_of(trades: list[Trade], size: int = 20) -> list[list[Trade]]:
    """Consecutive runs of ``size`` trades: the trades a collector's output pump takes together."""
    return [trades[i : i + size] for i in range(0, len(trades), size)]


async def produce_trades(settings: Settings, frames: list[list[Trade]]) -> None:
    """Trades as the collectors publish them to the topic the worker reads (``md.trade_batches.v1``)."""
    await produce(settings, "md.trade_batches.v1", to_batches(frames))  # type: ignore[arg-type]


async def read_topic(settings: Settings, topic: str, until, wait_s: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    """Consume ``topic`` from the start until ``until(messages)`` holds (raw aiokafka messages)."""
    consumer = make_consumer(settings.kafka, settings.topic(topic), group_id=None)
    await consumer.start()
    messages: list = []  # type: ignore[type-arg]
    try:
        async with asyncio.timeout(wait_s):
            while not until(messages):
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    messages += batch
    finally:
        await consumer.stop()
    return messages


async def read_trades_log(settings: Settings, count: int) -> dict[int, list[tuple[int, Trade]]]:
    """The trade batches topic as the broker holds it: partition -> [(arrival, trade)] in arrival order,
    arrival = batch offset * 10_000 + index in the batch."""
    counted = [0, 0]  # messages counted, trades in them

    def enough(messages: list) -> bool:  # type: ignore[type-arg]
        for m in messages[counted[0] :]:
            counted[1] += len(decode(TradeBatch, m.value).trades)
        counted[0] = len(messages)
        return counted[1] >= count

    messages = await read_topic(settings, "md.trade_batches.v1", enough)
    by_partition: dict[int, list[tuple[int, Trade]]] = defaultdict(list)
    for m in messages:
        batch = decode(TradeBatch, m.value)
        for index, t in enumerate(batch.trades):
            trade = Trade(exchange=batch.exchange, symbol=batch.symbol, raw_symbol=batch.raw_symbol,
                          trade_id=t.trade_id, price=t.price, size=t.size, side=t.side, ts_event=t.ts_event,
                          ts_recv=t.ts_recv)  # fmt: skip
            by_partition[m.partition].append((m.offset * 10_000 + index, trade))
    return {p: sorted(v, key=lambda x: x[0]) for p, v in by_partition.items()}


def accepted_trades(
    log: dict[int, list[tuple[int, Trade]]], lateness_us: int, grace_us: int
) -> list[tuple[int, Trade]]:
    """Independent acceptance per partition: late when the 1s window end + grace <= max ts seen - lateness;
    a trade id already counted is a duplicate. Arrival = (partition, position in the partition)."""
    out = []
    for partition, items in log.items():
        high = -1
        seen: set[tuple[str, str, str]] = set()
        for offset, t in items:
            end = t.ts_event // 1_000_000 * 1_000_000 + 1_000_000
            if high >= 0 and end + grace_us <= high - lateness_us:
                continue
            ident = (t.exchange, t.symbol, t.trade_id)
            if ident in seen:
                continue
            seen.add(ident)
            high = max(high, t.ts_event)
            out.append((partition * 10**12 + offset, t))
    return out


def bars_by_key(messages: list) -> dict[tuple[str, str, str, int], Bar]:  # type: ignore[type-arg]
    """Bars keyed by (interval, exchange, symbol, window_start); a re-emitted bar must be identical."""
    out: dict[tuple[str, str, str, int], Bar] = {}
    for m in messages:
        bar = decode(Bar, m.value)
        key = (bar.interval, bar.exchange, bar.symbol, bar.window_start)
        first = out.setdefault(key, bar)
        if first != bar:
            diff = {f: (getattr(first, f), getattr(bar, f)) for f in bar.__struct_fields__
                    if getattr(first, f) != getattr(bar, f)}  # fmt: skip
            raise AssertionError(f"re-emitted bar differs: {key}: {diff} (partition {m.partition}, offset {m.offset})")
    return out


async def assigned_in(worker: WorkerProcess) -> None:
    """Wait until the worker's log shows a non-empty assignment."""
    for _ in range(180):
        if re.search(r"aggregator assigned \S+ partitions \[[0-9]", worker.log_text()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{worker.log_path.name}: no partitions assigned within 90 s")
