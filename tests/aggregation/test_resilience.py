"""SIGKILL and rebalance: real worker processes on the real broker still produce exactly the bars an
independent computation gives (a re-emitted bar is identical, so downstream dedups it)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aggregation_harness import (
    WorkerProcess,
    accepted_trades,
    assigned_in,
    bars_by_key,
    frames_of,
    read_to_end,
    read_topic,
    read_trades_log,
    to_batches,
)
from aggregation_reference import bar_fields, expected_bars
from test_worker_e2e import ARGS, make_trades

from pipeline.contracts import encode, market_key
from pipeline.kafka.clients import make_producer
from pipeline.settings import Settings

RATE = 1500  # trades/s trickled while workers die and join
SECONDS = 4  # of trickle after the restarted / joining worker got partitions


async def trickle(settings: Settings, trades: list, stop: asyncio.Event) -> int:  # type: ignore[type-arg]
    """Produce ``trades`` at RATE until ``stop`` is set (or they run out); returns how many were sent."""
    producer = make_producer(settings.kafka)
    await producer.start()
    sent = 0
    try:
        step = 100
        while sent < len(trades) and not stop.is_set():
            for batch in to_batches(frames_of(trades[sent : sent + step], 10)):
                key = market_key(batch.exchange, batch.symbol)
                await producer.send(settings.topic("md.trade_batches.v1"), encode(batch), key=key)
            sent = min(len(trades), sent + step)
            await asyncio.sleep(step / RATE)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def stop_after(stop: asyncio.Event, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set()


async def all_expected_bars(settings: Settings, count: int) -> dict:  # type: ignore[type-arg]
    log = await read_trades_log(settings, count)
    accepted = accepted_trades(log, 500_000, 500_000)
    expected = {i: expected_bars(accepted, i) for i in ("1s", "1m")}
    messages = []
    for interval in ("1s", "1m"):
        want = len(expected[interval])
        got = []
        try:
            got = await read_topic(
                settings, f"md.bars.{interval}.v1", lambda m, w=want: len({x.key + x.value[:200] for x in m}) >= w,
                wait_s=120,
            )  # fmt: skip
        except TimeoutError:  # diagnosis: what the topic holds now against what was expected
            have = {
                (b.exchange, b.symbol, b.window_start): bar_fields(b)
                for b in bars_by_key(await read_to_end(settings, f"md.bars.{interval}.v1")).values()
            }
            missing = sorted(set(expected[interval]) - set(have))
            differ = sorted(k for k in set(expected[interval]) & set(have) if have[k] != expected[interval][k])
            print(f"{interval} bars: {len(have)} on the topic, {len(expected[interval])} expected; missing "
                  f"{len(missing)}, first {missing[:10]}; differing {len(differ)}, first {differ[:5]}")  # fmt: skip
            raise
        messages += got
    bars = bars_by_key(messages)
    for interval in ("1s", "1m"):
        got = {(k[1], k[2], k[3]): bar_fields(b) for k, b in bars.items() if k[0] == interval}
        assert got == expected[interval]
    return {"messages": len(messages), "distinct": len(bars)}


def stream() -> list:  # type: ignore[type-arg]
    return make_trades(RATE * 60, 12, 600_000_000, seed=5)  # event time runs ~10x faster than the clock


async def test_sigkill_and_restart_yield_the_same_bars(topics: Settings, tmp_path: Path) -> None:
    stop = asyncio.Event()
    producing = asyncio.create_task(trickle(topics, stream(), stop))
    first = await WorkerProcess(topics, tmp_path / "first.log", *ARGS).start()
    second = WorkerProcess(topics, tmp_path / "second.log", *ARGS)
    try:
        await read_topic(topics, "md.bars.1s.v1", lambda m: len(m) >= 30)  # mid-stream
        first.kill()
        await first.process.wait()  # type: ignore[union-attr]
        await second.start()
        await assigned_in(second)
        await stop_after(stop, SECONDS)
        seen = await all_expected_bars(topics, await producing)
        print(f"after SIGKILL: {seen['messages']} bar records, {seen['distinct']} distinct")  # informational
    finally:
        producing.cancel()
        await first.stop()
        await second.stop()


def last_assignment(log: str) -> list[int]:
    found = re.findall(r"aggregator assigned \S+ partitions \[([0-9, ]*)\]", log)
    assert found, "worker never got an assignment"
    return [int(p) for p in found[-1].split(",") if p.strip()]


async def test_two_workers_split_partitions_and_a_rebalance_keeps_bars(topics: Settings, tmp_path: Path) -> None:
    stop = asyncio.Event()
    producing = asyncio.create_task(trickle(topics, stream(), stop))
    first = await WorkerProcess(topics, tmp_path / "first.log", *ARGS).start()
    second = WorkerProcess(topics, tmp_path / "second.log", *ARGS)
    try:
        await read_topic(topics, "md.bars.1s.v1", lambda m: len(m) >= 30)
        await second.start()  # joins mid-stream: a rebalance
        await assigned_in(second)
        await stop_after(stop, SECONDS)
        await all_expected_bars(topics, await producing)
        mine, theirs = last_assignment(first.log_text()), last_assignment(second.log_text())
        logs = f"first worker:\n{first.log_text()[-3000:]}\nsecond worker:\n{second.log_text()[-3000:]}"
        assert mine and theirs and not set(mine) & set(theirs), logs
        assert sorted(mine + theirs) == list(range(6))
    finally:
        producing.cancel()
        await first.stop()
        await second.stop()
