"""``marketprism bench aggregate``: trades/s per worker and bar latency, with baselines from the same run.

Contenders, each on its own topic prefix with the same preloaded trades:
- raw: an aiokafka ``getmany`` consumer decoding each Trade of ``md.trades.v1`` (the ceiling of any
  consumer here), and the same consumer decoding the ``md.trade_batches.v1`` records;
- naive: a Faust agent with one event per trade of ``md.trades.v1`` updating a windowed table (``naive.py``);
- worker: ``marketprism worker`` (``md.trade_batches.v1`` in ``take_events`` batches + the event-time engine).
The batches are formed as the collectors' output forms them (one batch per market per linger, 20 ms)
for trades arriving at ``load_rate``/s over ``symbols`` markets. Throughput of the Faust contenders
is read from their Prometheus counters of applied trades (polled every 100 ms), from the first
non-zero reading to the last, so process start and group join are not counted (Tansu does not
answer the admin OffsetFetch that committed offsets need); their CPU time over the same interval
comes from ``psutil``, so trades per CPU-second are reported too (the machine is shared).
Bar latency: trades at ``rate``/s with ``ts_event = now``, batched as above (so the linger is
included); a 1s window's watermark passes its end + grace with the first trade stamped at or after
``window_end + lateness + grace``, made at that wall time; latency is the bar record's timestamp
(set by the worker's producer when it sends the bar) minus that instant, so a slow reader in the
bench process does not count. ``latency_repeats`` runs are reported as medians; ``latency_baseline``
(worker options, e.g. a former tuning) adds a second variant run alternately with the defaults.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from pipeline.aggregation.app import ensure_internal_topics
from pipeline.contracts import Bar, Trade, TradeBatch, decoder_for, encode, market_key
from pipeline.contracts.topics import BARS_1S, TRADE_BATCHES, TRADES
from pipeline.infra import cpu_seconds, free_port
from pipeline.infra.scratch import with_fresh_prefix
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.percentile import percentile
from pipeline.settings import Settings

log = logging.getLogger(__name__)

WORKER_METRIC = ("marketprism_aggregation_records_total{", 'stream="trades"', 'result="ok"')
NAIVE_METRIC = ("marketprism_aggregation_naive_trades_total",)
LATENESS_US = 500_000
GRACE_US = 500_000
LINGER_US = 20_000  # the collectors' output: at most one batch per market per 20 ms
BATCHES = TRADE_BATCHES.name


@dataclass(frozen=True)
class BenchPlan:
    trades: int
    symbols: int
    rate: int
    seconds: int
    repeats: int
    load_rate: int = 50_000
    naive_trades: int = 0  # trades the naive agent is measured on (0: all; it is ~20x slower)
    latency_repeats: int = 1  # bar latency runs (each variant; median p50/p99 reported)
    latency_baseline: tuple[str, ...] = ()  # worker options of a tuning to compare, run alternately in the same run


@dataclass
class Rate:
    """A throughput measurement: trades per wall second and per CPU second of the measured process."""

    per_s: float
    per_cpu_s: float


def _batch(trades: list[Trade]) -> TradeBatch:
    return TradeBatch.of(trades)


class Batcher:
    """The collectors' batching rule on a virtual clock: a market's trades wait until ``LINGER_US`` after
    its previous batch (a market quiet that long sends at once)."""

    def __init__(self) -> None:
        self.pending: dict[bytes, list[Trade]] = {}
        self.last: dict[bytes, int] = {}

    def add(self, trade: Trade, now_us: int) -> list[TradeBatch]:
        key = market_key(trade.exchange, trade.symbol)
        self.pending.setdefault(key, []).append(trade)
        return self.due(now_us)

    def due(self, now_us: int) -> list[TradeBatch]:
        out = []
        for key in [k for k in self.pending if self.last.get(k, -LINGER_US) + LINGER_US <= now_us]:
            out.append(_batch(self.pending.pop(key)))
            self.last[key] = now_us
        return out

    def flush(self) -> list[TradeBatch]:
        out = [_batch(trades) for trades in self.pending.values()]
        self.pending.clear()
        return out


def batches_at(trades: list[Trade], rate: int) -> list[TradeBatch]:
    """``trades`` as the collectors would batch them arriving at ``rate``/s."""
    batcher = Batcher()
    out: list[TradeBatch] = []
    for i, t in enumerate(trades):
        out += batcher.add(t, i * 1_000_000 // rate)
    return out + batcher.flush()


def _trades(count: int, symbols: int, start_us: int, step_us: int) -> list[Trade]:
    return [
        Trade(exchange="binance", symbol=f"S{i % symbols}-USDT", raw_symbol=f"S{i % symbols}USDT", trade_id=str(i),
              price=f"{100 + i % 97}.{i % 100:02d}", size=f"0.{(i * 7919) % 10**6 + 1:06d}",
              side="buy" if i % 3 else "sell", ts_event=start_us + i * step_us, ts_recv=start_us + i * step_us + 900)
        for i in range(count)
    ]  # fmt: skip


async def _preload(settings: Settings, trades: list[Trade], batches: list[TradeBatch]) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        topic = settings.topic(TRADES.name)
        for t in trades:
            await producer.send(topic, encode(t), key=market_key(t.exchange, t.symbol))
        topic = settings.topic(BATCHES)
        for b in batches:
            await producer.send(topic, encode(b), key=market_key(b.exchange, b.symbol))
        await producer.flush()
    finally:
        await producer.stop()


async def raw_consume(settings: Settings, count: int, batched: bool) -> Rate:
    """Trades/s of a plain aiokafka consumer decoding every record (trades or trade batches)."""
    decoder = decoder_for(TradeBatch if batched else Trade)  # type: ignore[arg-type]
    topic = settings.topic(BATCHES if batched else TRADES.name)
    consumer = make_consumer(settings.kafka, topic, group_id=None, max_poll_records=10_000)
    await consumer.start()
    try:
        seen = 0
        started = cpu = None
        while seen < count:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                if started is None:
                    started, cpu = time.perf_counter(), time.process_time()
                for message in batch:
                    record = decoder.decode(message.value)
                    seen += len(record.trades) if batched else 1  # type: ignore[attr-defined]
        wall = time.perf_counter() - (started or time.perf_counter())
        return Rate(count / wall, count / (time.process_time() - (cpu or 0.0)))
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
) -> Rate:
    """Trades/s of a Faust worker process, from its Prometheus counter (first non-zero reading to the last)."""
    port = free_port()
    with (state / f"{Path(command[0]).name}-{command[-1]}.log").open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *command, env=_env(settings, state, port), stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/metrics"
    watched = psutil.Process(process.pid)
    try:
        first: tuple[float, float, float] | None = None
        async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(900):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"{command[-2:]} exited with {process.returncode} before applying {count}")
                done = await _applied(client, url, metric)
                now, cpu = time.perf_counter(), cpu_seconds(watched)
                if first is None and done > 0:
                    first = (now, done, cpu)
                if done >= count and first is not None:
                    break
                await asyncio.sleep(0.1)
        if now - first[0] < 0.5:  # everything landed between two readings: no usable interval
            return Rate(float("nan"), float("nan"))
        return Rate((done - first[1]) / (now - first[0]), (done - first[1]) / max(1e-9, cpu - first[2]))
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


WARMUP_LIMIT_S = 300.0  # the longest the latency run waits for the worker's first bar before measuring anyway


async def bar_latency(
    settings: Settings, plan: BenchPlan, state: Path, worker_args: Sequence[str] = ()
) -> tuple[list[float], float]:
    """Bar latencies (ms) of 1s bars at ``plan.rate`` trades/s of live-stamped trades, batched as the
    collectors batch them; and the worker's CPU share (CPU-seconds per second) during the run.
    ``worker_args`` are extra ``marketprism worker`` options (a tuning to compare)."""
    await ensure_internal_topics(settings)
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "marketprism"), "worker", *worker_args, env=_env(settings, state),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    watched = psutil.Process(worker.pid)
    producer = make_producer(settings.kafka)
    consumer = make_consumer(settings.kafka, settings.topic(BARS_1S.name), group_id=None)
    await producer.start()
    await consumer.start()
    bar_decoder = decoder_for(Bar)
    latencies: list[float] = []
    bars: list[tuple[int, int]] = []  # (record timestamp ms: when the worker produced it, window end µs)
    try:
        topic = settings.topic(BATCHES)
        batcher = Batcher()
        stamps: list[int] = []  # ts_event of each burst of trades made (= the wall time it was made)
        warm_bars = 0  # 1s bars seen before the measured stream: proof the worker has joined and closes windows
        measure_from = 2**62  # window starts measured from (set when the measured stream starts)
        i = 0

        awaited_end = 2**62  # the window end the measured stream's bars must reach (set once it is produced)
        reached = asyncio.Event()

        async def read() -> None:
            nonlocal warm_bars
            while True:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    for message in batch:
                        bar = bar_decoder.decode(message.value)
                        if bar.window_end >= awaited_end:
                            reached.set()
                        if bar.window_start >= measure_from:
                            bars.append((message.timestamp, bar.window_end))
                        else:
                            warm_bars += 1

        async def produce(started: float, until: Callable[[], bool]) -> None:
            nonlocal i
            first = i
            while not until():
                target = first + int((time.time() - started) * plan.rate)
                now_us = time.time_ns() // 1000
                ready: list[TradeBatch] = []
                if i < target:
                    stamps.append(now_us)
                while i < target:
                    symbol = f"S{i % plan.symbols}-USDT"
                    t = Trade(exchange="binance", symbol=symbol, raw_symbol=symbol.replace("-", ""), trade_id=str(i),
                              price="100.5", size="0.1", side="buy", ts_event=now_us, ts_recv=now_us)  # fmt: skip
                    ready += batcher.add(t, now_us)
                    i += 1
                ready += batcher.due(now_us)
                for b in ready:
                    await producer.send(topic, encode(b), key=market_key(b.exchange, b.symbol))
                await asyncio.sleep(0.002)

        reader = asyncio.create_task(read())
        # warm-up at the same rate until the worker has joined its group and closed a window (waited for, not
        # a fixed pause: a loaded machine joined after the old 8 s and the whole measured run saw no bar)
        warm_started = time.time()
        await produce(warm_started, lambda: warm_bars > 0 or time.time() - warm_started > WARMUP_LIMIT_S)
        started = time.time()
        cpu_start = cpu_seconds(watched)
        measure_from = int((started + 3) * 1e6)  # skip the first windows of the measured stream
        await produce(started, lambda: time.time() - started >= plan.seconds)
        cpu_share = (cpu_seconds(watched) - cpu_start) / (time.time() - started)
        # the stream's own watermark closes every window ending by the last stamp - lateness - grace: wait for the
        # last of those (not a pause: a loaded machine delivered the measured bars after the old 3 s)
        awaited_end = (stamps[-1] - LATENESS_US - GRACE_US) // 1_000_000 * 1_000_000
        if any(end >= awaited_end for _, end in bars):
            reached.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reached.wait(), WARMUP_LIMIT_S)
        reader.cancel()
        for produced_ms, window_end in bars:
            # the watermark passed end + grace with the first trade stamped >= end + lateness + grace
            at = bisect.bisect_left(stamps, window_end + LATENESS_US + GRACE_US)
            if at < len(stamps):
                latencies.append(produced_ms - stamps[at] / 1000)
    finally:
        await producer.stop()
        await consumer.stop()
        await _stop(worker)
    return latencies, cpu_share


def _median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def _percentile(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) if values else float("nan")


def _runs(values: list[Rate]) -> str:
    return ", ".join(f"{v.per_s:.0f}" for v in values)


async def run_bench(settings: Settings, plan: BenchPlan) -> str:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    base = int(time.time() * 1e6) - 3_600_000_000
    trades = _trades(plan.trades, plan.symbols, base, 100)  # 10k trades per second of event time
    batches = batches_at(trades, plan.load_rate)
    marketprism = str(Path(sys.executable).parent / "marketprism")
    results: dict[str, list[Rate]] = {"raw": [], "raw batches": [], "naive": [], "worker": []}
    state = settings.state_dir / "bench-aggregate"
    state.mkdir(parents=True, exist_ok=True)
    for _ in range(plan.repeats):
        run = await with_fresh_prefix(settings)
        await _preload(run, trades, batches)
        results["raw"].append(await raw_consume(run, plan.trades, batched=False))
        results["raw batches"].append(await raw_consume(run, plan.trades, batched=True))
        await ensure_internal_topics(run)
        worker = [marketprism, "worker"]
        results["worker"].append(await faust_throughput(run, worker, WORKER_METRIC, plan.trades, state))
        naive = [sys.executable, "-m", "pipeline.bench.naive", "worker", "-l", "warn"]
        naive_count = plan.naive_trades or plan.trades
        results["naive"].append(await faust_throughput(run, naive, NAIVE_METRIC, naive_count, state))
    variants = {"worker defaults": ()} | (
        {" ".join(plan.latency_baseline): plan.latency_baseline} if plan.latency_baseline else {}
    )
    latency_runs: dict[str, list[tuple[float, float, float, int]]] = {name: [] for name in variants}
    for _ in range(plan.latency_repeats):
        for name, args in variants.items():  # alternated, so load drifts hit both alike
            latencies, cpu_share = await bar_latency(await with_fresh_prefix(settings), plan, state, args)
            latency_runs[name].append(
                (_percentile(latencies, 50), _percentile(latencies, 99), cpu_share, len(latencies))
            )
    median = {k: Rate(_median([r.per_s for r in v]), _median([r.per_cpu_s for r in v])) for k, v in results.items()}
    names = {
        "raw": "raw aiokafka getmany+decode, md.trades.v1",
        "raw batches": "raw aiokafka getmany+decode, batches",
        "naive": "naive Faust per-event agent",
        "worker": "marketprism worker (batches)",
    }
    lines = [
        f"bench aggregate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} cores, {plan.trades} trades over {plan.symbols} symbols, {plan.repeats} run(s); "
        f"batches as formed at {plan.load_rate} trades/s: {len(batches)} records, "
        f"{plan.trades / len(batches):.1f} trades/batch",
        *(
            f"{names[k]:42s}: {median[k].per_s:9.0f} trades/s {median[k].per_cpu_s:9.0f} trades/CPU-s  "
            f"(runs: {_runs(results[k])})"
            for k in names
        ),
        f"worker / naive = {median['worker'].per_s / median['naive'].per_s:.1f}x "
        f"(per CPU-s {median['worker'].per_cpu_s / median['naive'].per_cpu_s:.1f}x), "
        f"worker / raw = {median['worker'].per_s / median['raw'].per_s:.2f}x",
        *(
            f"bar latency at {plan.rate} trades/s, {name} ({_median([r[3] for r in runs]):.0f} 1s bars per run, worker "
            f"{_median([r[2] for r in runs]):.2f} CPU-s/s): p50 {_median([r[0] for r in runs]):.0f} ms, "
            f"p99 {_median([r[1] for r in runs]):.0f} ms (runs p50/p99: "
            + ", ".join(f"{r[0]:.0f}/{r[1]:.0f}" for r in runs)
            + ")"
            for name, runs in latency_runs.items()
        ),
    ]
    return "\n".join(lines)
