"""SIGKILL of the sink process in the middle of its batches, then restart: every record stored exactly
once (chdb, and Debian's clickhouse-server with old-dialect tables)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_driver import Client
from sinkhelpers import produce, rows, variations, wait_for

from pipeline.contracts import Bbo, Trade
from pipeline.infra import free_port
from pipeline.kafka import consumer_options
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import chdb_path

MARKETPRISM = str(Path(sys.executable).parent / "marketprism")
GROUP = "crash-sink"
TOPICS = {"md.trades.v1": 6, "md.bbo.v1": 6}
OLD_DIALECT = {
    "trades": """CREATE TABLE {db}.trades (_topic String, _partition UInt32, _offset UInt64, exchange String,
        symbol String, raw_symbol String, trade_id String, price Decimal(38, 18), size Decimal(38, 18), side String,
        ts_event DateTime, ts_recv UInt64) ENGINE = MergeTree PARTITION BY toDate(ts_event)
        ORDER BY (exchange, symbol, ts_event)""",
    "bbo": """CREATE TABLE {db}.bbo (_topic String, _partition UInt32, _offset UInt64, exchange String, symbol String,
        bid_price Decimal(38, 18), bid_size Decimal(38, 18), ask_price Decimal(38, 18), ask_size Decimal(38, 18),
        ts_event DateTime, ts_recv UInt64, seq Nullable(Int64)) ENGINE = MergeTree PARTITION BY toDate(ts_event)
        ORDER BY (exchange, symbol, ts_event)""",
}


class SinkProcess:
    """``marketprism sink`` as a child process with its own /metrics port."""

    def __init__(self, settings: Settings, url: str, tmp: Path, *extra: str):
        self.port = free_port()
        env = os.environ | {
            "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
            "MARKETPRISM_CLICKHOUSE_URL": url,
            "MARKETPRISM_METRICS_PORT": str(self.port),
            "MARKETPRISM_STATE_DIR": str(tmp / "state"),
            "MARKETPRISM_KAFKA__SESSION_TIMEOUT_MS": "6000",
        }
        argv = [MARKETPRISM, "sink", "--group", GROUP, "--batch-rows", "700", "--batch-ms", "200", *extra]
        for topic in TOPICS:
            argv += ["--topic", topic]
        self.log = (tmp / f"sink-{uuid.uuid4().hex[:6]}.log").open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)

    async def rows_written(self) -> float:
        try:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2)).text
        except httpx.HTTPError:
            return 0.0
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("marketprism_sink_rows_written_total{")
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return -9
        finally:
            self.log.close()


async def _committed(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(**consumer_options(settings.kafka, GROUP))
    await consumer.start()
    try:
        total = 0
        for topic, partitions in TOPICS.items():
            for p in range(partitions):
                total += await consumer.committed(TopicPartition(settings.topic(topic), p)) or 0
        return total
    finally:
        await consumer.stop()


async def _stream(settings: Settings, records: dict[str, list], stop: asyncio.Event) -> dict[str, int]:  # type: ignore[type-arg]
    """Produce the records in small chunks until ``stop`` is set (or they run out); returns counts."""
    sent = dict.fromkeys(records, 0)
    chunk = 50
    while not stop.is_set() and any(sent[t] < len(v) for t, v in records.items()):
        await produce(settings, {t: v[sent[t] : sent[t] + chunk] for t, v in records.items()})
        sent = {t: min(len(v), sent[t] + chunk) for t, v in records.items()}
        await asyncio.sleep(0.05)
    return sent


async def _kill_cycles(
    settings: Settings,
    url: str,
    tmp: Path,
    records: dict[str, list],  # type: ignore[type-arg]
    *extra: str,
    kills: int = 3,
) -> dict[str, int]:
    """Kill the sink ``kills`` times while it writes a live stream, then let one more run catch up and stop."""
    rng = random.Random(7)
    stop_stream = asyncio.Event()
    stream = asyncio.create_task(_stream(settings, records, stop_stream))
    try:
        for _ in range(kills):
            sink = SinkProcess(settings, url, tmp, *extra)
            try:
                assert await wait_for(lambda s=sink: _wrote_some(s), limit_s=120, interval=0.05), "sink wrote nothing"
                await asyncio.sleep(rng.uniform(0.05, 0.6))
            finally:
                sink.kill()
    finally:
        stop_stream.set()
        sent = await stream
    sink = SinkProcess(settings, url, tmp, *extra)
    try:
        assert await wait_for(lambda: _all_committed(settings, sum(sent.values())), limit_s=180), "no catch-up"
    finally:
        assert sink.stop() == 0
    return sent


async def _wrote_some(sink: SinkProcess) -> bool:
    assert sink.proc.poll() is None, "sink exited"
    return await sink.rows_written() > 0


async def _all_committed(settings: Settings, total: int) -> bool:
    return await _committed(settings) >= total


def _corpus(n: int) -> dict[str, list]:  # type: ignore[type-arg]
    return {"md.trades.v1": variations(Trade, n), "md.bbo.v1": variations(Bbo, n)}


async def test_sigkill_mid_batch_chdb(topics: Settings, tmp_path: Path) -> None:
    sent = await _kill_cycles(topics, topics.clickhouse_url, tmp_path, _corpus(40_000), kills=2)

    path = chdb_path(topics.clickhouse_url)
    for table, topic in (("trades", "md.trades.v1"), ("bbo", "md.bbo.v1")):
        n = str(sent[topic])
        assert rows(path, f"SELECT count(), uniqExact(_partition, _offset) FROM {table}") == [[n, n]], table
        assert rows(path, f"SELECT DISTINCT _topic FROM {table}") == [[topics.topic(topic)]]


@pytest.mark.slow
@pytest.mark.clickhouse_server
async def test_sigkill_mid_batch_server(topics: Settings, tmp_path: Path, clickhouse_server) -> None:  # type: ignore[no-untyped-def]
    db = f"crash_{uuid.uuid4().hex[:8]}"
    client = Client(host=clickhouse_server.host, port=clickhouse_server.tcp_port)
    client.execute(f"CREATE DATABASE {db}")
    for ddl in OLD_DIALECT.values():
        client.execute(ddl.format(db=db))
    records = _corpus(40_000)
    url = f"clickhouse://default:@{clickhouse_server.host}:{clickhouse_server.tcp_port}/{db}"
    try:
        sent = await _kill_cycles(topics, url, tmp_path, records, "--no-migrate", kills=2)
        for table, topic in (("trades", "md.trades.v1"), ("bbo", "md.bbo.v1")):
            counts = client.execute(f"SELECT count(), uniqExact(_partition, _offset) FROM {db}.{table}")
            assert counts == [(sent[topic], sent[topic])], table
        prices = client.execute(f"SELECT toString(price) FROM {db}.trades")
        want = Counter(Decimal(t.price) for t in records["md.trades.v1"][: sent["md.trades.v1"]])
        assert Counter(Decimal(p) for (p,) in prices) == want
    finally:
        client.execute(f"DROP DATABASE {db}")
        client.disconnect()
