"""``marketprism bench aggregate``: trades/s per worker and bar latency, with baselines from the same run.

Contenders, each on its own topic prefix with the same preloaded trades:
- raw: an aiokafka ``getmany`` consumer decoding each Trade (the ceiling of any consumer here);
- naive: a Faust agent with one event per trade updating a windowed table (``naive.py``);
- worker: ``marketprism worker`` (batched ``take_events`` + the event-time engine).
Throughput of the Faust contenders is read from their Prometheus counters of applied trades
(polled every 100 ms), from the first non-zero reading to the last, so process start and group
join are not counted (Tansu does not answer the admin OffsetFetch that committed offsets need). Bar latency: trades at
``rate``/s with ``ts_event = now``; a 1s window's watermark passes its end + grace when a trade
stamped ``window_end + lateness + grace`` arrives, i.e. at that wall time; latency is the time the
bar is read from its topic minus that instant.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipeline.aggregation.app import ensure_internal_topics
from pipeline.contracts import Bar, Trade, decoder_for, encode, load_registry, market_key
from pipeline.infra import free_port
from pipeline.kafka.admin import apply
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings

log = logging.getLogger(__name__)

WORKER_METRIC = ("marketprism_aggregation_records_total{", 'stream="trades"', 'result="ok"')
NAIVE_METRIC = ("marketprism_aggregation_naive_trades_total",)
LATENESS_US = 500_000
GRACE_US = 500_000


@dataclass(frozen=True)
class BenchPlan:
    trades: int
    symbols: int
    rate: int
    seconds: int
    repeats: int


def _prefixed(settings: Settings) -> Settings:
    return settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}bench{uuid.uuid4().hex[:8]}."})


def _trades(count: int, symbols: int, start_us: int, step_us: int) -> list[Trade]:
    return [
        Trade(exchange="binance", symbol=f"S{i % symbols}-USDT", raw_symbol=f"S{i % symbols}USDT", trade_id=str(i),
              price=f"{100 + i % 97}.{i % 100:02d}", size=f"0.{(i * 7919) % 10**6 + 1:06d}",
              side="buy" if i % 3 else "sell", ts_event=start_us + i * step_us, ts_recv=start_us + i * step_us + 900)
        for i in range(count)
    ]  # fmt: skip


async def _preload(settings: Settings, trades: list[Trade]) -> None:
    await apply(settings.kafka, load_registry(), settings.topic_prefix)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        topic = settings.topic("md.trades.v1")
        for t in trades:
            await producer.send(topic, encode(t), key=market_key(t.exchange, t.symbol))
        await producer.flush()
    finally:
        await producer.stop()


async def raw_consume(settings: Settings, count: int) -> float:
    """Trades/s of a plain aiokafka consumer decoding every record."""
    decoder = decoder_for(Trade)
    consumer = make_consumer(settings.kafka, settings.topic("md.trades.v1"), group_id=None, max_poll_records=10_000)
    await consumer.start()
    try:
        seen = 0
        started = None
        while seen < count:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                started = started or time.perf_counter()
                for message in batch:
                    decoder.decode(message.value)
                seen += len(batch)
        return count / (time.perf_counter() - (started or time.perf_counter()))
    finally:
        await consumer.stop()


def _env(settings: Settings, state: Path, metrics_port: int = 0) -> dict[str, str]:
    return os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
        "MARKETPRISM_STATE_DIR": str(state),
        "MARKETPRISM_METRICS_PORT": str(metrics_port),
        "MARKETPRISM_LOG_LEVEL": "WARNING",
    }


async def _applied(client: httpx.AsyncClient, url: str, metric: tuple[str, ...]) -> float:
    """Sum of the samples whose line starts with ``metric[0]`` and holds every other part (labels)."""
    try:
        text = (await client.get(url)).text
    except httpx.HTTPError:
        return 0.0  # not serving yet
    name, *labels = metric
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and all(label in line for label in labels)
    )


async def faust_throughput(
    settings: Settings, command: list[str], metric: tuple[str, ...], count: int, state: Path
) -> float:
    """Trades/s of a Faust worker process, from its Prometheus counter (first non-zero reading to the last)."""
    port = free_port()
    with (state / f"{Path(command[0]).name}-{command[-1]}.log").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, env=_env(settings, state, port), stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        first: tuple[float, float] | None = None
        async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(900):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{command[-2:]} exited with {process.returncode} before applying {count}")
                done = await _applied(client, url, metric)
                now = time.perf_counter()
                if first is None and done > 0:
                    first = (now, done)
                if done >= count and first is not None:
                    break
                await asyncio.sleep(0.1)
        if now - first[0] < 0.5:  # everything landed between two readings: no usable interval
            return float("nan")
        return (done - first[1]) / (now - first[0])
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def bar_latency(settings: Settings, plan: BenchPlan, state: Path) -> list[float]:
    """Bar latencies (ms) of 1s bars at ``plan.rate`` trades/s of live-stamped trades."""
    await apply(settings.kafka, load_registry(), settings.topic_prefix)
    await ensure_internal_topics(settings)
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "marketprism"), "worker", env=_env(settings, state),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    producer = make_producer(settings.kafka)
    consumer = make_consumer(settings.kafka, settings.topic("md.bars.1s.v1"), group_id=None)
    await producer.start()
    await consumer.start()
    bar_decoder = decoder_for(Bar)
    latencies: list[float] = []
    try:
        await asyncio.sleep(8)  # join the group before the measured stream starts
        topic = settings.topic("md.trades.v1")
        started = time.time()
        i = 0
        measure_from = int((started + 3) * 1e6)  # skip the first windows (group join, warm-up)

        async def read() -> None:
            while True:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    now_us = time.time_ns() // 1000
                    for message in batch:
                        bar = bar_decoder.decode(message.value)
                        if bar.window_start >= measure_from:
                            latencies.append((now_us - (bar.window_end + LATENESS_US + GRACE_US)) / 1000)

        reader = asyncio.create_task(read())
        while time.time() - started < plan.seconds:
            target = int((time.time() - started) * plan.rate)
            while i < target:
                now_us = time.time_ns() // 1000
                symbol = f"S{i % plan.symbols}-USDT"
                t = Trade(exchange="binance", symbol=symbol, raw_symbol=symbol.replace("-", ""), trade_id=str(i),
                          price="100.5", size="0.1", side="buy", ts_event=now_us, ts_recv=now_us)  # fmt: skip
                await producer.send(topic, encode(t), key=market_key(t.exchange, t.symbol))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(3)
        reader.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
        await _stop(worker)
    return latencies


def _median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] if ordered else float("nan")


async def run_bench(settings: Settings, plan: BenchPlan) -> str:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    base = int(time.time() * 1e6) - 3_600_000_000
    trades = _trades(plan.trades, plan.symbols, base, 100)  # 10k trades per second of event time
    marketprism = str(Path(sys.executable).parent / "marketprism")
    results: dict[str, list[float]] = {"raw": [], "naive": [], "worker": []}
    state = settings.state_dir / "bench-aggregate"
    state.mkdir(parents=True, exist_ok=True)
    for _ in range(plan.repeats):
        run = _prefixed(settings)
        await _preload(run, trades)
        results["raw"].append(await raw_consume(run, plan.trades))
        await ensure_internal_topics(run)
        worker = [marketprism, "worker"]
        results["worker"].append(await faust_throughput(run, worker, WORKER_METRIC, plan.trades, state))
        naive = [sys.executable, "-m", "pipeline.aggregation.naive", "worker", "-l", "warn"]
        results["naive"].append(await faust_throughput(run, naive, NAIVE_METRIC, plan.trades, state))
    latencies = await bar_latency(_prefixed(settings), plan, state)
    raw, naive_rate, worker_rate = (_median(results[k]) for k in ("raw", "naive", "worker"))
    lines = [
        f"bench aggregate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} cores, {plan.trades} trades over {plan.symbols} symbols, {plan.repeats} run(s)",
        f"raw aiokafka getmany+decode : {raw:10.0f} trades/s  (runs: {', '.join(f'{v:.0f}' for v in results['raw'])})",
        f"naive Faust per-event agent : {naive_rate:10.0f} trades/s  "
        f"(runs: {', '.join(f'{v:.0f}' for v in results['naive'])})",
        f"marketprism worker          : {worker_rate:10.0f} trades/s  "
        f"(runs: {', '.join(f'{v:.0f}' for v in results['worker'])})",
        f"worker / naive = {worker_rate / naive_rate:.1f}x, worker / raw = {worker_rate / raw:.2f}x",
        f"bar latency at {plan.rate} trades/s ({len(latencies)} 1s bars): "
        f"p50 {_percentile(latencies, 50):.0f} ms, p99 {_percentile(latencies, 99):.0f} ms",
    ]
    return "\n".join(lines)
