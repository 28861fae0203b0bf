"""Debian clickhouse-server stopped for 30 s in the middle of a stream: the sink pauses, retries with
backoff, catches up when the server is back; nothing lost, nothing doubled (old-dialect tables)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal

import pytest
from clickhouse_driver import Client
from sinkhelpers import produce, variations, wait_for

from pipeline.contracts import Trade, load_registry
from pipeline.settings import Settings
from pipeline.sinks.driver_backend import ServerSink
from pipeline.sinks.runner import RunnerOptions, SinkRunner

OUTAGE_S = 30
OLD_TRADES = """CREATE TABLE {db}.trades (_topic String, _partition UInt32, _offset UInt64, exchange String,
    symbol String, raw_symbol String, trade_id String, price Decimal(38, 18), size Decimal(38, 18), side String,
    ts_event DateTime, ts_recv UInt64) ENGINE = MergeTree PARTITION BY toDate(ts_event)
    ORDER BY (exchange, symbol, ts_event)"""


@pytest.mark.clickhouse_server
async def test_server_down_30s_mid_stream(topics: Settings, clickhouse_server) -> None:  # type: ignore[no-untyped-def]
    db = f"outage_{uuid.uuid4().hex[:8]}"
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE DATABASE {db}")
    client.execute(OLD_TRADES.format(db=db))
    client.disconnect()
    trades = variations(Trade, 3000)
    url = f"clickhouse://default:@{clickhouse_server.host}:{clickhouse_server.tcp_port}/{db}"
    sink = ServerSink(
        url, load_registry(), topics.topic_prefix, run_migrations=False, retry_window_s=3, max_backoff_s=2
    )
    runner = SinkRunner(
        topics,
        sink,
        [topics.topic("md.trades.v1")],
        RunnerOptions(group_id=f"{topics.topic_prefix}sink", batch_rows=200, batch_interval_s=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await produce(topics, {"md.trades.v1": trades[:1000]})
        assert await wait_for(lambda: _written(sink, 1000, task), limit_s=120)
        clickhouse_server.service.stop()
        try:
            for i in range(1000, 3000, 100):  # the stream goes on while the server is down
                await produce(topics, {"md.trades.v1": trades[i : i + 100]})
                await asyncio.sleep(OUTAGE_S / 20)
        finally:
            clickhouse_server.service.start(timeout=60)
        assert await wait_for(lambda: _written(sink, 3000, task), limit_s=180)
    finally:
        stop.set()
        await task

    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    try:
        assert client.execute(f"SELECT count(), uniqExact(_partition, _offset) FROM {db}.trades") == [(3000, 3000)]
        prices = Counter(Decimal(p) for (p,) in client.execute(f"SELECT toString(price) FROM {db}.trades"))
        assert prices == Counter(Decimal(t.price) for t in trades)
        client.execute(f"DROP DATABASE {db}")
    finally:
        client.disconnect()


async def _written(sink: ServerSink, n: int, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()
    return sink.rows_written >= n
