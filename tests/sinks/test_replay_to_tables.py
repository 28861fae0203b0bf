"""Every real capture replayed through ``marketprism collect`` (a real process) and then the sink into
chdb: rows per table equal records per topic, and no (topic, partition, offset) is stored twice.

``coinbase_legacy_pro_2021.txt`` is the retired Coinbase Pro feed, which no collector speaks; the other
captures are all served by one replay server at full speed."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml
from aiokafka import TopicPartition
from sinkhelpers import chdb_conn, rows

from pipeline.bench.grafana import TimeRange, expand, load_dashboards, panel_queries, variable_queries
from pipeline.collectors.venues import VENUES
from pipeline.contracts import load_registry
from pipeline.infra import free_port
from pipeline.kafka.offsets import log_end_offsets
from pipeline.replay.server import ReplayServer
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import chdb_path
from pipeline.sinks.factory import make_sink
from pipeline.sinks.runner import RunnerOptions, SinkRunner

MARKETPRISM = str(Path(sys.executable).parent / "marketprism")
CAPTURES = {
    "binance": ("binance.txt", ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    "binance_usdm": ("binance_futures.txt", ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"]),
    "okx": ("okx.txt", ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]),
    "coinbase": ("coinbase.txt", ["BTC-USD", "ETH-USD"]),
    "kraken": (
        "kraken.txt",
        [
            "WAVES-EUR",
            "XMR-USD",
            "KSM-BTC",
            "GRT-ETH",
            "SC-EUR",
            "ETH-CHF",
            "OCEAN-BTC",
            "OMG-USD",
            "BTC-CHF",
            "ADA-BTC",
        ],
    ),
}

# Panels over filled tables that show what another component derives (only the collectors ran):
# the health score is the aggregation worker's (feed metrics with source = 'aggregator').
NEEDS_OTHER_COMPONENTS = ["Feed health / Health score (0-100)", "Feed health / Worst health now"]


async def _records_per_topic(settings: Settings, only: str = "") -> dict[str, int]:
    """Records per stored topic (named starting with ``only``), from log-end offsets (the topics start
    empty, nothing is deleted)."""
    stored = [t for t in load_registry() if t.sink and t.name.startswith(only)]
    tps = [TopicPartition(settings.topic(t.name), p) for t in stored for p in range(t.partitions)]
    ends = await log_end_offsets(settings.kafka, tps)
    counts = dict.fromkeys((t.name for t in stored), 0)
    for tp, end in ends.items():
        counts[tp.topic.removeprefix(settings.topic_prefix)] += end
    return counts


async def _collect(settings: Settings, server: ReplayServer, tmp: Path) -> None:
    """Run the collector process until every capture was served and the topics stopped growing."""
    venues = {}
    for exchange, (_, symbols) in CAPTURES.items():
        cls = VENUES[exchange]
        venues[exchange] = {
            "symbols": symbols,
            "ws_url": server.url_for(cls.ws_url),
            "rest_url": server.url_for(cls.rest_url),
        }
    config = tmp / "collect.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers},
                "topic_prefix": settings.topic_prefix,
                "metrics_port": free_port(),
                "state_dir": str(tmp / "state"),
                "venues": venues,
            }
        )
    )
    log = tmp / "collect.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            MARKETPRISM,
            "--config",
            str(config),
            "collect",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=os.environ.copy(),
        )
    try:
        async with asyncio.timeout(120):
            while not all(s.completed >= 1 for s in server.state.values()):
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
            previous: dict[str, int] = {}
            while (counts := await _records_per_topic(settings, "md.")) != previous or not counts["md.trades.v1"]:
                previous = counts  # (feed metrics keep coming every interval; market data stops)
                await asyncio.sleep(0.5)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(60):
                assert await proc.wait() == 0, log.read_text()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise


@pytest.mark.shared
async def test_replayed_captures_land_once_per_record(topics: Settings, replay_dir: Path, tmp_path: Path) -> None:
    server = ReplayServer([replay_dir / name for name, _ in CAPTURES.values()])
    await server.start()
    try:
        await _collect(topics, server, tmp_path)
    finally:
        await server.stop()
    records = await _records_per_topic(topics)
    for name in ("md.trades.v1", "md.book.v1", "md.bbo.v1", "ops.feed_metrics.v1"):
        assert records[name] > 0, (name, records)

    sink = make_sink(topics.clickhouse_url, load_registry(), topics.topic_prefix)
    runner = SinkRunner(
        topics,
        sink,
        [topics.topic(name) for name, n in records.items() if n],  # (fewer partitions to recover at start)
        RunnerOptions(batch_rows=5000, batch_interval_s=0.3),
    )
    assert runner.group_id == f"{topics.topic_prefix}marketprism-sink"  # the group follows the topic prefix
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(120):
            while sink.rows_written < sum(records.values()):
                if task.done():
                    task.result()  # surface a crash of the runner
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task

    assert await _records_per_topic(topics) == records  # the sink sent nothing to ops.dlq.v1
    path = chdb_path(topics.clickhouse_url)
    stored: dict[str, int] = {}
    for full_name, table in sink.tables.items():
        name = full_name.removeprefix(topics.topic_prefix)
        counts = rows(path, f"SELECT count(), uniqExact(_topic, _partition, _offset) FROM {table.name}")
        assert counts[0][0] == counts[0][1], f"{table.name}: a Kafka record stored twice"
        stored[name] = int(counts[0][0])
        assert rows(path, f"SELECT count() FROM {table.name} WHERE _topic != '{full_name}'") == [["0"]]
    assert stored == records

    # every provisioned panel whose tables the captures fill (market data, feed health) shows them
    filled = {table.name for name, table in sink.tables.items() if stored[name.removeprefix(topics.topic_prefix)]}
    time_range = TimeRange.for_points(
        dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    shown: list[str] = []
    empty: list[str] = []
    with chdb_conn(path) as conn:
        for dashboard in load_dashboards().values():
            values: dict[str, list[str]] = {}
            for name, sql in variable_queries(dashboard):
                values[name] = str(conn.query(expand(sql, time_range, values), "TabSeparated")).splitlines()
            for query in panel_queries(dashboard):
                used = set(re.findall(r"\b(?:FROM|JOIN)\s+`?([a-z_0-9]+)", query.sql, re.IGNORECASE))
                if not used <= filled or not all(values.get(v) for v in re.findall(r"\$\{(\w+)", query.sql)):
                    continue
                result = str(conn.query(expand(query.sql, time_range, values), "TabSeparated"))
                (shown if result.strip() else empty).append(f"{query.dashboard} / {query.panel}")
    assert empty == NEEDS_OTHER_COMPONENTS, (empty, shown)
    assert len(shown) >= 8, shown
