"""``marketprism bench sink``: rows/s of the sink, each path beside a baseline measured in the same run.

Every path reports wall-clock rows/s and rows per CPU-second of this process (``time.process_time``:
all its threads, chdb's included; the server's own CPU is not counted), since the machine may be
shared. Paths (same generated trades every time, batches of ``BATCH_ROWS``):
- ``raw chdb INSERT`` (baseline): pre-built JSONEachRow bytes straight into chdb, nothing else;
- ``sink -> chdb``: the sink's own work (validate every record, check decimals, build Arrow columns,
  insert with dedup tokens);
- ``Kafka -> sink -> chdb``: one sink process end to end through the broker (when it is reachable);
- ``sink -> clickhouse-server``: the clickhouse-driver backend into the local server (when running).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from pipeline.contracts import Trade, encode, load_registry
from pipeline.contracts.examples import T0
from pipeline.contracts.topics import TRADES
from pipeline.infra import with_fresh_prefix
from pipeline.infra.services import port_open
from pipeline.kafka import make_producer
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import ChdbSink, json_splicer
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.sinks.runner import RunnerOptions, SinkRunner, tune_gc

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
TOPIC = TRADES.name
SERVER_TRADES_DDL = """CREATE TABLE IF NOT EXISTS {db}.trades (
  _topic String, _partition UInt32, _offset UInt64, exchange String, symbol String, raw_symbol String,
  trade_id String, price Decimal(38, 18), size Decimal(38, 18), side String, ts_event DateTime, ts_recv DateTime
) ENGINE = MergeTree PARTITION BY toDate(ts_event) ORDER BY (exchange, symbol, ts_event)"""


@dataclass
class Result:
    name: str
    runs: list[float] = field(default_factory=list)  # rows per wall-clock second
    cpu_runs: list[float] = field(default_factory=list)  # rows per CPU-second of this process

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_runs)

    def add(self, rate: tuple[float, float] | None) -> None:
        if rate is not None:
            self.runs.append(rate[0])
            self.cpu_runs.append(rate[1])


class _Clock:
    """Wall and CPU time of one measured stretch."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def rates(self, rows: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return rows / wall, rows / max(cpu, 1e-9)


def trade_values(n: int) -> list[bytes]:
    """``n`` distinct valid trades as they travel on the topic."""
    values = []
    for i in range(n):
        price = Decimal("36000.01") + Decimal(i % 5000) / 100
        values.append(
            encode(
                Trade(
                    exchange="binance",
                    symbol="BTC-USDT" if i % 2 else "ETH-USDT",
                    raw_symbol="BTCUSDT",
                    trade_id=str(i),
                    price=f"{price:.8f}",
                    size=f"0.{i % 997:05d}",
                    side="buy" if i % 3 else "sell",
                    ts_event=T0 + i * 1000,
                    ts_recv=T0 + i * 1000 + 700,
                )
            )
        )
    return values


async def _sink_rate(sink: ClickHouseSink, topic: str, values: list[bytes]) -> tuple[float, float]:
    """The sink's own loop without Kafka: convert a batch while the previous one is written."""
    clock = _Clock()
    inflight: asyncio.Task[object] | None = None
    for start in range(0, len(values), BATCH_ROWS):
        end = min(start + BATCH_ROWS, len(values))
        sink.add_batch(topic, 0, list(range(start, end)), values[start:end])
        if inflight is not None:
            await inflight
        inflight = asyncio.create_task(sink.write_checkpoint(sink.checkpoint()))
    if inflight is not None:
        await inflight
    return clock.rates(len(values))


async def _raw_rate(sink: ChdbSink, topic: str, values: list[bytes]) -> tuple[float, float]:
    table = sink.tables[topic]
    make_row = json_splicer(topic, 0)
    lines = [make_row(None, i, v) for i, v in enumerate(values)]
    payloads = [b"\n".join(lines[s : s + BATCH_ROWS]) + b"\n" for s in range(0, len(lines), BATCH_ROWS)]
    clock = _Clock()
    for i, payload in enumerate(payloads):
        await sink.insert_payload(table, payload, f"raw-{uuid.uuid4().hex}-{i}")
    return clock.rates(len(values))


