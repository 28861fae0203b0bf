"""``marketprism bench sink``: rows/s of the sink, each path beside a baseline measured in the same run.

Paths (same generated trades every time, batches of ``BATCH_ROWS``):
- ``raw chdb INSERT`` (baseline): pre-built JSONEachRow bytes straight into chdb, nothing else;
- ``sink -> chdb``: the sink's own work (validate every record, splice, insert with dedup tokens);
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
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from pipeline.contracts import Trade, encode, load_registry
from pipeline.contracts.examples import T0
from pipeline.infra.services import port_open
from pipeline.kafka import make_producer
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import ChdbSink
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.sinks.runner import RunnerOptions, SinkRunner

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
TOPIC = "md.trades.v1"
SERVER_TRADES_DDL = """CREATE TABLE IF NOT EXISTS {db}.trades (
  _topic String, _partition UInt32, _offset UInt64, exchange String, symbol String, raw_symbol String,
  trade_id String, price Decimal(38, 18), size Decimal(38, 18), side String, ts_event DateTime, ts_recv DateTime
) ENGINE = MergeTree PARTITION BY toDate(ts_event) ORDER BY (exchange, symbol, ts_event)"""


@dataclass
class Result:
    name: str
    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


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


async def _sink_rate(sink: ClickHouseSink, topic: str, values: list[bytes]) -> float:
    """The sink's own loop without Kafka: convert a batch while the previous one is written."""
    started = time.perf_counter()
    inflight: asyncio.Task[object] | None = None
    for start in range(0, len(values), BATCH_ROWS):
        sink.add_many(topic, 0, ((o, values[o]) for o in range(start, min(start + BATCH_ROWS, len(values)))))
        if inflight is not None:
            await inflight
        inflight = asyncio.create_task(sink.write_checkpoint(sink.checkpoint()))
    if inflight is not None:
        await inflight
    return len(values) / (time.perf_counter() - started)


async def _raw_rate(sink: ChdbSink, topic: str, values: list[bytes]) -> float:
    table = sink.tables[topic]
    make_row = sink.row_maker(table, topic, 0)
    lines = [make_row(None, i, v) for i, v in enumerate(values)]  # type: ignore[arg-type]
    payloads = [b"\n".join(lines[s : s + BATCH_ROWS]) + b"\n" for s in range(0, len(lines), BATCH_ROWS)]
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        await sink.insert_payload(table, payload, f"raw-{uuid.uuid4().hex}-{i}")
    return len(values) / (time.perf_counter() - started)


async def _kafka_rate(settings: Settings, db_path: str, values: list[bytes]) -> float | None:
    host, _, port = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
    if not port_open(host, int(port)):
        log.warning("broker %s is not reachable; skipping the Kafka path", settings.kafka.bootstrap_servers)
        return None
    from pipeline.kafka.admin import apply

    prefix = f"bench{uuid.uuid4().hex[:8]}."
    run_settings = settings.model_copy(update={"topic_prefix": prefix, "metrics_port": 0})
    await apply(run_settings.kafka, load_registry(), prefix)
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
    started = time.perf_counter()
    while sink.rows_written < len(values) and not task.done():
        await asyncio.wait([task], timeout=0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return len(values) / elapsed


async def _server_rate(settings: Settings, values: list[bytes]) -> float | None:
    from clickhouse_driver import Client

    from pipeline.sinks.driver_backend import ServerSink

    host, port = settings.infra.broker_host, settings.infra.clickhouse_tcp_port
    url = settings.clickhouse_url if settings.clickhouse_url.startswith("clickhouse") else None
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
        sink = ServerSink(url.rsplit("/", 1)[0] + f"/{db}", load_registry(), run_migrations=False)
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
    raw, sink_only, kafka, server = (
        Result("raw chdb INSERT (baseline)", []),
        Result("sink -> chdb", []),
        Result("Kafka -> sink -> chdb (one process)", []),
        Result("sink -> clickhouse-server", []),
    )
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        db_path = str(Path(tmp) / "chdb")
        for _ in range(repeats):
            sink = ChdbSink(db_path, load_registry(), f"r{uuid.uuid4().hex[:8]}.")
            await sink.setup()
            try:
                topic = next(name for name in sink.tables if name.endswith(TOPIC))
                raw.runs.append(await _raw_rate(sink, topic, values))
                sink_only.runs.append(await _sink_rate(sink, topic, values))
            finally:
                await sink.close()
            rate = await _kafka_rate(settings, db_path, values)
            if rate is not None:
                kafka.runs.append(rate)
            if with_server and (rate := await _server_rate(settings, values)) is not None:
                server.runs.append(rate)
    return [r for r in (raw, sink_only, kafka, server) if r.runs]
