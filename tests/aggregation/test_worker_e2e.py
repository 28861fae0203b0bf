"""End to end through the real broker: a real ``marketprism worker`` process turns trades into bars."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from aggregation_harness import (
    WorkerProcess,
    accepted_trades,
    bars_by_key,
    frames_of,
    produce_trades,
    read_topic,
    read_trades_log,
)
from aggregation_reference import bar_fields, expected_bars

from pipeline.contracts import DeadLetter, Trade, decode
from pipeline.settings import Settings

BASE = 1_699_999_980_000_000
ARGS = ("--lateness-ms", "500", "--grace-ms", "500", "--idle-timeout-ms", "3000")


def make_trades(count: int, symbols: int, span_us: int, seed: int) -> list[Trade]:
    rng = random.Random(seed)
    trades = []
    for i in range(count):
        symbol = f"S{i % symbols}-USDT"
        ts = BASE + i * span_us // count + rng.randrange(-200_000, 200_000)  # bounded disorder
        trades.append(Trade(
            exchange=rng.choice(["binance", "okx"]), symbol=symbol, raw_symbol=symbol, trade_id=str(i),
            price=f"{rng.randrange(1, 5000)}.{rng.randrange(0, 100):02d}", size=f"0.{rng.randrange(1, 10**6):06d}",
            side=rng.choice(["buy", "sell"]), ts_event=max(0, ts), ts_recv=max(0, ts) + 1500,
        ))  # fmt: skip
    trades += [trades[i] for i in range(0, count, 50)]  # duplicates (late ones too)
    trades.append(trades[10].__replace__(trade_id="very-late", ts_event=BASE))  # far beyond grace
    return trades


def expected_from_log(log, interval: str):  # type: ignore[no-untyped-def]
    return expected_bars(accepted_trades(log, 500_000, 500_000), interval)


def check_bars(bars: dict, log) -> None:  # type: ignore[no-untyped-def]
    for interval in ("1s", "1m"):
        got = {(k[1], k[2], k[3]): bar_fields(b) for k, b in bars.items() if k[0] == interval}
        assert got == expected_from_log(log, interval)


def expected_count(log) -> int:  # type: ignore[no-untyped-def]
    return sum(len(expected_from_log(log, i)) for i in ("1s", "1m"))


async def test_worker_bars_equal_independent_computation(topics: Settings, tmp_path: Path) -> None:
    trades = make_trades(3000, 8, 150_000_000, seed=1)
    await produce_trades(topics, frames_of(trades))
    log = await read_trades_log(topics, len(trades))
    want = expected_count(log)
    worker = await WorkerProcess(topics, tmp_path / "worker.log", *ARGS).start()
    try:
        messages = await read_topic(
            topics, "md.bars.1s.v1", lambda m: len(m) >= sum(1 for _ in expected_from_log(log, "1s"))
        )
        messages += await read_topic(
            topics, "md.bars.1m.v1", lambda m: len(m) >= sum(1 for _ in expected_from_log(log, "1m"))
        )
        bars = bars_by_key(messages)
        assert len(bars) == want
        check_bars(bars, log)
        late = await read_topic(topics, "ops.dlq.v1", lambda m: any(b"very-late" in x.value for x in m))
        letter = decode(DeadLetter, next(x.value for x in late if b"very-late" in x.value))
        source = ("late", "aggregator", topics.topic("md.trade_batches.v1"))
        assert (letter.reason, letter.source, letter.topic) == source
        assert decode(Trade, letter.payload).trade_id == "very-late"  # the trade itself, as on md.trades.v1
    finally:
        await worker.stop()
    await asyncio.sleep(0)