async def _kafka_rate(settings: Settings, db_path: str, values: list[bytes]) -> tuple[float, float] | None:
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if not port_open(host, int(port)):
        log.warning("broker %s is not reachable; skipping the Kafka path", settings.kafka.bootstrap_servers)
        return None
    run_settings = await with_fresh_prefix(settings.model_copy(update={"metrics_port": 0}))
    prefix = run_settings.topic_prefix
    producer = make_producer(run_settings.kafka)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(f"{prefix}{TOPIC}", value, key=b"binance:BTC-USDT", partition=i % 6)
        await producer.flush()
    finally:
        await producer.stop()
    sink = ChdbSink(db_path, load_registry(), prefix)
    runner = SinkRunner(run_settings, sink, [f"{prefix}{TOPIC}"], RunnerOptions(group_id=f"{prefix}sink"))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    while not (runner.consumer and runner.consumer.assignment()) and not task.done():  # setup and group join
        await asyncio.wait([task], timeout=0.01)
    clock = _Clock()
    while sink.rows_written < len(values) and not task.done():
        await asyncio.wait([task], timeout=0.01)
    rates = clock.rates(len(values))
    stop.set()
    await task
    return rates


async def _server_rate(settings: Settings, values: list[bytes]) -> tuple[float, float] | None:
    from clickhouse_driver import Client

    from pipeline.sinks.driver_backend import ServerSink

    host, port = settings.infra.broker_host, settings.infra.clickhouse_tcp_port
    url: str | None = settings.clickhouse_url if settings.clickhouse_url.startswith("clickhouse") else None
    if url is None:
        if not port_open(host, port):
            log.warning("no clickhouse-server on %s:%d (marketprism infra up); skipping the server path", host, port)
            return None
        url = f"clickhouse://default:@{host}:{port}/default"
    db = f"bench_{uuid.uuid4().hex[:8]}"
    admin = Client.from_url(url)
    await asyncio.to_thread(admin.execute, f"CREATE DATABASE {db}")
    await asyncio.to_thread(admin.execute, SERVER_TRADES_DDL.format(db=db))
    try:
        others = [t.name for t in load_registry() if t.name != TOPIC]  # the bench database has trades only
        sink = ServerSink(url.rsplit("/", 1)[0] + f"/{db}", load_registry(), run_migrations=False, skip_topics=others)
        await sink.setup()
        try:
            return await _sink_rate(sink, TOPIC, values)
        finally:
            await sink.close()
    finally:
        await asyncio.to_thread(admin.execute, f"DROP DATABASE {db}")
        admin.disconnect()


async def run_bench(settings: Settings, rows: int, repeats: int, *, with_server: bool = True) -> list[Result]:
    values = trade_values(rows)
    tune_gc()  # as ``marketprism sink`` does
    raw, sink_only, kafka, server = (
        Result("raw chdb INSERT (baseline)"),
        Result("sink -> chdb"),
        Result("Kafka -> sink -> chdb (one process)"),
        Result("sink -> clickhouse-server"),
    )
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        db_path = str(Path(tmp) / "chdb")
        for _ in range(repeats):
            sink = ChdbSink(db_path, load_registry(), f"r{uuid.uuid4().hex[:8]}.")
            await sink.setup()
            try:
                topic = next(name for name in sink.tables if name.endswith(TOPIC))
                # every path starts on an empty table: the engine's background merges of earlier
                # paths' parts would otherwise be counted against the next one
                await sink.execute("TRUNCATE TABLE trades")
                raw.add(await _raw_rate(sink, topic, values))
                await sink.execute("TRUNCATE TABLE trades")
                sink_only.add(await _sink_rate(sink, topic, values))
                await sink.execute("TRUNCATE TABLE trades")
            finally:
                await sink.close()
            kafka.add(await _kafka_rate(settings, db_path, values))
            if with_server:
                server.add(await _server_rate(settings, values))
    return [r for r in (raw, sink_only, kafka, server) if r.runs]
